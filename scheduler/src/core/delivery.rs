//! One session's deliveries: every result is numbered and kept until its driver acknowledges
//! it, so that a driver whose stream died (however silently) gets on its return every result
//! it may have missed, and a task whose result is only on its way is known, not run again.

use std::collections::VecDeque;

use rustc_hash::FxHashSet as HashSet;

use super::DriverResult;

#[derive(Default)]
pub(super) struct Ledger {
    /// Results sent (or to be sent) and not acknowledged, in delivery order.
    unacked: VecDeque<DriverResult>,
    /// Their task ids: a resubmission of one of them is a duplicate.
    ids: HashSet<u64>,
    /// The number the next delivery takes (from 1).
    next: u64,
    /// Everything delivered, acknowledged or not.
    delivered: u64,
}

impl Ledger {
    pub(super) fn new() -> Self {
        Self {
            next: 1,
            ..Self::default()
        }
    }

    /// Numbers `results` and keeps a copy of each until acknowledged; returns them to send.
    pub(super) fn record(&mut self, mut results: Vec<DriverResult>) -> Vec<DriverResult> {
        for result in &mut results {
            result.seq = self.next;
            self.next += 1;
            self.ids.insert(result.task_id);
            self.unacked.push_back(result.clone());
        }
        self.delivered += results.len() as u64;
        results
    }

    /// The driver has every delivery up to `through`: they go. Returns how many went.
    pub(super) fn ack(&mut self, through: u64) -> usize {
        let mut gone = 0;
        while self.unacked.front().is_some_and(|r| r.seq <= through) {
            if let Some(result) = self.unacked.pop_front() {
                self.ids.remove(&result.task_id);
                gone += 1;
            }
        }
        gone
    }

    /// Every result not acknowledged, in order: for a driver that opened its session again.
    pub(super) fn replay(&self) -> Vec<DriverResult> {
        self.unacked.iter().cloned().collect()
    }

    /// Whether the task's result is kept here (delivered, not acknowledged).
    pub(super) fn holds(&self, task_id: u64) -> bool {
        self.ids.contains(&task_id)
    }

    pub(super) fn task_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.unacked.iter().map(|r| r.task_id)
    }

    /// Results kept, waiting for the driver's acknowledgement.
    pub(super) fn unacked(&self) -> usize {
        self.unacked.len()
    }

    pub(super) fn delivered(&self) -> u64 {
        self.delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Outcome;

    fn result(task_id: u64) -> DriverResult {
        DriverResult {
            task_id,
            attempt: 1,
            agent: "a".into(),
            outcome: Outcome::Output(bytes::Bytes::new()),
            run_ns: 0,
            gpu: false,
            seq: 0,
        }
    }

    #[test]
    fn results_are_kept_until_acknowledged_cumulatively() {
        let mut ledger = Ledger::new();
        let sent = ledger.record(vec![result(10), result(11), result(12)]);
        assert_eq!(sent.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(ledger.holds(11));
        assert_eq!(ledger.ack(2), 2);
        assert!(!ledger.holds(11) && ledger.holds(12));
        assert_eq!(
            ledger.ack(2),
            0,
            "an old acknowledgement again changes nothing"
        );
        let more = ledger.record(vec![result(13)]);
        assert_eq!(more[0].seq, 4);
        let replay: Vec<u64> = ledger.replay().iter().map(|r| r.seq).collect();
        assert_eq!(replay, [3, 4]);
        assert_eq!(ledger.ack(u64::MAX), 2);
        assert_eq!((ledger.unacked(), ledger.delivered()), (0, 4));
    }
}
