//! The session's tasks without a result, and the admission budget the scheduler granted.
//!
//! A task is *uploading* (its big argument is on its way to the blob store), *waiting* (ready,
//! but the budget is spent), or *sent*. No more tasks are sent than the session's budget of
//! tasks and of inline bytes; each result gives its task's share back, and the next waiting
//! tasks go. So the scheduler never holds more for this driver than it granted, and a program
//! that submits without end waits in its own memory, not the scheduler's.

use std::collections::{HashMap, VecDeque};

use ladle_proto::v1 as pb;

use super::session::{RawResult, Route};

/// What the scheduler lets one session have it hold at once (0: no bound).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Budget {
    pub tasks: u64,
    pub bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Uploading,
    Waiting,
    Sent,
}

struct Entry {
    spec: pb::TaskSpec,
    route: Route,
    state: State,
}

#[derive(Default)]
pub(crate) struct Pending {
    entries: HashMap<u64, Entry>,
    /// Ready tasks in submission order.
    waiting: VecDeque<u64>,
    sent_tasks: u64,
    sent_bytes: u64,
    budget: Budget,
}

impl Pending {
    pub(crate) fn new(budget: Budget) -> Self {
        Self {
            budget,
            ..Self::default()
        }
    }

    /// The budget of a session opened again (the scheduler may have restarted with new settings).
    pub(crate) fn set_budget(&mut self, budget: Budget) {
        self.budget = budget;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A new task; `uploading` while its argument is still on its way to the blob store.
    pub(crate) fn add(&mut self, spec: pb::TaskSpec, route: Route, uploading: bool) {
        let id = spec.task_id;
        let state = if uploading {
            State::Uploading
        } else {
            self.waiting.push_back(id);
            State::Waiting
        };
        self.entries.insert(id, Entry { spec, route, state });
    }

    /// The upload of a task's argument ended: it may go, or it fails with `Err(why)`.
    pub(crate) fn uploaded(&mut self, id: u64, result: Result<(), String>) {
        match result {
            Ok(()) => {
                if let Some(entry) = self.entries.get_mut(&id)
                    && entry.state == State::Uploading
                {
                    entry.state = State::Waiting;
                    self.waiting.push_back(id);
                }
            }
            Err(why) => {
                if let Some(entry) = self.entries.remove(&id) {
                    (entry.route)(RawResult::failed(crate::task::ErrorKind::Disconnected, why));
                }
            }
        }
    }

    fn fits(&self, bytes: u64) -> bool {
        let tasks_ok = self.budget.tasks == 0 || self.sent_tasks < self.budget.tasks;
        // A task larger than the whole byte budget still goes, alone.
        let bytes_ok = self.budget.bytes == 0
            || self.sent_tasks == 0
            || self.sent_bytes + bytes <= self.budget.bytes;
        tasks_ok && bytes_ok
    }

    /// Takes the waiting tasks that fit the budget, in order; they count as sent.
    pub(crate) fn admit(&mut self) -> Vec<pb::TaskSpec> {
        let mut out = Vec::new();
        while let Some(&id) = self.waiting.front() {
            let Some(entry) = self.entries.get(&id) else {
                self.waiting.pop_front();
                continue; // cancelled while waiting
            };
            if entry.state != State::Waiting {
                self.waiting.pop_front();
                continue;
            }
            let bytes = entry.spec.payload.len() as u64;
            if !self.fits(bytes) {
                break;
            }
            self.waiting.pop_front();
            self.sent_tasks += 1;
            self.sent_bytes += bytes;
            if let Some(entry) = self.entries.get_mut(&id) {
                entry.state = State::Sent;
                out.push(entry.spec.clone());
            }
        }
        out
    }

    /// Every task sent, to send again to a session opened anew.
    pub(crate) fn sent(&self) -> Vec<pb::TaskSpec> {
        let mut specs: Vec<pb::TaskSpec> = self
            .entries
            .values()
            .filter(|e| e.state == State::Sent)
            .map(|e| e.spec.clone())
            .collect();
        specs.sort_by_key(|s| s.task_id);
        specs
    }

    /// A task's result came: it leaves, and gives its share of the budget back.
    pub(crate) fn finish(&mut self, id: u64) -> Option<Route> {
        let entry = self.entries.remove(&id)?;
        if entry.state == State::Sent {
            self.sent_tasks = self.sent_tasks.saturating_sub(1);
            self.sent_bytes = self
                .sent_bytes
                .saturating_sub(entry.spec.payload.len() as u64);
        }
        Some(entry.route)
    }

    /// Cancels tasks: those not sent yet fail as cancelled here (their routes are called); the
    /// ids of those sent are returned, for the scheduler to cancel (its answer finishes them).
    pub(crate) fn cancel(&mut self, ids: Vec<u64>, why: &str) -> Vec<u64> {
        let mut sent = Vec::new();
        for id in ids {
            match self.entries.get_mut(&id) {
                Some(entry) if entry.state == State::Sent => {
                    // A cancelled task is never run again, even if its failure is already on
                    // its way here.
                    entry.spec.retries = 0;
                    sent.push(id);
                }
                Some(_) => {
                    if let Some(entry) = self.entries.remove(&id) {
                        (entry.route)(RawResult::failed(
                            crate::task::ErrorKind::Cancelled,
                            why.to_owned(),
                        ));
                    }
                }
                None => {}
            }
        }
        sent
    }

    /// Fails every task with `why`.
    pub(crate) fn fail_all(&mut self, why: &str) {
        self.waiting.clear();
        self.sent_tasks = 0;
        self.sent_bytes = 0;
        for (_, entry) in self.entries.drain() {
            (entry.route)(RawResult::failed(
                crate::task::ErrorKind::Disconnected,
                why.to_owned(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn spec(id: u64, bytes: usize) -> pb::TaskSpec {
        pb::TaskSpec {
            task_id: id,
            payload: vec![0u8; bytes].into(),
            ..Default::default()
        }
    }

    #[test]
    fn no_more_is_sent_than_the_budget_and_results_let_the_rest_go_in_order() {
        let finished = Arc::new(Mutex::new(Vec::new()));
        let mut pending = Pending::new(Budget {
            tasks: 3,
            bytes: 250,
        });
        for id in 1..=6 {
            let finished = finished.clone();
            let route: Route =
                Box::new(move |raw| finished.lock().unwrap().push((id, raw.attempt)));
            pending.add(spec(id, 100), route, id == 2);
        }
        // Task 2 is uploading; 1 and 3 fit (200 bytes), 4 would pass 250.
        let ids = |specs: Vec<pb::TaskSpec>| specs.iter().map(|s| s.task_id).collect::<Vec<_>>();
        assert_eq!(ids(pending.admit()), vec![1, 3]);
        pending.uploaded(2, Ok(()));
        assert!(pending.admit().is_empty(), "the bytes are spent");
        assert!(pending.finish(1).is_some());
        assert_eq!(ids(pending.admit()), vec![4]);
        assert_eq!(ids(pending.sent()), vec![3, 4]);
        // A cancel of a task not sent answers it here; a sent one goes to the scheduler.
        assert_eq!(pending.cancel(vec![2, 3], "cancelled"), vec![3]);
        assert_eq!(finished.lock().unwrap().len(), 1);
        assert!(pending.finish(3).is_some());
        assert!(pending.finish(4).is_some());
        assert_eq!(ids(pending.admit()), vec![5, 6]);
        let mut big = Pending::new(Budget {
            tasks: 5,
            bytes: 10,
        });
        big.add(spec(9, 1000), Box::new(|_| {}), false);
        assert_eq!(
            ids(big.admit()),
            vec![9],
            "a task above the byte budget goes alone"
        );
    }
}
