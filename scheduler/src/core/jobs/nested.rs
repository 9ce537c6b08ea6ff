//! Tasks that submit tasks (nested futures): a running task's children join its job, their
//! results go to the parent's worker and are kept in the parent until it has its own result, and
//! a parent that waits for them gives its slot back meanwhile.
//!
//! Exactly once across a parent's re-run: a child is identified by its parent and its ordinal
//! (the order of submission in the parent's run), which a parent running again (its agent was
//! lost, its worker crashed) repeats. The same child at the same ordinal (same digest) is not
//! run again: the new run gets its result if it finished, and will get it if it runs. A parent
//! gone for good (its result, a cancel, its job's end) takes its unfinished children with it,
//! down the whole tree.

use super::*;
use crate::core::{
    ChildSpec,
    task::{Child, ChildState},
};

/// The top bit of a task id marks the scheduler's own ids: those of nested tasks (the rest is
/// the task's number). Drivers number their tasks from 1 and may not use it.
pub(in crate::core) const CHILD_ID: u64 = 1 << 63;

impl Jobs {
    /// The task `parent` (at `attempt`, running on the agent of `conn`) submitted `children`.
    /// Submissions of an attempt that is over are dropped: its run is being repeated elsewhere.
    pub(in crate::core) fn submit_children(
        &mut self,
        conn: ConnId,
        parent: TaskRef,
        attempt: u32,
        children: Vec<ChildSpec>,
        members: &Membership,
        out: &mut Vec<Command>,
    ) {
        let Some(agent) = members.on(conn) else {
            return;
        };
        let Some(p) = self.tasks.get(&parent) else {
            return;
        };
        if p.attempt != attempt || !p.runs_on(agent.id()) {
            debug!(
                parent,
                attempt, "children of an attempt that is over: dropped"
            );
            return;
        }
        let (no, depth, priority) = (p.session, p.depth() + 1, p.spec.priority);
        let cancelled = self.sessions.get(&no).is_none_or(|s| s.cancelled);
        let mut replies = Vec::new();
        for child in children {
            let ordinal = child.ordinal;
            // The same child again (a re-run parent): it stands, and a result it has is sent.
            let known = self
                .tasks
                .get_mut(&parent)
                .and_then(|p| p.nest.as_mut())
                .and_then(|n| n.children.get_mut(&ordinal));
            match known {
                Some(known) if known.digest == child.digest => {
                    known.claimed = attempt;
                    if let ChildState::Done(result) = &known.state {
                        replies.push(result.clone());
                    }
                    continue;
                }
                Some(_) => {
                    // Another child at that ordinal: the parent's run went another way this
                    // time. The old child is no use to it.
                    debug!(parent, ordinal, "a re-run parent submitted another child");
                    self.drop_child(parent, ordinal, members, out);
                }
                None => {}
            }
            let refusal = match self.sessions.get(&no) {
                _ if cancelled => Some((FailureKind::Cancelled, OPERATOR_CANCEL.to_owned())),
                Some(s) if s.child_bytes + child.spec.payload.len() as u64 > self.budget.bytes => {
                    Some((
                        FailureKind::Refused,
                        format!(
                            "the scheduler refused the nested task: its job's nested tasks already \
                             hold {} bytes of arguments, and this one's {} would pass the budget \
                             (session_max_bytes = {})",
                            s.child_bytes,
                            child.spec.payload.len(),
                            self.budget.bytes
                        ),
                    ))
                }
                Some(s) if s.children + s.child_results >= self.budget.tasks => Some((
                    FailureKind::Refused,
                    format!(
                        "the scheduler refused the nested task: its job already holds {} nested \
                         tasks and results kept for their parents, its budget (session_max_tasks \
                         = {})",
                        s.children + s.child_results,
                        self.budget.tasks
                    ),
                )),
                Some(_) => None,
                None => return,
            };
            let state = match refusal {
                // Answered, not kept: a run of the parent that submits it again may be admitted.
                Some((kind, message)) => {
                    replies.push(answer(ordinal, kind, message));
                    continue;
                }
                None => {
                    let mut spec = child.spec;
                    if spec.priority == 0 {
                        spec.priority = priority;
                    }
                    let nest = Nest {
                        parent: Some((parent, ordinal)),
                        depth,
                        children: Default::default(),
                    };
                    ChildState::Live(self.enqueue(no, spec, Some(Box::new(nest))))
                }
            };
            if let Some(p) = self.tasks.get_mut(&parent) {
                p.nest.get_or_insert_with(Box::default).children.insert(
                    ordinal,
                    Child {
                        digest: child.digest,
                        claimed: attempt,
                        state,
                    },
                );
            }
        }
        reply(conn, parent, attempt, replies, out);
    }

