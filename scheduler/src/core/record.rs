//! What operators see of the work, live and after the fact: each job's counts in items, its
//! recent and failed tasks, its output, a bounded history of finished jobs, the task stream of
//! the last minute and the cluster's counters. Kept as events happen (no query scans the tasks),
//! and every part is bounded: see the constants.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

// Keys are the core's own session numbers: a fast hash is safe, and it is looked up per task.
use rustc_hash::FxHashMap as HashMap;

use super::{
    OutputLine,
    types::{FailureKind, Job},
};

/// Finished jobs kept for `jobs --all`, `tasks` and `logs` once their driver has gone.
pub const FINISHED_JOBS: usize = 100;
/// Finished tasks kept per job (the most recent), and failed ones kept apart (the most recent).
pub const RECENT_TASKS: usize = 100;
pub const FAILED_TASKS: usize = 100;
/// Output kept per job: its last lines, at most this many bytes (a line counts its length and
/// what keeping it costs, so that empty lines are bounded too).
pub const OUTPUT_BYTES: usize = 256 * 1024;
const LINE_OVERHEAD: usize = 64;
/// An error message kept longer than this is cut (the driver got it whole).
const MESSAGE_BYTES: usize = 2048;
/// Task spans kept for the task stream, and for how long.
pub const STREAM_SPANS: usize = 10_000;
const STREAM_AGE: Duration = Duration::from_secs(60);
/// Seconds of throughput kept, per job and for the cluster.
const RATE_SECONDS: u64 = 120;

/// Upper bounds, in seconds, of the buckets of the task duration histogram.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.000_1, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 600.0,
];

/// How a job ended, or that it has not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    Running,
    /// Its driver said goodbye.
    Done,
    /// Its driver went away and did not come back within its grace.
    DriverLost,
}

impl JobOutcome {
    pub fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Done => "done",
            Self::DriverLost => "driver lost",
        }
    }
}

/// Counts in items (a chunk of a map counts its items), of the driver's tasks and of the tasks
/// its tasks submitted (nested) together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Items {
    pub submitted: u64,
    pub done: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub running: u64,
}

impl Items {
    /// Submitted and neither finished nor running: queued (or, for a job that ended, dropped).
    pub fn waiting(&self) -> u64 {
        self.submitted
            .saturating_sub(self.done + self.failed + self.cancelled + self.running)
    }
}

/// One finished task, as `tasks JOB` lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskRecord {
    pub task_id: u64,
    pub function: Arc<str>,
    pub items: u32,
    pub nested: bool,
    /// None: it succeeded (some of its items may have failed on their own).
    pub failure: Option<(FailureKind, String)>,
    /// Items of a chunk that succeeded whose own run failed, and the first of their errors.
    pub items_failed: u32,
    pub first_item_error: String,
    pub agent: Arc<str>,
    pub attempt: u32,
    pub run_ns: u64,
    pub ended: Instant,
}

impl TaskRecord {
    /// What went wrong, for listings: the task's failure, or its failed items (none: it
    /// succeeded whole).
    pub fn error(&self) -> Option<String> {
        match &self.failure {
            Some((_, message)) => Some(message.clone()),
            None if self.items_failed > 0 => Some(format!(
                "{} of its {} items failed; the first: {}",
                self.items_failed, self.items, self.first_item_error
            )),
            None => None,
        }
    }
}

/// A task that ran, on the task stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub agent: Arc<str>,
    pub job: Arc<str>,
    pub ended: Instant,
    pub run_ns: u64,
    pub ok: bool,
}

/// One output line, with the host that printed it.
#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    pub host: Arc<str>,
    pub stderr: bool,
    pub line: String,
}

/// Items finished per second, over the last [`RATE_SECONDS`].
#[derive(Clone, Debug, Default)]
pub struct Rate {
    /// (second since the record began, items finished in it), oldest first.
    seconds: VecDeque<(u64, u64)>,
}

