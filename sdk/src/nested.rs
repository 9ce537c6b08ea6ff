//! Tasks that submit tasks: inside a task, [`cluster`] is a handle on the job that runs it, with
//! the whole API. Its submissions go through the agent (the worker holds no credential), as
//! children of the running task, numbered in the order the task submits them: a parent that
//! runs again gets the results of the children that finished instead of running them again.
//! [`block_on`] waits for them, and gives the task's slot back while it waits.

use std::{
    cell::RefCell,
    collections::HashMap,
    future::Future,
    hash::{Hash, Hasher},
    io::{BufWriter, Write},
    os::unix::net::UnixStream,
    pin::pin,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use ladle_common::worker_protocol::{self as wp, ByteBlock, FromWorker, WorkerChild};
use ladle_proto::v1 as pb;
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use crate::{
    Cluster,
    cluster::session::{self, RawResult, Request, Route},
    error::Error,
    pool::Pool,
    task::ErrorKind,
};

/// The worker's side of the agent's socket, shared by its task threads and the nested sessions.
pub(crate) struct Link {
    out: Mutex<Out>,
    pub(crate) pool: Arc<Pool>,
    /// Where each child's result goes, by parent and ordinal, with the run of the parent that
    /// submitted it (a parent that runs again in this process takes its ordinals over).
    routes: Mutex<HashMap<(u64, u32), (u64, Route)>>,
    uploads: Mutex<HashMap<u64, oneshot::Sender<Result<String, String>>>>,
    next: AtomicU64,
    runtime: OnceLock<Result<tokio::runtime::Runtime, String>>,
    /// The largest value the cluster carries.
    max_value: u64,
}

/// The socket's writing end, and since when what it holds has waited to be flushed.
struct Out {
    writer: BufWriter<UnixStream>,
    held_since: Option<Instant>,
}

/// The longest a finished task's result waits in the worker for others to travel with it.
const RESULT_HOLD: Duration = Duration::from_micros(200);

/// What a task thread knows of the task it runs.
struct Current {
    task: u64,
    link: Arc<Link>,
    /// The handle its code asked for, made on the first ask.
    cluster: Option<Cluster>,
}

thread_local! {
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Link {
    /// The link of a worker serving the agent on `stream`.
    pub(crate) fn new(stream: UnixStream, pool: Arc<Pool>, max_value: u64) -> Arc<Self> {
        Arc::new(Link {
            out: Mutex::new(Out {
                writer: BufWriter::with_capacity(1 << 16, stream),
                held_since: None,
            }),
            pool,
            routes: Mutex::default(),
            uploads: Mutex::default(),
            next: AtomicU64::new(1),
            runtime: OnceLock::new(),
            max_value,
        })
    }

    /// Writes a frame to the agent; flushed when `flush` (the caller knows whether more follow).
    pub(crate) fn send(&self, frame: &FromWorker, flush: bool) -> std::io::Result<()> {
        let mut out = lock(&self.out);
        wp::write_frame(&mut out.writer, frame)?;
        if flush {
            out.held_since = None;
            out.writer.flush()
        } else {
            out.held_since.get_or_insert_with(Instant::now);
            Ok(())
        }
    }

    /// Writes a finished task's result, which waits for others to travel with it only while
    /// the next task to run is of the same function and, judged by this one, the oldest result
    /// waiting would wait less than [`RESULT_HOLD`]: tiny tasks' results then travel in batches,
    /// and a result never waits for a long task behind it, nor for one of another function whose
    /// length this one says nothing about. (A task that waits for children flushes, too.)
    pub(crate) fn send_result(
        &self,
        done: &FromWorker,
        function: &str,
        took: Duration,
    ) -> std::io::Result<()> {
        let mut out = lock(&self.out);
        wp::write_frame(&mut out.writer, done)?;
        let waited = out
            .held_since
            .map_or(Duration::ZERO, |since| since.elapsed());
        if waited + took < RESULT_HOLD && self.pool.next_is(function) {
            out.held_since.get_or_insert_with(Instant::now);
            return Ok(());
        }
        out.held_since = None;
        out.writer.flush()
    }

    /// The runtime that nested sessions and maps run on, started the first time a task asks
    /// for the cluster.
    fn runtime(&self) -> Result<&tokio::runtime::Runtime, Error> {
        self.runtime
            .get_or_init(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("ladle-nested")
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| Error::IoThread(std::io::Error::other(e.clone())))
    }

    /// Results of children of `parent`, from the agent.
    pub(crate) fn child_results(&self, parent: u64, results: Vec<ByteBlock>) {
        for block in results {
            let Ok(result) = pb::TaskResult::decode(block.0.as_slice()) else {
                continue;
            };
            let Ok(ordinal) = u32::try_from(result.task_id) else {
                continue;
            };
            let Some((_, route)) = lock(&self.routes).remove(&(parent, ordinal)) else {
                continue;
            };
            // The agent fetched any stored output: one left stored fails as not fetched.
            let (raw, _) = RawResult::from_pb(result);
            route(raw);
        }
    }

    /// The agent's answer to an upload.
    pub(crate) fn uploaded(&self, request: u64, result: Result<String, String>) {
        if let Some(tx) = lock(&self.uploads).remove(&request) {
            let _ = tx.send(result);
        }
    }

    /// Stores `data` in the blob store for the job, through the agent; returns its hash.
    pub(crate) async fn upload(&self, data: Vec<u8>) -> Result<String, String> {
        let request = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.uploads).insert(request, tx);
        self.send(&FromWorker::Upload { request, data }, true)
            .map_err(|e| e.to_string())?;
        rx.await
            .map_err(|_| "the worker's link to its agent closed".to_owned())?
    }
}

/// Runs `body` as task `task` on this thread: inside it, [`cluster`] is the task's handle on
/// its job. The handle goes when the task ends.
pub(crate) fn run_as<T>(task: u64, link: &Arc<Link>, body: impl FnOnce() -> T) -> T {
    CURRENT.with(|c| {
        *c.borrow_mut() = Some(Current {
            task,
            link: link.clone(),
            cluster: None,
        })
    });
    let result = body();
    let current = CURRENT.with(|c| c.borrow_mut().take());
    // The run is over: so is its nested session, even if its code kept a handle somewhere
    // (what it submits then fails as closed, and what it waits for as disconnected).
    if let Some(cluster) = current.and_then(|c| c.cluster) {
        cluster.close_nested();
    }
    result
}

/// The task running on this thread, if any, and its worker's link.
fn current() -> Option<(u64, Arc<Link>)> {
    CURRENT.with(|c| c.borrow().as_ref().map(|c| (c.task, c.link.clone())))
}

/// Inside a task: a handle on the job that runs it. Its tasks are the job's (they show in
/// `ladle-scheduler jobs`, share its fair share and go with it when it is cancelled), and
/// children of this task: they are cancelled when it ends, and a run of this task that follows
/// a lost agent gets the results of those that finished. Wait for them with [`block_on`], which
/// gives this task's slot to other tasks meanwhile: a recursion deeper than the cluster's slots
/// does not deadlock.
///
/// ```no_run
/// #[ladle::task]
/// fn tree_sum(depth: u32) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
///     if depth == 0 {
///         return Ok(1);
///     }
///     let cluster = ladle::cluster()?;
///     let left = cluster.submit(tree_sum, depth - 1)?;
///     let right = cluster.submit(tree_sum, depth - 1)?;
///     let (left, right) = ladle::block_on(async { (left.await, right.await) });
///     Ok(left? + right? + 1)
/// }
/// # fn main() {}
/// ```
///
/// Call it on the task's own thread (the handle may then go to any thread). Outside a task (in
/// the driver) it fails with [`Error::NotInTask`].
pub fn cluster() -> Result<Cluster, Error> {
    let (task, link) = current().ok_or(Error::NotInTask)?;
    if let Some(cluster) = CURRENT.with(|c| c.borrow().as_ref().and_then(|c| c.cluster.clone())) {
        return Ok(cluster);
    }
    let runtime = link.runtime()?;
    let (requests, requests_rx) = mpsc::unbounded_channel();
    let run = Run {
        link: link.clone(),
        parent: task,
        run: link.next.fetch_add(1, Ordering::Relaxed),
        closed: Arc::default(),
    };
    runtime.spawn(serve(run.clone(), requests_rx));
    let cluster = Cluster::nested(requests, runtime.handle().clone(), run, link.max_value);
    CURRENT.with(|c| {
        if let Some(current) = c.borrow_mut().as_mut() {
            current.cluster = Some(cluster.clone());
        }
    });
    Ok(cluster)
}

/// Whether this process is a worker running a task on this thread.
pub(crate) fn inside_task() -> bool {
    current().is_some()
}

/// Waits for `future` on this thread: inside a task, the task gives its slot back while the
/// future is not ready (the agent may run another task there meanwhile) and takes it again when
/// it is. Outside a task it simply waits. Do not call it from async code (an `async fn`, a
/// future): there, `.await`.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let (task, link) = match current() {
        Some((task, link)) => (Some(task), Some(link)),
        None => (None, None),
    };
    let handle = link
        .as_ref()
        .and_then(|l| l.runtime().ok())
        .map(|r| r.handle().clone());
    let _guard = handle.as_ref().map(|h| h.enter());
    let mut future = pin!(future);
    let waker = waker();
    let mut cx = Context::from_waker(&waker);
    let mut wait: Option<Waiting> = None;
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            // Dropping `wait` takes the slot again.
            return output;
        }
        if wait.is_none()
            && let (Some(link), Some(task)) = (&link, task)
        {
            let _ = link.send(
                &FromWorker::Waiting {
                    task,
                    waiting: true,
                },
                true,
            );
            link.pool.blocked();
            wait = Some(Waiting {
                link: link.clone(),
                task,
            });
        }
        std::thread::park();
    }
}

