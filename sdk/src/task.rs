//! What a task is, and how it fails.

use std::fmt;

use serde::{Serialize, de::DeserializeOwned};

/// A function a cluster can run; `#[ladle::task]` implements it. The value of the type is
/// the handle you pass to `submit`, `map` and `map_reduce`.
pub trait Task: Copy + Send + Sync + 'static {
    /// The argument (a tuple for several).
    type Input: Serialize + DeserializeOwned + Send + 'static;
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// The name workers look the task up by.
    const NAME: &'static str;
    /// Whether the task needs (or prefers) a GPU slot.
    const GPU: crate::GpuUse;
    /// Runs the body; an `Err` carries the task's own error message.
    fn run(input: Self::Input) -> Result<Self::Output, String>;
}

/// A task that folds two values of its output type into one: the reducer of `map_reduce`.
/// `#[ladle::task]` implements it for functions of the form `fn(T, T) -> T`.
pub trait Reducer: Task<Input = (<Self as Task>::Output, <Self as Task>::Output)> {}

/// Why a future failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The task returned an error or panicked.
    Failed,
    /// The worker has no task of that name: it runs a different build.
    UnknownTask,
    /// The task crashed its worker process each time it ran.
    WorkerCrashed,
    /// The agent could not start a worker for the job.
    WorkerStart,
    Cancelled,
    TimedOut,
    /// The worker could not decode the input, or the driver the output.
    BadData,
    /// The argument or result is larger than the cluster carries (`max_value_bytes`).
    TooLarge,
    /// The scheduler refused the task (its session sent past its admission budget).
    Refused,
    /// The connection to the scheduler was lost.
    Disconnected,
}

/// The error of a future: what failed, where, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskError {
    pub kind: ErrorKind,
    /// The task's registered name.
    pub task: String,
    pub message: String,
    /// The agent it last ran on (empty when it never ran).
    pub agent: String,
    pub attempt: u32,
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ErrorKind::Failed => "failed",
            ErrorKind::UnknownTask => "is unknown to the worker",
            ErrorKind::WorkerCrashed => "crashed its worker",
            ErrorKind::WorkerStart => "could not start a worker",
            ErrorKind::Cancelled => "was cancelled",
            ErrorKind::TimedOut => "timed out",
            ErrorKind::BadData => "could not be decoded",
            ErrorKind::TooLarge => "is too large",
            ErrorKind::Refused => "was refused by the scheduler",
            ErrorKind::Disconnected => "lost its scheduler",
        };
        write!(f, "task {} {what}", self.task)?;
        if !self.agent.is_empty() {
            write!(f, " on agent {} (attempt {})", self.agent, self.attempt)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for TaskError {}