    /// The parent no longer waits for these children (it dropped or cancelled their futures):
    /// those unfinished are cancelled, and it is told so.
    pub(in crate::core) fn cancel_children(
        &mut self,
        conn: ConnId,
        parent: TaskRef,
        attempt: u32,
        ordinals: &[u32],
        members: &Membership,
        out: &mut Vec<Command>,
    ) {
        let Some(agent) = members.on(conn) else {
            return;
        };
        if !self
            .tasks
            .get(&parent)
            .is_some_and(|p| p.attempt == attempt && p.runs_on(agent.id()))
        {
            return;
        }
        let mut replies = Vec::new();
        for &ordinal in ordinals {
            let live = self
                .tasks
                .get(&parent)
                .and_then(|p| p.nest.as_ref())
                .and_then(|n| n.children.get(&ordinal))
                .is_some_and(|c| matches!(c.state, ChildState::Live(_)));
            if !live {
                continue;
            }
            // Answered, not kept: a run of the parent after this one never cancelled it.
            self.drop_child(parent, ordinal, members, out);
            replies.push(answer(
                ordinal,
                FailureKind::Cancelled,
                "cancelled by its parent task".into(),
            ));
        }
        reply(conn, parent, attempt, replies, out);
    }

    /// A running task waits for its children, or resumed: a waiting task's CPU slot takes other
    /// work. Returns the agent whose room grew.
    pub(in crate::core) fn set_waiting(
        &mut self,
        conn: ConnId,
        task_ref: TaskRef,
        attempt: u32,
        waiting: bool,
        members: &mut Membership,
    ) -> Option<AgentId> {
        let agent = members.current(conn)?;
        let task = self.tasks.get(&task_ref)?;
        if task.attempt != attempt
            || !task.runs_on(agent.id())
            || task.on_gpu
            || !agent.assigned.contains(&task_ref)
        {
            return None;
        }
        if waiting {
            agent.waiting.insert(task_ref).then(|| agent.id().clone())
        } else {
            agent.waiting.remove(&task_ref);
            None
        }
    }

    /// Removes the child at `ordinal` of `parent`: an unfinished one is cancelled with its
    /// whole family, a kept result released.
    fn drop_child(
        &mut self,
        parent: TaskRef,
        ordinal: u32,
        members: &Membership,
        out: &mut Vec<Command>,
    ) {
        let Some(p) = self.tasks.get_mut(&parent) else {
            return;
        };
        let no = p.session;
        let Some(child) = p.nest.as_mut().and_then(|n| n.children.remove(&ordinal)) else {
            return;
        };
        if matches!(child.state, ChildState::Live(_)) {
            let mut family = HashMap::default();
            family.insert(ordinal, child);
            self.drop_family(family, members, out);
        } else if let Some(s) = self.sessions.get_mut(&no) {
            s.child_results = s.child_results.saturating_sub(1);
        }
    }

