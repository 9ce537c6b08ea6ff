//! The driver's stream to the scheduler: submissions go up in batches, results come down and
//! are handed to whoever waits for them, and the tasks' output is printed here.
//!
//! Every task without a result is kept here with its spec, and every result received is
//! acknowledged (the scheduler keeps it until then). When the stream breaks (the scheduler
//! restarted, the network blipped or went silent), the session is opened again under the same
//! id: a scheduler that still has it replays the results not acknowledged and names the tasks
//! it holds, and only the others are submitted again; a scheduler that restarted knows none, and
//! all are. So each future completes once and nothing finished runs again, with no code in the
//! program.

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use ladle_common::client::{self, ClientAuth};
use ladle_proto::v1::{
    self as pb, BlobRef, CancelTasks, CloseSession, DriverEvent, DriverMessage, OpenSession,
    SessionOpened, SubmitTasks, driver_event, driver_message,
    driver_service_client::DriverServiceClient, task_result,
};
use tokio::sync::mpsc;
use tonic::Streaming;
use tracing::{debug, warn};

use ladle_common::{blobs::BlobClient, limits};

use super::pending::{Budget, Pending};
use crate::{error::Error, lone_wait::LoneWait, output::sanitize_line, task::ErrorKind};

/// The cluster's capacity as the scheduler last told this session.
#[derive(Default)]
pub(crate) struct Capacity {
    cpu_slots: AtomicU32,
    gpu_slots: AtomicU32,
    agents: AtomicU32,
    /// Woken when it changes (a map widens its window at once).
    changed: tokio::sync::Notify,
    /// Results for tasks that had one already, dropped here.
    duplicates: std::sync::atomic::AtomicU64,
}

impl Capacity {
    pub(crate) fn set(&self, cpu_slots: u32, gpu_slots: u32, agents: u32) {
        self.cpu_slots.store(cpu_slots, Ordering::Relaxed);
        self.gpu_slots.store(gpu_slots, Ordering::Relaxed);
        self.agents.store(agents, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    pub(crate) fn cpu_slots(&self) -> u32 {
        self.cpu_slots.load(Ordering::Relaxed)
    }

    pub(crate) fn gpu_slots(&self) -> u32 {
        self.gpu_slots.load(Ordering::Relaxed)
    }

    pub(crate) fn agents(&self) -> u32 {
        self.agents.load(Ordering::Relaxed)
    }

    pub(crate) fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }
}

/// Acknowledgements of the results received: the scheduler keeps each result until this
/// driver has said it has it.
#[derive(Default)]
struct Acks {
    /// The highest delivery number received (the stream keeps their order, and a resumed
    /// session replays every one not acknowledged: all below it are here too).
    received: u64,
    /// The highest acknowledged.
    sent: u64,
}

impl Acks {
    fn receive(&mut self, seq: u64) {
        self.received = self.received.max(seq);
    }

    fn due(&self) -> bool {
        self.received > self.sent
    }

    /// The acknowledgement to send now (0: none due).
    fn take(&mut self) -> u64 {
        if !self.due() {
            return 0;
        }
        self.sent = self.received;
        self.received
    }
}

/// How long received results wait for a submission to carry their acknowledgement before it
/// goes alone.
const ACK_DELAY: Duration = Duration::from_millis(10);

/// A result as it arrives, before anyone decodes it.
pub(crate) struct RawResult {
    pub outcome: Result<Bytes, (ErrorKind, String)>,
    pub agent: String,
    pub attempt: u32,
    pub run_ns: u64,
}

impl RawResult {
    /// A result as the scheduler sent it, and the blob that holds its output if it is stored
    /// rather than inline (its outcome then says so until it is fetched).
    pub(crate) fn from_pb(result: pb::TaskResult) -> (Self, Option<BlobRef>) {
        let mut raw = RawResult {
            outcome: Err((ErrorKind::BadData, "the scheduler sent no outcome".into())),
            agent: result.agent,
            attempt: result.attempt,
            run_ns: result.run_ns,
        };
        let mut stored = None;
        match result.outcome {
            Some(task_result::Outcome::Output(bytes)) => raw.outcome = Ok(bytes),
            Some(task_result::Outcome::Failure(f)) => raw.outcome = Err((kind(f.kind), f.message)),
            Some(task_result::Outcome::OutputBlob(blob)) => {
                raw.outcome = Err((
                    ErrorKind::BadData,
                    format!("the result {} was not fetched", blob.sha256),
                ));
                stored = Some(blob);
            }
            None => {}
        }
        (raw, stored)
    }

