//! Which agents belong to the cluster, and in what state.

use std::time::{Duration, Instant};

// Keys are the scheduler's own numbers and ids from authenticated peers: a fast hash is safe.
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use tracing::{info, warn};

use super::{AgentHello, AgentId, Command, ConnId, Load, TaskRef};

/// How much queued work per slot keeps an agent busy across a scheduler round trip.
pub const QUEUED_WORK: Duration = Duration::from_millis(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentState {
    Alive,
    Draining,
    Lost,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Draining => "draining",
            Self::Lost => "lost",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Agent {
    pub hello: AgentHello,
    /// The digest of the secret this agent was given when it first joined: it must present it
    /// to come back as itself.
    pub secret_digest: String,
    pub load: Load,
    /// The stream the core listens to; none while lost.
    pub conn: Option<ConnId>,
    /// Kept across reconnects: an operator's drain outlives a network blip.
    pub draining: bool,
    pub last_seen: Instant,
    pub connected_at: Instant,
    /// Tasks handed to the agent that it has not reported back on.
    pub assigned: HashSet<TaskRef>,
    /// Those of them that hold one of its GPU slots.
    pub gpu_assigned: HashSet<TaskRef>,
    /// CPU tasks of `assigned` that wait for their children: their slots are free meanwhile.
    pub waiting: HashSet<TaskRef>,
    /// Its last revoke got nothing back (every task had started): not asked again until it
    /// is given more.
    pub revoke_futile: bool,
    /// Hostname, shared with every result the agent produces.
    pub host: std::sync::Arc<str>,
    /// Recent time a task takes there (moving average of what the agent reports).
    pub task_ns: Option<f64>,
    /// Results it reported since it joined (stale ones included): for the dashboard.
    pub results: u64,
}

impl Agent {
    /// Tasks to hand the agent beyond its slots so that none waits on a round trip: enough
    /// for about [`QUEUED_WORK`] of work per slot, between one and 64 tasks per slot.
    pub fn prefetch(&self) -> i64 {
        let slots = i64::from(self.hello.resources.cpu_slots.max(1));
        let per_slot = match self.task_ns {
            Some(ns) if ns > 0.0 => (QUEUED_WORK.as_nanos() as f64 / ns).clamp(1.0, 64.0) as i64,
            _ => 1,
        };
        slots * per_slot
    }

    pub fn gpu_slots(&self) -> usize {
        self.hello.resources.gpus.len()
    }

    /// GPU slots not holding a task.
    pub fn free_gpus(&self) -> usize {
        self.gpu_slots().saturating_sub(self.gpu_assigned.len())
    }

    /// CPU slots not holding a task; below zero when tasks wait on the agent.
    pub fn free_cpus(&self) -> i64 {
        let cpu_tasks = self.assigned.len() - self.gpu_assigned.len().min(self.assigned.len());
        let cpu_tasks = cpu_tasks - self.waiting.len().min(cpu_tasks);
        i64::from(self.hello.resources.cpu_slots) - cpu_tasks as i64
    }

    pub(super) fn observe(&mut self, run_ns: u64) {
        if run_ns > 0 {
            let ns = run_ns as f64;
            self.task_ns = Some(self.task_ns.map_or(ns, |old| 0.8 * old + 0.2 * ns));
        }
    }

    /// Whether new work may go there.
    pub fn accepts_work(&self) -> bool {
        self.state() == AgentState::Alive
    }

    pub fn id(&self) -> &AgentId {
        &self.hello.agent_id
    }

    pub fn state(&self) -> AgentState {
        match (self.conn, self.draining) {
            (None, _) => AgentState::Lost,
            (Some(_), true) => AgentState::Draining,
            (Some(_), false) => AgentState::Alive,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SelectError {
    #[error("no agent matches {0:?}")]
    NotFound(String),
    #[error("{selector:?} matches several agents ({}): give more of the id", matches.join(", "))]
    Ambiguous {
        selector: String,
        matches: Vec<String>,
    },
}

#[derive(Default)]
pub(super) struct Membership {
    agents: HashMap<AgentId, Agent>,
    by_conn: HashMap<ConnId, AgentId>,
}

impl Membership {
    /// Refuses a hello that claims a known agent's id without that agent's secret.
    pub(super) fn check_claim(&self, hello: &AgentHello) -> Result<(), super::Refusal> {
        match self.agents.get(&hello.agent_id) {
            Some(agent)
                if !agent.secret_digest.is_empty()
                    && agent.secret_digest != hello.secret.presented_digest =>
            {
                // Logged (at a bounded rate) and counted by the shell, with the other refusals.
                Err(super::Refusal::Impersonation {
                    what: format!("agent {}", hello.agent_id),
                    kind: "agent",
                })
            }
            _ => Ok(()),
        }
    }

    pub(super) fn attach(
        &mut self,
        now: Instant,
        conn: ConnId,
        hello: AgentHello,
        out: &mut Vec<Command>,
    ) {
        let mut hello = hello;
        let claim = std::mem::take(&mut hello.secret);
        let id = hello.agent_id.clone();
        let mut secret = String::new();
        let draining = match self.agents.get_mut(&id) {
            Some(agent) => {
                // The same agent on a new stream: the old one is half-open or about to close.
                if let Some(old) = agent.conn.replace(conn) {
                    self.by_conn.remove(&old);
                    out.push(Command::Disconnect {
                        conn: old,
                        reason: "replaced by a newer stream from the same agent".into(),
                    });
                }
                info!(agent = %id, host = %hello.hostname, "agent rejoined");
                if agent.secret_digest.is_empty() {
                    agent.secret_digest = claim.issued_digest.clone();
                    secret = claim.issued.clone();
                }
                agent.host = hello.hostname.as_str().into();
                agent.hello = hello;
                agent.last_seen = now;
                agent.connected_at = now;
                agent.load = Load::default();
                agent.draining
            }
            None => {
                info!(agent = %id, host = %hello.hostname, slots = hello.resources.cpu_slots,
                      gpus = hello.resources.gpus.len(), draining = hello.draining, "agent joined");
                // A scheduler that knows the agent goes by what it was told last (above); one
                // meeting it for the first time (restarted, say) by what the agent remembers.
                let draining = hello.draining;
                secret = claim.issued.clone();
                self.agents.insert(
                    id.clone(),
                    Agent {
                        secret_digest: claim.issued_digest.clone(),
                        task_ns: None,
                        results: 0,
                        host: hello.hostname.as_str().into(),
                        assigned: HashSet::default(),
                        gpu_assigned: HashSet::default(),
                        waiting: HashSet::default(),
                        revoke_futile: false,
                        hello,
                        load: Load::default(),
                        conn: Some(conn),
                        draining,
                        last_seen: now,
                        connected_at: now,
                    },
                );
                draining
            }
        };
        self.by_conn.insert(conn, id);
        out.push(Command::Welcome {
            conn,
            draining,
            secret,
        });
    }

    pub(super) fn heartbeat(&mut self, now: Instant, conn: ConnId, load: Load) {
        if let Some(agent) = self.current(conn) {
            agent.last_seen = now;
            agent.load = load;
        }
    }

    /// Returns the agent that was lost, if the stream was the one the core listened to.
    pub(super) fn detach(&mut self, now: Instant, conn: ConnId) -> Option<AgentId> {
        let id = self.by_conn.remove(&conn)?;
        let agent = self.agents.get_mut(&id)?;
        agent.conn = None;
        agent.last_seen = agent.last_seen.min(now);
        warn!(agent = %id, host = %agent.hello.hostname, "agent lost: its stream closed");
        Some(id)
    }

    /// Loses the agents silent for longer than `timeout`; returns them.
    pub(super) fn expire(
        &mut self,
        now: Instant,
        timeout: Duration,
        forget_after: Duration,
        out: &mut Vec<Command>,
    ) -> Vec<AgentId> {
        let mut lost = Vec::new();
        for agent in self.agents.values_mut() {
            let silent = now.saturating_duration_since(agent.last_seen);
            if let Some(conn) = agent.conn
                && silent > timeout
            {
                agent.conn = None;
                self.by_conn.remove(&conn);
                warn!(agent = %agent.id(), host = %agent.hello.hostname,
                      "agent lost: no heartbeat for {:.1}s", silent.as_secs_f64());
                out.push(Command::Disconnect {
                    conn,
                    reason: format!("no heartbeat for {:.1}s", silent.as_secs_f64()),
                });
                lost.push(agent.id().clone());
            }
        }
        self.agents.retain(|_, agent| {
            agent.conn.is_some()
                || !agent.assigned.is_empty()
                || now.saturating_duration_since(agent.last_seen) <= forget_after
        });
        lost
    }

    pub(super) fn set_drain(
        &mut self,
        selector: &str,
        draining: bool,
        out: &mut Vec<Command>,
    ) -> Result<&super::Agent, SelectError> {
        let id = self.select(selector)?;
        let agent = self
            .agents
            .get_mut(&id)
            .ok_or_else(|| SelectError::NotFound(selector.to_owned()))?;
        if agent.draining != draining {
            agent.draining = draining;
            info!(agent = %id, draining, "drain state changed by the operator");
            if let Some(conn) = agent.conn {
                out.push(Command::NotifyDrain { conn, draining });
            }
        }
        Ok(agent)
    }

    /// An exact id, else a unique id prefix, else a unique hostname.
    fn select(&self, selector: &str) -> Result<AgentId, SelectError> {
        let exact = AgentId(selector.into());
        if self.agents.contains_key(&exact) {
            return Ok(exact);
        }
        let pick = |matches: Vec<&AgentId>| -> Option<Result<AgentId, SelectError>> {
            match matches.as_slice() {
                [] => None,
                [one] => Some(Ok((*one).clone())),
                many => Some(Err(SelectError::Ambiguous {
                    selector: selector.to_owned(),
                    matches: many.iter().map(|id| id.0.to_string()).collect(),
                })),
            }
        };
        if !selector.is_empty() {
            let by_prefix = self
                .agents
                .keys()
                .filter(|id| id.0.starts_with(selector))
                .collect();
            if let Some(found) = pick(by_prefix) {
                return found;
            }
        }
        let by_host = self
            .agents
            .values()
            .filter(|a| a.hello.hostname == selector)
            .map(Agent::id)
            .collect();
        pick(by_host).unwrap_or_else(|| Err(SelectError::NotFound(selector.to_owned())))
    }

    pub(super) fn current(&mut self, conn: ConnId) -> Option<&mut Agent> {
        let id = self.by_conn.get(&conn)?;
        self.agents.get_mut(id)
    }

    /// The agent on stream `conn`, to read.
    pub(super) fn on(&self, conn: ConnId) -> Option<&Agent> {
        self.agents.get(self.by_conn.get(&conn)?)
    }

    pub(super) fn get_mut(&mut self, id: &AgentId) -> Option<&mut Agent> {
        self.agents.get_mut(id)
    }

    pub(super) fn agents(&self) -> impl Iterator<Item = &Agent> {
        self.agents.values()
    }

    pub(super) fn get(&self, id: &AgentId) -> Option<&Agent> {
        self.agents.get(id)
    }
}
