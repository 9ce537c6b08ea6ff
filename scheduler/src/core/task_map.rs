//! The core's map of tasks, laid out in the order tasks are numbered.

use std::hash::{BuildHasherDefault, Hasher};

use super::types::TaskRef;

/// A map keyed by task. Task numbers are handed out in order, and tasks are placed, finished
/// and forgotten roughly in that order: the hash keeps each run of 256 consecutive numbers in
/// one block of buckets, so those steps walk memory in order instead of taking a cache miss per
/// task (a million queued tasks fit in no cache), while the runs themselves spread over the
/// table as with any hash, so that looking up a number no longer there stays short.
pub type TaskMap<V> = std::collections::HashMap<TaskRef, V, BuildHasherDefault<InRuns>>;

/// Consecutive task numbers kept together: 256.
const RUN_BITS: u32 = 8;

/// The hasher of [`TaskMap`]. Task numbers are the scheduler's own, never chosen by a peer.
#[derive(Default)]
pub struct InRuns(u64);

impl Hasher for InRuns {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // A `TaskRef` hashes through `write_u64`; this is for completeness.
        for &b in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // The run number times an odd constant: a bijection on the bits the table places by,
        // so that runs alive together never share a block, and mixed in the high bits from
        // which it takes its tags.
        let run = (n >> RUN_BITS).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = (run << RUN_BITS) | (n & ((1 << RUN_BITS) - 1));
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn task_numbers_stay_together_in_runs_and_runs_never_collide() {
        let hash = |n: u64| BuildHasherDefault::<InRuns>::default().hash_one(n);
        // Within a run, neighbours hash to neighbours.
        assert_eq!(hash(1001) - hash(1000), 1);
        // Across a million numbers, the places a table of 2^21 buckets would pick are all
        // different, and the tags (the top 7 bits) are not all the same.
        let mask = (1u64 << 21) - 1;
        let mut places: Vec<u64> = (0..1_000_000u64).map(|n| hash(n) & mask).collect();
        places.sort_unstable();
        places.dedup();
        assert_eq!(places.len(), 1_000_000);
        let tags: std::collections::HashSet<u64> = (0..100_000u64).map(|n| hash(n) >> 57).collect();
        assert!(tags.len() > 64, "{} tags", tags.len());
    }
}