    pub(crate) fn failed(kind: ErrorKind, message: String) -> Self {
        Self {
            outcome: Err((kind, message)),
            agent: String::new(),
            attempt: 0,
            run_ns: 0,
        }
    }
}

/// Where a result goes.
pub(crate) type Route = Box<dyn FnOnce(RawResult) + Send>;

/// A task for the session to send; `upload` holds its argument when it is too big to travel
/// inline (the spec names it by hash: it goes to the blob store first), and the turn it holds
/// until the upload has ended (a map's big arguments go one at a time).
pub(crate) struct Submission {
    pub spec: pb::TaskSpec,
    pub route: Route,
    pub upload: Option<(Bytes, Option<tokio::sync::OwnedSemaphorePermit>)>,
}

pub(crate) enum Request {
    Submit(Vec<Submission>),
    Cancel(Vec<u64>),
    /// The program dropped its last handle on the cluster: say goodbye, so that the scheduler
    /// cancels what is left at once instead of keeping it for a driver that might come back.
    Close(Closing),
}

/// How long a program that ends waits for its sessions' goodbyes to reach the scheduler.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Sessions told to close whose goodbye is not yet acknowledged.
static CLOSING: Mutex<usize> = Mutex::new(0);
static ALL_CLOSED: Condvar = Condvar::new();

fn closing() -> MutexGuard<'static, usize> {
    CLOSING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Held while a session's goodbye is on its way; dropped when it has arrived, or when the
/// session turns out to be gone already.
pub(crate) struct Closing(());

impl Closing {
    pub(crate) fn new() -> Self {
        *closing() += 1;
        Self(())
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        let mut left = closing();
        *left = left.saturating_sub(1);
        if *left == 0 {
            ALL_CLOSED.notify_all();
        }
    }
}

/// Waits, for at most `limit`, until every session told to close has said goodbye (on the
/// sessions' own threads): the process must not exit before that.
pub(crate) fn wait_all_closed(limit: Duration) {
    let _ = ALL_CLOSED.wait_timeout_while(closing(), limit, |left| *left > 0);
}

/// How to open the session (again): the scheduler, the program and the session's identity.
pub(crate) struct Opener {
    pub address: String,
    pub auth: ClientAuth,
    pub executable: PathBuf,
    pub blob: BlobRef,
    pub open: OpenSession,
    /// How long to keep trying after the stream breaks; zero never reconnects.
    pub give_up_after: Duration,
    /// The secret the scheduler gave this session: only its holder may resume it.
    pub resume_secret: std::sync::Mutex<String>,
}

pub(crate) struct Stream {
    up: mpsc::Sender<DriverMessage>,
    down: Streaming<DriverEvent>,
    /// Big arguments go up, and big results come down, through the blob service.
    blobs: BlobClient,
    budget: Budget,
}

impl Opener {
    /// Uploads the executable if the scheduler lacks it, and opens the session.
    pub(crate) async fn open(&self) -> Result<(Stream, SessionOpened), Error> {
        let channel = client::connect(&self.address, &self.auth).await?;
        let interceptor = self.auth.interceptor();
        let mut blobs = ladle_common::blobs::client(channel.clone(), interceptor.clone());
        let present = blobs
            .has_blob(self.blob.clone())
            .await
            .map_err(|s| self.refused(&s))?
            .into_inner()
            .present;
        if !present {
            let data =
                tokio::fs::read(&self.executable)
                    .await
                    .map_err(|source| Error::Executable {
                        path: self.executable.display().to_string(),
                        source,
                    })?;
            ladle_common::blobs::upload(&mut blobs, &self.blob, Bytes::from(data), "")
                .await
                .map_err(|e| Error::Upload {
                    what: "the program's executable".into(),
                    message: e.to_string(),
                })?;
        }
        let mut driver = ladle_common::with_message_limits!(DriverServiceClient::with_interceptor(
            channel,
            interceptor
        ));
        let (up, up_rx) = mpsc::channel(256);
        let mut open = self.open.clone();
        open.resume_secret = self
            .resume_secret
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        up.send(message(driver_message::Body::Open(open)))
            .await
            .map_err(|_| Error::Closed)?;
        let mut down = driver
            .session(tokio_stream::wrappers::ReceiverStream::new(up_rx))
            .await
            .map_err(|s| self.refused(&s))?
            .into_inner();
        match down.message().await.map_err(|s| self.refused(&s))? {
            Some(DriverEvent {
                body: Some(driver_event::Body::Opened(opened)),
            }) => {
                if !opened.session_secret.is_empty()
                    && let Ok(mut secret) = self.resume_secret.lock()
                {
                    *secret = opened.session_secret.clone();
                }
                let budget = Budget {
                    tasks: opened.budget_tasks,
                    bytes: opened.budget_bytes,
                };
                Ok((
                    Stream {
                        up,
                        down,
                        blobs,
                        budget,
                    },
                    opened,
                ))
            }
            _ => Err(Error::Refused {
                address: self.address.clone(),
                message: "the scheduler did not confirm the session".into(),
            }),
        }
    }

