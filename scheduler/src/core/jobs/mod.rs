//! Sessions (one per driver, one job each) and their tasks: submissions within the budget,
//! results (judged by [`Task::judge`], delivered through each session's ledger), requeues,
//! resumption and ends. Placement and stealing are in `placement`, cancels in `operator`.
//!
//! A task is queued in its session, placed on an agent under an attempt number, and completed
//! by the first result for that attempt from that agent; anything else that arrives for it is
//! stale and dropped, which is what makes every result reach its driver exactly once.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

// Keys are the scheduler's own numbers and ids from authenticated peers: a fast hash is safe.
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use tracing::{debug, info, warn};

use super::{
    AgentId, AgentResult, Assigned, Capacity, Command, ConnId, DriverResult, FailureKind, GpuUse,
    Job, JobView, Outcome, SelectError, SessionOpen, TaskRef, TaskSpec,
    delivery::Ledger,
    membership::Membership,
    record::{JobOutcome, Record, TaskRecord},
    task::{Nest, Task, TaskState, Verdict},
    task_map::TaskMap,
};

mod nested;
mod operator;
mod placement;

pub(super) use nested::CHILD_ID;

use operator::OPERATOR_CANCEL;

/// The kinds of slot a task can take.
const CPU: usize = 0;
const GPU: usize = 1;

/// A session's queues, one per [`GpuUse`]: which slots may take their tasks, in the order
/// they are asked. A GPU slot serves the tasks that need one before those that merely prefer one.
const LANES_FOR_SLOT: [&[usize]; 2] = [&[CPU_ONLY, PREFERRED], &[REQUIRED, PREFERRED]];
const CPU_ONLY: usize = 0;
const REQUIRED: usize = 1;
const PREFERRED: usize = 2;

fn lane(gpu: GpuUse) -> usize {
    match gpu {
        GpuUse::None => CPU_ONLY,
        GpuUse::Required => REQUIRED,
        GpuUse::Preferred => PREFERRED,
    }
}

/// Highest priority first, then deepest (nested tasks before their parents' peers), then
/// oldest first.
type Queue = BinaryHeap<(i32, u32, Reverse<u64>, TaskRef)>;

/// Where a task stands in its session's queue.
fn queue_key(task_ref: TaskRef, task: &Task) -> (i32, u32, Reverse<u64>, TaskRef) {
    (
        task.spec.priority,
        task.depth(),
        Reverse(task.seq),
        task_ref,
    )
}

struct Session {
    job: Arc<Job>,
    /// The digest of the secret the session was given: a driver must present it to resume.
    secret_digest: String,
    /// The driver's stream; none while the driver is away (within its grace period).
    conn: Option<ConnId>,
    /// Since when the driver has been away.
    detached_at: Option<Instant>,
    /// Results delivered and not yet acknowledged: sent again to a driver that comes back.
    ledger: Ledger,
    /// Queued tasks by lane (CPU only, GPU required, GPU preferred). Entries of tasks that
    /// left the queue (cancelled) are skipped when popped.
    queues: [Queue; 3],
    /// Whether the session is listed in `Jobs::ready` for CPU and for GPU slots.
    listed: [bool; 2],
    /// The driver was told that no agent has a GPU for its GPU tasks.
    told_no_gpu: bool,
    /// The driver was told that no agent accepts work at all.
    told_no_agents: bool,
    /// An operator cancelled the job: what it submits fails at once.
    cancelled: bool,
    by_task_id: HashMap<u64, TaskRef>,
    /// Agents this job placed tasks on: to be told when it ends, and the only ones whose
    /// output lines for it are passed on (at most one entry per agent of the cluster).
    agents: HashSet<AgentId>,
    /// Its tasks by state, and the bytes of the inline payloads of those without a result:
    /// kept as events happen, so that no query scans the tasks.
    queued: u64,
    running: u64,
    bytes: u64,
    /// Nested tasks without a result, and results of nested tasks kept for parents that have
    /// not finished: they count against the budget apart from the driver's own tasks (whose
    /// sending the driver paces itself).
    children: u64,
    child_results: u64,
    /// The inline bytes of those nested tasks (counted in `bytes` too): the driver's byte
    /// budget leaves them out, as its task budget leaves out `children`.
    child_bytes: u64,
}

