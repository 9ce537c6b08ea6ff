//! The cluster handle: where tasks are submitted, mapped and reduced.

#[cfg(feature = "embedded")]
mod embedded;
/// Built without the `embedded` feature: there is no cluster to start in the process.
#[cfg(not(feature = "embedded"))]
mod embedded {
    use crate::error::Error;

    pub(crate) struct Embedded {
        pub address: String,
        pub credential: ladle_common::token::Token,
    }

    impl Embedded {
        pub(crate) async fn start() -> Result<Self, Error> {
            Err(Error::Embedded(
                "this program was built without the embedded cluster (the `embedded` feature of \
                 ladle): set LADLE_CLUSTER_FILE to a cluster's driver.cluster, or LADLE_SCHEDULER \
                 to a scheduler's address"
                    .into(),
            ))
        }
    }
}
pub(crate) mod executable;
mod io_thread;
mod pending;
pub(crate) mod session;

use std::{
    net::SocketAddrV4,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use ladle_common::{
    client::{self, ClientAuth, ClientKeys},
    discovery::{self, Locator},
    limits,
};
use ladle_proto::v1::{self as pb, OpenSession, SessionOpened, TaskSpec};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::{
    error::Error,
    futures::TaskFuture,
    gpu::GpuUse,
    lone_wait::LoneWait,
    map::{self, AsCompleted, MapStream},
    shared::{self, Shared},
    task::{ErrorKind, Reducer, Task, TaskError},
};
use session::{Request, Route};

/// Environment variable naming the scheduler; without it, `from_env` starts an embedded one.
pub const SCHEDULER_ENV: &str = "LADLE_SCHEDULER";
/// Environment variable naming a file that holds the scheduler's address (its `address_file`).
pub const SCHEDULER_FILE_ENV: &str = "LADLE_SCHEDULER_FILE";
/// Environment variable naming the cluster `discover` looks for.
pub const CLUSTER_ENV: &str = "LADLE_CLUSTER";

/// How long a driver keeps trying to reach its scheduler again after losing it ("60s").
pub const RECONNECT_TIMEOUT_ENV: &str = "LADLE_RECONNECT_TIMEOUT";

fn reconnect_timeout() -> Result<Duration, Error> {
    match std::env::var(RECONNECT_TIMEOUT_ENV) {
        Ok(text) => humantime::parse_duration(text.trim()).map_err(|e| Error::Settings {
            key: RECONNECT_TIMEOUT_ENV.into(),
            message: format!("{text:?} is not a duration: {e}"),
        }),
        Err(_) => Ok(Duration::from_secs(60)),
    }
}

/// Environment variable naming the cluster file for drivers (`driver.cluster` from
/// `ladle-scheduler init`): credential, trust anchor and usually the scheduler's address.
pub const CLUSTER_FILE_ENV: &str = "LADLE_CLUSTER_FILE";

/// The program's credential and TLS trust, from `LADLE_CLUSTER_FILE`, or `LADLE_TOKEN` /
/// `LADLE_TOKEN_FILE` and `LADLE_TLS_CA`, `LADLE_TLS_SERVER_NAME`, `LADLE_TLS_CLIENT_CERT`,
/// `LADLE_TLS_CLIENT_KEY`.
fn auth_from_env() -> Result<ClientAuth, Error> {
    let text = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let path = |name: &str| text(name).map(std::path::PathBuf::from);
    let (cluster_file, token, token_file) = (
        path(CLUSTER_FILE_ENV),
        text("LADLE_TOKEN"),
        path("LADLE_TOKEN_FILE"),
    );
    let (tls_ca, tls_server_name) = (path("LADLE_TLS_CA"), text("LADLE_TLS_SERVER_NAME"));
    let (tls_client_cert, tls_client_key) =
        (path("LADLE_TLS_CLIENT_CERT"), path("LADLE_TLS_CLIENT_KEY"));
    Ok(ClientAuth::resolve(&ClientKeys {
        cluster_file: cluster_file.as_deref(),
        token: token.as_deref(),
        token_file: token_file.as_deref(),
        tls_ca: tls_ca.as_deref(),
        tls_server_name: tls_server_name.as_deref(),
        tls_client_cert: tls_client_cert.as_deref(),
        tls_client_key: tls_client_key.as_deref(),
    })?)
}

/// A worker (a process an agent started to run tasks) never opens a cluster of its own: inside
/// a task, the job's handle is [`crate::cluster`] (see [`Error::InsideTask`]).
fn refuse_inside_task() -> Result<(), Error> {
    match std::env::var_os(ladle_common::worker_protocol::SOCKET_ENV) {
        Some(_) => Err(Error::InsideTask),
        None => Ok(()),
    }
}

/// The slots a map inside a task sizes its window and chunks by (about twice as many chunks
/// in flight).
const NESTED_SLOTS: u32 = 16;

/// Per-call options of `submit_with`, `map_with` and `map_reduce_with`.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Higher runs first, within the job.
    pub priority: i32,
    /// Runs again a task whose function returned an error or panicked, up to this many times
    /// (the scheduler decides: each run is a new attempt).
    pub retries: u32,
    /// Fails a task that runs longer than this.
    pub timeout: Option<Duration>,
    /// Runs the task on a GPU slot (required or preferred), whatever its attribute says.
    pub gpu: Option<GpuUse>,
}

