//! The dashboard's view of the cluster: aggregates, never every task, so that one snapshot
//! stays small and quick with a thousand agents and a million queued tasks (agents and open
//! jobs are listed, the task stream is capped at its most recent spans).

use std::{
    collections::HashMap,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::core::{AgentState, record::JobRecord};

use super::super::{Shared, convert};

/// Spans of the task stream in one snapshot, and errors listed per job.
const STREAM_SPANS: usize = 2_000;
const ERRORS_PER_JOB: usize = 20;
/// Finished jobs shown after the open ones.
const FINISHED_SHOWN: usize = 10;

#[derive(Serialize)]
pub struct Overview {
    cluster: String,
    version: &'static str,
    now_ms: u64,
    uptime_s: f64,
    totals: Totals,
    agents: Vec<AgentView>,
    jobs: Vec<JobView>,
    stream: Stream,
    throughput: Vec<Throughput>,
}

/// The task stream, compact: each agent's host and each job's id once, and per span
/// `[agent, job, started ms before now_ms, ran ms, ok 1 or 0]` (two thousand spans that repeat
/// the same names would be most of a snapshot).
#[derive(Serialize, Default)]
struct Stream {
    agents: Vec<String>,
    jobs: Vec<String>,
    spans: Vec<[u64; 5]>,
}

#[derive(Serialize, Default)]
struct Totals {
    agents_alive: u32,
    agents_draining: u32,
    agents_lost: u32,
    cpu_slots: u64,
    cpu_busy: u64,
    gpu_slots: u64,
    gpu_busy: u64,
    tasks_queued: u64,
    tasks_running: u64,
    jobs_open: u64,
}

#[derive(Serialize)]
struct AgentView {
    id: String,
    host: String,
    state: &'static str,
    cpu_slots: u32,
    cpu_busy: u32,
    gpu_slots: u32,
    gpu_busy: u32,
    memory_bytes: u64,
    memory_available_bytes: u64,
    tasks_done: u64,
}

#[derive(Serialize)]
struct JobView {
    id: String,
    name: String,
    state: &'static str,
    driver_connected: bool,
    items_total: u64,
    items_done: u64,
    items_failed: u64,
    items_running: u64,
    items_queued: u64,
    /// Cancelled, and for a job that ended, those it left unfinished.
    items_cancelled: u64,
    retries: u64,
    started_ms: u64,
    ended_ms: Option<u64>,
    items_per_s: f64,
    errors: Vec<ErrorView>,
}

#[derive(Serialize)]
struct ErrorView {
    task: String,
    message: String,
    agent: String,
    attempt: u32,
}

#[derive(Serialize)]
struct Throughput {
    t_ms: u64,
    items: u64,
}

/// One snapshot, taken under the core's lock.
pub fn overview(shared: &Shared) -> Overview {
    let wall_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let now = Instant::now();
    // Instants shown as Unix milliseconds, by their distance from now.
    let unix_ms =
        |at: Instant| wall_now.saturating_sub(convert_ms(now.saturating_duration_since(at)));
    shared.with_core(|core, _| {
        let counts = core.task_counts();
        let record = core.record();
        let mut totals = Totals {
            tasks_queued: counts.queued as u64,
            tasks_running: counts.running as u64,
            jobs_open: counts.sessions as u64,
            ..Totals::default()
        };
        let mut agents: Vec<AgentView> = core
            .agents()
            .map(|a| {
                let state = a.state();
                let gpus = u32::try_from(a.hello.resources.gpus.len()).unwrap_or(u32::MAX);
                match state {
                    AgentState::Alive => totals.agents_alive += 1,
                    AgentState::Draining => totals.agents_draining += 1,
                    AgentState::Lost => totals.agents_lost += 1,
                }
                if state != AgentState::Lost {
                    totals.cpu_slots += u64::from(a.hello.resources.cpu_slots);
                    totals.cpu_busy += u64::from(a.load.busy_cpu_slots);
                    totals.gpu_slots += u64::from(gpus);
                    totals.gpu_busy += u64::from(a.load.busy_gpu_slots);
                }
                AgentView {
                    id: a.id().to_string(),
                    host: a.hello.hostname.clone(),
                    state: state.as_str(),
                    cpu_slots: a.hello.resources.cpu_slots,
                    cpu_busy: a.load.busy_cpu_slots,
                    gpu_slots: gpus,
                    gpu_busy: a.load.busy_gpu_slots,
                    memory_bytes: a.hello.resources.memory_bytes,
                    memory_available_bytes: a.load.memory_available_bytes,
                    tasks_done: a.results,
                }
            })
            .collect();
        agents.sort_by(|a, b| (&a.host, &a.id).cmp(&(&b.host, &b.id)));

        let second = record.second(now);
        let connected: std::collections::HashSet<_> = core
            .jobs()
            .into_iter()
            .filter(|v| v.driver_connected)
            .map(|v| v.job.id.clone())
            .collect();
        let job_view = |j: &JobRecord| JobView {
            id: j.job.id.to_string(),
            name: j.job.name.clone(),
            state: match j.ended {
                None => "running",
                Some(_) if j.items.failed > 0 => "failed",
                Some(_) if j.items.cancelled + j.items.waiting() > 0 => "cancelled",
                Some(_) => "done",
            },
            driver_connected: j.ended.is_none() && connected.contains(&j.job.id),
            items_total: j.items.submitted,
            items_done: j.items.done,
            items_failed: j.items.failed,
            items_running: j.items.running,
            items_queued: j.queued_and_cancelled().0,
            items_cancelled: j.queued_and_cancelled().1,
            retries: j.retries,
            started_ms: unix_ms(j.opened),
            ended_ms: j.ended.map(unix_ms),
            items_per_s: j.rate.per_second(second, 5),
            errors: j
                .failures
                .iter()
                .rev()
                .take(ERRORS_PER_JOB)
                .map(|t| ErrorView {
                    task: t.function.to_string(),
                    message: match &t.failure {
                        Some((kind, message)) => {
                            format!("{}: {message}", convert::failure_name(*kind))
                        }
                        None => t.error().unwrap_or_default(),
                    },
                    agent: t.agent.to_string(),
                    attempt: t.attempt,
                })
                .collect(),
        };
        let mut jobs: Vec<JobView> = record.open_jobs().map(job_view).collect();
        jobs.sort_by_key(|j| std::cmp::Reverse(j.started_ms));
        jobs.extend(
            record
                .jobs()
                .filter(|j| j.ended.is_some())
                .take(FINISHED_SHOWN)
                .map(job_view),
        );

        let spans = record.stream();
        let skip = spans.len().saturating_sub(STREAM_SPANS);
        let mut stream = Stream::default();
        let (mut agent_no, mut job_no) = (HashMap::new(), HashMap::new());
        for s in spans.skip(skip) {
            let index = |names: &mut Vec<String>,
                         seen: &mut HashMap<_, u64>,
                         name: &std::sync::Arc<str>| {
                *seen.entry(name.clone()).or_insert_with(|| {
                    names.push(name.to_string());
                    names.len() as u64 - 1
                })
            };
            let a = index(&mut stream.agents, &mut agent_no, &s.agent);
            let j = index(&mut stream.jobs, &mut job_no, &s.job);
            let ran_ms = s.run_ns / 1_000_000;
            let ended_ago = convert_ms(now.saturating_duration_since(s.ended));
            stream
                .spans
                .push([a, j, ended_ago + ran_ms, ran_ms, u64::from(s.ok)]);
        }
        let throughput = record
            .rate
            .seconds()
            .filter(|&(s, _)| s < second)
            .map(|(s, items)| Throughput {
                t_ms: unix_ms(record.second_start(s)),
                items,
            })
            .collect();
        Overview {
            cluster: shared.settings.cluster.clone(),
            version: ladle_common::VERSION,
            now_ms: wall_now,
            uptime_s: now.saturating_duration_since(shared.started).as_secs_f64(),
            totals,
            agents,
            jobs,
            stream,
            throughput,
        }
    })
}

fn convert_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