pub(super) struct Jobs {
    sessions: HashMap<u64, Session>,
    by_conn: HashMap<ConnId, u64>,
    by_job_id: HashMap<Arc<str>, u64>,
    tasks: TaskMap<Task>,
    /// Sessions with queued tasks that CPU slots (and GPU slots) can take, served in turn so
    /// that jobs share the cluster.
    ready: [VecDeque<u64>; 2],
    next_session: u64,
    next_ref: TaskRef,
    next_seq: u64,
    /// Worker crashes a task may cause before it fails.
    pub(super) max_crashes: u32,
    /// A task went back to the queue since this was last taken: every agent may take it.
    requeued: bool,
    /// A session's admission budget: tasks without a result, and their inline bytes.
    budget: Budget,
    /// The cluster's counters, kept as tasks change state.
    totals: TaskCounts,
    /// The most tasks without a result one session has held at once.
    unfinished_peak: u64,
    /// What operators see of the work, live and after the fact.
    pub(super) record: Record,
    /// Tasks refused because their session sent past its budget.
    refused: u64,
    /// Output lines dropped because they came from an agent their job placed no task on.
    foreign_output: u64,
}

/// What opening a session found: the stream the session had before (to be closed), and for a
/// session that existed already, the tasks the scheduler holds for it.
#[derive(Debug, Default)]
pub(super) struct Reopened {
    pub old: Option<ConnId>,
    pub resumed: bool,
    pub known: Vec<u64>,
    /// The secret of a new session (empty when resumed).
    pub secret: String,
}

/// What one session may have the scheduler hold for it at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub tasks: u64,
    pub bytes: u64,
}

impl Jobs {
    pub(super) fn new(max_crashes: u32, budget: Budget) -> Self {
        Self {
            sessions: HashMap::default(),
            by_conn: HashMap::default(),
            by_job_id: HashMap::default(),
            tasks: TaskMap::default(),
            ready: [VecDeque::new(), VecDeque::new()],
            next_session: 1,
            next_ref: 1,
            next_seq: 0,
            max_crashes,
            requeued: false,
            budget,
            totals: TaskCounts::default(),
            unfinished_peak: 0,
            record: Record::default(),
            refused: 0,
            foreign_output: 0,
        }
    }

    /// Removes a task, keeping the counters true.
    fn forget(&mut self, task_ref: TaskRef) -> Option<Task> {
        let task = self.tasks.remove(&task_ref)?;
        self.tally(&task, -1);
        if matches!(task.state, TaskState::Running(_)) {
            self.record.running(task.session, task.spec.items, -1);
        }
        if let Some(session) = self.sessions.get_mut(&task.session) {
            session.bytes = session.bytes.saturating_sub(task.spec.payload.len() as u64);
            if let Some(nest) = &task.nest {
                if nest.parent.is_some() {
                    session.children = session.children.saturating_sub(1);
                    session.child_bytes = session
                        .child_bytes
                        .saturating_sub(task.spec.payload.len() as u64);
                }
                session.child_results = session.child_results.saturating_sub(nest.results_held());
            }
        }
        Some(task)
    }

    /// Counts `task` in (`delta` 1) or out (-1) of its state's counters.
    fn tally(&mut self, task: &Task, delta: i64) {
        let running = matches!(task.state, TaskState::Running(_));
        let gpu_required = task.spec.gpu == GpuUse::Required;
        count(
            &mut self.totals,
            self.sessions.get_mut(&task.session),
            running,
            gpu_required,
            delta,
        );
    }

    /// Moves a task to `state`, keeping the counters true.
    fn set_state(&mut self, task_ref: TaskRef, state: TaskState) {
        let Some(task) = self.tasks.get_mut(&task_ref) else {
            return;
        };
        let old = std::mem::replace(&mut task.state, state);
        let was_running = matches!(old, TaskState::Running(_));
        let is_running = matches!(task.state, TaskState::Running(_));
        if was_running == is_running {
            return;
        }
        let (no, gpu_required) = (task.session, task.spec.gpu == GpuUse::Required);
        self.record
            .running(no, task.spec.items, if is_running { 1 } else { -1 });
        count(
            &mut self.totals,
            self.sessions.get_mut(&no),
            was_running,
            gpu_required,
            -1,
        );
        count(
            &mut self.totals,
            self.sessions.get_mut(&no),
            is_running,
            gpu_required,
            1,
        );
    }