impl Options {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
    pub fn gpu(mut self, gpu: GpuUse) -> Self {
        self.gpu = Some(gpu);
        self
    }
}

/// A connection to a Ladle cluster (or to an embedded one). Cheap to clone; the session ends,
/// and its unfinished tasks are cancelled, when the last clone is dropped (a `#[ladle::main]`
/// program waits up to a second for the scheduler to hear of it before it exits).
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    requests: mpsc::UnboundedSender<Request>,
    next_id: AtomicU64,
    opened: SessionOpened,
    /// The cluster's capacity now: the scheduler says when it changes.
    capacity: Arc<session::Capacity>,
    /// A map's big arguments upload one at a time, the next one encoded meanwhile: the driver
    /// then holds at most two of them beyond its inputs, whatever the size of the map.
    uploads: Arc<tokio::sync::Semaphore>,
    address: String,
    auth: ClientAuth,
    /// The scheduler's blob service, for `share`; none inside a task, whose values the agent
    /// stores.
    channel: Option<tonic::transport::Channel>,
    /// Where maps run: the driver's runtime, or inside a task the worker's.
    runtime: Option<tokio::runtime::Handle>,
    /// Inside a task: the run of the task whose children this handle submits, through the
    /// worker's link to its agent.
    nested: Option<crate::nested::Run>,
    lone_wait: Arc<LoneWait>,
    /// The session's id: the job its stored values belong to.
    session_id: String,
    // Dropped last: the embedded scheduler and agent stop when the handle goes.
    _embedded: Option<embedded::Embedded>,
}

impl Drop for Inner {
    /// Ends the session: its unfinished tasks are cancelled, and futures still held fail as
    /// disconnected.
    fn drop(&mut self) {
        let _ = self.requests.send(Request::Close(session::Closing::new()));
    }
}

impl Cluster {
    /// The cluster named by `LADLE_CLUSTER_FILE` (the `driver.cluster` of `ladle-scheduler
    /// init`: credential, trust and address) or `LADLE_SCHEDULER`, or, when neither is set, an
    /// embedded scheduler and agent inside this process with one slot per core: the program
    /// runs with no set-up at all.
    ///
    /// `LADLE_SCHEDULER` overrides the cluster file's address; `LADLE_SCHEDULER=discover` finds
    /// the scheduler that announces itself on multicast ([`Cluster::discover`]), as does a
    /// cluster file that names none; `LADLE_SCHEDULER_FILE` names a file holding its address.
    pub async fn from_env() -> Result<Self, Error> {
        // Inside a task: the job's handle, as `ladle::cluster()` gives it.
        if crate::nested::inside_task() {
            return crate::nested::cluster();
        }
        let auth = auth_from_env()?;
        match std::env::var(SCHEDULER_ENV) {
            Ok(address) if address.trim() == "discover" => Self::discover().await,
            Ok(address) if !address.trim().is_empty() => Self::open(&address, auth, None).await,
            _ => match (std::env::var_os(SCHEDULER_FILE_ENV), auth.scheduler()) {
                (Some(path), _) => Self::located(Locator::File(path.into()), auth).await,
                (None, Some(address)) => {
                    let address = address.to_owned();
                    Self::open(&address, auth, None).await
                }
                (None, None) if auth.file.is_some() => Self::discover().await,
                (None, None) => Self::local().await,
            },
        }
    }