    /// Children of a task that is gone for good: the unfinished ones are cancelled (on their
    /// agents too), with their own children, down the tree.
    pub(super) fn drop_family(
        &mut self,
        children: HashMap<u32, Child>,
        members: &Membership,
        out: &mut Vec<Command>,
    ) {
        let mut stack: Vec<HashMap<u32, Child>> = vec![children];
        let mut on_agents: HashMap<ConnId, Vec<TaskRef>> = HashMap::default();
        while let Some(family) = stack.pop() {
            for child in family.into_values() {
                let ChildState::Live(task_ref) = child.state else {
                    continue;
                };
                let Some(mut task) = self.forget(task_ref) else {
                    continue;
                };
                self.record
                    .cancelled(task.session, 1, u64::from(task.spec.items.max(1)));
                if let Some(s) = self.sessions.get_mut(&task.session) {
                    s.by_task_id.remove(&task.spec.task_id);
                }
                if let TaskState::Running(agent) = &task.state
                    && let Some(conn) = members.get(agent).and_then(|a| a.conn)
                {
                    on_agents.entry(conn).or_default().push(task_ref);
                }
                Self::release(task_ref, &task, members, out);
                if let Some(nest) = task.nest.take() {
                    stack.push(nest.children);
                }
            }
        }
        for (conn, refs) in on_agents {
            out.push(Command::CancelOnAgent { conn, refs });
        }
    }

    /// A running task that is cancelled may be waiting for children that are cancelled with it:
    /// its worker is told they are, so that its wait ends (and its thread with it) instead of
    /// lasting as long as the worker.
    pub(super) fn release(
        task_ref: TaskRef,
        task: &Task,
        members: &Membership,
        out: &mut Vec<Command>,
    ) {
        let (TaskState::Running(agent), Some(nest)) = (&task.state, &task.nest) else {
            return;
        };
        let Some(conn) = members.get(agent).and_then(|a| a.conn) else {
            return;
        };
        let results: Vec<DriverResult> = nest
            .children
            .iter()
            .filter(|(_, c)| c.claimed == task.attempt && matches!(c.state, ChildState::Live(_)))
            .map(|(&ordinal, _)| {
                answer(
                    ordinal,
                    FailureKind::Cancelled,
                    "cancelled with its parent task".into(),
                )
            })
            .collect();
        reply(conn, task_ref, task.attempt, results, out);
    }

    /// Final results of children: each is kept in its parent (for a run of it that may follow)
    /// and sent to the parent's worker if the parent's current attempt asked for it.
    pub(super) fn children_done(
        &mut self,
        results: Vec<(TaskRef, u32, DriverResult)>,
        members: &Membership,
        out: &mut Vec<Command>,
    ) {
        let mut sends: HashMap<(ConnId, TaskRef, u32), Vec<DriverResult>> = HashMap::default();
        for (parent, ordinal, mut result) in results {
            result.task_id = u64::from(ordinal);
            let Some(p) = self.tasks.get_mut(&parent) else {
                continue; // the parent is gone: nobody wants it
            };
            let Some(child) = p.nest.as_mut().and_then(|n| n.children.get_mut(&ordinal)) else {
                continue;
            };
            let wanted = child.claimed == p.attempt;
            child.state = ChildState::Done(result.clone());
            if let Some(s) = self.sessions.get_mut(&p.session) {
                s.child_results += 1;
            }
            if let (true, TaskState::Running(agent)) = (wanted, &p.state)
                && let Some(conn) = members.get(agent).and_then(|a| a.conn)
            {
                sends
                    .entry((conn, parent, p.attempt))
                    .or_default()
                    .push(result);
            }
        }
        for ((conn, parent, attempt), results) in sends {
            out.push(Command::ChildResults {
                conn,
                parent,
                attempt,
                results,
            });
        }
    }
}

/// The scheduler's own answer for the child at `ordinal`: it failed before it ran.
fn answer(ordinal: u32, kind: FailureKind, message: String) -> DriverResult {
    DriverResult {
        task_id: u64::from(ordinal),
        attempt: 0,
        agent: "".into(),
        outcome: Outcome::Failed { kind, message },
        run_ns: 0,
        gpu: false,
        seq: 0,
    }
}

/// Sends `results` (if any) to the worker of `parent` at `attempt`, on the agent's stream.
fn reply(
    conn: ConnId,
    parent: TaskRef,
    attempt: u32,
    results: Vec<DriverResult>,
    out: &mut Vec<Command>,
) {
    if !results.is_empty() {
        out.push(Command::ChildResults {
            conn,
            parent,
            attempt,
            results,
        });
    }
}
