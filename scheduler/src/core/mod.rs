//! The scheduler's logic as a synchronous state machine: events in, commands out.
//!
//! It owns no sockets, clocks or tasks: the caller passes the current time with every event and
//! carries out the commands. That is what lets the tests drive it through any interleaving of
//! joins, heartbeats and losses deterministically, with simulated time.

mod delivery;
mod jobs;
mod membership;
pub mod record;
mod task;
mod task_map;
mod types;

pub use jobs::{Budget, TaskCounts};
pub use membership::{Agent, AgentState, SelectError};
pub use types::{
    AgentHello, AgentId, AgentResult, Assigned, BlobRef, Capacity, ChildSpec, ConnId, DriverResult,
    FailureKind, GpuInfo, GpuUse, Job, JobView, Load, Outcome, Resources, SecretClaim, SessionOpen,
    TaskRef, TaskSpec,
};

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use jobs::Jobs;
use membership::Membership;

/// The knobs of the core; the shell fills them from the scheduler's settings.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub protocol_version: u32,
    /// An agent silent for longer than this is lost.
    pub heartbeat_timeout: Duration,
    /// A lost agent stays listed this long, then is forgotten.
    pub forget_lost_after: Duration,
    /// Worker crashes a task may cause before it fails with an error that says so.
    pub max_crashes: u32,
    /// How long a job waits for a driver whose stream broke before it is ended.
    pub driver_grace: Duration,
    /// What one session may have the scheduler hold at once.
    pub budget: Budget,
}

/// Something that happened, as the shell saw it.
#[derive(Clone, Debug)]
pub enum Event {
    /// A stream opened and presented its hello.
    AgentAttached {
        conn: ConnId,
        hello: AgentHello,
    },
    Heartbeat {
        conn: ConnId,
        load: Load,
    },
    /// The stream closed or broke.
    AgentDetached {
        conn: ConnId,
    },
    /// Time passed; timeouts are checked.
    Tick,
    /// A driver opened a session (one job).
    DriverOpened {
        conn: ConnId,
        open: SessionOpen,
    },
    /// Tasks of a session, and the acknowledgement that came with them (0: none).
    TasksSubmitted {
        conn: ConnId,
        acked: u64,
        tasks: Vec<TaskSpec>,
    },
    /// The driver has every result of its session up to delivery `through`.
    DriverAcked {
        conn: ConnId,
        through: u64,
    },
    TasksCancelled {
        conn: ConnId,
        task_ids: Vec<u64>,
    },
    /// The driver's stream broke: its job waits for it to come back, for a while.
    DriverDetached {
        conn: ConnId,
    },
    /// The driver said goodbye: its job ends now.
    DriverClosed {
        conn: ConnId,
    },
    AgentResults {
        conn: ConnId,
        results: Vec<AgentResult>,
    },
    /// The agent's answer to a revoke: tasks it gave back, and tasks that had started there.
    AgentRevoked {
        conn: ConnId,
        released: Vec<(TaskRef, u32)>,
        kept: Vec<(TaskRef, u32)>,
    },
    /// Tasks that the task `parent` (at `attempt`), running on the agent, submitted.
    ChildrenSubmitted {
        conn: ConnId,
        parent: TaskRef,
        attempt: u32,
        children: Vec<ChildSpec>,
    },
    /// The parent no longer wants these children's results.
    ChildrenCancelled {
        conn: ConnId,
        parent: TaskRef,
        attempt: u32,
        ordinals: Vec<u32>,
    },
    /// A running task waits for its children (its slot is free meanwhile), or resumed.
    TaskWaiting {
        conn: ConnId,
        task_ref: TaskRef,
        attempt: u32,
        waiting: bool,
    },
    /// Lines a job's tasks printed on an agent.
    AgentOutput {
        conn: ConnId,
        job_id: String,
        lines: Vec<OutputLine>,
    },
}