    /// The scheduler of cluster `LADLE_CLUSTER` (default "default") that announces itself on
    /// multicast on this network, waiting up to 10 s to hear it.
    pub async fn discover() -> Result<Self, Error> {
        let ip = std::env::var("LADLE_MULTICAST_GROUP")
            .unwrap_or_else(|_| discovery::DEFAULT_GROUP.to_string());
        let port = std::env::var("LADLE_MULTICAST_PORT")
            .unwrap_or_else(|_| discovery::DEFAULT_PORT.to_string());
        let group = SocketAddrV4::new(
            ip.parse().map_err(|_| Error::Settings {
                key: "LADLE_MULTICAST_GROUP".into(),
                message: format!("{ip:?} is not an IPv4 address"),
            })?,
            port.parse().map_err(|_| Error::Settings {
                key: "LADLE_MULTICAST_PORT".into(),
                message: format!("{port:?} is not a port number"),
            })?,
        );
        let listener = discovery::Listener::bind(group)
            .map_err(|e| Error::Discovery(format!("cannot listen on {group}: {e}")))?;
        let auth = auth_from_env()?;
        let cluster = std::env::var(CLUSTER_ENV)
            .ok()
            .or_else(|| auth.file.as_ref().map(|f| f.cluster.clone()))
            .unwrap_or_else(|| "default".into());
        // Announcements are believed when signed with the cluster file's key (or the shared
        // token); the scheduler named must then pass TLS against the file's trust anchor.
        let key = auth
            .file
            .as_ref()
            .and_then(|f| f.discovery_key())
            .or_else(|| auth.credential.clone());
        if key.is_none() && std::env::var("LADLE_ALLOW_UNSIGNED_DISCOVERY").as_deref() != Ok("true")
        {
            return Err(Error::Discovery(
                "this program holds no credential to check announcements with, and does not trust \
                 an unsigned one: set LADLE_CLUSTER_FILE (driver.cluster), or LADLE_SCHEDULER, or \
                 LADLE_ALLOW_UNSIGNED_DISCOVERY=true on a network you trust"
                    .into(),
            ));
        }
        let watch = discovery::Watch::start(listener, cluster, ladle_proto::PROTOCOL_VERSION, key);
        Self::located(
            Locator::Multicast {
                watch,
                wait: Duration::from_secs(10),
            },
            auth,
        )
        .await
    }

    /// The first address the locator gives that answers.
    async fn located(locator: Locator, auth: ClientAuth) -> Result<Self, Error> {
        let candidates = locator
            .candidates()
            .await
            .map_err(|e| Error::Discovery(e.to_string()))?;
        let mut failures = Vec::new();
        for candidate in candidates {
            match client::connect(&candidate.url, &auth.for_name(candidate.name.as_deref())).await {
                Ok(_) => return Self::open(&candidate.url, auth, None).await,
                Err(err) => failures.push(err.to_string()),
            }
        }
        Err(Error::Discovery(format!(
            "{} gave no address that answers: {}",
            locator.describe(),
            failures.join("; ")
        )))
    }

    /// The scheduler at `address` (`host:port`, `https://host:port`), presenting the
    /// credential of `LADLE_CLUSTER_FILE` (or `LADLE_TOKEN`, `LADLE_TOKEN_FILE`) when set.
    pub async fn connect(address: &str) -> Result<Self, Error> {
        Self::open(address, auth_from_env()?, None).await
    }