    /// Opens a session, or gives a driver back the one it had (same session id): then every
    /// result it has not acknowledged is sent again (pushed to `out`, to follow the
    /// confirmation), and it learns which of its tasks the scheduler holds.
    pub(super) fn open(
        &mut self,
        conn: ConnId,
        open: SessionOpen,
        out: &mut Vec<Command>,
    ) -> Result<Reopened, super::Refusal> {
        if let Some(&no) = self.by_job_id.get(open.session_id.as_str())
            && let Some(session) = self.sessions.get_mut(&no)
        {
            if session.secret_digest != open.secret.presented_digest {
                // Logged (at a bounded rate) and counted by the shell, with the other refusals.
                return Err(super::Refusal::Impersonation {
                    what: format!("session {}", session.job.id),
                    kind: "driver",
                });
            }
            let old = session.conn.replace(conn);
            if let Some(old) = old {
                self.by_conn.remove(&old);
            }
            session.detached_at = None;
            self.by_conn.insert(conn, no);
            let replay = session.ledger.replay();
            info!(session = %session.job.id, replayed = replay.len(),
                  unfinished = session.by_task_id.len(), "driver came back to its job");
            let mut known: Vec<u64> = session.by_task_id.keys().copied().collect();
            known.extend(session.ledger.task_ids());
            known.sort_unstable();
            if !replay.is_empty() {
                out.push(Command::Deliver {
                    conn,
                    results: replay,
                });
            }
            return Ok(Reopened {
                old,
                resumed: true,
                known,
                secret: String::new(),
            });
        }
        let no = self.next_session;
        self.next_session += 1;
        let id: Arc<str> = open.session_id.as_str().into();
        info!(session = %id, job = %open.job_name, driver = %open.driver_host, "job started");
        let job = Arc::new(Job {
            id: id.clone(),
            name: open.job_name,
            executable: open.executable,
            driver_host: open.driver_host,
        });
        self.record.opened(no, job.clone());
        self.sessions.insert(
            no,
            Session {
                job,
                secret_digest: open.secret.issued_digest.clone(),
                conn: Some(conn),
                detached_at: None,
                ledger: Ledger::new(),
                queues: Default::default(),
                listed: [false; 2],
                told_no_gpu: false,
                told_no_agents: false,
                cancelled: false,
                by_task_id: HashMap::default(),
                agents: HashSet::default(),
                queued: 0,
                running: 0,
                bytes: 0,
                children: 0,
                child_results: 0,
                child_bytes: 0,
            },
        );
        self.by_conn.insert(conn, no);
        self.by_job_id.insert(id, no);
        Ok(Reopened {
            secret: open.secret.issued,
            ..Reopened::default()
        })
    }

    /// The driver has every result of its session up to delivery `through`.
    pub(super) fn ack(&mut self, conn: ConnId, through: u64) {
        if through == 0 {
            return;
        }
        if let Some(session) = self
            .by_conn
            .get(&conn)
            .and_then(|no| self.sessions.get_mut(no))
        {
            session.ledger.ack(through);
        }
    }

    /// Numbers and keeps `results` of session `no` ([`Ledger`]) and sends them if its driver
    /// is here; they are sent again when it comes back.
    fn deliver(&mut self, no: u64, results: Vec<DriverResult>, out: &mut Vec<Command>) {
        let Some(session) = self.sessions.get_mut(&no) else {
            return;
        };
        let results = session.ledger.record(results);
        if let Some(conn) = session.conn {
            out.push(Command::Deliver { conn, results });
        }
    }

    /// The driver's stream broke: its job goes on for `grace`, waiting for it to come back.
    pub(super) fn detach(&mut self, conn: ConnId, now: Instant) {
        let Some(no) = self.by_conn.remove(&conn) else {
            return;
        };
        if let Some(session) = self.sessions.get_mut(&no) {
            session.conn = None;
            session.detached_at = Some(now);
            info!(session = %session.job.id, "driver away; its job waits for it");
        }
    }

