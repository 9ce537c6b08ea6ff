//! Runs the tasks the scheduler assigns: no more at once than the agent's slots, the rest in a
//! short local queue; one worker process per job for CPU tasks, and one per job and GPU for GPU
//! tasks, each owning its device. Results and output lines go back in batches.

pub mod worker;

mod output;
mod worker_env;

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
};

use ladle_common::{
    limits,
    worker_protocol::{self as wp, ToWorker, WorkerFailure, WorkerOutcome},
};
use ladle_proto::v1::{self as pb, agent_task_result::Outcome};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use worker::{Dispatch, JobInfo, Stamped, WorkerCmd, WorkerContext, WorkerEvent};

/// What the session hands the executor.
pub enum Input {
    Assign(pb::Assign),
    Cancel(Vec<u64>),
    /// Give back these tasks (this attempt of each) if they have not been handed to a worker yet.
    Revoke(Vec<pb::TaskAttempt>),
    EndJob(String),
    /// Results of a running task's children.
    ChildResults(pb::ChildResults),
    /// A new stream to the scheduler: whatever was held belongs to the old one.
    Reset,
}

/// What the executor hands the session to send.
pub enum Outgoing {
    Results(pb::AgentResults),
    Output(pb::JobOutput),
    Revoked(pb::Revoked),
    Children(pb::ChildTasks),
    ChildCancel(pb::ChildCancel),
    Waiting(pb::TaskWaiting),
}

#[derive(Clone)]
pub struct ExecutorHandle {
    tx: mpsc::UnboundedSender<Input>,
    busy: Arc<Busy>,
    max_value: Arc<AtomicU64>,
}

/// Slots in use now, for heartbeats.
#[derive(Default)]
struct Busy {
    cpu: AtomicU32,
    gpu: AtomicU32,
}

impl ExecutorHandle {
    pub fn send(&self, input: Input) {
        let _ = self.tx.send(input);
    }

    /// CPU tasks running now.
    pub fn busy(&self) -> u32 {
        self.busy.cpu.load(Ordering::Relaxed)
    }

    /// GPU slots holding a task now.
    pub fn busy_gpus(&self) -> u32 {
        self.busy.gpu.load(Ordering::Relaxed)
    }

    /// The cluster's largest value, as the scheduler said: workers started from now on fail a
    /// larger result rather than send it.
    pub fn set_max_value(&self, bytes: u64) {
        self.max_value.store(bytes, Ordering::Relaxed);
    }
}

/// What the agent runs at once.
pub struct Slots {
    pub cpu: u32,
    /// Ordinals of the GPU slots, one task each.
    pub gpus: Vec<u32>,
}

/// Which of a job's workers runs a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Lane {
    /// The job's worker for CPU tasks.
    Shared,
    /// The job's worker for a task suspected of crashing workers, alone.
    Solo,
    /// The job's worker that owns this GPU.
    Gpu(u32),
}

struct Running {
    job: Arc<str>,
    attempt: u32,
    cancelled: bool,
    lane: Lane,
    timeout: Option<std::time::Duration>,
    /// When a timed task must be done by (set when its worker says it started).
    deadline: Option<tokio::time::Instant>,
    /// Its worker was stopped because the task outlived its timeout.
    timed_out: bool,
    /// It waits for its children: its slot runs other tasks meanwhile.
    waiting: bool,
}

type WorkerKey = (Arc<str>, Lane);

struct Queued {
    job: Arc<str>,
    task: pb::AssignedTask,
}

/// Work handed to a worker ahead of what it runs, so that it never waits for the agent and
/// tiny tasks come back many to a message.
const WORKER_QUEUE: std::time::Duration = std::time::Duration::from_millis(2);

/// The longest a result waits for others to travel with it.
const RESULT_HOLD: std::time::Duration = std::time::Duration::from_micros(200);

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

