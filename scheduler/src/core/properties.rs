//! Property tests of the core: random interleavings of submissions, agent losses and returns,
//! driver disconnects (clean or silent) and resumptions, results, crashes, task errors, steals,
//! cancels, operators' cancels and drains, and nested tasks (running tasks that submit children,
//! wait for them, resume and drop them, and runs of a parent again after its agent was lost),
//! checked against a model of the agents and drivers around it.
//!
//! Invariants, checked after every event:
//! - a task's result is decided once: every delivery of it carries the same delivery number;
//! - no task is placed while an earlier placement of it stands (one ends only by a result, a
//!   crash, a cancel, a release after a steal, or the loss of its agent);
//! - a task's attempts only grow, and no task goes to a drained agent;
//! - the core's counters equal a count of its tasks;
//! - a nested task's result never reaches the driver; it reaches its parent's worker only at
//!   the placement of the parent's attempt that asked for that ordinal, at most once per
//!   attempt;
//! - an agent's waiting tasks are tasks it holds.
//!
//! And at the end, once every agent and driver is back and every placement has finished: every
//! task a driver submitted has its result there, and once the drivers say goodbye the core
//! holds nothing.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use proptest::prelude::*;

use super::*;

const AGENTS: usize = 3;
const DRIVERS: usize = 2;

#[derive(Clone, Debug)]
enum Op {
    /// An agent (re)joins on a new stream, having dropped whatever it ran.
    Join(usize),
    /// An agent's stream closes.
    Lose(usize),
    Submit(usize, u8),
    /// The k-th standing placement finishes: a result, a worker crash, or the task's own error.
    Finish(usize, Ending),
    /// The driver's stream closes.
    DriverAway(usize),
    /// The driver stops hearing the scheduler (a partition): the core does not know yet.
    DriverDeaf(usize),
    /// The driver opens its session again on a new stream and sends again what it must (or,
    /// with `true`, everything it has no result for: the scheduler must see the duplicates).
    DriverBack(usize, bool),
    Ack(usize),
    Cancel(usize, usize),
    /// Time passes a little (no timeout): the core may ask agents to give tasks back.
    Tick,
    /// An agent answers the revokes it was sent: what it has not finished goes back.
    Release(usize),
    /// An operator cancels a driver's job.
    OperatorCancel(usize),
    /// An operator drains (true) or undrains an agent.
    Drain(usize, bool),
    /// The k-th standing placement submits children: the next ordinals of its run, each the
    /// same child as an earlier run of it submitted there (or, with `true`, another one).
    Spawn(usize, u8, bool),
    /// The k-th standing placement waits for its children (true) or resumes.
    Wait(usize, bool),
    /// The k-th standing placement drops the future of one of the children it asked for.
    Abandon(usize, usize),
    /// An agent reports the tasks it was told to stop.
    Stopped(usize),
}

#[derive(Clone, Copy, Debug)]
enum Ending {
    Done,
    Crash,
    TaskError,
}

fn op() -> impl Strategy<Value = Op> {
    let agent = 0..AGENTS;
    let driver = 0..DRIVERS;
    prop_oneof![
        2 => agent.clone().prop_map(Op::Join),
        1 => agent.clone().prop_map(Op::Lose),
        3 => (driver.clone(), 1u8..6).prop_map(|(d, n)| Op::Submit(d, n)),
        6 => (0usize..64, prop_oneof![
                4 => Just(Ending::Done),
                1 => Just(Ending::Crash),
                1 => Just(Ending::TaskError),
            ]).prop_map(|(k, e)| Op::Finish(k, e)),
        1 => driver.clone().prop_map(Op::DriverAway),
        1 => driver.clone().prop_map(Op::DriverDeaf),
        2 => (driver.clone(), any::<bool>()).prop_map(|(d, all)| Op::DriverBack(d, all)),
        2 => driver.clone().prop_map(Op::Ack),
        1 => (driver, 0usize..64).prop_map(|(d, k)| Op::Cancel(d, k)),
        1 => Just(Op::Tick),
        1 => agent.clone().prop_map(Op::Release),
        1 => (0..DRIVERS).prop_map(Op::OperatorCancel),
        1 => (agent.clone(), any::<bool>()).prop_map(|(a, on)| Op::Drain(a, on)),
        3 => (0usize..64, 1u8..4, prop::bool::weighted(0.15))
            .prop_map(|(k, n, other)| Op::Spawn(k, n, other)),
        2 => (0usize..64, any::<bool>()).prop_map(|(k, on)| Op::Wait(k, on)),
        1 => (0usize..64, 0usize..8).prop_map(|(k, i)| Op::Abandon(k, i)),
        1 => agent.prop_map(Op::Stopped),
    ]
}

