//! The core's own view of agents, independent of the wire format.

use std::{collections::BTreeMap, fmt, sync::Arc};

use bytes::Bytes;

/// One stream from one agent; a reconnecting agent gets a new one.
pub type ConnId = u64;

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
/// Cheap to clone: every running task names its agent.
pub struct AgentId(pub Arc<str>);

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuInfo {
    pub ordinal: u32,
    pub name: String,
    pub memory_bytes: u64,
    pub compute_capability: String,
    pub declared: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    pub cpus: u32,
    pub memory_bytes: u64,
    pub cpu_slots: u32,
    pub gpus: Vec<GpuInfo>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Load {
    pub busy_cpu_slots: u32,
    pub busy_gpu_slots: u32,
    pub load_average: f64,
    pub memory_available_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentHello {
    pub protocol_version: u32,
    pub agent_id: AgentId,
    pub hostname: String,
    pub version: String,
    pub resources: Resources,
    pub labels: BTreeMap<String, String>,
    pub discovery: String,
    /// Drained by an operator, by way of an earlier scheduler perhaps, and not undrained since.
    pub draining: bool,
    /// Where the stream comes from, as the shell saw it.
    pub peer: String,
    /// Proof of identity: the digest of the secret the agent presented (empty: none), and a
    /// fresh secret with its digest, which the agent is given if it is new here.
    pub secret: SecretClaim,
}

/// The secret a returning agent or driver presents, and the one it is given if it is new: the
/// shell draws them (the core stays deterministic) and the core keeps only digests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SecretClaim {
    pub presented_digest: String,
    pub issued: String,
    pub issued_digest: String,
}

/// Longest agent id, hostname or label the scheduler keeps; longer ones are refused.
const MAX_TEXT: usize = 256;

impl AgentHello {
    pub(crate) fn validate(&self) -> Result<(), String> {
        let id = &self.agent_id.0;
        if id.is_empty() {
            return Err("the agent id is empty".into());
        }
        if id.len() > MAX_TEXT || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(format!(
                "agent id {id:?} is not a short string of letters, digits and '-'"
            ));
        }
        if self.hostname.len() > MAX_TEXT {
            return Err("the hostname is longer than 256 bytes".into());
        }
        // Operators read these in tables and logs: no escape sequence reaches their terminal.
        if self.hostname.chars().any(char::is_control) {
            return Err(format!(
                "the hostname {:?} holds control characters",
                self.hostname
            ));
        }
        if self.resources.cpu_slots == 0 && self.resources.gpus.is_empty() {
            return Err("the agent offers no CPU slot and no GPU".into());
        }
        if let Some((k, _)) = self
            .labels
            .iter()
            .find(|(k, v)| k.len() > MAX_TEXT || v.len() > MAX_TEXT)
        {
            return Err(format!("label {k:?} is longer than 256 bytes"));
        }
        if let Some((k, _)) = self
            .labels
            .iter()
            .find(|(k, v)| k.chars().chain(v.chars()).any(char::is_control))
        {
            return Err(format!("label {k:?} holds control characters"));
        }
        Ok(())
    }
}

/// The scheduler's own number for a task, unique for the scheduler's lifetime.
pub type TaskRef = u64;

/// A content-addressed blob (executable or shared constant).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlobRef {
    pub sha256: String,
    pub size: u64,
}

/// What a driver asks for when it opens a session.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SessionOpen {
    pub protocol_version: u32,
    pub session_id: String,
    pub job_name: String,
    pub executable: BlobRef,
    pub driver_host: String,
    pub secret: SecretClaim,
}

/// The job a task belongs to, as agents see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub id: Arc<str>,
    pub name: String,
    pub executable: BlobRef,
    pub driver_host: String,
}

/// A job as operators see it.
#[derive(Clone, Debug, PartialEq)]
pub struct JobView {
    pub job: Arc<Job>,
    pub unfinished: u64,
    pub running: u64,
    pub delivered: u64,
    /// Results delivered that the driver has not acknowledged yet (kept for it).
    pub unacked: u64,
    pub driver_connected: bool,
}

/// One unit of placement: a chunk of items of one task function.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskSpec {
    pub task_id: u64,
    pub function: Arc<str>,
    pub payload: Bytes,
    pub items: u32,
    pub reducer: Option<Arc<str>>,
    pub shared: Vec<String>,
    pub priority: i32,
    pub retries: u32,
    pub timeout_ms: u64,
    pub gpu: GpuUse,
    /// Set instead of `payload` for a big argument: it is in the blob store.
    pub payload_blob: Option<BlobRef>,
}

/// A task that a running task submitted (nested futures): identified by its parent and its
/// ordinal (the order of submission in the parent's run), and described by a digest of what it
/// is, so that a parent that runs again gets the result of the same child, not of another.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChildSpec {
    pub ordinal: u32,
    pub digest: u64,
    pub spec: TaskSpec,
}

/// Whether a task runs on a GPU slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GpuUse {
    /// CPU slots only.
    #[default]
    None,
    /// Only on a free GPU slot: it waits while none is free.
    Required,
    /// On a free GPU slot when there is one, else on a CPU slot.
    Preferred,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    TaskError,
    UnknownTask,
    WorkerCrashed,
    Cancelled,
    TimedOut,
    BadInput,
    WorkerStart,
    /// The result was larger than the cluster's `max_value_bytes`.
    TooLarge,
    /// The scheduler refused the task (its session sent past its budget).
    Refused,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Output(Bytes),
    /// A big output, in the blob store.
    Stored(BlobRef),
    Failed {
        kind: FailureKind,
        message: String,
    },
}

/// A task as handed to an agent.
#[derive(Clone, Debug, PartialEq)]
pub struct Assigned {
    pub task_ref: TaskRef,
    pub attempt: u32,
    pub spec: TaskSpec,
    /// Run it alone, in a worker of its own.
    pub isolated: bool,
    /// Run it on one of the agent's GPU slots.
    pub gpu: bool,
}

/// What an agent reports for one task.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentResult {
    pub task_ref: TaskRef,
    pub attempt: u32,
    pub outcome: Outcome,
    pub run_ns: u64,
    /// For a worker crash: how many tasks the worker held when it died.
    pub crashed_with: u32,
    /// Items of a chunk whose own run failed (the chunk's result carries their errors), and
    /// the first of those errors: what operators see of a map's failures.
    pub items_failed: u32,
    pub first_item_error: String,
}

/// What a driver receives for one task.
#[derive(Clone, Debug, PartialEq)]
pub struct DriverResult {
    pub task_id: u64,
    pub attempt: u32,
    pub agent: Arc<str>,
    pub outcome: Outcome,
    pub run_ns: u64,
    /// It ran on a GPU slot.
    pub gpu: bool,
    /// The session's delivery number ([`super::delivery`]); 0 until delivered, and for a
    /// refusal, which is not kept.
    pub seq: u64,
}

/// The capacity of the cluster, as a driver is told when its session opens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    pub agents: u32,
    pub cpu_slots: u32,
    pub gpu_slots: u32,
}