struct Executor {
    /// Bumped by every reset: workers of an older generation are being killed, and what they
    /// still report is ignored.
    generation: u64,
    /// When the oldest result not yet sent arrived.
    held_since: Option<tokio::time::Instant>,
    slots: u32,
    gpus: Vec<u32>,
    /// Recent run time of a task (moving average), to size what workers are handed.
    task_ns: Option<f64>,
    ctx: Arc<WorkerContext>,
    queue: VecDeque<Queued>,
    running: HashMap<u64, Running>,
    workers: HashMap<WorkerKey, mpsc::UnboundedSender<WorkerCmd>>,
    jobs: HashMap<Arc<str>, Arc<JobInfo>>,
    busy: Arc<Busy>,
    results: Vec<pb::AgentTaskResult>,
    output: HashMap<Arc<str>, Vec<pb::OutputLine>>,
    /// What each job may still print (lines and bytes per second), and what it dropped.
    output_caps: HashMap<Arc<str>, output::Cap>,
    out: mpsc::UnboundedSender<Outgoing>,
}

/// Starts the executor; returns its handle and the stream of messages for the scheduler.
pub fn start(
    slots: Slots,
    agent_name: String,
    cache: crate::blobs::BlobCache,
    run_dir: std::path::PathBuf,
) -> (ExecutorHandle, mpsc::UnboundedReceiver<Outgoing>) {
    let (tx, inputs) = mpsc::unbounded_channel();
    let (out, outgoing) = mpsc::unbounded_channel();
    let (events_tx, events) = mpsc::unbounded_channel();
    let busy = Arc::new(Busy::default());
    let max_value = Arc::new(AtomicU64::new(0));
    let executor = Executor {
        generation: 0,
        held_since: None,
        slots: slots.cpu.max(1),
        gpus: slots.gpus,
        task_ns: None,
        ctx: Arc::new(WorkerContext {
            cache,
            threads: slots.cpu.max(1),
            run_dir,
            events: events_tx,
            agent_name,
            max_value: max_value.clone(),
        }),
        queue: VecDeque::new(),
        running: HashMap::new(),
        workers: HashMap::new(),
        jobs: HashMap::new(),
        busy: busy.clone(),
        results: Vec::new(),
        output: HashMap::new(),
        output_caps: HashMap::new(),
        out,
    };
    tokio::spawn(executor.run(inputs, events));
    (
        ExecutorHandle {
            tx,
            busy,
            max_value,
        },
        outgoing,
    )
}

impl Executor {
    async fn run(
        mut self,
        mut inputs: mpsc::UnboundedReceiver<Input>,
        mut events: mpsc::UnboundedReceiver<Stamped>,
    ) {
        loop {
            let held = self.held_since.map(|since| since + RESULT_HOLD);
            let overdue = self.running.values().filter_map(|r| r.deadline).min();
            // A note of dropped output must reach the driver even if nothing else happens.
            let note = self
                .output_caps
                .values()
                .filter_map(output::Cap::note_due)
                .min();
            let deadline = [held, overdue, note].into_iter().flatten().min();
            tokio::select! {
                input = inputs.recv() => match input {
                    Some(input) => self.input(input),
                    None => return,
                },
                Some(event) = events.recv() => self.event(event),
                () = sleep_until(deadline) => {}
            }
            // Take whatever else is ready before sending, so results travel in batches.
            while let Ok(input) = inputs.try_recv() {
                self.input(input);
            }
            while let Ok(event) = events.try_recv() {
                self.event(event);
            }
            self.stop_overdue();
            self.dispatch();
            if self.should_flush() {
                self.flush();
            } else if self.held_since.is_none() {
                self.held_since = Some(tokio::time::Instant::now());
            }
        }
    }

    /// Results go out at once when nothing else is running (a lone task's latency is never
    /// raised); while more are on their way, they are gathered for up to [`RESULT_HOLD`] or
    /// until half of what the workers hold, so that a stream of tiny tasks costs one message
    /// per batch rather than one per task.
    fn should_flush(&self) -> bool {
        let live = self.running.values().filter(|r| !r.cancelled).count();
        self.results.is_empty()
            || live == 0
            || self.results.len() >= (self.depth() as usize / 2).max(1)
            || self
                .held_since
                .is_some_and(|since| since.elapsed() >= RESULT_HOLD)
    }

