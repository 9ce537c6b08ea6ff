//! A driver awaiting a lone task polls for its result for a moment instead of going to sleep.
//! A sleeping thread is woken through the kernel, and on a machine whose idle CPUs halt (a
//! virtual machine's, typically) each such wake-up costs tens of microseconds: for a short
//! task awaited on its own, that is most of the round trip. Busy-polling is kept to that case:
//! one task in flight in the whole session, for at most `LADLE_SPIN_US` (default 500 µs,
//! `0` never) after it was submitted, and not at all while lone tasks have lately taken more
//! than four times that.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

const SPIN_ENV: &str = "LADLE_SPIN_US";
const DEFAULT_SPIN: Duration = Duration::from_micros(500);
/// Lone tasks whose round trips average more than this many times the limit are waited on
/// asleep: polling would rarely see them back in time.
const LONG: u32 = 4;
/// See [`LoneWait::linger`]: far longer than a program takes to submit its next task, far
/// shorter than anything a person or a benchmark of throughput would notice.
const LINGER: Duration = Duration::from_micros(50);

pub(crate) struct LoneWait {
    /// Chunks submitted in this session and not yet answered.
    in_flight: AtomicUsize,
    /// Recent round trip of a task awaited alone, in ns (moving average; 0 before the first).
    recent_ns: AtomicU64,
    limit: Duration,
    /// Whether the program polls for a lone task's result right now.
    polled: AtomicBool,
    /// Whether this process may run on more than one CPU: on one, the session's thread staying
    /// awake would only keep the program's thread from submitting.
    several_cpus: bool,
}

/// One chunk in flight; dropped when its result is routed (or the session ends without one).
pub(crate) struct InFlight(Arc<LoneWait>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LoneWait {
    pub(crate) fn from_env() -> Self {
        let limit = match std::env::var(SPIN_ENV) {
            Err(_) => DEFAULT_SPIN,
            Ok(value) => match value.trim().parse::<u64>() {
                Ok(us) => Duration::from_micros(us),
                Err(_) => {
                    tracing::warn!(
                        "{SPIN_ENV}={value:?} is not a number of microseconds; using {} µs",
                        DEFAULT_SPIN.as_micros()
                    );
                    DEFAULT_SPIN
                }
            },
        };
        Self::with_limit(limit)
    }

    pub(crate) fn with_limit(limit: Duration) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            recent_ns: AtomicU64::new(0),
            limit,
            polled: AtomicBool::new(false),
            several_cpus: std::thread::available_parallelism().is_ok_and(|n| n.get() > 1),
        }
    }

    pub(crate) fn started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// How long the session's thread should stay awake for the next submission, now that the
    /// last result in flight has arrived (see `session::next_soon`): [`LINGER`] when the program
    /// polls for that result (on its own thread: the session has one of its own), and will submit
    /// again within microseconds; zero otherwise, and on a single CPU, where lingering would hold
    /// up the very submission it waits for.
    pub(crate) fn linger(&self) -> Duration {
        if self.several_cpus && self.polled.load(Ordering::Relaxed) {
            LINGER
        } else {
            Duration::ZERO
        }
    }

    /// The program polls for a lone task's result.
    pub(crate) fn spinning(&self) {
        self.polled.store(true, Ordering::Relaxed);
    }

    /// Nobody polls for a lone result any more.
    pub(crate) fn stopped_spinning(&self) {
        self.polled.store(false, Ordering::Relaxed);
    }

    /// Whether the one task in flight is the only thing the session waits for.
    pub(crate) fn alone(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 1
    }

    /// Whether a lone task submitted at `since` is still worth polling for rather than
    /// sleeping on. Lone round trips are judged against a few times the limit, not the limit
    /// itself: without the spin they take longer (the wake-ups it saves), and a session whose
    /// short tasks came back just over the limit while asleep would never spin again.
    pub(crate) fn spin(&self, since: Instant) -> bool {
        let recent = Duration::from_nanos(self.recent_ns.load(Ordering::Relaxed));
        !self.limit.is_zero() && recent <= self.limit * LONG && since.elapsed() < self.limit
    }

    /// Records how long a task awaited alone took, from submission to result.
    pub(crate) fn finished(&self, took: Duration) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let old = self.recent_ns.load(Ordering::Relaxed);
        let new = if old == 0 {
            took
        } else {
            old / 4 * 3 + took / 4
        };
        self.recent_ns.store(new, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spins_only_for_a_lone_short_task_and_within_the_limit() {
        let wait = Arc::new(LoneWait::with_limit(Duration::from_micros(500)));
        let first = wait.started();
        assert!(wait.alone());
        let second = wait.started();
        assert!(!wait.alone(), "two in flight: nobody waits on one alone");
        drop(second);
        assert!(wait.alone());
        let now = Instant::now();
        assert!(wait.spin(now));
        assert!(!wait.spin(now - Duration::from_millis(1)), "past the limit");
        // A round trip just over the limit (as one taken asleep may be) keeps the spin.
        wait.finished(Duration::from_micros(700));
        assert!(wait.spin(Instant::now()));
        // Lone tasks that take 10 ms are waited on asleep; short ones again bring the spin back.
        wait.finished(Duration::from_millis(10));
        wait.finished(Duration::from_millis(10));
        assert!(!wait.spin(Instant::now()));
        for _ in 0..20 {
            wait.finished(Duration::from_micros(100));
        }
        assert!(wait.spin(Instant::now()));
        drop(first);
        assert!(!wait.alone());
    }

    #[test]
    fn a_limit_of_zero_never_spins() {
        let wait = Arc::new(LoneWait::with_limit(Duration::ZERO));
        let _one = wait.started();
        assert!(!wait.spin(Instant::now()));
    }
}