/// A task waiting in [`block_on`]: it takes its slot again when this is dropped, whether the
/// wait ended or the future it polled panicked.
struct Waiting {
    link: Arc<Link>,
    task: u64,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.link.pool.resumed();
        let _ = self.link.send(
            &FromWorker::Waiting {
                task: self.task,
                waiting: false,
            },
            true,
        );
    }
}

/// A waker that unparks this thread.
fn waker() -> std::task::Waker {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    std::task::Waker::from(Arc::new(Unpark(std::thread::current())))
}

/// One run of a task, whose submissions are its children: they go to the agent from the
/// submitting thread.
#[derive(Clone)]
pub(crate) struct Run {
    link: Arc<Link>,
    parent: u64,
    run: u64,
    /// The run is over: what it submits from now on fails.
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl Run {
    /// The run is over: what it submits from now on fails.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub(crate) fn link(&self) -> Arc<Link> {
        self.link.clone()
    }

    /// Sends one child to the agent, its route noted first.
    pub(crate) fn submit(&self, submission: session::Submission) -> Result<(), Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let Some((child, route)) = child_of(submission) else {
            return Ok(());
        };
        lock(&self.link.routes).insert((self.parent, child.ordinal), (self.run, route));
        let frame = FromWorker::Submit {
            parent: self.parent,
            children: vec![child],
        };
        self.link.send(&frame, true).map_err(|_| Error::Closed)
    }
}

