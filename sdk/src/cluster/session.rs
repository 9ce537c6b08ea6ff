//! The driver's stream to the scheduler: submissions go up in batches, results come down and
//! are handed to whoever waits for them, and the tasks' output is printed here.
//!
//! Every task without a result is kept here with its spec. When the stream breaks (the
//! scheduler restarted, the network blipped), the session is opened again under the same id,
//! and whatever still has no result is submitted again: the scheduler ignores what it already
//! holds and runs the rest, so each future still completes once, with no code in the program.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use bytes::Bytes;
use ladle_common::{
    client::{self, TokenInterceptor},
    token::Token,
};
use ladle_proto::v1::{
    self as pb, BlobRef, CancelTasks, CloseSession, DriverEvent, DriverMessage, OpenSession,
    SessionOpened, SubmitTasks, blob_service_client::BlobServiceClient, driver_event,
    driver_message, driver_service_client::DriverServiceClient, task_result,
};
use tokio::sync::mpsc;
use tonic::Streaming;
use tracing::{debug, warn};

use super::executable;
use crate::{error::Error, lone_wait::LoneWait, task::ErrorKind};

/// A result as it arrives, before anyone decodes it.
pub(crate) struct RawResult {
    pub outcome: Result<Bytes, (ErrorKind, String)>,
    pub agent: String,
    pub attempt: u32,
    pub run_ns: u64,
}

/// Where a result goes.
pub(crate) type Route = Box<dyn FnOnce(RawResult) + Send>;

pub(crate) enum Request {
    Submit(Vec<(pb::TaskSpec, Route)>),
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

/// A batch on the wire stays around this size, so that results keep flowing between batches.
const BATCH_BYTES: usize = 4 << 20;

/// How to open the session (again): the scheduler, the program and the session's identity.
pub(crate) struct Opener {
    pub address: String,
    pub token: Option<Token>,
    pub executable: PathBuf,
    pub blob: BlobRef,
    pub open: OpenSession,
    /// How long to keep trying after the stream breaks; zero never reconnects.
    pub give_up_after: Duration,
}

pub(crate) struct Stream {
    up: mpsc::Sender<DriverMessage>,
    down: Streaming<DriverEvent>,
}

impl Opener {
    /// Uploads the executable if the scheduler lacks it, and opens the session.
    pub(crate) async fn open(&self) -> Result<(Stream, SessionOpened), Error> {
        let channel = client::connect(&self.address).await?;
        let interceptor = TokenInterceptor::new(self.token.as_ref());
        let mut blobs = BlobServiceClient::with_interceptor(channel.clone(), interceptor.clone());
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
            executable::upload(
                &mut blobs,
                &self.blob,
                Bytes::from(data),
                "the program's executable",
            )
            .await?;
        }
        let mut driver = DriverServiceClient::with_interceptor(channel, interceptor)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let (up, up_rx) = mpsc::channel(256);
        up.send(message(driver_message::Body::Open(self.open.clone())))
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
            }) => Ok((Stream { up, down }, opened)),
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

/// Tasks without a result: their spec (to submit again) and where their result goes.
type Pending = HashMap<u64, (pb::TaskSpec, Route)>;