impl Rate {
    fn add(&mut self, second: u64, items: u64) {
        match self.seconds.back_mut() {
            Some((s, n)) if *s == second => *n += items,
            _ => self.seconds.push_back((second, items)),
        }
        while self
            .seconds
            .front()
            .is_some_and(|(s, _)| *s + RATE_SECONDS < second)
        {
            self.seconds.pop_front();
        }
    }

    /// Items per second over the `window` seconds before `second` (the current one is still
    /// filling, so it is left out).
    pub fn per_second(&self, second: u64, window: u64) -> f64 {
        let from = second.saturating_sub(window);
        let sum: u64 = self
            .seconds
            .iter()
            .filter(|(s, _)| *s >= from && *s < second)
            .map(|(_, n)| n)
            .sum();
        sum as f64 / window.max(1) as f64
    }

    /// (second, items) of the seconds kept.
    pub fn seconds(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.seconds.iter().copied()
    }
}

/// A job as the record keeps it.
#[derive(Clone, Debug)]
pub struct JobRecord {
    pub job: Arc<Job>,
    pub opened: Instant,
    pub ended: Option<Instant>,
    pub outcome: JobOutcome,
    pub items: Items,
    /// Runs again after the task's own error (its retries), after a worker crash, and
    /// placements moved (an agent lost, or work stolen by an idle agent).
    pub retries: u64,
    pub crashes: u64,
    pub requeues: u64,
    pub recent: VecDeque<TaskRecord>,
    pub failures: VecDeque<TaskRecord>,
    pub output: VecDeque<LogLine>,
    output_bytes: usize,
    /// Output lines dropped to keep within [`OUTPUT_BYTES`].
    pub output_dropped: u64,
    pub rate: Rate,
    /// Seconds of task run time, bucketed by [`DURATION_BUCKETS`] (the last is +Inf).
    pub durations: Histogram,
}

/// Counts per bucket of [`DURATION_BUCKETS`] and beyond, and the sum.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    pub counts: [u64; DURATION_BUCKETS.len() + 1],
    pub sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        let i = DURATION_BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += seconds;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

impl JobRecord {
    /// Its items queued and cancelled as listings show them: a job that ended left what it had
    /// not finished, cancelled with it.
    pub fn queued_and_cancelled(&self) -> (u64, u64) {
        match self.ended {
            None => (self.items.waiting(), self.items.cancelled),
            Some(_) => (0, self.items.cancelled + self.items.waiting()),
        }
    }

    fn new(job: Arc<Job>, now: Instant) -> Self {
        Self {
            job,
            opened: now,
            ended: None,
            outcome: JobOutcome::Running,
            items: Items::default(),
            retries: 0,
            crashes: 0,
            requeues: 0,
            recent: VecDeque::new(),
            failures: VecDeque::new(),
            output: VecDeque::new(),
            output_bytes: 0,
            output_dropped: 0,
            rate: Rate::default(),
            durations: Histogram::default(),
        }
    }
}

/// The cluster's counters since the scheduler started (Prometheus counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub placements: u64,
    pub steals: u64,
    pub requeues: u64,
    pub retries: u64,
    pub worker_crashes: u64,
    pub tasks_done: u64,
    pub tasks_failed: u64,
    pub tasks_cancelled: u64,
    /// Chunks given back to their drivers to run item by item (a worker crash, results too
    /// large together).
    pub tasks_split: u64,
    pub items_done: u64,
    pub items_failed: u64,
    pub jobs_started: u64,
    pub jobs_ended: u64,
    pub output_lines: u64,
}

/// The record: open jobs by session number, finished ones, the task stream and the counters.
pub struct Record {
    epoch: Instant,
    /// The time of the event being handled.
    now: Instant,
    open: HashMap<u64, JobRecord>,
    finished: VecDeque<JobRecord>,
    stream: VecDeque<Span>,
    pub counters: Counters,
    pub rate: Rate,
    pub durations: Histogram,
}

