//! What operators and drivers stop: cancels of a driver's tasks and of a whole job (an
//! operator's), and the jobs as operators see them.

use super::*;

/// What the tasks of a job an operator cancelled fail with.
pub(super) const OPERATOR_CANCEL: &str =
    "the job was cancelled by an operator (ladle-scheduler cancel)";

impl Jobs {
    /// Cancels tasks of a session: queued ones at once, running ones on their agents; each
    /// fails with `why` (who cancelled it). Returns the items of the tasks cancelled.
    pub(in crate::core) fn cancel(
        &mut self,
        no: u64,
        ids: &[u64],
        why: &str,
        members: &Membership,
        out: &mut Vec<Command>,
    ) -> u64 {
        let mut on_agents: HashMap<ConnId, Vec<TaskRef>> = HashMap::default();
        let mut results = Vec::new();
        let mut items = 0u64;
        for &task_id in ids {
            let Some(session) = self.sessions.get_mut(&no) else {
                return items;
            };
            let Some(task_ref) = session.by_task_id.remove(&task_id) else {
                continue;
            };
            let Some(mut task) = self.forget(task_ref) else {
                continue;
            };
            self.record
                .cancelled(no, 1, u64::from(task.spec.items.max(1)));
            if let TaskState::Running(agent) = &task.state
                && let Some(agent_conn) = members.get(agent).and_then(|a| a.conn)
            {
                on_agents.entry(agent_conn).or_default().push(task_ref);
            }
            // Its children go with it; a nested task's result would go to its parent, which is
            // cancelled with it (a driver cancels only its own tasks).
            let nested = task.parent().is_some();
            Self::release(task_ref, &task, members, out);
            if let Some(nest) = task.nest.take() {
                self.drop_family(nest.children, members, out);
            }
            if nested {
                continue;
            }
            items += u64::from(task.spec.items.max(1));
            results.push(DriverResult {
                task_id,
                attempt: task.runs(),
                agent: "".into(),
                outcome: Outcome::Failed {
                    kind: FailureKind::Cancelled,
                    message: why.to_owned(),
                },
                run_ns: 0,
                gpu: false,
                seq: 0,
            });
        }
        for (agent_conn, refs) in on_agents {
            out.push(Command::CancelOnAgent {
                conn: agent_conn,
                refs,
            });
        }
        if !results.is_empty() {
            self.deliver(no, results, out);
        }
        items
    }

    /// The driver on `conn` cancels some of its tasks.
    pub(in crate::core) fn cancel_by_driver(
        &mut self,
        conn: ConnId,
        ids: &[u64],
        members: &Membership,
        out: &mut Vec<Command>,
    ) {
        if let Some(&no) = self.by_conn.get(&conn) {
            // Nested tasks are their parents' to cancel.
            let ids: Vec<u64> = ids
                .iter()
                .copied()
                .filter(|id| id & CHILD_ID == 0)
                .collect();
            self.cancel(no, &ids, "cancelled by the driver", members, out);
        }
    }

    pub(in crate::core) fn views(&self) -> Vec<JobView> {
        self.sessions.values().map(|s| self.view(s)).collect()
    }

    fn view(&self, s: &Session) -> JobView {
        JobView {
            job: s.job.clone(),
            unfinished: s.by_task_id.len() as u64,
            running: s.running,
            delivered: s.ledger.delivered(),
            unacked: s.ledger.unacked() as u64,
            driver_connected: s.conn.is_some(),
        }
    }

    /// The session `selector` names: an id, a unique id prefix, or a unique job name.
    fn select(&self, selector: &str) -> Result<u64, SelectError> {
        if let Some(&no) = self.by_job_id.get(selector) {
            return Ok(no);
        }
        for matches in [
            self.sessions
                .iter()
                .filter(|(_, s)| !selector.is_empty() && s.job.id.starts_with(selector))
                .collect::<Vec<_>>(),
            self.sessions
                .iter()
                .filter(|(_, s)| s.job.name == selector)
                .collect(),
        ] {
            match matches.as_slice() {
                [] => {}
                [(no, _)] => return Ok(**no),
                many => {
                    return Err(SelectError::Ambiguous {
                        selector: selector.to_owned(),
                        matches: many.iter().map(|(_, s)| s.job.id.to_string()).collect(),
                    });
                }
            }
        }
        Err(SelectError::NotFound(selector.to_owned()))
    }

    /// Cancels every unfinished task of the job `selector` names (an operator's cancel): its
    /// driver receives each as cancelled by an operator (on its return, if it is away), the
    /// agents stop them, and what the driver submits from now on fails the same way. Returns
    /// the job and how many items (inputs of a `map`, or lone tasks) were cancelled.
    pub(in crate::core) fn cancel_job(
        &mut self,
        selector: &str,
        members: &Membership,
        out: &mut Vec<Command>,
    ) -> Result<(JobView, u64), SelectError> {
        let no = self.select(selector)?;
        let session = self
            .sessions
            .get_mut(&no)
            .ok_or_else(|| SelectError::NotFound(selector.to_owned()))?;
        session.cancelled = true;
        let ids: Vec<u64> = session.by_task_id.keys().copied().collect();
        let items = self.cancel(no, &ids, OPERATOR_CANCEL, members, out);
        let session = self
            .sessions
            .get(&no)
            .ok_or_else(|| SelectError::NotFound(selector.to_owned()))?;
        info!(session = %session.job.id, job = %session.job.name, tasks = ids.len(), items,
              "job cancelled by an operator");
        Ok((self.view(session), items))
    }
}