impl Event {
    /// Every kind of event, as [`Event::kind`] names them (the core's time per event is
    /// measured by kind).
    pub const KINDS: [&'static str; 17] = [
        "agent_attached",
        "heartbeat",
        "agent_detached",
        "tick",
        "driver_opened",
        "tasks_submitted",
        "driver_acked",
        "tasks_cancelled",
        "driver_detached",
        "driver_closed",
        "agent_results",
        "agent_revoked",
        "children_submitted",
        "children_cancelled",
        "task_waiting",
        "agent_output",
        "query",
    ];

    /// The index of its kind in [`Event::KINDS`].
    pub fn kind(&self) -> usize {
        match self {
            Self::AgentAttached { .. } => 0,
            Self::Heartbeat { .. } => 1,
            Self::AgentDetached { .. } => 2,
            Self::Tick => 3,
            Self::DriverOpened { .. } => 4,
            Self::TasksSubmitted { .. } => 5,
            Self::DriverAcked { .. } => 6,
            Self::TasksCancelled { .. } => 7,
            Self::DriverDetached { .. } => 8,
            Self::DriverClosed { .. } => 9,
            Self::AgentResults { .. } => 10,
            Self::AgentRevoked { .. } => 11,
            Self::ChildrenSubmitted { .. } => 12,
            Self::ChildrenCancelled { .. } => 13,
            Self::TaskWaiting { .. } => 14,
            Self::AgentOutput { .. } => 15,
        }
    }

    /// The kind of a query or operator action ([`Core`] used outside `handle`).
    pub const QUERY: usize = 16;
}

#[derive(Clone, Debug, PartialEq)]
pub struct OutputLine {
    pub stderr: bool,
    pub text: String,
}

/// Something the shell must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Welcome {
        conn: ConnId,
        draining: bool,
        /// A secret for an agent new here, to present when it comes back (empty: keep yours).
        secret: String,
    },
    /// Refuse the stream with this reason; the agent is not a member.
    Refuse {
        conn: ConnId,
        reason: Refusal,
    },
    /// Close a stream the core no longer listens to.
    Disconnect {
        conn: ConnId,
        reason: String,
    },
    NotifyDrain {
        conn: ConnId,
        draining: bool,
    },
    /// The session is open; `resumed` when it existed already (results it has not
    /// acknowledged follow), with the tasks the scheduler holds for it.
    SessionOpened {
        conn: ConnId,
        capacity: Capacity,
        resumed: bool,
        known: Vec<u64>,
        /// The secret a new session presents to resume (empty when resumed).
        secret: String,
    },
    /// The cluster's capacity changed (session stream): maps size their window to it.
    CapacityChanged {
        conn: ConnId,
        capacity: Capacity,
    },
    /// Run these tasks of this job (agent stream).
    Assign {
        conn: ConnId,
        job: Arc<Job>,
        tasks: Vec<Assigned>,
    },
    /// Stop these tasks if they have not finished (agent stream).
    CancelOnAgent {
        conn: ConnId,
        refs: Vec<TaskRef>,
    },
    /// Give these tasks back if they have not started (agent stream): another agent runs dry.
    Revoke {
        conn: ConnId,
        /// (task, attempt).
        tasks: Vec<(TaskRef, u32)>,
    },
    /// The job's driver is gone: stop its worker (agent stream).
    EndJob {
        conn: ConnId,
        job_id: Arc<str>,
    },
    /// Results for a driver (session stream).
    Deliver {
        conn: ConnId,
        results: Vec<DriverResult>,
    },
    /// Results of children for their parent's worker (agent stream); `task_id` is the ordinal.
    ChildResults {
        conn: ConnId,
        parent: TaskRef,
        attempt: u32,
        results: Vec<DriverResult>,
    },
    /// Something the driver's user should know (session stream).
    Notice {
        conn: ConnId,
        text: String,
    },
    /// Output of the driver's tasks (session stream).
    ForwardOutput {
        conn: ConnId,
        agent: Arc<str>,
        lines: Vec<OutputLine>,
    },
    /// The job is over: what was stored for it (big values) can go; after a while only when
    /// `driver_may_return` (its driver went away without a goodbye and may open it again).
    JobEnded {
        job_id: Arc<str>,
        driver_may_return: bool,
    },
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "protocol version mismatch: the {peer} speaks protocol {theirs}, this scheduler speaks protocol {scheduler}"
    )]
    ProtocolMismatch {
        peer: &'static str,
        theirs: u32,
        scheduler: u32,
    },
    #[error("invalid hello: {0}")]
    InvalidHello(String),
    /// Somebody claimed an agent's or a session's identity without its secret.
    #[error(
        "{what} is already known here and belongs to another connection: a returning {kind} must present the secret the scheduler gave it (an agent whose state directory lost its agent-secret joins as a new agent once its agent-id is removed too)"
    )]
    Impersonation { what: String, kind: &'static str },
}