    /// Ends the jobs whose drivers have been away longer than `grace`.
    pub(super) fn expire(
        &mut self,
        now: Instant,
        grace: Duration,
        members: &Membership,
        out: &mut Vec<Command>,
    ) {
        let expired: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.detached_at
                    .is_some_and(|at| now.saturating_duration_since(at) > grace)
            })
            .map(|(&no, _)| no)
            .collect();
        for no in expired {
            self.end(no, true, members, out);
        }
    }

    /// Whether a job of this id (session id) is open.
    pub(super) fn has_job(&self, job_id: &str) -> bool {
        self.by_job_id.contains_key(job_id)
    }

    /// The streams of the drivers here now.
    pub(super) fn driver_conns(&self) -> Vec<ConnId> {
        self.by_conn.keys().copied().collect()
    }

    pub(super) fn is_session(&self, conn: ConnId) -> bool {
        self.by_conn.contains_key(&conn)
    }

    pub(super) fn submit(&mut self, conn: ConnId, specs: Vec<TaskSpec>, out: &mut Vec<Command>) {
        let Some(&no) = self.by_conn.get(&conn) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&no) else {
            return;
        };
        if session.cancelled {
            let results = specs
                .iter()
                .filter(|s| {
                    !session.by_task_id.contains_key(&s.task_id) && !session.ledger.holds(s.task_id)
                })
                .map(|s| DriverResult {
                    task_id: s.task_id,
                    attempt: 0,
                    agent: "".into(),
                    outcome: Outcome::Failed {
                        kind: FailureKind::Cancelled,
                        message: OPERATOR_CANCEL.into(),
                    },
                    run_ns: 0,
                    gpu: false,
                    seq: 0,
                })
                .collect();
            self.deliver(no, results, out);
            return;
        }
        let mut duplicates = Vec::new();
        let mut refused = Vec::new();
        for spec in specs {
            let Some(session) = self.sessions.get_mut(&no) else {
                return;
            };
            if session.by_task_id.contains_key(&spec.task_id) || session.ledger.holds(spec.task_id)
            {
                // A resubmission of a task the scheduler holds, or whose result is on its way
                // (a driver that reconnected): the first copy stands.
                duplicates.push(spec.task_id);
                continue;
            }
            let bytes = spec.payload.len() as u64;
            // Results not acknowledged are held for the session too; nested tasks have a
            // budget of their own.
            let held = ((session.by_task_id.len() + session.ledger.unacked()) as u64)
                .saturating_sub(session.children);
            let held_bytes = session.bytes.saturating_sub(session.child_bytes);
            let why = if spec.task_id & CHILD_ID != 0 {
                Some(format!(
                    "the scheduler refused the task: task ids with the top bit set are the \
                     scheduler's own (nested tasks), and {} is one",
                    spec.task_id
                ))
            } else if held >= self.budget.tasks
                || (held_bytes + bytes > self.budget.bytes && held > 0)
            {
                // The driver sent past the budget it was given: this task is not admitted, and
                // the scheduler does not grow for it.
                Some(format!(
                    "the scheduler refused the task: its session already holds {} tasks and {} \
                     bytes of arguments, its budget (session_max_tasks = {}, session_max_bytes \
                     = {}); the driver sent more than it was granted",
                    held, held_bytes, self.budget.tasks, self.budget.bytes
                ))
            } else {
                None
            };
            if let Some(message) = why {
                refused.push(DriverResult {
                    task_id: spec.task_id,
                    attempt: 0,
                    agent: "".into(),
                    outcome: Outcome::Failed {
                        kind: FailureKind::Refused,
                        message,
                    },
                    run_ns: 0,
                    gpu: false,
                    seq: 0,
                });
                continue;
            }
            self.enqueue(no, spec, None);
        }
        let Some(session) = self.sessions.get(&no) else {
            return;
        };
        self.unfinished_peak = self
            .unfinished_peak
            .max((session.by_task_id.len() + session.ledger.unacked()) as u64);
        if !duplicates.is_empty() {
            debug!(count = duplicates.len(), "ignored resubmitted tasks");
        }
        if !refused.is_empty() {
            warn!(session = %session.job.id, tasks = refused.len(), "refused tasks past the session's budget");
            self.refused += refused.len() as u64;
            out.push(Command::Deliver {
                conn,
                results: refused,
            });
        }
    }

    /// Admits a task to session `no`'s queue (a driver's, or with `nest` a nested one); returns
    /// its number. The nested task's id is then the scheduler's: [`CHILD_ID`] and its number.
    fn enqueue(&mut self, no: u64, mut spec: TaskSpec, nest: Option<Box<Nest>>) -> TaskRef {
        let task_ref = self.next_ref;
        self.next_ref += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        let Some(session) = self.sessions.get_mut(&no) else {
            return task_ref;
        };
        if nest.as_ref().is_some_and(|n| n.parent.is_some()) {
            spec.task_id = CHILD_ID | task_ref;
            session.children += 1;
            session.child_bytes += spec.payload.len() as u64;
        }
        session.bytes += spec.payload.len() as u64;
        session.queued += 1;
        self.record.submitted(no, spec.items);
        self.totals.queued += 1;
        if spec.gpu == GpuUse::Required {
            self.totals.gpu_queued += 1;
        }
        session.by_task_id.insert(spec.task_id, task_ref);
        let gpu = spec.gpu;
        let mut task = Task::new(no, spec, seq);
        task.nest = nest;
        session.queues[lane(gpu)].push(queue_key(task_ref, &task));
        list(&mut self.ready, no, session, gpu);
        self.tasks.insert(task_ref, task);
        task_ref
    }

    /// Tells the drivers whose GPU tasks wait that no agent has a GPU, once each, so that they
    /// do not wait in silence.
    pub(super) fn tell_no_gpu(&mut self, members: &Membership, out: &mut Vec<Command>) {
        if members
            .agents()
            .any(|a| a.accepts_work() && a.gpu_slots() > 0)
        {
            return;
        }
        for session in self.sessions.values_mut() {
            if session.told_no_gpu || session.queues[REQUIRED].is_empty() {
                continue;
            }
            let Some(conn) = session.conn else { continue };
            let waiting = session.queues[REQUIRED]
                .iter()
                .filter(|(_, _, _, r)| {
                    self.tasks
                        .get(r)
                        .is_some_and(|t| t.state == TaskState::Queued)
                })
                .count();
            if waiting == 0 {
                continue;
            }
            session.told_no_gpu = true;
            out.push(Command::Notice {
                conn,
                text: format!(
                    "no agent in the cluster has a GPU: {waiting} GPU task(s) of this job wait \
                     until an agent with a GPU joins"
                ),
            });
        }
    }

    /// Tells the drivers whose tasks wait that no agent accepts work at all (none joined, or
    /// every one drained or lost), once each until one does; `accepting` is how many agents do.
    pub(super) fn tell_no_agents(
        &mut self,
        accepting: u32,
        members: &Membership,
        out: &mut Vec<Command>,
    ) {
        if accepting > 0 {
            for session in self.sessions.values_mut() {
                session.told_no_agents = false;
            }
            return;
        }
        let mut why: Option<String> = None;
        for session in self.sessions.values_mut() {
            if session.told_no_agents || session.queued == 0 {
                continue;
            }
            let Some(conn) = session.conn else { continue };
            session.told_no_agents = true;
            let why = why.get_or_insert_with(|| {
                let (mut drained, mut lost) = (0, 0);
                for agent in members.agents() {
                    match agent.state() {
                        super::AgentState::Draining => drained += 1,
                        super::AgentState::Lost => lost += 1,
                        super::AgentState::Alive => {}
                    }
                }
                match (drained, lost) {
                    (0, 0) => "no agent has joined the scheduler".to_owned(),
                    (d, l) => format!("no agent accepts work ({d} drained, {l} lost)"),
                }
            });
            out.push(Command::Notice {
                conn,
                text: format!(
                    "{why}: {} of this job wait until an agent joins or is undrained",
                    if session.queued == 1 {
                        "1 task".to_owned()
                    } else {
                        format!("{} tasks", session.queued)
                    }
                ),
            });
        }
    }

    /// A GPU agent joined: a later loss of every GPU is worth telling again.
    pub(super) fn gpus_came(&mut self) {
        for session in self.sessions.values_mut() {
            session.told_no_gpu = false;
        }
    }

    /// The driver said goodbye: its tasks stop everywhere.
    pub(super) fn close(&mut self, conn: ConnId, members: &Membership, out: &mut Vec<Command>) {
        if let Some(no) = self.by_conn.remove(&conn) {
            self.end(no, false, members, out);
        }
    }

    /// Ends a session; `driver_may_return` when its driver went away without a goodbye (it may
    /// still open the session again, and find its stored values).
    fn end(
        &mut self,
        no: u64,
        driver_may_return: bool,
        members: &Membership,
        out: &mut Vec<Command>,
    ) {
        let Some(session) = self.sessions.remove(&no) else {
            return;
        };
        self.record.ended(
            no,
            if driver_may_return {
                JobOutcome::DriverLost
            } else {
                JobOutcome::Done
            },
        );
        self.by_job_id.remove(&session.job.id);
        if let Some(conn) = session.conn {
            self.by_conn.remove(&conn);
        }
        for ready in &mut self.ready {
            ready.retain(|&s| s != no);
        }
        let mut dropped = 0usize;
        for task_ref in session.by_task_id.values() {
            if self.forget(*task_ref).is_some() {
                dropped += 1;
            }
        }
        info!(session = %session.job.id, job = %session.job.name,
              delivered = session.ledger.delivered(), unfinished = dropped, "job ended");
        out.push(Command::JobEnded {
            job_id: session.job.id.clone(),
            driver_may_return,
        });
        for agent in &session.agents {
            if let Some(agent_conn) = members.get(agent).and_then(|a| a.conn) {
                out.push(Command::EndJob {
                    conn: agent_conn,
                    job_id: session.job.id.clone(),
                });
            }
        }
    }

    /// Puts every task the agent held back in the queue, under a new attempt.
    pub(super) fn requeue_from(&mut self, agent: &AgentId, members: &mut Membership) {
        let Some(a) = members.get_mut(agent) else {
            return;
        };
        let held: Vec<TaskRef> = a.assigned.drain().collect();
        a.gpu_assigned.clear();
        a.waiting.clear();
        let mut requeued = 0usize;
        for task_ref in held {
            let Some(task) = self.tasks.get_mut(&task_ref) else {
                continue;
            };
            if !task.runs_on(agent) {
                continue;
            }
            requeued += 1;
            self.record.requeued(task.session);
            self.queue_again(task_ref);
        }
        if requeued > 0 {
            warn!(agent = %agent, tasks = requeued, "requeued the lost agent's tasks");
        }
    }

    /// Puts a placed task back in its session's queue, in its original place, under a new
    /// attempt: a result of the old attempt is dropped from now on.
    fn queue_again(&mut self, task_ref: TaskRef) {
        let Some(task) = self.tasks.get_mut(&task_ref) else {
            return;
        };
        self.requeued = true;
        task.attempt += 1;
        task.on_gpu = false;
        task.revoking = false;
        self.set_state(task_ref, TaskState::Queued);
        let Some(task) = self.tasks.get(&task_ref) else {
            return;
        };
        if let Some(session) = self.sessions.get_mut(&task.session) {
            session.queues[lane(task.spec.gpu)].push(queue_key(task_ref, task));
            list(&mut self.ready, task.session, session, task.spec.gpu);
        }
    }

    /// Results from the agent on stream `conn`.
    pub(super) fn results(
        &mut self,
        conn: ConnId,
        results: Vec<AgentResult>,
        members: &mut Membership,
        out: &mut Vec<Command>,
    ) {
        let Some(agent) = members.current(conn) else {
            return; // a stream the core let go of: its tasks were requeued already
        };
        let agent_id = agent.id().clone();
        let host = agent.host.clone();
        let mut deliveries: HashMap<u64, Vec<DriverResult>> = HashMap::default();
        let mut child_results = Vec::new();
        let mut families = Vec::new();
        for mut result in results {
            // The fence first: an old attempt of a task this agent runs again must not take
            // the new attempt's place in its assignments.
            let stale_here = self
                .tasks
                .get(&result.task_ref)
                .is_some_and(|t| t.attempt != result.attempt && t.runs_on(&agent_id));
            if stale_here || !agent.assigned.remove(&result.task_ref) {
                continue;
            }
            agent.gpu_assigned.remove(&result.task_ref);
            agent.waiting.remove(&result.task_ref);
            agent.observe(result.run_ns);
            agent.results += 1;
            let Some(task) = self.tasks.get_mut(&result.task_ref) else {
                continue; // cancelled, or its driver went away
            };
            if task.attempt != result.attempt || !task.runs_on(&agent_id) {
                continue;
            }
            let (items_failed, first_item_error) = (
                result.items_failed,
                std::mem::take(&mut result.first_item_error),
            );
            let crash = matches!(
                result.outcome,
                Outcome::Failed {
                    kind: FailureKind::WorkerCrashed,
                    ..
                }
            );
            let outcome = match task.judge(
                result.outcome,
                result.crashed_with,
                &agent_id,
                &host,
                self.max_crashes,
            ) {
                Verdict::Again => {
                    debug!(
                        task = result.task_ref,
                        attempt = result.attempt,
                        "placing the task again"
                    );
                    self.record.retried(task.session, crash);
                    self.queue_again(result.task_ref);
                    continue;
                }
                Verdict::Final(outcome) => outcome,
            };
            let (session, task_id, attempt) = (task.session, task.spec.task_id, task.runs());
            self.record.finished(
                session,
                TaskRecord {
                    task_id,
                    function: task.spec.function.clone(),
                    items: task.spec.items,
                    nested: task.parent().is_some(),
                    failure: match &outcome {
                        Outcome::Failed { kind, message } => Some((*kind, message.clone())),
                        _ => None,
                    },
                    items_failed,
                    first_item_error,
                    agent: host.clone(),
                    attempt,
                    run_ns: result.run_ns,
                    ended: self.record.now(),
                },
            );
            let gpu = task.on_gpu;
            let Some(task) = self.forget(result.task_ref) else {
                continue;
            };
            let done = DriverResult {
                task_id,
                attempt,
                agent: host.clone(),
                outcome,
                run_ns: result.run_ns,
                gpu,
                seq: 0,
            };
            // Its children that have not finished are not wanted any more.
            let parent = task.parent();
            if let Some(nest) = task.nest {
                families.push(nest.children);
            }
            match parent {
                Some((parent, ordinal)) => {
                    if let Some(s) = self.sessions.get_mut(&session) {
                        s.by_task_id.remove(&task_id);
                    }
                    child_results.push((parent, ordinal, done));
                }
                None => deliveries.entry(session).or_default().push(done),
            }
        }
        for family in families {
            self.drop_family(family, members, out);
        }
        self.children_done(child_results, members, out);
        for (no, results) in deliveries {
            if let Some(session) = self.sessions.get_mut(&no) {
                for r in &results {
                    session.by_task_id.remove(&r.task_id);
                }
                self.deliver(no, results, out);
            }
        }
    }

    /// Whether a task went back to the queue since the last call.
    pub(super) fn take_requeued(&mut self) -> bool {
        std::mem::take(&mut self.requeued)
    }

    /// Whether no task waits for a CPU slot.
    pub(super) fn nothing_queued(&self) -> bool {
        self.ready[CPU].is_empty()
    }

    /// Where output lines of job `job_id` printed on `agent` go: its driver's stream (and the
    /// job's record, which keeps the last of them).
    /// Only an agent the job placed tasks on runs its code; lines from any other are another
    /// agent's claims about this job (a hostile or confused agent), dropped and counted.
    pub(super) fn output_to(
        &mut self,
        job_id: &str,
        agent: &super::Agent,
        lines: &[super::OutputLine],
    ) -> Option<ConnId> {
        let no = *self.by_job_id.get(job_id)?;
        let session = self.sessions.get(&no)?;
        if !session.agents.contains(agent.id()) {
            self.foreign_output += lines.len() as u64;
            debug!(session = %session.job.id, agent = %agent.id(), lines = lines.len(),
                   "dropped output from an agent this job placed no task on");
            return None;
        }
        let conn = session.conn;
        self.record.output(no, &agent.host, lines);
        conn
    }

    pub(super) fn capacity(members: &Membership) -> Capacity {
        let mut capacity = Capacity::default();
        for agent in members.agents().filter(|a| a.accepts_work()) {
            capacity.agents += 1;
            capacity.cpu_slots += agent.hello.resources.cpu_slots;
            capacity.gpu_slots += u32::try_from(agent.hello.resources.gpus.len()).unwrap_or(0);
        }
        capacity
    }

    /// The cluster's task counters (kept as events happen: no scan).
    pub(super) fn counts(&self) -> TaskCounts {
        TaskCounts {
            sessions: self.sessions.len(),
            unfinished_peak: self.unfinished_peak,
            refused: self.refused,
            foreign_output: self.foreign_output,
            ..self.totals
        }
    }

    /// Each open job's items running and queued, as its record has them and as a scan of its
    /// tasks finds them: the two must always be equal (tests).
    #[cfg(test)]
    pub(super) fn record_by_scan(&self) -> Vec<(u64, RunningQueued, RunningQueued)> {
        let mut scanned: HashMap<u64, (u64, u64)> = HashMap::default();
        for task in self.tasks.values() {
            let entry = scanned.entry(task.session).or_default();
            let items = u64::from(task.spec.items.max(1));
            match task.state {
                TaskState::Running(_) => entry.0 += items,
                TaskState::Queued => entry.1 += items,
            }
        }
        let mut rows: Vec<_> = self
            .sessions
            .keys()
            .map(|&no| {
                let recorded = self.record.open_job(no).map_or((u64::MAX, u64::MAX), |j| {
                    (j.items.running, j.items.waiting())
                });
                (no, recorded, scanned.get(&no).copied().unwrap_or_default())
            })
            .collect();
        rows.sort_unstable_by_key(|r| r.0);
        rows
    }

    /// The counters recomputed from every task: what [`Jobs::counts`] must always equal (tests).
    #[cfg(test)]
    pub(super) fn counts_by_scan(&self) -> TaskCounts {
        let mut counts = TaskCounts {
            sessions: self.sessions.len(),
            unfinished_peak: self.unfinished_peak,
            refused: self.refused,
            foreign_output: self.foreign_output,
            ..TaskCounts::default()
        };
        for (task_ref, task) in &self.tasks {
            // Every task is its session's, and a nested one is listed live in its parent.
            let session = self.sessions.get(&task.session);
            assert_eq!(
                session.and_then(|s| s.by_task_id.get(&task.spec.task_id)),
                Some(task_ref),
                "task {task_ref} is not its session's"
            );
            if let Some((parent, ordinal)) = task.parent() {
                let listed = self
                    .tasks
                    .get(&parent)
                    .and_then(|p| p.nest.as_ref())
                    .and_then(|n| n.children.get(&ordinal));
                assert!(
                    listed.is_some_and(
                        |c| matches!(c.state, super::task::ChildState::Live(r) if r == *task_ref)
                    ),
                    "nested task {task_ref} is not its parent {parent}'s child {ordinal}"
                );
            }
            // A child listed live is a task here: a parent's run waiting on it gets its result.
            for (ordinal, child) in task.nest.iter().flat_map(|n| n.children.iter()) {
                if let super::task::ChildState::Live(r) = child.state {
                    assert!(
                        self.tasks
                            .get(&r)
                            .is_some_and(|c| c.parent() == Some((*task_ref, *ordinal))),
                        "task {task_ref}'s child {ordinal} ({r}) is gone"
                    );
                }
            }
            match task.state {
                TaskState::Running(_) => counts.running += 1,
                TaskState::Queued => {
                    counts.queued += 1;
                    if task.spec.gpu == GpuUse::Required {
                        counts.gpu_queued += 1;
                    }
                }
            }
        }
        for session in self.sessions.values() {
            let (mut queued, mut running, mut bytes) = (0, 0, 0);
            let (mut children, mut child_results, mut child_bytes) = (0, 0, 0);
            for r in session.by_task_id.values() {
                if let Some(t) = self.tasks.get(r) {
                    bytes += t.spec.payload.len() as u64;
                    match t.state {
                        TaskState::Queued => queued += 1,
                        TaskState::Running(_) => running += 1,
                    }
                    if t.parent().is_some() {
                        children += 1;
                        child_bytes += t.spec.payload.len() as u64;
                    }
                    child_results += t.nest.as_ref().map_or(0, |n| n.results_held());
                }
            }
            assert_eq!(
                (session.queued, session.running, session.bytes),
                (queued, running, bytes),
                "session {} counters",
                session.job.id
            );
            assert_eq!(
                (session.children, session.child_results, session.child_bytes),
                (children, child_results, child_bytes),
                "session {} nested counters",
                session.job.id
            );
        }
        counts
    }
}

