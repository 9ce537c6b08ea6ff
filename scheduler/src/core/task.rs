//! One task as the scheduler holds it, and the one place that decides what an attempt's end
//! means for it: a result for its driver, or another attempt (its own error with retries left,
//! a worker crash it may not be guilty of, or one under `max_task_crashes`).

use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;

use super::{AgentId, DriverResult, FailureKind, Outcome, TaskRef, TaskSpec};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum TaskState {
    Queued,
    Running(AgentId),
}

pub(super) struct Task {
    pub session: u64,
    pub spec: TaskSpec,
    /// Tells one placement's results from another's: each placement is a new attempt.
    pub attempt: u32,
    /// Placements an agent gave back before they started (their work moved to another agent):
    /// counted in `attempt`, not in the attempts a driver is told of, which are runs.
    pub given_back: u32,
    /// Runs again after its own error this many more times (the driver's `retries`).
    pub retries_left: u32,
    /// Worker crashes it is held responsible for, and the hosts they happened on (for its
    /// error); the agents of every crash it was in (placement sends it elsewhere when it can).
    pub crashes: u32,
    pub crashed_on: Vec<Arc<str>>,
    pub crashed_agents: Vec<AgentId>,
    /// Runs alone from now on: it was in a worker that crashed with others.
    pub isolated: bool,
    pub seq: u64,
    pub state: TaskState,
    /// Holds one of its agent's GPU slots while running.
    pub on_gpu: bool,
    /// Its agent was asked to give it back, and has not answered yet.
    pub revoking: bool,
    /// Its place in a tree of nested tasks: none for a driver's task without children (boxed:
    /// most tasks have none, and a million queued tasks each pay for the field).
    pub nest: Option<Box<Nest>>,
}

/// A task's parent and children (nested futures).
#[derive(Default)]
pub(super) struct Nest {
    /// The task that submitted this one, and this one's ordinal there; none for a driver's task.
    pub parent: Option<(TaskRef, u32)>,
    /// How many parents above it: deeper tasks are placed first, so that a recursion finishes
    /// its branches before it opens new ones (and holds few waiting tasks).
    pub depth: u32,
    /// The children it submitted, by ordinal: kept until it has its own result, so that a run
    /// of it after its agent was lost gets the results of the children that finished.
    pub children: HashMap<u32, Child>,
}

pub(super) struct Child {
    /// What the child is (function and argument), as its parent's worker described it.
    pub digest: u64,
    /// The parent's attempt that last submitted it: its result goes to that attempt only.
    pub claimed: u32,
    pub state: ChildState,
}

pub(super) enum ChildState {
    Live(TaskRef),
    /// Its result (`task_id` is the ordinal).
    Done(DriverResult),
}

impl Nest {
    /// Children with a result, kept here.
    pub(super) fn results_held(&self) -> u64 {
        self.children
            .values()
            .filter(|c| matches!(c.state, ChildState::Done(_)))
            .count() as u64
    }
}

/// What an attempt's end means.
#[derive(Debug, PartialEq)]
pub(super) enum Verdict {
    /// Place it again, as a new attempt.
    Again,
    /// This is its result.
    Final(Outcome),
}

impl Task {
    pub(super) fn new(session: u64, spec: TaskSpec, seq: u64) -> Self {
        Self {
            session,
            retries_left: spec.retries,
            spec,
            attempt: 1,
            given_back: 0,
            crashes: 0,
            crashed_on: Vec::new(),
            crashed_agents: Vec::new(),
            isolated: false,
            seq,
            state: TaskState::Queued,
            on_gpu: false,
            revoking: false,
            nest: None,
        }
    }

    /// Its ordinal and parent, if a task submitted it.
    pub(super) fn parent(&self) -> Option<(TaskRef, u32)> {
        self.nest.as_ref().and_then(|n| n.parent)
    }

    pub(super) fn depth(&self) -> u32 {
        self.nest.as_ref().map_or(0, |n| n.depth)
    }