impl Default for Record {
    fn default() -> Self {
        let now = Instant::now();
        Self {
            epoch: now,
            now,
            open: HashMap::default(),
            finished: VecDeque::new(),
            stream: VecDeque::new(),
            counters: Counters::default(),
            rate: Rate::default(),
            durations: Histogram::default(),
        }
    }
}

impl Record {
    /// The clock of the events that follow (the core is driven by simulated time in tests).
    pub(super) fn at(&mut self, now: Instant) {
        if self.open.is_empty() && self.finished.is_empty() && self.stream.is_empty() {
            // Nothing recorded yet: seconds count from the first event, whatever clock it has.
            self.epoch = self.epoch.min(now);
        }
        self.now = now.max(self.now);
        let cutoff = self.now.checked_sub(STREAM_AGE);
        while self
            .stream
            .front()
            .is_some_and(|s| cutoff.is_some_and(|c| s.ended < c))
        {
            self.stream.pop_front();
        }
    }

    pub fn now(&self) -> Instant {
        self.now
    }

    /// The second of `at` since the record began.
    pub fn second(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_secs()
    }

    /// The start of second `second`.
    pub fn second_start(&self, second: u64) -> Instant {
        self.epoch + Duration::from_secs(second)
    }

    pub(super) fn opened(&mut self, no: u64, job: Arc<Job>) {
        self.counters.jobs_started += 1;
        // A driver that came back after its job ended (its grace ran out) opens the same job
        // id again: its record goes on, so that one id is one job (and one series of metrics).
        let record = match self.finished.iter().position(|j| j.job.id == job.id) {
            Some(i) => self.finished.remove(i).map(|mut j| {
                j.ended = None;
                j.outcome = JobOutcome::Running;
                j.job = job.clone();
                j
            }),
            None => None,
        };
        let record = record.unwrap_or_else(|| JobRecord::new(job, self.now));
        self.open.insert(no, record);
    }

    pub(super) fn submitted(&mut self, no: u64, items: u32) {
        if let Some(j) = self.open.get_mut(&no) {
            j.items.submitted += u64::from(items.max(1));
        }
    }

    /// `items` of job `no` started (`delta` 1) or stopped (-1) running.
    pub(super) fn running(&mut self, no: u64, items: u32, delta: i64) {
        if let Some(j) = self.open.get_mut(&no) {
            j.items.running = j
                .items
                .running
                .saturating_add_signed(delta * i64::from(items.max(1)));
        }
    }

    pub(super) fn placed(&mut self, n: u64) {
        self.counters.placements += n;
    }

    pub(super) fn stolen(&mut self, n: u64) {
        self.counters.steals += n;
    }

    /// A placement of job `no` goes back to the queue: its agent was lost or gave it back.
    pub(super) fn requeued(&mut self, no: u64) {
        self.counters.requeues += 1;
        if let Some(j) = self.open.get_mut(&no) {
            j.requeues += 1;
        }
    }

    /// A task of job `no` runs again: after its own error (`crash` false) or a worker crash.
    pub(super) fn retried(&mut self, no: u64, crash: bool) {
        self.counters.retries += 1;
        if crash {
            self.counters.worker_crashes += 1;
        }
        if let Some(j) = self.open.get_mut(&no) {
            j.retries += 1;
            j.crashes += u64::from(crash);
        }
    }