    /// The scheduler at `address` (or, with `None`, the one the file names), presenting the
    /// credential of the cluster file at `cluster_file` (`driver.cluster` from `ladle-scheduler
    /// init`) and checking the scheduler against its trust anchor, whatever the environment says.
    pub async fn connect_with_file(
        address: Option<&str>,
        cluster_file: &std::path::Path,
    ) -> Result<Self, Error> {
        let auth = ClientAuth::resolve(&ClientKeys {
            cluster_file: Some(cluster_file),
            ..ClientKeys::default()
        })?;
        let address = match address.or(auth.scheduler()) {
            Some(address) => address.to_owned(),
            None => {
                return Err(Error::Settings {
                    key: "scheduler".into(),
                    message: format!(
                        "no address given and the cluster file {} names none",
                        cluster_file.display()
                    ),
                });
            }
        };
        Self::open(&address, auth, None).await
    }

    /// An embedded scheduler and agent inside this process, whatever the environment says.
    /// They accept only a credential made for this process: no other local user can reach them.
    pub async fn local() -> Result<Self, Error> {
        refuse_inside_task()?;
        let embedded = embedded::Embedded::start().await?;
        let address = embedded.address.clone();
        let auth = ClientAuth::token(Some(embedded.credential.clone()));
        Self::open(&address, auth, Some(embedded)).await
    }