    fn input(&mut self, input: Input) {
        match input {
            Input::Assign(assign) => {
                let Some(job) = assign.job else { return };
                let id: Arc<str> = job.id.as_str().into();
                self.jobs.entry(id.clone()).or_insert_with(|| {
                    Arc::new(JobInfo {
                        id: id.clone(),
                        name: job.name.clone(),
                        executable: job.executable.map(|e| e.sha256).unwrap_or_default(),
                    })
                });
                for task in assign.tasks {
                    self.queue.push_back(Queued {
                        job: id.clone(),
                        task,
                    });
                }
            }
            Input::Cancel(refs) => {
                let mut jobs = Vec::new();
                for task_ref in refs {
                    if let Some(pos) = self.queue.iter().position(|q| q.task.task_ref == task_ref) {
                        if let Some(q) = self.queue.remove(pos) {
                            self.report_cancelled(task_ref, q.task.attempt);
                        }
                    } else if let Some(running) = self.running.get_mut(&task_ref) {
                        running.cancelled = true;
                        jobs.push(running.job.clone());
                    }
                }
                // A worker busy only with cancelled tasks is stopped, so its slots free at once.
                for job in jobs {
                    for (key, worker) in self.workers.iter().filter(|((j, _), _)| *j == job) {
                        let live = self
                            .running
                            .values()
                            .any(|r| r.job == job && r.lane == key.1 && !r.cancelled);
                        if !live {
                            let _ = worker.send(WorkerCmd::Kill);
                        }
                    }
                }
            }
            Input::Revoke(refs) => {
                let mut answer = pb::Revoked::default();
                for wanted in refs {
                    let found = self.queue.iter().position(|q| {
                        q.task.task_ref == wanted.task_ref && q.task.attempt == wanted.attempt
                    });
                    match found {
                        Some(pos) => {
                            self.queue.remove(pos);
                            answer.released.push(wanted);
                        }
                        None => answer.kept.push(wanted),
                    }
                }
                // Results sent before this answer stay ahead of it on the stream.
                self.flush();
                let _ = self.out.send(Outgoing::Revoked(answer));
            }
            Input::EndJob(job_id) => {
                let job: Arc<str> = job_id.as_str().into();
                let (gone, kept): (Vec<_>, Vec<_>) =
                    self.queue.drain(..).partition(|q| q.job == job);
                self.queue = kept.into();
                for q in gone {
                    self.report_cancelled(q.task.task_ref, q.task.attempt);
                }
                for running in self.running.values_mut().filter(|r| r.job == job) {
                    running.cancelled = true;
                }
                let lanes: Vec<WorkerKey> = self
                    .workers
                    .keys()
                    .filter(|(j, _)| *j == job)
                    .cloned()
                    .collect();
                for key in lanes {
                    if let Some(worker) = self.workers.remove(&key) {
                        let _ = worker.send(WorkerCmd::Kill);
                    }
                }
                self.jobs.remove(&job);
                self.output_caps.remove(&job);
                debug!(job = %job_id, "job ended");
            }
            Input::ChildResults(results) => self.child_results(results),
            Input::Reset => {
                self.generation += 1;
                self.queue.clear();
                self.running.clear();
                for (_, worker) in self.workers.drain() {
                    let _ = worker.send(WorkerCmd::Kill);
                }
                self.jobs.clear();
                self.results.clear();
                self.output.clear();
                self.output_caps.clear();
            }
        }
        self.publish_busy();
    }