pub(crate) async fn run(
    mut requests: mpsc::UnboundedReceiver<Request>,
    mut stream: Stream,
    opener: Opener,
    lone_wait: Arc<LoneWait>,
) {
    let mut pending: Pending = HashMap::new();
    loop {
        let lost = match serve(&mut requests, &mut stream, &mut pending, &lone_wait).await {
            None => return, // the program is done with the cluster
            Some(lost) => lost,
        };
        if opener.give_up_after.is_zero() {
            fail_all(&mut pending, &lost);
            refuse_rest(&mut requests, &lost);
            return;
        }
        warn!(
            "{lost}; reconnecting to the scheduler at {}",
            opener.address
        );
        match reopen(&opener, &mut requests, &mut pending).await {
            Some(fresh) => {
                stream = fresh;
                let specs: Vec<pb::TaskSpec> =
                    pending.values().map(|(spec, _)| spec.clone()).collect();
                warn!(
                    "session reopened at {}; submitting the {} tasks without a result again",
                    opener.address,
                    specs.len()
                );
                if send_batches(&stream.up, specs).await.is_err() {
                    continue;
                }
            }
            None => {
                let why = format!(
                    "the scheduler at {} could not be reached for {:?}: {lost}",
                    opener.address, opener.give_up_after
                );
                fail_all(&mut pending, &why);
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
    pending: &mut Pending,
    lone_wait: &LoneWait,
) -> Option<String> {
    loop {
        let request = tokio::select! {
            request = requests.recv() => request,
            event = stream.down.message() => match event {
                Ok(Some(DriverEvent { body: Some(body) })) => {
                    let again = deliver(body, pending);
                    if !again.is_empty() && send_batches(&stream.up, again).await.is_err() {
                        return Some("the stream to the scheduler closed".into());
                    }
                    let linger = lone_wait.linger();
                    if !pending.is_empty() || linger.is_zero() {
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
            close(stream, Vec::new()).await;
            return None;
        };
        if let Some(ended) = forward(request, requests, stream, pending).await {
            return ended;
        }
    }
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

/// Sends `first` and whatever other requests are already queued behind it, submissions in
/// batches. `Some(ended)` when the session is over: the stream broke (`Some(why)`), or the
/// program said goodbye (`None`).
async fn forward(
    first: Request,
    requests: &mut mpsc::UnboundedReceiver<Request>,
    stream: &mut Stream,
    pending: &mut Pending,
) -> Option<Option<String>> {
    let closed = || Some(Some("the stream to the scheduler closed".to_owned()));
    let mut batch = Vec::new();
    let mut next = Some(first);
    while let Some(request) = next.take() {
        match request {
            Request::Submit(tasks) => {
                for (spec, route) in tasks {
                    batch.push(spec.clone());
                    pending.insert(spec.task_id, (spec, route));
                }
            }
            Request::Close(closing) => {
                close(stream, std::mem::take(&mut batch)).await;
                drop(closing);
                return Some(None);
            }
            Request::Cancel(task_ids) => {
                // A cancelled task is never run again, even if its failure is already on its
                // way here.
                for id in &task_ids {
                    if let Some((spec, _)) = pending.get_mut(id) {
                        spec.retries = 0;
                    }
                }
                // Submissions before the cancel go first, or it would miss them.
                if send_batches(&stream.up, std::mem::take(&mut batch))
                    .await
                    .is_err()
                {
                    return closed();
                }
                let cancel = message(driver_message::Body::Cancel(CancelTasks { task_ids }));
                if stream.up.send(cancel).await.is_err() {
                    return closed();
                }
            }
        }
        next = requests.try_recv().ok();
    }
    if send_batches(&stream.up, batch).await.is_err() {
        return closed();
    }
    None
}

/// Sends `last` (submissions before the goodbye go first: their futures may be held still, and
/// fail as disconnected once it is said), tells the scheduler the session is over, and waits for
/// it to end the stream: the goodbye has then arrived, whatever happens to this process next.
/// All of it within [`CLOSE_WAIT`].
async fn close(stream: &mut Stream, last: Vec<pb::TaskSpec>) {
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        if send_batches(&stream.up, last).await.is_err() {
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
    pending: &mut Pending,
) -> Option<Stream> {
    let deadline = Instant::now() + opener.give_up_after;
    let mut delay = Duration::from_millis(100);
    loop {
        match opener.open().await {
            Ok((stream, _)) => return Some(stream),
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
                        for (spec, route) in tasks {
                            pending.insert(spec.task_id, (spec, route));
                        }
                    }
                    Some(Request::Cancel(ids)) => {
                        for id in ids {
                            if let Some((_, route)) = pending.remove(&id) {
                                route(failed(ErrorKind::Cancelled, "cancelled by the driver".into()));
                            }
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

async fn send_batches(
    up: &mpsc::Sender<DriverMessage>,
    specs: Vec<pb::TaskSpec>,
) -> Result<(), ()> {
    let mut batch = Vec::new();
    let mut size = 0usize;
    for spec in specs {
        size += spec.payload.len() + 64;
        batch.push(spec);
        if size >= BATCH_BYTES {
            let tasks = std::mem::take(&mut batch);
            size = 0;
            up.send(message(driver_message::Body::Submit(SubmitTasks { tasks })))
                .await
                .map_err(|_| ())?;
        }
    }
    if !batch.is_empty() {
        up.send(message(driver_message::Body::Submit(SubmitTasks {
            tasks: batch,
        })))
        .await
        .map_err(|_| ())?;
    }
    Ok(())
}

fn failed(kind: ErrorKind, message: String) -> RawResult {
    RawResult {
        outcome: Err((kind, message)),
        agent: String::new(),
        attempt: 0,
        run_ns: 0,
    }
}

fn fail_all(pending: &mut Pending, why: &str) {
    debug!("{why}");
    for (_, (_, route)) in pending.drain() {
        route(failed(ErrorKind::Disconnected, why.to_owned()));
    }
}

/// Answers whatever is still waiting to be submitted, and all that comes later, so that no
/// future waits on a session that has ended.
fn refuse_rest(requests: &mut mpsc::UnboundedReceiver<Request>, why: &str) {
    requests.close();
    while let Ok(request) = requests.try_recv() {
        if let Request::Submit(tasks) = request {
            for (_, route) in tasks {
                route(failed(ErrorKind::Disconnected, why.to_owned()));
            }
        }
    }
}

fn message(body: driver_message::Body) -> DriverMessage {
    DriverMessage { body: Some(body) }
}

/// Hands results to their futures; returns the tasks to run again (retries).
fn deliver(body: driver_event::Body, pending: &mut Pending) -> Vec<pb::TaskSpec> {
    let mut again = Vec::new();
    match body {
        driver_event::Body::Results(results) => {
            for result in results.results {
                if let Some((spec, _)) = pending.get_mut(&result.task_id)
                    && spec.retries > 0
                    && task_failed(spec, &result.outcome)
                {
                    // The task's own error or panic, and retries are left: the same task again
                    // (the scheduler has forgotten it, so it runs anew).
                    spec.retries -= 1;
                    again.push(spec.clone());
                    continue;
                }
                let Some((_, route)) = pending.remove(&result.task_id) else {
                    continue;
                };
                route(RawResult {
                    outcome: match result.outcome {
                        Some(task_result::Outcome::Output(bytes)) => Ok(bytes),
                        Some(task_result::Outcome::Failure(f)) => Err((kind(f.kind), f.message)),
                        None => Err((ErrorKind::BadData, "the scheduler sent no outcome".into())),
                    },
                    agent: result.agent,
                    attempt: result.attempt,
                    run_ns: result.run_ns,
                });
            }
        }
        driver_event::Body::Output(output) => {
            for line in output.lines {
                if line.stderr {
                    eprintln!("[{}] {}", output.agent, line.text);
                } else {
                    println!("[{}] {}", output.agent, line.text);
                }
            }
        }
        driver_event::Body::Notice(notice) => eprintln!("ladle: {}", notice.text),
        driver_event::Body::Opened(_) => {}
    }
    again
}

/// Whether a single task's own code failed: its one item is an `Err` (postcard: a length of
/// one, then variant 1), or its reduction failed.
fn task_failed(spec: &pb::TaskSpec, outcome: &Option<task_result::Outcome>) -> bool {
    match outcome {
        Some(task_result::Outcome::Output(bytes)) => {
            spec.items == 1
                && spec.reducer.is_empty()
                && bytes.len() >= 2
                && bytes[0] == 1
                && bytes[1] == 1
        }
        Some(task_result::Outcome::Failure(f)) => {
            pb::FailureKind::try_from(f.kind) == Ok(pb::FailureKind::TaskError)
        }
        None => false,
    }
}

fn kind(kind: i32) -> ErrorKind {
    match pb::FailureKind::try_from(kind) {
        Ok(pb::FailureKind::UnknownTask) => ErrorKind::UnknownTask,
        Ok(pb::FailureKind::WorkerCrashed) => ErrorKind::WorkerCrashed,
        Ok(pb::FailureKind::WorkerStart) => ErrorKind::WorkerStart,
        Ok(pb::FailureKind::Cancelled) => ErrorKind::Cancelled,
        Ok(pb::FailureKind::TimedOut) => ErrorKind::TimedOut,
        Ok(pb::FailureKind::BadInput) => ErrorKind::BadData,
        _ => ErrorKind::Failed,
    }
}