pub struct Core {
    config: CoreConfig,
    membership: Membership,
    jobs: Jobs,
    /// When a look for tasks to steal after a result last found none.
    futile_steal: Option<Instant>,
    /// The capacity drivers were last told of.
    capacity: Capacity,
}

/// How long after a fruitless look for tasks to steal a result may trigger another.
const STEAL_PAUSE: Duration = Duration::from_millis(1);

impl Core {
    pub fn new(config: CoreConfig) -> Self {
        Self {
            jobs: Jobs::new(config.max_crashes, config.budget),
            config,
            membership: Membership::default(),
            futile_steal: None,
            capacity: Capacity::default(),
        }
    }

    /// Tells every connected driver the cluster's capacity if it changed since last told, so
    /// that running maps follow agents joining, leaving and being drained.
    fn tell_capacity(&mut self, out: &mut Vec<Command>) {
        let capacity = Jobs::capacity(&self.membership);
        if capacity == self.capacity {
            return;
        }
        self.jobs
            .tell_no_agents(capacity.agents, &self.membership, out);
        self.capacity = capacity.clone();
        for conn in self.jobs.driver_conns() {
            out.push(Command::CapacityChanged {
                conn,
                capacity: capacity.clone(),
            });
        }
    }

    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// Whether a peer's protocol version is this scheduler's; refuses the stream otherwise.
    fn speaks(
        &self,
        conn: ConnId,
        peer: &'static str,
        version: u32,
        out: &mut Vec<Command>,
    ) -> bool {
        if version == self.config.protocol_version {
            return true;
        }
        out.push(Command::Refuse {
            conn,
            reason: Refusal::ProtocolMismatch {
                peer,
                theirs: version,
                scheduler: self.config.protocol_version,
            },
        });
        false
    }