    fn event(&mut self, stamped: Stamped) {
        if stamped.generation != self.generation {
            return; // a worker killed by a reset: its tasks are already someone else's
        }
        let event = stamped.event;
        match event {
            WorkerEvent::Done {
                task_ref,
                outcome,
                run_ns,
                failed,
            } => {
                let Some(running) = self.running.remove(&task_ref) else {
                    return;
                };
                if run_ns > 0 {
                    let ns = run_ns as f64;
                    self.task_ns = Some(self.task_ns.map_or(ns, |old| 0.8 * old + 0.2 * ns));
                }
                let outcome = if running.cancelled {
                    cancelled()
                } else {
                    match outcome {
                        WorkerOutcome::Output(bytes)
                            if bytes.len() > limits::INLINE_VALUE_BYTES =>
                        {
                            // Too big for the stream: it goes to the blob store first, and its
                            // result follows once it is there.
                            self.store(
                                task_ref,
                                running.attempt,
                                &running.job,
                                bytes,
                                run_ns,
                                failed,
                            );
                            self.publish_busy();
                            return;
                        }
                        WorkerOutcome::Output(bytes) => Outcome::Output(bytes.into()),
                        WorkerOutcome::Failed { kind, message } => failure(
                            match kind {
                                WorkerFailure::TaskError => pb::FailureKind::TaskError,
                                WorkerFailure::UnknownTask => pb::FailureKind::UnknownTask,
                                WorkerFailure::BadInput => pb::FailureKind::BadInput,
                                WorkerFailure::TooLarge => pb::FailureKind::TooLarge,
                            },
                            message,
                        ),
                    }
                };
                self.results.push(pb::AgentTaskResult {
                    task_ref,
                    attempt: running.attempt,
                    outcome: Some(outcome),
                    run_ns,
                    crashed_with: 0,
                    failed_items: failed.count,
                    first_error: failed.first,
                });
            }
            WorkerEvent::Lost {
                task_refs,
                reason,
                start_failed,
            } => {
                // How many tasks the worker took with it: the scheduler charges a crash only to a
                // task that was alone.
                let crashed_with = u32::try_from(task_refs.len()).unwrap_or(u32::MAX);
                for task_ref in task_refs {
                    let Some(running) = self.running.remove(&task_ref) else {
                        continue;
                    };
                    let outcome = if running.cancelled {
                        cancelled()
                    } else if running.timed_out {
                        let limit = running.timeout.unwrap_or_default();
                        failure(
                            pb::FailureKind::TimedOut,
                            format!(
                                "the task ran longer than its timeout of {limit:?}; its worker was stopped"
                            ),
                        )
                    } else if start_failed {
                        failure(pb::FailureKind::WorkerStart, reason.clone())
                    } else {
                        failure(pb::FailureKind::WorkerCrashed, reason.clone())
                    };
                    self.results.push(pb::AgentTaskResult {
                        task_ref,
                        attempt: running.attempt,
                        outcome: Some(outcome),
                        run_ns: 0,
                        crashed_with,
                        ..Default::default()
                    });
                }
            }
            WorkerEvent::Started { task_ref } => {
                if let Some(running) = self.running.get_mut(&task_ref)
                    && let Some(timeout) = running.timeout
                {
                    running.deadline = Some(tokio::time::Instant::now() + timeout);
                }
            }
            WorkerEvent::Children { parent, children } => self.children(parent, children),
            WorkerEvent::ChildResults(results) => self.child_results(results),
            WorkerEvent::CancelChildren { parent, ordinals } => {
                if let Some(running) = self.running.get(&parent) {
                    let _ = self.out.send(Outgoing::ChildCancel(pb::ChildCancel {
                        parent_ref: parent,
                        parent_attempt: running.attempt,
                        ordinals,
                    }));
                }
            }
            WorkerEvent::Waiting { task_ref, waiting } => {
                if let Some(running) = self.running.get_mut(&task_ref)
                    && running.waiting != waiting
                    && !matches!(running.lane, Lane::Gpu(_))
                {
                    running.waiting = waiting;
                    let _ = self.out.send(Outgoing::Waiting(pb::TaskWaiting {
                        task_ref,
                        attempt: running.attempt,
                        waiting,
                    }));
                }
            }
            WorkerEvent::Output { job, stderr, line } => {
                let cap = self.output_caps.entry(job.clone()).or_default();
                if cap.admit(line.len(), tokio::time::Instant::now()) {
                    self.output
                        .entry(job)
                        .or_default()
                        .push(pb::OutputLine { stderr, text: line });
                }
            }
            WorkerEvent::Stored {
                task_ref,
                attempt,
                outcome,
                run_ns,
                failed,
            } => {
                self.results.push(pb::AgentTaskResult {
                    task_ref,
                    attempt,
                    outcome: Some(outcome),
                    run_ns,
                    crashed_with: 0,
                    failed_items: failed.count,
                    first_error: failed.first,
                });
            }
        }
        self.publish_busy();
    }

    /// Uploads a big result to the scheduler's blob store, off the executor's loop; its result
    /// (naming the blob, or saying why it could not be stored) arrives as a `Stored` event.
    fn store(
        &self,
        task_ref: u64,
        attempt: u32,
        job: &Arc<str>,
        bytes: Vec<u8>,
        run_ns: u64,
        failed: wp::ItemFailures,
    ) {
        let cache = self.ctx.cache.clone();
        let events = self.ctx.events.clone();
        let generation = self.generation;
        let job = job.clone();
        tokio::spawn(async move {
            let size = bytes.len();
            let outcome = match cache.upload(bytes.into(), &job).await {
                Ok(blob) => Outcome::OutputBlob(blob),
                Err(reason) => failure(
                    pb::FailureKind::TaskError,
                    format!(
                        "the task's result of {size} bytes could not be stored in the \
                         scheduler's blob store: {reason}"
                    ),
                ),
            };
            let _ = events.send(Stamped {
                generation,
                event: WorkerEvent::Stored {
                    task_ref,
                    attempt,
                    outcome,
                    run_ns,
                    failed,
                },
            });
        });
    }