    async fn open(
        address: &str,
        auth: ClientAuth,
        embedded: Option<embedded::Embedded>,
    ) -> Result<Self, Error> {
        refuse_inside_task()?;
        let io = io_thread::IoThread::start().await?;
        let to = address.to_owned();
        let connect_auth = auth.clone();
        let channel = io
            .run(async move { client::connect(&to, &connect_auth).await })
            .await??;
        let path = executable::path()?;
        let blob = executable::describe(&path)?;
        let job_name = path
            .file_stem()
            .map_or_else(|| "job".to_owned(), |s| s.to_string_lossy().into_owned());
        let opener = session::Opener {
            address: address.to_owned(),
            auth: auth.clone(),
            executable: path,
            blob: blob.clone(),
            open: OpenSession {
                protocol_version: ladle_proto::PROTOCOL_VERSION,
                session_id: uuid::Uuid::new_v4().to_string(),
                job_name,
                executable: Some(blob),
                driver_host: sysinfo_hostname(),
                resume_secret: String::new(),
            },
            // An embedded scheduler lives and dies with this process: nothing to reconnect to.
            give_up_after: if embedded.is_some() {
                Duration::ZERO
            } else {
                reconnect_timeout()?
            },
            resume_secret: std::sync::Mutex::default(),
        };
        let session_id = opener.open.session_id.clone();
        let (opener, (stream, opened)) = io
            .run(async move {
                let opened = opener.open().await;
                opened.map(|opened| (opener, opened))
            })
            .await??;
        let (requests, requests_rx) = mpsc::unbounded_channel();
        let lone_wait = Arc::new(LoneWait::from_env());
        let capacity = Arc::new(session::Capacity::default());
        capacity.set(opened.cpu_slots, opened.gpu_slots, opened.agents);
        io.serve(session::run(
            requests_rx,
            stream,
            opener,
            lone_wait.clone(),
            capacity.clone(),
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                requests,
                next_id: AtomicU64::new(1),
                opened,
                capacity,
                uploads: Arc::new(tokio::sync::Semaphore::new(1)),
                address: address.to_owned(),
                auth,
                channel: Some(channel),
                runtime: None,
                nested: None,
                lone_wait,
                session_id,
                _embedded: embedded,
            }),
        })
    }

    /// Inside a task: a handle whose tasks are the running task's children (see
    /// [`crate::cluster`]); `requests` go to the nested session that sends them to the agent.
    pub(crate) fn nested(
        requests: mpsc::UnboundedSender<Request>,
        runtime: tokio::runtime::Handle,
        run: crate::nested::Run,
        max_value_bytes: u64,
    ) -> Self {
        let capacity = Arc::new(session::Capacity::default());
        // The cluster's capacity is the driver's to follow. A task's maps size their window
        // and chunks by a constant instead, the same on every agent: a run of the task
        // elsewhere cuts them the same way.
        capacity.set(NESTED_SLOTS, 0, 1);
        Self {
            inner: Arc::new(Inner {
                requests,
                next_id: AtomicU64::new(1),
                opened: SessionOpened {
                    max_value_bytes,
                    cpu_slots: NESTED_SLOTS,
                    ..SessionOpened::default()
                },
                capacity,
                uploads: Arc::new(tokio::sync::Semaphore::new(1)),
                address: String::new(),
                auth: ClientAuth::token(None),
                channel: None,
                runtime: Some(runtime),
                nested: Some(run),
                // A waiting parent gives its slot back: it must not spin on it.
                lone_wait: Arc::new(LoneWait::with_limit(Duration::ZERO)),
                session_id: String::new(),
                _embedded: None,
            }),
        }
    }

    /// Ends a task's nested session (its run is over).
    pub(crate) fn close_nested(&self) {
        if let Some(run) = &self.inner.nested {
            run.close();
        }
        let _ = self
            .inner
            .requests
            .send(Request::Close(session::Closing::new()));
    }

    /// Whether this is a task's handle on its job.
    pub(crate) fn is_nested(&self) -> bool {
        self.inner.nested.is_some()
    }

    /// Where the cluster's maps run.
    pub(crate) fn runtime(&self) -> tokio::runtime::Handle {
        match (&self.inner.runtime, tokio::runtime::Handle::try_current()) {
            (Some(nested), _) => nested.clone(),
            (None, Ok(current)) => current,
            // A driver's handle is used from async code, on a runtime.
            (None, Err(_)) => panic!("ladle: a map was started outside of a tokio runtime"),
        }
    }

    /// The scheduler's address.
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// CPU slots of the cluster now (agents that accept work), as the scheduler last said.
    pub fn slots(&self) -> u32 {
        self.inner.capacity.cpu_slots()
    }

    /// Agents of the cluster now (those that accept work).
    pub fn agents(&self) -> u32 {
        self.inner.capacity.agents()
    }

    /// Results the scheduler sent for tasks that had theirs already, which the SDK dropped. A
    /// session resumed after its stream died may see a few (results received but not yet
    /// acknowledged are sent again); otherwise none: the scheduler delivers each result once.
    pub fn duplicate_results(&self) -> u64 {
        self.inner.capacity.duplicates()
    }

    /// Returns when the scheduler says the cluster's capacity changed.
    pub(crate) async fn capacity_changed(&self) {
        self.inner.capacity.changed().await;
    }

    /// GPU slots of the cluster now.
    pub fn gpu_slots(&self) -> u32 {
        self.inner.capacity.gpu_slots()
    }

    /// Runs `task` on `input` somewhere in the cluster.
    pub fn submit<T: Task>(
        &self,
        task: T,
        input: T::Input,
    ) -> Result<TaskFuture<T::Output>, Error> {
        self.submit_with(task, input, &Options::default())
    }

    pub fn submit_with<T: Task>(
        &self,
        _task: T,
        input: T::Input,
        options: &Options,
    ) -> Result<TaskFuture<T::Output>, Error> {
        let (payload, shared) = self.encode_chunk::<T>(std::slice::from_ref(&input))?;
        let id = self.next_task_id();
        let (tx, rx) = oneshot::channel();
        self.send_chunk::<T>(
            id,
            payload,
            shared,
            1,
            None,
            options,
            Box::new(move |raw| {
                let _ = tx.send(raw);
            }),
            None,
        )?;
        Ok(TaskFuture::new(
            id,
            T::NAME,
            rx,
            self.inner.requests.clone(),
            self.inner.lone_wait.clone(),
        ))
    }

    /// Runs `task` over every input; results in input order, as a stream or all at once
    /// (`.await` gives `Result<Vec<_>, TaskError>`).
    pub fn map<T: Task>(
        &self,
        task: T,
        inputs: impl IntoIterator<Item = T::Input>,
    ) -> MapStream<T::Output> {
        self.map_with(task, inputs, &Options::default())
    }

    /// `map` with options (priority, retries per item, a timeout per chunk, GPU use).
    pub fn map_with<T: Task>(
        &self,
        _task: T,
        inputs: impl IntoIterator<Item = T::Input>,
        options: &Options,
    ) -> MapStream<T::Output> {
        map::map::<T>(self, inputs.into_iter().collect(), options.clone())
    }

    /// Like `map`, in the order the results complete: `(input index, result)`.
    pub fn map_as_completed<T: Task>(
        &self,
        _task: T,
        inputs: impl IntoIterator<Item = T::Input>,
    ) -> AsCompleted<T::Output> {
        map::map_as_completed::<T>(self, inputs.into_iter().collect(), Options::default())
    }

    /// `map_as_completed` with options.
    pub fn map_as_completed_with<T: Task>(
        &self,
        _task: T,
        inputs: impl IntoIterator<Item = T::Input>,
        options: &Options,
    ) -> AsCompleted<T::Output> {
        map::map_as_completed::<T>(self, inputs.into_iter().collect(), options.clone())
    }

    /// Maps `task` over `inputs` and folds the results with `reducer`. Each chunk is folded on
    /// the agent that ran it, so only one partial result per chunk travels back.
    pub async fn map_reduce<T, R>(
        &self,
        task: T,
        reducer: R,
        inputs: impl IntoIterator<Item = T::Input>,
    ) -> Result<T::Output, TaskError>
    where
        T: Task,
        R: Reducer<Output = T::Output>,
    {
        self.map_reduce_with(task, reducer, inputs, &Options::default())
            .await
    }

    /// `map_reduce` with options.
    pub async fn map_reduce_with<T, R>(
        &self,
        _task: T,
        _reducer: R,
        inputs: impl IntoIterator<Item = T::Input>,
        options: &Options,
    ) -> Result<T::Output, TaskError>
    where
        T: Task,
        R: Reducer<Output = T::Output>,
    {
        let inputs: Vec<T::Input> = inputs.into_iter().collect();
        if inputs.is_empty() {
            return Err(TaskError {
                kind: ErrorKind::Failed,
                task: T::NAME.to_owned(),
                message: "map_reduce over no inputs has nothing to reduce".into(),
                agent: String::new(),
                attempt: 0,
            });
        }
        let (mut partials, cancel) = map::map_partials::<T>(self, inputs, R::NAME, options.clone());
        let mut acc: Option<T::Output> = None;
        while let Some((_, partial)) = partials.recv().await {
            let folded = partial.and_then(|value| match acc.take() {
                None => Ok(value),
                Some(a) => R::run((a, value)).map_err(|message| TaskError {
                    kind: ErrorKind::Failed,
                    task: R::NAME.to_owned(),
                    message,
                    agent: "the driver".into(),
                    attempt: 1,
                }),
            });
            match folded {
                Ok(value) => acc = Some(value),
                Err(err) => {
                    // The result is decided: the rest of the map would only take the cluster's time.
                    cancel.cancel();
                    return Err(err);
                }
            }
        }
        acc.ok_or_else(|| crate::futures::disconnected(T::NAME))
    }

    /// Sends `value` to the cluster once; tasks take the returned handle as an argument, and
    /// each agent fetches the value once, however many tasks use it.
    pub async fn share<T: Serialize + Send + Sync + 'static>(
        &self,
        value: T,
    ) -> Result<Shared<T>, Error> {
        let bytes = postcard::to_allocvec(&value).map_err(|e| Error::Encode {
            task: "share".into(),
            message: e.to_string(),
        })?;
        let blob = ladle_common::blobs::describe(&bytes);
        // The connection lives on the session's thread, which ends with the session.
        if self.inner.requests.is_closed() {
            return Err(Error::Closed);
        }
        let Some(channel) = self.inner.channel.clone() else {
            // Inside a task: the agent stores it for the job.
            let link = self.inner.nested.as_ref().ok_or(Error::Closed)?.link();
            let sha256 = link.upload(bytes).await.map_err(|message| Error::Upload {
                what: "a shared constant".into(),
                message,
            })?;
            return Ok(Shared::new(sha256, value));
        };
        let mut blobs = ladle_common::blobs::client(channel, self.inner.auth.interceptor());
        // Stored for this job: the scheduler deletes it when the job ends.
        ladle_common::blobs::upload(
            &mut blobs,
            &blob,
            Bytes::from(bytes),
            &self.inner.session_id,
        )
        .await
        .map_err(|e| Error::Upload {
            what: "a shared constant".into(),
            message: e.to_string(),
        })?;
        Ok(Shared::new(blob.sha256, value))
    }

    pub(crate) fn next_task_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Encodes a chunk of inputs; returns the payload and the shared constants it names.
    pub(crate) fn encode_chunk<T: Task>(
        &self,
        inputs: &[T::Input],
    ) -> Result<(Vec<u8>, Vec<String>), Error> {
        let (encoded, shared) = shared::collect(|| postcard::to_allocvec(inputs));
        let payload = encoded.map_err(|e| Error::Encode {
            task: T::NAME.to_owned(),
            message: e.to_string(),
        })?;
        Ok((payload, shared))
    }

    #[allow(clippy::too_many_arguments)]
    /// Waits for the turn of a map's big argument to upload (see `uploads`).
    pub(crate) async fn upload_turn(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.inner.uploads.clone().acquire_owned().await.ok()
    }

    /// Sends a chunk; `turn` is held until a big argument's upload has ended.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send_chunk<T: Task>(
        &self,
        task_id: u64,
        payload: Vec<u8>,
        shared: Vec<String>,
        items: usize,
        reducer: Option<&'static str>,
        options: &Options,
        route: Route,
        turn: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<(), Error> {
        let limit = self.inner.opened.max_value_bytes;
        if limit > 0 && payload.len() as u64 > limit {
            return Err(Error::TooLarge {
                task: T::NAME.to_owned(),
                size: payload.len(),
                limit,
            });
        }
        // A big argument goes to the blob store (by the session's thread) and travels by hash.
        let (payload, payload_blob, upload) = if payload.len() > limits::INLINE_VALUE_BYTES {
            let blob = ladle_common::blobs::describe(&payload);
            (Bytes::new(), Some(blob), Some(Bytes::from(payload)))
        } else {
            (Bytes::from(payload), None, None)
        };
        let spec = TaskSpec {
            task_id,
            function: T::NAME.to_owned(),
            payload,
            payload_blob,
            items: u32::try_from(items).unwrap_or(u32::MAX),
            reducer: reducer.unwrap_or_default().to_owned(),
            shared,
            priority: options.priority,
            retries: options.retries,
            timeout_ms: options
                .timeout
                .map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            gpu: match options.gpu.unwrap_or(T::GPU) {
                GpuUse::None => pb::GpuUse::None,
                GpuUse::Required => pb::GpuUse::Required,
                GpuUse::Preferred => pb::GpuUse::Preferred,
            }
            .into(),
        };
        let in_flight = self.inner.lone_wait.started();
        let route: Route = Box::new(move |raw| {
            drop(in_flight);
            route(raw)
        });
        let submission = session::Submission {
            spec,
            route,
            upload: upload.map(|data| (data, turn)),
        };
        // Inside a task, straight to the agent from this thread.
        if let Some(run) = &self.inner.nested {
            return run.submit(submission);
        }
        self.inner
            .requests
            .send(Request::Submit(vec![submission]))
            .map_err(|_| Error::Closed)
    }

    pub(crate) fn cancel_tasks(&self, ids: Vec<u64>) {
        if !ids.is_empty() {
            let _ = self.inner.requests.send(Request::Cancel(ids));
        }
    }
}

fn sysinfo_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