/// A submission as the agent takes it, and where its result goes; `None` (answered) when it
/// cannot be one.
fn child_of(submission: session::Submission) -> Option<(WorkerChild, Route)> {
    let Ok(ordinal) = u32::try_from(submission.spec.task_id) else {
        (submission.route)(RawResult::failed(
            ErrorKind::Refused,
            "a task may submit at most 2^32 tasks".into(),
        ));
        return None;
    };
    let mut spec = submission.spec;
    // A big argument goes inline to the agent, which stores it.
    if let Some((data, _turn)) = submission.upload {
        spec.payload = data;
        spec.payload_blob = None;
    }
    let child = WorkerChild {
        ordinal,
        digest: digest(&spec),
        spec: ByteBlock(spec.encode_to_vec()),
    };
    Some((child, submission.route))
}

/// The nested session of one run of a task: its cancels go to the agent (its submissions go
/// from the submitting thread, [`Run::submit`]); it ends with the run.
async fn serve(run: Run, mut requests: mpsc::UnboundedReceiver<Request>) {
    while let Some(request) = requests.recv().await {
        match request {
            Request::Submit(submissions) => {
                for submission in submissions {
                    // A submission that fails drops its route: its future fails as disconnected.
                    let _ = run.submit(submission);
                }
            }
            Request::Cancel(ids) => {
                let ordinals = ids
                    .into_iter()
                    .filter_map(|i| u32::try_from(i).ok())
                    .collect();
                let frame = FromWorker::CancelChildren {
                    parent: run.parent,
                    ordinals,
                };
                let _ = run.link.send(&frame, true);
            }
            Request::Close(_) => break,
        }
    }
    // The run is over: its children's futures fail as disconnected (the scheduler cancels the
    // children themselves when the task ends).
    run.close();
    lock(&run.link.routes).retain(|(p, _), (r, _)| *p != run.parent || *r != run.run);
}

/// What a child is: its function, argument and options, for the scheduler to tell a re-run
/// parent's child from another at the same ordinal. The same program computes it the same way
/// on every machine (SipHash with fixed keys).
fn digest(spec: &pb::TaskSpec) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    spec.function.hash(&mut h);
    spec.payload.hash(&mut h);
    spec.reducer.hash(&mut h);
    spec.items.hash(&mut h);
    spec.shared.hash(&mut h);
    h.finish()
}