    /// The attempts that may have run: what a driver's result or an operator's listing says.
    pub(super) fn runs(&self) -> u32 {
        self.attempt.saturating_sub(self.given_back)
    }

    pub(super) fn runs_on(&self, agent: &AgentId) -> bool {
        matches!(&self.state, TaskState::Running(a) if a == agent)
    }

    /// The current attempt ended with `outcome` on `agent` (`host`); `crashed_with` is how many
    /// tasks its worker held if it crashed.
    pub(super) fn judge(
        &mut self,
        outcome: Outcome,
        crashed_with: u32,
        agent: &AgentId,
        host: &Arc<str>,
        max_crashes: u32,
    ) -> Verdict {
        match outcome {
            Outcome::Failed {
                kind: FailureKind::WorkerCrashed,
                message,
            } => {
                if !self.crashed_agents.contains(agent) {
                    self.crashed_agents.push(agent.clone());
                }
                if self.spec.items > 1 {
                    // A chunk: the driver runs its items one by one, so that only the item that
                    // kills workers fails.
                    self.crashed_on.push(host.clone());
                    return Verdict::Final(Outcome::Failed {
                        kind: FailureKind::WorkerCrashed,
                        message: format!(
                            "{message} while running a chunk of {} items",
                            self.spec.items
                        ),
                    });
                }
                if crashed_with > 1 && !self.isolated {
                    // One of several suspects: it runs alone before it is held responsible.
                    self.isolated = true;
                    return Verdict::Again;
                }
                self.isolated = true;
                self.crashes += 1;
                self.crashed_on.push(host.clone());
                if self.crashes < max_crashes {
                    return Verdict::Again;
                }
                Verdict::Final(Outcome::Failed {
                    kind: FailureKind::WorkerCrashed,
                    message: format!(
                        "{message}; the task crashed its worker {} times (on {})",
                        self.crashes,
                        self.crashed_on.join(", ")
                    ),
                })
            }
            Outcome::Failed {
                kind: FailureKind::TaskError,
                ..
            } if self.retries_left > 0 => {
                // Its own error, and the driver asked for retries.
                self.retries_left -= 1;
                Verdict::Again
            }
            outcome => Verdict::Final(outcome),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(items: u32, retries: u32) -> Task {
        Task::new(
            1,
            TaskSpec {
                items,
                retries,
                ..Default::default()
            },
            0,
        )
    }

    fn crash() -> Outcome {
        Outcome::Failed {
            kind: FailureKind::WorkerCrashed,
            message: "killed by signal 9".into(),
        }
    }

    fn error() -> Outcome {
        Outcome::Failed {
            kind: FailureKind::TaskError,
            message: "no".into(),
        }
    }

    #[test]
    fn its_own_error_runs_again_as_often_as_the_driver_asked() {
        let (a, host) = (AgentId("a".into()), Arc::from("host-a"));
        let mut t = task(1, 2);
        assert_eq!(t.judge(error(), 0, &a, &host, 3), Verdict::Again);
        assert_eq!(t.judge(error(), 0, &a, &host, 3), Verdict::Again);
        assert_eq!(t.judge(error(), 0, &a, &host, 3), Verdict::Final(error()));
    }

    #[test]
    fn a_crash_among_others_is_not_counted_and_the_error_names_only_counted_ones() {
        let (a, b) = (AgentId("a".into()), AgentId("b".into()));
        let (ha, hb): (Arc<str>, Arc<str>) = ("host-a".into(), "host-b".into());
        let mut t = task(1, 0);
        assert_eq!(t.judge(crash(), 3, &a, &ha, 2), Verdict::Again, "a suspect");
        assert_eq!(t.judge(crash(), 1, &b, &hb, 2), Verdict::Again, "crash 1");
        let Verdict::Final(Outcome::Failed { message, .. }) = t.judge(crash(), 1, &a, &ha, 2)
        else {
            panic!("the second counted crash fails it")
        };
        assert!(
            message.ends_with("crashed its worker 2 times (on host-b, host-a)"),
            "{message}"
        );
        assert_eq!(t.crashed_agents, vec![a, b]);
    }
}