#[derive(Default)]
struct AgentModel {
    conn: Option<ConnId>,
    revoked: Vec<(TaskRef, u32)>,
    drained: bool,
    /// Placements it was told to stop, not reported yet.
    stopping: Vec<(TaskRef, u32)>,
}

/// What the runs of a task submitted (nested tasks), and what they got back.
#[derive(Default)]
struct ParentModel {
    /// The child each ordinal named when last submitted (its digest), by any run.
    digests: BTreeMap<u32, u64>,
    /// The ordinals each attempt asked for, in order.
    asked: HashMap<u32, Vec<u32>>,
    /// (attempt, ordinal) of the results its runs received.
    got: BTreeSet<(u32, u64)>,
}

#[derive(Default)]
struct DriverModel {
    conn: Option<ConnId>,
    /// Its stream is cut silently: what the scheduler sends it is lost.
    deaf: bool,
    next_id: u64,
    submitted: BTreeSet<u64>,
    /// Submitted, no result yet.
    pending: BTreeSet<u64>,
    /// Task id -> the delivery number of its result.
    results: HashMap<u64, u64>,
    max_seq: u64,
    /// What the last opening of its session said: (resumed, known task ids).
    opened: Option<(bool, Vec<u64>)>,
}

struct World {
    core: Core,
    now: Instant,
    next_conn: ConnId,
    agents: Vec<AgentModel>,
    drivers: Vec<DriverModel>,
    /// Standing placements: task -> (agent, attempt).
    placed: BTreeMap<TaskRef, (usize, u32)>,
    attempts: HashMap<TaskRef, u32>,
    /// Placements that have started (they submitted children or waited): an agent asked to
    /// give them back keeps them.
    started: BTreeSet<(TaskRef, u32)>,
    parents: HashMap<TaskRef, ParentModel>,
    next_digest: u64,
}

impl World {
    fn new() -> Self {
        Self {
            core: Core::new(CoreConfig {
                protocol_version: 1,
                heartbeat_timeout: Duration::from_secs(3600),
                forget_lost_after: Duration::from_secs(3600),
                max_crashes: 2,
                driver_grace: Duration::from_secs(3600),
                budget: Budget {
                    tasks: 1 << 20,
                    bytes: 1 << 40,
                },
            }),
            now: Instant::now(),
            next_conn: 1,
            agents: (0..AGENTS).map(|_| AgentModel::default()).collect(),
            drivers: (0..DRIVERS).map(|_| DriverModel::default()).collect(),
            placed: BTreeMap::new(),
            attempts: HashMap::new(),
            started: BTreeSet::new(),
            parents: HashMap::new(),
            next_digest: 0,
        }
    }

    fn conn(&mut self) -> ConnId {
        self.next_conn += 1;
        self.next_conn
    }

    fn send(&mut self, event: Event) -> Result<(), TestCaseError> {
        let mut out = Vec::new();
        self.core.handle(self.now, event, &mut out);
        self.check()?;
        for command in out {
            self.absorb(command)?;
        }
        Ok(())
    }

    /// What must hold of the core after every event.
    fn check(&self) -> Result<(), TestCaseError> {
        prop_assert_eq!(self.core.jobs.counts(), self.core.jobs.counts_by_scan());
        for (no, recorded, scanned) in self.core.jobs.record_by_scan() {
            prop_assert_eq!(
                recorded,
                scanned,
                "job {}'s record (items running, queued) differs from its tasks",
                no
            );
        }
        for agent in self.core.agents() {
            prop_assert!(
                agent.waiting.is_subset(&agent.assigned),
                "agent {} waits on tasks it does not hold: {:?} of {:?}",
                agent.id(),
                agent.waiting,
                agent.assigned
            );
        }
        Ok(())
    }