    fn refused(&self, status: &tonic::Status) -> Error {
        Error::Refused {
            address: self.address.clone(),
            message: status.message().to_owned(),
        }
    }
}

/// Tasks whose big argument finished uploading (or failed to), by id.
type Uploaded = (u64, Result<(), String>);

/// What one session's thread keeps: its tasks, and where the uploads of big arguments report.
struct State {
    pending: Pending,
    uploaded_tx: mpsc::UnboundedSender<Uploaded>,
    uploaded: mpsc::UnboundedReceiver<Uploaded>,
    /// The job big values are stored for.
    job_id: String,
    acks: Acks,
    /// Sent tasks cancelled while the scheduler could not be reached: cancelled there too if
    /// the session resumes holding them.
    cancel_later: Vec<u64>,
    capacity: Arc<Capacity>,
}

pub(crate) async fn run(
    mut requests: mpsc::UnboundedReceiver<Request>,
    mut stream: Stream,
    opener: Opener,
    lone_wait: Arc<LoneWait>,
    capacity: Arc<Capacity>,
) {
    let (uploaded_tx, uploaded) = mpsc::unbounded_channel();
    let mut state = State {
        pending: Pending::new(stream.budget),
        uploaded_tx,
        uploaded,
        job_id: opener.open.session_id.clone(),
        acks: Acks::default(),
        cancel_later: Vec::new(),
        capacity,
    };
    loop {
        let lost = match serve(&mut requests, &mut stream, &mut state, &lone_wait).await {
            None => return, // the program is done with the cluster
            Some(lost) => lost,
        };
        if opener.give_up_after.is_zero() {
            state.pending.fail_all(&lost);
            refuse_rest(&mut requests, &lost);
            return;
        }
        warn!(
            "{lost}; reconnecting to the scheduler at {}",
            opener.address
        );
        match reopen(&opener, &mut requests, &mut state).await {
            Some((fresh, opened)) => {
                stream = fresh;
                state.pending.set_budget(stream.budget);
                state
                    .capacity
                    .set(opened.cpu_slots, opened.gpu_slots, opened.agents);
                let cancel_later = std::mem::take(&mut state.cancel_later);
                // What was sent, has no result and is unknown to the scheduler goes again;
                // then what waited meanwhile. A resumed session replays the results this
                // driver may have missed right behind its confirmation.
                let mut specs = state.pending.sent();
                let mut cancels = Vec::new();
                if opened.resumed {
                    let known: HashSet<u64> = opened.known_task_ids.into_iter().collect();
                    specs.retain(|s| !known.contains(&s.task_id));
                    cancels = cancel_later
                        .into_iter()
                        .filter(|id| known.contains(id))
                        .collect();
                } else {
                    // A new session (the scheduler restarted): deliveries count anew.
                    state.acks = Acks::default();
                }
                let again = specs.len();
                specs.extend(state.pending.admit());
                warn!(
                    "session {} at {}; submitting the {again} tasks without a result it does not hold again",
                    if opened.resumed {
                        "resumed"
                    } else {
                        "opened anew"
                    },
                    opener.address,
                );
                if !cancels.is_empty() {
                    let cancel = message(driver_message::Body::Cancel(CancelTasks {
                        task_ids: cancels,
                    }));
                    if stream.up.send(cancel).await.is_err() {
                        continue;
                    }
                }
                if send_batches(&stream.up, specs, &mut state.acks)
                    .await
                    .is_err()
                {
                    continue;
                }
            }
            None => {
                let why = format!(
                    "the scheduler at {} could not be reached for {:?}: {lost}",
                    opener.address, opener.give_up_after
                );
                state.pending.fail_all(&why);
                refuse_rest(&mut requests, &why);
                return;
            }
        }
    }
}

/// Serves one stream until it breaks (`Some(why)`) or the program drops the cluster (`None`).
async fn serve(
    requests: &mut mpsc::UnboundedReceiver<Request>,
    stream: &mut Stream,
    state: &mut State,
    lone_wait: &LoneWait,
) -> Option<String> {
    let closed = || Some("the stream to the scheduler closed".to_owned());
    let mut ack_at: Option<tokio::time::Instant> = None;
    loop {
        let request = tokio::select! {
            request = requests.recv() => request,
            Some((id, result)) = state.uploaded.recv() => {
                state.pending.uploaded(id, result);
                if send_batches(&stream.up, state.pending.admit(), &mut state.acks).await.is_err() {
                    return closed();
                }
                continue;
            }
            () = tokio::time::sleep_until(ack_at.unwrap_or_else(tokio::time::Instant::now)), if ack_at.is_some() => {
                ack_at = None;
                let through = state.acks.take();
                if through > 0 && stream.up.send(message(driver_message::Body::Ack(pb::Ack { through }))).await.is_err() {
                    return closed();
                }
                continue;
            }
            event = stream.down.message() => match event {
                Ok(Some(DriverEvent { body: Some(body) })) => {
                    deliver(body, state, &stream.blobs);
                    // Results gave back their share of the budget: what waited may go, and
                    // takes their acknowledgement along.
                    let ready = state.pending.admit();
                    if !ready.is_empty() && send_batches(&stream.up, ready, &mut state.acks).await.is_err() {
                        return closed();
                    }
                    if state.acks.due() && ack_at.is_none() {
                        ack_at = Some(tokio::time::Instant::now() + ACK_DELAY);
                    }
                    let linger = lone_wait.linger();
                    if !state.pending.is_empty() || linger.is_zero() {
                        continue;
                    }
                    match next_soon(requests, linger) {
                        Some(request) => request,
                        None => continue,
                    }
                }
                Ok(Some(DriverEvent { body: None })) => continue,
                Ok(None) => return Some("the scheduler closed the session".to_owned()),
                Err(status) => return Some(format!("the session with the scheduler broke: {}", status.message())),
            },
        };
        let Some(request) = request else {
            close(stream, Vec::new(), &mut state.acks).await;
            return None;
        };
        if let Some(ended) = forward(request, requests, stream, state).await {
            return ended;
        }
    }
}

/// Takes a submission into `state`: a big argument starts its upload to the blob store (the
/// task waits for it), any other task waits for its turn in the budget.
fn take(submission: Submission, state: &mut State, blobs: &BlobClient) {
    let Submission {
        spec,
        route,
        upload,
    } = submission;
    let Some((data, turn)) = upload else {
        state.pending.add(spec, route, false);
        return;
    };
    let (id, blob) = (spec.task_id, spec.payload_blob.clone().unwrap_or_default());
    state.pending.add(spec, route, true);
    let mut blobs = blobs.clone();
    let done = state.uploaded_tx.clone();
    let job_id = state.job_id.clone();
    tokio::spawn(async move {
        let result = ladle_common::blobs::upload(&mut blobs, &blob, data, &job_id)
            .await
            .map_err(|e| format!("the task's argument could not be stored: {e}"));
        drop(turn);
        let _ = done.send((id, result));
    });
}

/// The next request, if the program makes one within `linger` of its last result arriving.
///
/// A program that awaits its tasks one at a time submits the next a few microseconds after the
/// last result reached it. This thread, still awake, then sends it on at once; asleep, it would
/// first have to be woken, which on a virtual machine whose idle CPUs halt costs more than the
/// rest of a short task's round trip. (`Some(None)`: the program dropped the cluster.)
fn next_soon(
    requests: &mut mpsc::UnboundedReceiver<Request>,
    linger: Duration,
) -> Option<Option<Request>> {
    let until = Instant::now() + linger;
    loop {
        match requests.try_recv() {
            Ok(request) => return Some(Some(request)),
            Err(mpsc::error::TryRecvError::Disconnected) => return Some(None),
            Err(mpsc::error::TryRecvError::Empty) if Instant::now() >= until => return None,
            Err(mpsc::error::TryRecvError::Empty) => std::hint::spin_loop(),
        }
    }
}

/// Takes `first` and whatever other requests are already queued behind it, and sends what
/// the budget admits, in batches. `Some(ended)` when the session is over: the stream broke
/// (`Some(why)`), or the program said goodbye (`None`).
async fn forward(
    first: Request,
    requests: &mut mpsc::UnboundedReceiver<Request>,
    stream: &mut Stream,
    state: &mut State,
) -> Option<Option<String>> {
    let closed = || Some(Some("the stream to the scheduler closed".to_owned()));
    let mut next = Some(first);
    while let Some(request) = next.take() {
        match request {
            Request::Submit(tasks) => {
                for submission in tasks {
                    take(submission, state, &stream.blobs);
                }
            }
            Request::Close(closing) => {
                let last = state.pending.admit();
                close(stream, last, &mut state.acks).await;
                drop(closing);
                return Some(None);
            }
            Request::Cancel(task_ids) => {
                // Submissions before the cancel go first, or it would miss them.
                if send_batches(&stream.up, state.pending.admit(), &mut state.acks)
                    .await
                    .is_err()
                {
                    return closed();
                }
                let task_ids = state.pending.cancel(task_ids, "cancelled by the driver");
                if !task_ids.is_empty() {
                    let cancel = message(driver_message::Body::Cancel(CancelTasks { task_ids }));
                    if stream.up.send(cancel).await.is_err() {
                        return closed();
                    }
                }
            }
        }
        next = requests.try_recv().ok();
    }
    if send_batches(&stream.up, state.pending.admit(), &mut state.acks)
        .await
        .is_err()
    {
        return closed();
    }
    None
}

/// Sends `last` (submissions before the goodbye go first: their futures may be held still, and
/// fail as disconnected once it is said), tells the scheduler the session is over, and waits for
/// it to end the stream: the goodbye has then arrived, whatever happens to this process next.
/// All of it within [`CLOSE_WAIT`].
async fn close(stream: &mut Stream, last: Vec<pb::TaskSpec>, acks: &mut Acks) {
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        if send_batches(&stream.up, last, acks).await.is_err() {
            return;
        }
        let goodbye = message(driver_message::Body::Close(CloseSession {}));
        if stream.up.send(goodbye).await.is_ok() {
            while let Ok(Some(_)) = stream.down.message().await {}
        }
    })
    .await;
}