    /// Applies one event at time `now`, appending what must be done to `out`.
    pub fn handle(&mut self, now: Instant, event: Event, out: &mut Vec<Command>) {
        self.jobs.record.at(now);
        match event {
            Event::AgentAttached { conn, hello } => {
                if !self.speaks(conn, "agent", hello.protocol_version, out) {
                    return;
                }
                if let Err(why) = hello.validate() {
                    out.push(Command::Refuse {
                        conn,
                        reason: Refusal::InvalidHello(why),
                    });
                    return;
                }
                // Before anything changes: a refused claim must not disturb the agent it names.
                if let Err(refusal) = self.membership.check_claim(&hello) {
                    out.push(Command::Refuse {
                        conn,
                        reason: refusal,
                    });
                    return;
                }
                // An agent that comes back has dropped whatever it held: place that again.
                self.jobs
                    .requeue_from(&hello.agent_id, &mut self.membership);
                let has_gpus = !hello.resources.gpus.is_empty();
                if has_gpus {
                    self.jobs.gpus_came();
                }
                self.membership.attach(now, conn, hello, out);
                self.tell_capacity(out);
                self.jobs.place(&mut self.membership, out);
                // An agent that came back without its GPUs, or drained, may leave none to take
                // GPU work (this says nothing while one does).
                self.jobs.tell_no_gpu(&self.membership, out);
            }
            Event::Heartbeat { conn, load } => self.membership.heartbeat(now, conn, load),
            Event::AgentDetached { conn } => {
                if let Some(lost) = self.membership.detach(now, conn) {
                    self.tell_capacity(out);
                    self.jobs.requeue_from(&lost, &mut self.membership);
                    self.jobs.place(&mut self.membership, out);
                    self.jobs.tell_no_gpu(&self.membership, out);
                }
            }
            Event::Tick => {
                let lost = self.membership.expire(
                    now,
                    self.config.heartbeat_timeout,
                    self.config.forget_lost_after,
                    out,
                );
                for agent in &lost {
                    self.jobs.requeue_from(agent, &mut self.membership);
                }
                self.jobs
                    .expire(now, self.config.driver_grace, &self.membership, out);
                if !lost.is_empty() {
                    self.tell_capacity(out);
                    self.jobs.place(&mut self.membership, out);
                    self.jobs.tell_no_gpu(&self.membership, out);
                }
                self.jobs.steal(&self.membership, out);
                self.futile_steal = None;
            }
            Event::DriverOpened { conn, open } => {
                if !self.speaks(conn, "driver", open.protocol_version, out) {
                    return;
                }
                // The confirmation goes first; results kept for a returning driver follow.
                let mark = out.len();
                let reopened = match self.jobs.open(conn, open, out) {
                    Ok(reopened) => reopened,
                    Err(refusal) => {
                        out.push(Command::Refuse {
                            conn,
                            reason: refusal,
                        });
                        return;
                    }
                };
                if let Some(old) = reopened.old {
                    out.push(Command::Disconnect {
                        conn: old,
                        reason: "the driver opened its session again on a new stream".into(),
                    });
                }
                out.insert(
                    mark,
                    Command::SessionOpened {
                        conn,
                        capacity: Jobs::capacity(&self.membership),
                        resumed: reopened.resumed,
                        known: reopened.known,
                        secret: reopened.secret,
                    },
                );
            }
            Event::DriverAcked { conn, through } => self.jobs.ack(conn, through),
            Event::TasksSubmitted { conn, acked, tasks } => {
                let needs_gpu = tasks.iter().any(|t| t.gpu == GpuUse::Required);
                // The acknowledgement first: it gives these tasks their room in the budget.
                self.jobs.ack(conn, acked);
                self.jobs.submit(conn, tasks, out);
                if self.capacity.agents == 0 {
                    self.jobs.tell_no_agents(0, &self.membership, out);
                }
                self.jobs.place(&mut self.membership, out);
                if needs_gpu {
                    self.jobs.tell_no_gpu(&self.membership, out);
                }
            }
            Event::TasksCancelled { conn, task_ids } => {
                self.jobs
                    .cancel_by_driver(conn, &task_ids, &self.membership, out);
                self.jobs.place(&mut self.membership, out);
            }
            Event::DriverDetached { conn } => self.jobs.detach(conn, now),
            Event::DriverClosed { conn } => {
                self.jobs.close(conn, &self.membership, out);
                self.jobs.place(&mut self.membership, out);
            }
            Event::AgentResults { conn, results } => {
                self.jobs.results(conn, results, &mut self.membership, out);
                // Only this agent's room changed, unless a task went back to the queue.
                let agent = self.membership.current(conn).map(|a| a.id().clone());
                match agent {
                    Some(agent) if !self.jobs.take_requeued() => {
                        self.jobs.place_on(&mut self.membership, &agent, out);
                    }
                    _ => self.jobs.place(&mut self.membership, out),
                }
                // An agent that ran dry while others hold a backlog takes some of it. Looking
                // costs a pass over every agent: after a look that found nothing, the next
                // waits a millisecond (a thousand agents finishing tiny tasks would otherwise
                // spend the scheduler on it), and the clock's tick looks in any case.
                let looked_lately = self
                    .futile_steal
                    .is_some_and(|at| now.saturating_duration_since(at) < STEAL_PAUSE);
                if self.jobs.nothing_queued()
                    && !looked_lately
                    && self
                        .membership
                        .current(conn)
                        .is_some_and(|a| a.accepts_work() && a.free_cpus() > 0)
                {
                    let asked = self.jobs.steal(&self.membership, out);
                    self.futile_steal = (!asked).then_some(now);
                }
            }
            Event::AgentRevoked {
                conn,
                released,
                kept,
            } => {
                self.jobs
                    .revoked(conn, &released, &kept, &mut self.membership);
                self.jobs.place(&mut self.membership, out);
            }
            Event::ChildrenSubmitted {
                conn,
                parent,
                attempt,
                children,
            } => {
                self.jobs
                    .submit_children(conn, parent, attempt, children, &self.membership, out);
                self.jobs.place(&mut self.membership, out);
            }
            Event::ChildrenCancelled {
                conn,
                parent,
                attempt,
                ordinals,
            } => {
                self.jobs
                    .cancel_children(conn, parent, attempt, &ordinals, &self.membership, out);
                self.jobs.place(&mut self.membership, out);
            }
            Event::TaskWaiting {
                conn,
                task_ref,
                attempt,
                waiting,
            } => {
                let freed =
                    self.jobs
                        .set_waiting(conn, task_ref, attempt, waiting, &mut self.membership);
                if let Some(agent) = freed {
                    self.jobs.place_on(&mut self.membership, &agent, out);
                }
            }
            Event::AgentOutput {
                conn,
                job_id,
                lines,
            } => {
                let Some(agent) = self.membership.current(conn) else {
                    return;
                };
                if let Some(driver) = self.jobs.output_to(&job_id, agent, &lines) {
                    out.push(Command::ForwardOutput {
                        conn: driver,
                        agent: agent.host.clone(),
                        lines,
                    });
                }
            }
        }
    }