    fn report_cancelled(&mut self, task_ref: u64, attempt: u32) {
        self.results.push(pb::AgentTaskResult {
            task_ref,
            attempt,
            outcome: Some(cancelled()),
            run_ns: 0,
            crashed_with: 0,
            ..Default::default()
        });
    }

    /// Hands queued tasks to workers: per slot, at least two (one running, one waiting), and as
    /// many as cover [`WORKER_QUEUE`] of measured work, up to 64.
    /// Tasks the workers hold at most: per slot, enough for [`WORKER_QUEUE`] of work.
    fn depth(&self) -> u32 {
        let per_slot = match self.task_ns {
            Some(ns) if ns > 0.0 => (WORKER_QUEUE.as_nanos() as f64 / ns).clamp(2.0, 64.0) as u32,
            _ => 2,
        };
        per_slot * self.slots
    }

    /// CPU tasks handed to workers (running or waiting there).
    fn cpu_running(&self) -> usize {
        self.running
            .values()
            .filter(|r| !matches!(r.lane, Lane::Gpu(_)) && !r.waiting)
            .count()
    }

    /// Hands queued tasks to workers: a GPU task to the worker of a free GPU, one at a time; CPU
    /// tasks up to [`Executor::depth`], refilled once half of that has run.
    fn dispatch(&mut self) {
        let depth = self.depth() as usize;
        let slots = self.slots as usize;
        let mut cpu_running = self.cpu_running();
        // Top workers up once they have run through half of what they hold, so that tasks go
        // to them (and results come back) many at a time.
        let refill = cpu_running <= depth / 2;
        // The CPU workers holding tasks. Tasks wait ahead inside a worker only while it is the
        // only one busy: each worker runs as many at once as the agent has slots, so two busy
        // workers given more than the slots between them would run more than the slots.
        let mut busy: Vec<WorkerKey> = Vec::new();
        for r in self.running.values() {
            let key = (r.job.clone(), r.lane);
            if !matches!(r.lane, Lane::Gpu(_)) && !busy.contains(&key) {
                busy.push(key);
            }
        }
        // A task for another worker waits (another job's, or an isolated one): the busy worker
        // is not topped up past the slots either, so that the other gets a slot as soon as one
        // frees instead of after the busy worker's whole supply.
        let lane_of = |q: &Queued| {
            if q.task.isolated {
                Lane::Solo
            } else {
                Lane::Shared
            }
        };
        let other_waits = match busy.as_slice() {
            [only] => self
                .queue
                .iter()
                .any(|q| !q.task.gpu && (q.job.clone(), lane_of(q)) != *only),
            _ => false,
        };
        let mut free_gpus: Vec<u32> = self
            .gpus
            .iter()
            .copied()
            .filter(|&g| !self.running.values().any(|r| r.lane == Lane::Gpu(g)))
            .collect();
        let mut i = 0;
        while i < self.queue.len() && (cpu_running < depth.max(slots) || !free_gpus.is_empty()) {
            let q = &self.queue[i];
            // The first task that may start: a GPU task while a GPU is free; an isolated one
            // while its job's solo worker is idle; the tasks behind one that must wait go ahead.
            let lane = if q.task.gpu {
                match free_gpus.pop() {
                    Some(g) => Lane::Gpu(g),
                    None => {
                        i += 1;
                        continue;
                    }
                }
            } else {
                let lane = lane_of(q);
                let key = (q.job.clone(), lane);
                let shared = other_waits || busy.iter().any(|k| *k != key);
                let limit = match (shared, refill) {
                    (true, _) => slots,
                    (false, true) => depth,
                    (false, false) => 0,
                };
                let solo_busy = lane == Lane::Solo
                    && self
                        .running
                        .values()
                        .any(|r| r.lane == Lane::Solo && r.job == q.job && !r.waiting);
                if cpu_running >= limit || solo_busy {
                    i += 1;
                    continue;
                }
                cpu_running += 1;
                if !busy.contains(&key) {
                    busy.push(key);
                }
                lane
            };
            let Some(Queued { job, task }) = self.queue.remove(i) else {
                break;
            };
            self.start_task(job, task, lane);
        }
        self.publish_busy();
    }