/// Items running and items queued (tests).
#[cfg(test)]
pub(super) type RunningQueued = (u64, u64);

/// Adds `delta` to the counters of a task's state (running or queued) in `totals` and its
/// session's.
fn count(
    totals: &mut TaskCounts,
    session: Option<&mut Session>,
    running: bool,
    gpu_required: bool,
    delta: i64,
) {
    let add = |n: &mut usize| *n = n.saturating_add_signed(delta as isize);
    if running {
        add(&mut totals.running);
    } else {
        add(&mut totals.queued);
        if gpu_required {
            add(&mut totals.gpu_queued);
        }
    }
    if let Some(s) = session {
        let n = if running {
            &mut s.running
        } else {
            &mut s.queued
        };
        *n = n.saturating_add_signed(delta);
    }
}

/// Lists a session for the slots that can take a task of kind `gpu`, if not listed yet.
fn list(ready: &mut [VecDeque<u64>; 2], no: u64, session: &mut Session, gpu: GpuUse) {
    let slots: &[usize] = match gpu {
        GpuUse::None => &[CPU],
        GpuUse::Required => &[GPU],
        GpuUse::Preferred => &[CPU, GPU],
    };
    for &slot in slots {
        if !session.listed[slot] {
            session.listed[slot] = true;
            ready[slot].push_back(no);
        }
    }
}

/// How many tasks the scheduler holds, for the operator's status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskCounts {
    /// Driver sessions (jobs) open.
    pub sessions: usize,
    pub queued: usize,
    pub running: usize,
    /// Queued tasks that need a GPU slot.
    pub gpu_queued: usize,
    /// The most tasks without a result one session has held at once.
    pub unfinished_peak: u64,
    /// Tasks refused because their session sent past its budget.
    pub refused: u64,
    /// Output lines dropped because they came from an agent their job placed no task on.
    pub foreign_output: u64,
}