    /// A task of job `no` has its result.
    pub(super) fn finished(&mut self, no: u64, mut task: TaskRecord) {
        let items = u64::from(task.items.max(1));
        let crashed = matches!(&task.failure, Some((FailureKind::WorkerCrashed, _)));
        if crashed {
            self.counters.worker_crashes += 1;
        }
        // A chunk that crashed its worker, or whose results together were too large, goes back
        // to its driver, which runs its items again one by one: they are not failed (yet), and
        // they are counted again as the driver submits them.
        if task.items > 1
            && matches!(
                &task.failure,
                Some((FailureKind::WorkerCrashed | FailureKind::TooLarge, _))
            )
        {
            self.counters.tasks_split += 1;
            if let Some(j) = self.open.get_mut(&no) {
                j.items.submitted = j.items.submitted.saturating_sub(items);
                j.crashes += u64::from(crashed);
                if let Some((_, message)) = &mut task.failure {
                    cut(message, MESSAGE_BYTES);
                }
                push_bounded(&mut j.recent, task, RECENT_TASKS);
            }
            return;
        }
        let seconds = task.run_ns as f64 / 1e9;
        let second = self.second(task.ended);
        let failed = task.failure.is_some();
        let items_failed = if failed {
            items
        } else {
            u64::from(task.items_failed).min(items)
        };
        if failed {
            self.counters.tasks_failed += 1;
        } else {
            self.counters.tasks_done += 1;
        }
        self.counters.items_failed += items_failed;
        self.counters.items_done += items - items_failed;
        self.rate.add(second, items);
        self.durations.observe(seconds);
        let Some(j) = self.open.get_mut(&no) else {
            return;
        };
        if task.run_ns > 0 || !failed {
            if self.stream.len() >= STREAM_SPANS {
                self.stream.pop_front();
            }
            self.stream.push_back(Span {
                agent: task.agent.clone(),
                job: j.job.id.clone(),
                ended: task.ended,
                run_ns: task.run_ns,
                ok: !failed,
            });
        }
        j.rate.add(second, items);
        j.durations.observe(seconds);
        if let Some((_, message)) = &mut task.failure {
            cut(message, MESSAGE_BYTES);
        }
        cut(&mut task.first_item_error, MESSAGE_BYTES);
        j.items.failed += items_failed;
        j.items.done += items - items_failed;
        j.crashes += u64::from(crashed);
        if items_failed > 0 {
            push_bounded(&mut j.failures, task.clone(), FAILED_TASKS);
        }
        push_bounded(&mut j.recent, task, RECENT_TASKS);
    }

    /// Tasks of job `no`, of `items` items in all, were cancelled.
    pub(super) fn cancelled(&mut self, no: u64, tasks: u64, items: u64) {
        self.counters.tasks_cancelled += tasks;
        if let Some(j) = self.open.get_mut(&no) {
            j.items.cancelled += items;
        }
    }

    /// Output lines of job `no`, printed on `host`: the newest kept, within [`OUTPUT_BYTES`].
    pub(super) fn output(&mut self, no: u64, host: &Arc<str>, lines: &[OutputLine]) {
        self.counters.output_lines += lines.len() as u64;
        let Some(j) = self.open.get_mut(&no) else {
            return;
        };
        for line in lines {
            let mut text = line.text.clone();
            cut(&mut text, OUTPUT_BYTES - LINE_OVERHEAD);
            j.output_bytes += text.len() + LINE_OVERHEAD;
            j.output.push_back(LogLine {
                host: host.clone(),
                stderr: line.stderr,
                line: text,
            });
            while j.output_bytes > OUTPUT_BYTES {
                let Some(old) = j.output.pop_front() else {
                    break;
                };
                j.output_bytes -= old.line.len() + LINE_OVERHEAD;
                j.output_dropped += 1;
            }
        }
    }

    /// Job `no` ended: it moves to the history (the oldest finished job leaves it).
    pub(super) fn ended(&mut self, no: u64, outcome: JobOutcome) {
        self.counters.jobs_ended += 1;
        let Some(mut j) = self.open.remove(&no) else {
            return;
        };
        j.ended = Some(self.now);
        j.outcome = outcome;
        j.items.running = 0;
        push_bounded(&mut self.finished, j, FINISHED_JOBS);
    }

    /// The open jobs, then the finished ones, newest first.
    pub fn jobs(&self) -> impl Iterator<Item = &JobRecord> {
        self.open.values().chain(self.finished.iter().rev())
    }