    /// The k-th standing placement, on an agent that is connected: (task, attempt, stream).
    fn nth_placed(&self, k: usize) -> Option<(TaskRef, u32, ConnId)> {
        if self.placed.is_empty() {
            return None;
        }
        let (&task_ref, &(a, attempt)) = self.placed.iter().nth(k % self.placed.len())?;
        Some((task_ref, attempt, self.agents[a].conn?))
    }

    fn agent_of(&self, conn: ConnId) -> Option<usize> {
        self.agents.iter().position(|a| a.conn == Some(conn))
    }

    fn driver_of(&self, conn: ConnId) -> Option<usize> {
        self.drivers.iter().position(|d| d.conn == Some(conn))
    }

    fn absorb(&mut self, command: Command) -> Result<(), TestCaseError> {
        match command {
            Command::Assign { conn, tasks, .. } => {
                let agent = self.agent_of(conn);
                prop_assert!(agent.is_some(), "tasks placed on a stream no agent holds");
                let agent = agent.unwrap_or_default();
                prop_assert!(
                    !self.agents[agent].drained,
                    "tasks placed on a drained agent"
                );
                for task in tasks {
                    if let Some(standing) = self.placed.get(&task.task_ref) {
                        return Err(TestCaseError::fail(format!(
                            "task {} placed on agent {agent} (attempt {}) while placed on {standing:?}",
                            task.task_ref, task.attempt
                        )));
                    }
                    let last = self.attempts.insert(task.task_ref, task.attempt);
                    prop_assert!(
                        last.is_none_or(|a| a < task.attempt),
                        "attempt {} after {last:?}",
                        task.attempt
                    );
                    self.placed.insert(task.task_ref, (agent, task.attempt));
                }
            }
            Command::Deliver { conn, results } => {
                let Some(d) = self.driver_of(conn) else {
                    return Ok(()); // a stream that is gone: lost on the way
                };
                let driver = &mut self.drivers[d];
                if driver.deaf {
                    return Ok(());
                }
                for result in results {
                    prop_assert!(
                        result.task_id & jobs::CHILD_ID == 0,
                        "a nested task's result reached the driver: {result:?}"
                    );
                    prop_assert!(result.seq > 0, "a result not kept: {result:?}");
                    if let Some(&seq) = driver.results.get(&result.task_id) {
                        prop_assert_eq!(seq, result.seq, "task {} decided twice", result.task_id);
                    }
                    prop_assert!(
                        driver.submitted.contains(&result.task_id),
                        "a result for a task never submitted"
                    );
                    driver.results.insert(result.task_id, result.seq);
                    driver.pending.remove(&result.task_id);
                    driver.max_seq = driver.max_seq.max(result.seq);
                }
            }
            Command::SessionOpened {
                conn,
                resumed,
                known,
                ..
            } => {
                if let Some(d) = self.driver_of(conn) {
                    self.drivers[d].opened = Some((resumed, known));
                }
            }
            Command::Revoke { conn, tasks } => {
                if let Some(a) = self.agent_of(conn) {
                    self.agents[a].revoked.extend(tasks);
                }
            }
            Command::CancelOnAgent { refs, .. } => {
                for task_ref in refs {
                    if let Some((a, attempt)) = self.placed.remove(&task_ref) {
                        self.agents[a].stopping.push((task_ref, attempt));
                    }
                }
            }
            Command::ChildResults {
                conn,
                parent,
                attempt,
                results,
            } => {
                let at = self.placed.get(&parent).copied();
                prop_assert!(
                    at.is_some_and(|(a, at)| at == attempt && self.agents[a].conn == Some(conn)),
                    "results for task {parent} at attempt {attempt} sent to stream {conn}, \
                     where it is not placed ({at:?})"
                );
                let model = self.parents.entry(parent).or_default();
                for result in results {
                    let ordinal = result.task_id;
                    prop_assert!(
                        model
                            .asked
                            .get(&attempt)
                            .is_some_and(|asked| asked.iter().any(|&o| u64::from(o) == ordinal)),
                        "task {parent} attempt {attempt} got child {ordinal}, never asked for"
                    );
                    prop_assert!(
                        model.got.insert((attempt, ordinal)),
                        "task {parent} attempt {attempt} got child {ordinal} twice"
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Join(a) => {
                if self.agents[a].conn.is_some() {
                    return Ok(());
                }
                // Its tasks died with its stream: the core requeues them.
                self.placed.retain(|_, (agent, _)| *agent != a);
                let conn = self.conn();
                self.agents[a].conn = Some(conn);
                self.agents[a].revoked.clear();
                self.agents[a].stopping.clear();
                self.send(Event::AgentAttached {
                    conn,
                    hello: AgentHello {
                        protocol_version: 1,
                        agent_id: AgentId(format!("a{a}").into()),
                        hostname: format!("host-{a}"),
                        // The agent keeps an operator's drain across its reconnects.
                        draining: self.agents[a].drained,
                        resources: Resources {
                            cpus: 2,
                            cpu_slots: 2,
                            ..Default::default()
                        },
                        ..Default::default()
                    },
                })?;
            }
            Op::Lose(a) => {
                let Some(conn) = self.agents[a].conn.take() else {
                    return Ok(());
                };
                self.placed.retain(|_, (agent, _)| *agent != a);
                self.agents[a].stopping.clear();
                self.send(Event::AgentDetached { conn })?;
            }
            Op::Submit(d, n) => {
                let driver = &mut self.drivers[d];
                let Some(conn) = driver.conn else {
                    return Ok(());
                };
                let ids: Vec<u64> = (driver.next_id..driver.next_id + u64::from(n)).collect();
                driver.next_id += u64::from(n);
                driver.submitted.extend(&ids);
                driver.pending.extend(&ids);
                let acked = driver.max_seq;
                let tasks = ids.into_iter().map(spec).collect();
                self.send(Event::TasksSubmitted { conn, acked, tasks })?;
            }
            Op::Finish(k, ending) => {
                if self.placed.is_empty() {
                    return Ok(());
                }
                let k = k % self.placed.len();
                let Some((&task_ref, &(a, attempt))) = self.placed.iter().nth(k) else {
                    return Ok(());
                };
                let Some(conn) = self.agents[a].conn else {
                    return Ok(());
                };
                self.placed.remove(&task_ref);
                let outcome = match ending {
                    Ending::Done => Outcome::Output(bytes::Bytes::from_static(b"ok")),
                    Ending::Crash => Outcome::Failed {
                        kind: FailureKind::WorkerCrashed,
                        message: "killed by signal 9".into(),
                    },
                    Ending::TaskError => Outcome::Failed {
                        kind: FailureKind::TaskError,
                        message: "it failed".into(),
                    },
                };
                self.send(Event::AgentResults {
                    conn,
                    results: vec![AgentResult {
                        task_ref,
                        attempt,
                        outcome,
                        run_ns: 1000,
                        crashed_with: 1,
                        items_failed: 0,
                        first_item_error: String::new(),
                    }],
                })?;
            }
            Op::DriverAway(d) => {
                if let Some(conn) = self.drivers[d].conn.take() {
                    self.send(Event::DriverDetached { conn })?;
                }
            }
            Op::DriverDeaf(d) => {
                if self.drivers[d].conn.is_some() {
                    self.drivers[d].deaf = true;
                }
            }
            Op::DriverBack(d, all) => self.reopen(d, all)?,
            Op::Ack(d) => {
                let driver = &self.drivers[d];
                if let (Some(conn), false) = (driver.conn, driver.deaf) {
                    let through = driver.max_seq;
                    self.send(Event::DriverAcked { conn, through })?;
                }
            }
            Op::Cancel(d, k) => {
                let driver = &self.drivers[d];
                let (Some(conn), false) = (driver.conn, driver.pending.is_empty()) else {
                    return Ok(());
                };
                let Some(&id) = driver.pending.iter().nth(k % driver.pending.len()) else {
                    return Ok(());
                };
                self.send(Event::TasksCancelled {
                    conn,
                    task_ids: vec![id],
                })?;
            }
            Op::Tick => {
                self.now += Duration::from_millis(10);
                self.send(Event::Tick)?;
            }
            Op::OperatorCancel(d) => {
                let mut out = Vec::new();
                let _ = self.core.cancel_job(&format!("s{d}"), &mut out);
                self.check()?;
                for command in out {
                    self.absorb(command)?;
                }
            }
            Op::Drain(a, on) => {
                let mut out = Vec::new();
                if self.core.set_drain(&format!("a{a}"), on, &mut out).is_ok() {
                    self.agents[a].drained = on;
                }
                self.check()?;
                for command in out {
                    self.absorb(command)?;
                }
            }
            Op::Release(a) => {
                let Some(conn) = self.agents[a].conn else {
                    return Ok(());
                };
                let asked = std::mem::take(&mut self.agents[a].revoked);
                let (kept, released): (Vec<_>, Vec<_>) = asked
                    .into_iter()
                    .filter(|(r, at)| self.placed.get(r) == Some(&(a, *at)))
                    .partition(|p| self.started.contains(p));
                for (task_ref, _) in &released {
                    self.placed.remove(task_ref);
                }
                self.send(Event::AgentRevoked {
                    conn,
                    released,
                    kept,
                })?;
            }
            Op::Spawn(k, n, other) => {
                let Some((task_ref, attempt, conn)) = self.nth_placed(k) else {
                    return Ok(());
                };
                let model = self.parents.entry(task_ref).or_default();
                let asked = model.asked.entry(attempt).or_default();
                let first = asked.len() as u32;
                let mut children = Vec::new();
                for ordinal in first..first + u32::from(n) {
                    let digest = match model.digests.get(&ordinal) {
                        Some(&digest) if !other => digest,
                        _ => {
                            self.next_digest += 1;
                            self.next_digest
                        }
                    };
                    model.digests.insert(ordinal, digest);
                    asked.push(ordinal);
                    children.push(ChildSpec {
                        ordinal,
                        digest,
                        spec: spec(0),
                    });
                }
                self.started.insert((task_ref, attempt));
                self.send(Event::ChildrenSubmitted {
                    conn,
                    parent: task_ref,
                    attempt,
                    children,
                })?;
            }
            Op::Wait(k, waiting) => {
                let Some((task_ref, attempt, conn)) = self.nth_placed(k) else {
                    return Ok(());
                };
                self.started.insert((task_ref, attempt));
                self.send(Event::TaskWaiting {
                    conn,
                    task_ref,
                    attempt,
                    waiting,
                })?;
            }
            Op::Abandon(k, i) => {
                let Some((task_ref, attempt, conn)) = self.nth_placed(k) else {
                    return Ok(());
                };
                let Some(asked) = self
                    .parents
                    .get(&task_ref)
                    .and_then(|m| m.asked.get(&attempt))
                    .filter(|asked| !asked.is_empty())
                else {
                    return Ok(());
                };
                let ordinal = asked[i % asked.len()];
                self.send(Event::ChildrenCancelled {
                    conn,
                    parent: task_ref,
                    attempt,
                    ordinals: vec![ordinal],
                })?;
            }
            Op::Stopped(a) => {
                let Some(conn) = self.agents[a].conn else {
                    return Ok(());
                };
                let stopped = std::mem::take(&mut self.agents[a].stopping);
                if stopped.is_empty() {
                    return Ok(());
                }
                self.send(Event::AgentResults {
                    conn,
                    results: stopped
                        .into_iter()
                        .map(|(task_ref, attempt)| AgentResult {
                            task_ref,
                            attempt,
                            outcome: Outcome::Failed {
                                kind: FailureKind::Cancelled,
                                message: "stopped".into(),
                            },
                            run_ns: 0,
                            crashed_with: 0,
                            items_failed: 0,
                            first_item_error: String::new(),
                        })
                        .collect(),
                })?;
            }
        }
        Ok(())
    }

    /// The driver opens its session again (after closing the old stream if it was only deaf)
    /// and, as the SDK does, sends again what has no result and the scheduler does not hold.
    fn reopen(&mut self, d: usize, all: bool) -> Result<(), TestCaseError> {
        if self.drivers[d].deaf
            && let Some(old) = self.drivers[d].conn.take()
        {
            self.send(Event::DriverDetached { conn: old })?;
        }
        if self.drivers[d].conn.is_some() {
            return Ok(());
        }
        let conn = self.conn();
        let driver = &mut self.drivers[d];
        driver.conn = Some(conn);
        driver.deaf = false;
        driver.opened = None;
        // As the SDK does, it decides what to send again from what it had before the replay
        // (which follows the confirmation) arrives.
        let (pending, acked) = (driver.pending.clone(), driver.max_seq);
        self.send(Event::DriverOpened {
            conn,
            open: SessionOpen {
                protocol_version: 1,
                session_id: format!("s{d}"),
                job_name: "job".into(),
                ..Default::default()
            },
        })?;
        let driver = &mut self.drivers[d];
        let Some((resumed, known)) = driver.opened.take() else {
            return Err(TestCaseError::fail("no SessionOpened"));
        };
        let first = driver.submitted.is_empty();
        prop_assert!(resumed || first, "a session the core holds was not resumed");
        let known: BTreeSet<u64> = known.into_iter().collect();
        let again: Vec<TaskSpec> = pending
            .iter()
            .filter(|id| all || !known.contains(id))
            .map(|&id| spec(id))
            .collect();
        if !again.is_empty() {
            self.send(Event::TasksSubmitted {
                conn,
                acked,
                tasks: again,
            })?;
        }
        Ok(())
    }

    /// Everyone comes back and every placement finishes; then every submitted task has its
    /// result, and after the goodbyes the core holds nothing.
    fn settle(&mut self) -> Result<(), TestCaseError> {
        for a in 0..AGENTS {
            self.apply(Op::Join(a))?;
            self.apply(Op::Drain(a, false))?;
        }
        for d in 0..DRIVERS {
            if self.drivers[d].conn.is_none() || self.drivers[d].deaf {
                self.reopen(d, false)?;
            }
        }
        for _ in 0..10_000 {
            let counts = self.core.task_counts();
            if counts.queued + counts.running == 0 {
                break;
            }
            for a in 0..AGENTS {
                self.apply(Op::Release(a))?;
                self.apply(Op::Stopped(a))?;
            }
            if self.placed.is_empty() {
                self.apply(Op::Tick)?;
            } else {
                // The newest first: children before their parents, as a recursion unwinds.
                self.apply(Op::Finish(self.placed.len() - 1, Ending::Done))?;
            }
        }
        let counts = self.core.task_counts();
        prop_assert_eq!(
            counts.queued + counts.running,
            0,
            "tasks left: {:?}",
            counts
        );
        for (d, driver) in self.drivers.iter().enumerate() {
            let missing: Vec<&u64> = driver
                .submitted
                .iter()
                .filter(|id| !driver.results.contains_key(id))
                .collect();
            prop_assert!(
                missing.is_empty(),
                "driver {d} has no result for {missing:?}"
            );
        }
        for d in 0..DRIVERS {
            if let Some(conn) = self.drivers[d].conn.take() {
                self.send(Event::DriverClosed { conn })?;
            }
        }
        let counts = self.core.task_counts();
        prop_assert_eq!((counts.sessions, counts.queued, counts.running), (0, 0, 0));
        prop_assert!(self.core.jobs().is_empty());
        Ok(())
    }
}

fn spec(task_id: u64) -> TaskSpec {
    TaskSpec {
        task_id,
        function: "f".into(),
        items: 1,
        retries: 1,
        ..Default::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_result_reaches_its_driver_once_whatever_the_interleaving(
        ops in prop::collection::vec(op(), 1..120)
    ) {
        let mut world = World::new();
        // The drivers open their sessions first.
        for d in 0..DRIVERS {
            world.reopen(d, false)?;
        }
        for op in ops {
            world.apply(op)?;
        }
        world.settle()?;
    }
}