/// Tries to open the session again, with backoff, until `give_up_after`. Meanwhile new
/// submissions wait in `pending`, and cancels are answered here.
async fn reopen(
    opener: &Opener,
    requests: &mut mpsc::UnboundedReceiver<Request>,
    state: &mut State,
) -> Option<(Stream, SessionOpened)> {
    let deadline = Instant::now() + opener.give_up_after;
    let mut delay = Duration::from_millis(100);
    loop {
        match opener.open().await {
            Ok(opened) => return Some(opened),
            Err(err) => debug!("reconnecting: {err}"),
        }
        let pause = tokio::time::sleep(delay);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                request = requests.recv() => match request {
                    None | Some(Request::Close(_)) => return None,
                    Some(Request::Submit(tasks)) => {
                        for submission in tasks {
                            take(submission, state, &opener_blobs(opener).await);
                        }
                    }
                    Some(Request::Cancel(ids)) => {
                        // Answered here; a resumed session that still holds them is told.
                        let sent = state.pending.cancel(ids, "cancelled by the driver");
                        for id in sent {
                            if let Some(route) = state.pending.finish(id) {
                                route(failed(ErrorKind::Cancelled, "cancelled by the driver".into()));
                            }
                            state.cancel_later.push(id);
                        }
                    }
                },
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// A blob client for uploads made while the session is being opened again: a channel that
/// connects when first used, so that the upload goes once the scheduler is back.
async fn opener_blobs(opener: &Opener) -> BlobClient {
    let channel = match client::endpoint(&opener.address, opener.auth.tls.as_ref()).ok() {
        Some(endpoint) => endpoint.connect_lazy(),
        None => tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy(),
    };
    ladle_common::blobs::client(channel, opener.auth.interceptor())
}

/// Sends tasks in batches cut by the one contract of `ladle_common::limits`.
/// The first batch carries the acknowledgement of the results received so far.
async fn send_batches(
    up: &mpsc::Sender<DriverMessage>,
    specs: Vec<pb::TaskSpec>,
    acks: &mut Acks,
) -> Result<(), ()> {
    for tasks in limits::batches(specs, usize::MAX, |s| s.payload.len()) {
        let acked = acks.take();
        up.send(message(driver_message::Body::Submit(SubmitTasks {
            tasks,
            acked,
        })))
        .await
        .map_err(|_| ())?;
    }
    Ok(())
}

fn failed(kind: ErrorKind, message: String) -> RawResult {
    RawResult::failed(kind, message)
}

/// Answers whatever is still waiting to be submitted, and all that comes later, so that no
/// future waits on a session that has ended.
fn refuse_rest(requests: &mut mpsc::UnboundedReceiver<Request>, why: &str) {
    requests.close();
    while let Ok(request) = requests.try_recv() {
        if let Request::Submit(tasks) = request {
            for submission in tasks {
                (submission.route)(failed(ErrorKind::Disconnected, why.to_owned()));
            }
        }
    }
}

fn message(body: driver_message::Body) -> DriverMessage {
    DriverMessage { body: Some(body) }
}

/// Hands results to their futures (a big one is fetched from the blob store first, off this
/// loop), and notes them for acknowledgement. A result this driver has already had (sent again
/// by a resumed session) is dropped here.
fn deliver(body: driver_event::Body, state: &mut State, blobs: &BlobClient) {
    match body {
        driver_event::Body::Results(results) => {
            for result in results.results {
                state.acks.receive(result.seq);
                let Some(route) = state.pending.finish(result.task_id) else {
                    state.capacity.duplicates.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let (mut raw, stored) = RawResult::from_pb(result);
                match stored {
                    Some(blob) => {
                        let mut blobs = blobs.clone();
                        tokio::spawn(async move {
                            raw.outcome = ladle_common::blobs::fetch(
                                &mut blobs,
                                &blob.sha256,
                                Some(blob.size),
                            )
                            .await
                            .map_err(|e| {
                                (
                                    ErrorKind::BadData,
                                    format!("cannot fetch the task's result: {e}"),
                                )
                            });
                            route(raw);
                        });
                    }
                    None => route(raw),
                }
            }
        }
        driver_event::Body::Output(output) => {
            // The agent may be hostile: nothing it sends may drive the terminal.
            let agent = sanitize_line(&output.agent);
            for line in output.lines {
                let text = sanitize_line(&line.text);
                if line.stderr {
                    eprintln!("[{agent}] {text}");
                } else {
                    println!("[{agent}] {text}");
                }
            }
        }
        driver_event::Body::Notice(notice) => eprintln!("ladle: {}", sanitize_line(&notice.text)),
        driver_event::Body::Capacity(c) => state.capacity.set(c.cpu_slots, c.gpu_slots, c.agents),
        driver_event::Body::Opened(_) => {}
    }
}

pub(crate) fn kind(kind: i32) -> ErrorKind {
    match pb::FailureKind::try_from(kind) {
        Ok(pb::FailureKind::UnknownTask) => ErrorKind::UnknownTask,
        Ok(pb::FailureKind::WorkerCrashed) => ErrorKind::WorkerCrashed,
        Ok(pb::FailureKind::WorkerStart) => ErrorKind::WorkerStart,
        Ok(pb::FailureKind::Cancelled) => ErrorKind::Cancelled,
        Ok(pb::FailureKind::TimedOut) => ErrorKind::TimedOut,
        Ok(pb::FailureKind::BadInput) => ErrorKind::BadData,
        Ok(pb::FailureKind::TooLarge) => ErrorKind::TooLarge,
        Ok(pb::FailureKind::Refused) => ErrorKind::Refused,
        _ => ErrorKind::Failed,
    }
}
