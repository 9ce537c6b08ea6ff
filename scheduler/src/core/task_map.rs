//! The core's map of tasks, laid out in the order tasks are numbered.

use std::hash::{BuildHasherDefault, Hasher};

use super::types::TaskRef;

/// A map keyed by task. Task numbers are handed out in order, and tasks are placed, finished
/// and forgotten roughly in that order: the hash keeps each run of 16 consecutive numbers in one
/// group of buckets (the table's unit of probing), so those steps walk memory in order instead
/// of taking a cache miss per task (a million queued tasks fit in no cache), while the runs
/// spread over the table as with any hash. Two runs that land on the same group (numbers a
/// table's size apart, both alive) then cost what any collision costs: one more group.
pub type TaskMap<V> = std::collections::HashMap<TaskRef, V, BuildHasherDefault<InRuns>>;

/// Consecutive task numbers kept together: 16, one group of the table.
const RUN_BITS: u32 = 4;

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
        // and mixed in the high bits from which it takes its 7-bit tags. The number's own low
        // bits go into the tag too, so that the tasks of one run do not all match each other's.
        let run = (n >> RUN_BITS).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let within = n & ((1 << RUN_BITS) - 1);
        self.0 = ((run << RUN_BITS) | within) ^ (within << 57);
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn task_numbers_stay_together_in_runs_and_are_placed_apart_within_a_table() {
        let hash = |n: u64| BuildHasherDefault::<InRuns>::default().hash_one(n);
        // Within a run, neighbours are placed next to each other, with different tags.
        let mask = (1u64 << 21) - 1;
        assert_eq!((hash(1001) & mask) - (hash(1000) & mask), 1);
        assert_ne!(hash(1001) >> 57, hash(1000) >> 57);
        // Across a million numbers, the places a table of 2^21 buckets would pick are all
        // different, and the tags (the top 7 bits) are not all the same.
        let mut places: Vec<u64> = (0..1_000_000u64).map(|n| hash(n) & mask).collect();
        places.sort_unstable();
        places.dedup();
        assert_eq!(places.len(), 1_000_000);
        let tags: std::collections::HashSet<u64> = (0..100_000u64).map(|n| hash(n) >> 57).collect();
        assert!(tags.len() > 64, "{} tags", tags.len());
    }
}