    #[cfg(test)]
    pub(super) fn open_job(&self, no: u64) -> Option<&JobRecord> {
        self.open.get(&no)
    }

    pub fn open_jobs(&self) -> impl Iterator<Item = &JobRecord> {
        self.open.values()
    }

    /// The task stream: spans of the last minute, oldest first.
    pub fn stream(&self) -> impl DoubleEndedIterator<Item = &Span> + ExactSizeIterator {
        self.stream.iter()
    }

    /// The job `selector` names, open or finished: its id, a unique prefix of it, or a unique
    /// name (the newest job of that name when several finished under it).
    pub fn find(&self, selector: &str) -> Result<&JobRecord, super::SelectError> {
        if selector.is_empty() {
            return Err(super::SelectError::NotFound(selector.to_owned()));
        }
        if let Some(j) = self.jobs().find(|j| &*j.job.id == selector) {
            return Ok(j);
        }
        let by_prefix: Vec<&JobRecord> = self
            .jobs()
            .filter(|j| j.job.id.starts_with(selector))
            .collect();
        match by_prefix.as_slice() {
            [one] => return Ok(one),
            [] => {}
            many => {
                return Err(super::SelectError::Ambiguous {
                    selector: selector.to_owned(),
                    matches: many.iter().map(|j| j.job.id.to_string()).collect(),
                });
            }
        }
        // A name: the open job of that name (several: ambiguous), else the newest finished one.
        let open: Vec<&JobRecord> = self
            .open
            .values()
            .filter(|j| j.job.name == selector)
            .collect();
        match open.as_slice() {
            [one] => Ok(one),
            [] => self
                .finished
                .iter()
                .rev()
                .find(|j| j.job.name == selector)
                .ok_or_else(|| super::SelectError::NotFound(selector.to_owned())),
            many => Err(super::SelectError::Ambiguous {
                selector: selector.to_owned(),
                matches: many.iter().map(|j| j.job.id.to_string()).collect(),
            }),
        }
    }
}

fn push_bounded<T>(queue: &mut VecDeque<T>, item: T, bound: usize) {
    if queue.len() >= bound {
        queue.pop_front();
    }
    queue.push_back(item);
}