    fn start_task(&mut self, job: Arc<str>, task: pb::AssignedTask, lane: Lane) {
        let Some(info) = self.jobs.get(&job).cloned() else {
            self.report_cancelled(task.task_ref, task.attempt);
            return;
        };
        let generation = self.generation;
        let ctx = self.ctx.clone();
        let worker = self.workers.entry((job.clone(), lane)).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let gpu = match lane {
                Lane::Gpu(g) => Some(g),
                _ => None,
            };
            tokio::spawn(worker::run(info, gpu, rx, ctx, generation));
            tx
        });
        let timeout =
            (task.timeout_ms > 0).then(|| std::time::Duration::from_millis(task.timeout_ms));
        self.running.insert(
            task.task_ref,
            Running {
                job,
                attempt: task.attempt,
                cancelled: false,
                lane,
                timeout,
                deadline: None,
                timed_out: false,
                waiting: false,
            },
        );
        let _ = worker.send(WorkerCmd::Run(Dispatch {
            task_ref: task.task_ref,
            function: task.function,
            reducer: (!task.reducer.is_empty()).then_some(task.reducer),
            payload: task.payload,
            payload_blob: task.payload_blob.map(|b| b.sha256),
            shared: task.shared,
            timeout,
        }));
    }

    /// A running task's children go to the scheduler; a big argument is stored in the blob
    /// store first (off the executor's loop), and the batch follows once all are.
    fn children(&mut self, parent: u64, children: Vec<wp::WorkerChild>) {
        let Some(running) = self.running.get(&parent) else {
            return; // the parent is over (cancelled, or its worker gone): so are its children
        };
        let (attempt, job) = (running.attempt, running.job.clone());
        let mut tasks = Vec::with_capacity(children.len());
        let mut big = false;
        for child in children {
            let spec = match <pb::TaskSpec as prost::Message>::decode(child.spec.0.as_slice()) {
                Ok(spec) => spec,
                Err(e) => {
                    warn!(parent, "a worker sent a child that does not decode: {e}");
                    continue;
                }
            };
            big |= spec.payload.len() > limits::INLINE_VALUE_BYTES;
            tasks.push(pb::ChildTask {
                ordinal: child.ordinal,
                digest: child.digest,
                spec: Some(spec),
            });
        }
        let out = self.out.clone();
        let send = move |tasks: Vec<pb::ChildTask>| {
            let weight = |t: &pb::ChildTask| t.spec.as_ref().map_or(0, |s| s.payload.len());
            for tasks in limits::batches(tasks, usize::MAX, weight) {
                let _ = out.send(Outgoing::Children(pb::ChildTasks {
                    parent_ref: parent,
                    parent_attempt: attempt,
                    tasks,
                }));
            }
        };
        if !big {
            send(tasks);
            return;
        }
        let cache = self.ctx.cache.clone();
        tokio::spawn(async move {
            for task in &mut tasks {
                let Some(spec) = task.spec.as_mut() else {
                    continue;
                };
                if spec.payload.len() <= limits::INLINE_VALUE_BYTES {
                    continue;
                }
                let data = std::mem::take(&mut spec.payload);
                match cache.upload(data.clone(), &job).await {
                    Ok(blob) => spec.payload_blob = Some(blob),
                    Err(reason) => {
                        // The child goes by the hash it would have had: its agent fails it,
                        // naming the argument it cannot fetch.
                        warn!(parent, "cannot store a child's argument: {reason}");
                        spec.payload_blob = Some(ladle_common::blobs::describe(&data));
                    }
                }
            }
            send(tasks);
        });
    }

    /// Results of a running task's children, to its worker; a big one is fetched from the blob
    /// store first.
    fn child_results(&mut self, mut results: pb::ChildResults) {
        let Some(running) = self.running.get(&results.parent_ref) else {
            return;
        };
        if running.attempt != results.parent_attempt {
            return;
        }
        let Some(worker) = self
            .workers
            .get(&(running.job.clone(), running.lane))
            .cloned()
        else {
            return;
        };
        let parent = results.parent_ref;
        let deliver = move |results: Vec<pb::TaskResult>| {
            let results = results
                .iter()
                .map(|r| wp::ByteBlock(prost::Message::encode_to_vec(r)))
                .collect();
            let _ = worker.send(WorkerCmd::Send(ToWorker::ChildResults { parent, results }));
        };
        let stored =
            |r: &pb::TaskResult| matches!(r.outcome, Some(pb::task_result::Outcome::OutputBlob(_)));
        if !results.results.iter().any(stored) {
            deliver(results.results);
            return;
        }
        // Fetched off the loop, then handed back to it: by then the parent may be over, or run
        // again, and the attempt is checked once more.
        let (cache, events, generation) = (
            self.ctx.cache.clone(),
            self.ctx.events.clone(),
            self.generation,
        );
        tokio::spawn(async move {
            for r in &mut results.results {
                if let Some(pb::task_result::Outcome::OutputBlob(blob)) = &r.outcome {
                    r.outcome = Some(match cache.fetch_value(&blob.sha256).await {
                        Ok(data) => pb::task_result::Outcome::Output(data),
                        Err(reason) => pb::task_result::Outcome::Failure(pb::TaskFailure {
                            kind: pb::FailureKind::TaskError.into(),
                            message: format!(
                                "the child's result {} could not be fetched: {reason}",
                                blob.sha256
                            ),
                        }),
                    });
                }
            }
            let _ = events.send(Stamped {
                generation,
                event: WorkerEvent::ChildResults(results),
            });
        });
    }

    /// Stops the workers of tasks that outlived their timeout; the tasks fail as timed out (the
    /// others the worker held are placed again by the scheduler).
    fn stop_overdue(&mut self) {
        let now = tokio::time::Instant::now();
        let mut stop = Vec::new();
        for running in self.running.values_mut() {
            if running.deadline.is_some_and(|d| d <= now) && !running.timed_out {
                running.timed_out = true;
                running.deadline = None;
                stop.push((running.job.clone(), running.lane));
            }
        }
        for key in stop {
            if let Some(worker) = self.workers.get(&key) {
                let _ = worker.send(WorkerCmd::Kill);
            }
        }
    }

    /// Tasks running now: those waiting inside a worker behind another do not hold a slot.
    fn publish_busy(&self) {
        let (mut cpu, mut gpu) = (0u32, 0u32);
        for r in self.running.values().filter(|r| !r.cancelled && !r.waiting) {
            match r.lane {
                Lane::Gpu(_) => gpu += 1,
                _ => cpu += 1,
            }
        }
        self.busy.cpu.store(cpu.min(self.slots), Ordering::Relaxed);
        self.busy.gpu.store(gpu, Ordering::Relaxed);
    }

    fn flush(&mut self) {
        self.held_since = None;
        tracing::trace!(
            results = self.results.len(),
            running = self.running.len(),
            depth = self.depth(),
            "flush"
        );
        if !self.results.is_empty() {
            let results = std::mem::take(&mut self.results);
            for results in limits::batches(results, usize::MAX, result_bytes) {
                let _ = self
                    .out
                    .send(Outgoing::Results(pb::AgentResults { results }));
            }
        }
        let now = tokio::time::Instant::now();
        for (job, cap) in &mut self.output_caps {
            if let Some(note) = cap.note(now) {
                self.output
                    .entry(job.clone())
                    .or_default()
                    .push(pb::OutputLine {
                        stderr: true,
                        text: note,
                    });
            }
        }
        for (job, lines) in self.output.drain() {
            for lines in limits::batches(lines, usize::MAX, |l| l.text.len()) {
                let _ = self.out.send(Outgoing::Output(pb::JobOutput {
                    job_id: job.to_string(),
                    lines,
                }));
            }
        }
    }
}

fn failure(kind: pb::FailureKind, message: String) -> Outcome {
    Outcome::Failure(pb::TaskFailure {
        kind: kind.into(),
        message,
    })
}

/// What a result weighs in a message.
fn result_bytes(result: &pb::AgentTaskResult) -> usize {
    match &result.outcome {
        Some(Outcome::Output(bytes)) => bytes.len(),
        Some(Outcome::Failure(f)) => f.message.len(),
        Some(Outcome::OutputBlob(_)) | None => 0,
    }
}

fn cancelled() -> Outcome {
    failure(pb::FailureKind::Cancelled, "cancelled".into())
}