    /// The jobs now open, as operators see them.
    pub fn jobs(&self) -> Vec<JobView> {
        self.jobs.views()
    }

    /// Cancels every unfinished task of the job `selector` names (id, id prefix or name).
    pub fn cancel_job(
        &mut self,
        selector: &str,
        out: &mut Vec<Command>,
    ) -> Result<(JobView, u64), SelectError> {
        let result = self.jobs.cancel_job(selector, &self.membership, out);
        self.jobs.place(&mut self.membership, out);
        result
    }

    /// What operators see of the work: jobs in items, their tasks and output, finished jobs,
    /// the task stream and the cluster's counters.
    pub fn record(&self) -> &record::Record {
        &self.jobs.record
    }

    pub fn task_counts(&self) -> TaskCounts {
        self.jobs.counts()
    }

    /// Whether a job of this id (session id) is open.
    pub fn has_job(&self, job_id: &str) -> bool {
        self.jobs.has_job(job_id)
    }

    pub fn is_session(&self, conn: ConnId) -> bool {
        self.jobs.is_session(conn)
    }

    /// Drains or undrains the agent that `selector` names (id, id prefix or hostname).
    pub fn set_drain(
        &mut self,
        selector: &str,
        draining: bool,
        out: &mut Vec<Command>,
    ) -> Result<&Agent, SelectError> {
        let agent = self
            .membership
            .set_drain(selector, draining, out)?
            .id()
            .clone();
        self.tell_capacity(out);
        if draining {
            self.jobs.tell_no_gpu(&self.membership, out);
        } else {
            if self
                .membership
                .get(&agent)
                .is_some_and(|a| a.gpu_slots() > 0)
            {
                self.jobs.gpus_came();
            }
            self.jobs.place(&mut self.membership, out);
        }
        self.membership
            .get(&agent)
            .ok_or_else(|| SelectError::NotFound(selector.to_owned()))
    }

    pub fn agents(&self) -> impl Iterator<Item = &Agent> {
        self.membership.agents()
    }

    pub fn agent(&self, id: &AgentId) -> Option<&Agent> {
        self.membership.get(id)
    }
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