/// Cuts `s` to at most `max` bytes, at a character boundary, saying so.
fn cut(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max.saturating_sub(16);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(" … (cut)");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> Arc<Job> {
        Arc::new(Job {
            id: id.into(),
            name: format!("name-{id}"),
            executable: Default::default(),
            driver_host: "here".into(),
        })
    }

    fn task(record: &Record, items: u32, failure: Option<&str>) -> TaskRecord {
        TaskRecord {
            task_id: 1,
            function: "f".into(),
            items,
            nested: false,
            failure: failure.map(|m| (FailureKind::TaskError, m.to_owned())),
            items_failed: 0,
            first_item_error: String::new(),
            agent: "node".into(),
            attempt: 1,
            run_ns: 1_000_000,
            ended: record.now(),
        }
    }

    #[test]
    fn a_job_counts_items_and_keeps_its_failures_and_output_within_bounds() {
        let mut r = Record::default();
        r.opened(1, job("j1"));
        r.submitted(1, 10);
        r.submitted(1, 1);
        r.running(1, 10, 1);
        assert_eq!(r.find("j1").map(|j| j.items.running), Ok(10));
        r.running(1, 10, -1);
        let t = task(&r, 10, None);
        r.finished(1, t);
        let t = task(&r, 1, Some(&"x".repeat(10_000)));
        r.finished(1, t);
        let mut partly = task(&r, 5, None);
        partly.items_failed = 2;
        partly.first_item_error = "panicked: cursed".into();
        r.submitted(1, 5);
        r.finished(1, partly);
        let j = r.find("j1").expect("open");
        assert_eq!(
            (j.items.done, j.items.failed, j.items.waiting()),
            (13, 3, 0)
        );
        assert_eq!(
            j.failures.len(),
            2,
            "the failed task and the chunk with failed items"
        );
        assert!(
            j.failures[0]
                .failure
                .as_ref()
                .is_some_and(|(_, m)| m.len() <= MESSAGE_BYTES)
        );

        let line = OutputLine {
            stderr: false,
            text: "y".repeat(1000),
        };
        let lines = vec![line; 1000];
        r.output(1, &"node".into(), &lines);
        let j = r.find("j1").expect("open");
        assert!(j.output.iter().map(|l| l.line.len()).sum::<usize>() <= OUTPUT_BYTES);
        assert_eq!(j.output_dropped as usize + j.output.len(), 1000);

        r.ended(1, JobOutcome::Done);
        let j = r.find("name-j1").expect("kept after its end");
        assert_eq!(j.outcome, JobOutcome::Done);
        assert_eq!((r.counters.items_done, r.counters.items_failed), (13, 3));
    }

    #[test]
    fn a_chunk_given_back_to_its_driver_is_not_failed_and_a_reopened_job_goes_on() {
        let mut r = Record::default();
        r.opened(1, job("j1"));
        r.submitted(1, 10);
        let mut crashed = task(&r, 10, None);
        crashed.failure = Some((FailureKind::WorkerCrashed, "killed".into()));
        r.finished(1, crashed);
        let j = r.find("j1").expect("open");
        assert_eq!((j.items.submitted, j.items.failed, j.crashes), (0, 0, 1));
        // Its items come back one by one.
        for _ in 0..10 {
            r.submitted(1, 1);
            let t = task(&r, 1, None);
            r.finished(1, t);
        }
        let j = r.find("j1").expect("open");
        assert_eq!(
            (j.items.submitted, j.items.done, j.items.waiting()),
            (10, 10, 0)
        );
        assert_eq!((r.counters.tasks_split, r.counters.worker_crashes), (1, 1));

        // Its driver comes back after the job ended: one record for one id.
        r.ended(1, JobOutcome::DriverLost);
        r.opened(2, job("j1"));
        assert_eq!(r.jobs().filter(|j| &*j.job.id == "j1").count(), 1);
        assert_eq!(
            r.find("j1").map(|j| (j.items.done, j.ended)),
            Ok((10, None))
        );

        // Two open jobs of one name: which one is meant must be said.
        r.opened(3, job("j2"));
        let mut same = (*job("j3")).clone();
        same.name = "name-j2".into();
        r.opened(4, Arc::new(same));
        assert!(matches!(
            r.find("name-j2"),
            Err(crate::core::SelectError::Ambiguous { .. })
        ));
    }

    #[test]
    fn empty_lines_are_bounded_too() {
        let mut r = Record::default();
        r.opened(1, job("j1"));
        let empty = OutputLine {
            stderr: false,
            text: String::new(),
        };
        r.output(1, &"node".into(), &vec![empty; 100_000]);
        let j = r.find("j1").expect("open");
        assert!(
            j.output.len() * LINE_OVERHEAD <= OUTPUT_BYTES,
            "{}",
            j.output.len()
        );
        assert_eq!(j.output_dropped as usize + j.output.len(), 100_000);
    }

    #[test]
    fn the_history_keeps_the_newest_finished_jobs() {
        let mut r = Record::default();
        for no in 0..(FINISHED_JOBS as u64 + 5) {
            r.opened(no, job(&format!("job{no:04}")));
            r.ended(no, JobOutcome::Done);
        }
        assert_eq!(r.jobs().count(), FINISHED_JOBS);
        assert!(r.find("job0000").is_err(), "the oldest left");
        assert_eq!(
            r.jobs().next().map(|j| j.job.id.to_string()),
            Some(format!("job{:04}", FINISHED_JOBS + 4)),
            "newest first"
        );
    }
}
