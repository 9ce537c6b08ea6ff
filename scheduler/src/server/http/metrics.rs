//! `/metrics`: the cluster in the Prometheus (OpenMetrics) text format, encoded by
//! prometheus-client from what the core and the shell keep. A scrape takes the core's lock once,
//! to copy counters (no scan of the tasks), and encodes outside it.

use std::{sync::atomic::Ordering, time::Instant};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet, text::encode},
    metrics::{MetricType, counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::core::{
    AgentState, Event,
    record::{Counters, DURATION_BUCKETS, Histogram, JobRecord},
};

use super::super::{Shared, telemetry::Peer};

type Labels = Vec<(&'static str, String)>;

/// A label value as the text formats need it: prometheus-client writes values as they are, and
/// job names, ids and host names come from drivers and agents.
fn escaped(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// What one scrape copies out of the core.
struct Snapshot {
    counters: Counters,
    durations: Histogram,
    agents: Vec<AgentRow>,
    jobs: Vec<JobRow>,
    queued: u64,
    running: u64,
    gpu_queued: u64,
    sessions: u64,
    refused: u64,
}

struct AgentRow {
    id: String,
    host: String,
    state: AgentState,
    cpu_slots: u64,
    cpu_busy: u64,
    gpu_slots: u64,
    gpu_busy: u64,
    memory: u64,
    memory_available: u64,
}

struct JobRow {
    id: String,
    name: String,
    open: bool,
    submitted: u64,
    done: u64,
    failed: u64,
    cancelled: u64,
    running: u64,
    waiting: u64,
    retries: u64,
    requeues: u64,
    durations: Histogram,
}

fn job_row(j: &JobRecord) -> JobRow {
    JobRow {
        id: escaped(&j.job.id),
        name: escaped(&j.job.name),
        open: j.ended.is_none(),
        submitted: j.items.submitted,
        done: j.items.done,
        failed: j.items.failed,
        cancelled: j.items.cancelled,
        running: j.items.running,
        waiting: j.items.waiting(),
        retries: j.retries,
        requeues: j.requeues,
        durations: j.durations.clone(),
    }
}

fn snapshot(shared: &Shared) -> Snapshot {
    shared.with_core(|core, _| {
        let counts = core.task_counts();
        let record = core.record();
        Snapshot {
            counters: record.counters,
            durations: record.durations.clone(),
            agents: core
                .agents()
                .map(|a| AgentRow {
                    id: escaped(&a.id().0),
                    host: escaped(&a.hello.hostname),
                    state: a.state(),
                    cpu_slots: u64::from(a.hello.resources.cpu_slots),
                    cpu_busy: u64::from(a.load.busy_cpu_slots),
                    gpu_slots: a.hello.resources.gpus.len() as u64,
                    gpu_busy: u64::from(a.load.busy_gpu_slots),
                    memory: a.hello.resources.memory_bytes,
                    memory_available: a.load.memory_available_bytes,
                })
                .collect(),
            jobs: record.jobs().map(job_row).collect(),
            queued: counts.queued as u64,
            running: counts.running as u64,
            gpu_queued: counts.gpu_queued as u64,
            sessions: counts.sessions as u64,
            refused: counts.refused,
        }
    })
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let g: Gauge = Gauge::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, g);
}

fn gauges(registry: &mut Registry, name: &str, help: &str, rows: Vec<(Labels, u64)>) {
    let family = Family::<Labels, Gauge>::default();
    for (labels, value) in rows {
        family
            .get_or_create(&labels)
            .set(i64::try_from(value).unwrap_or(i64::MAX));
    }
    registry.register(name, help, family);
}

fn counters(registry: &mut Registry, name: &str, help: &str, rows: Vec<(Labels, u64)>) {
    let family = Family::<Labels, Counter>::default();
    for (labels, value) in rows {
        family.get_or_create(&labels).inc_by(value);
    }
    registry.register(name, help, family);
}

/// Histograms the core keeps as bucket counts, encoded as they are.
#[derive(Debug)]
struct Histograms {
    name: &'static str,
    help: &'static str,
    rows: Vec<(Labels, Histogram)>,
}

impl Collector for Histograms {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric =
            encoder.encode_descriptor(self.name, self.help, None, MetricType::Histogram)?;
        for (labels, h) in &self.rows {
            let buckets: Vec<(f64, u64)> = DURATION_BUCKETS
                .iter()
                .copied()
                .chain(std::iter::once(f64::MAX))
                .zip(h.counts.iter().copied())
                .collect();
            metric
                .encode_family(labels)?
                .encode_histogram::<NoLabelSet>(h.sum, h.count(), &buckets, None)?;
        }
        Ok(())
    }
}

fn job_labels(j: &JobRow) -> Labels {
    // `job` is the target's own label in Prometheus: `job_id` stays apart from it.
    vec![("job_id", j.id.clone()), ("name", j.name.clone())]
}

/// The text of one scrape.
pub fn render(shared: &Shared) -> Result<String, std::fmt::Error> {
    let s = snapshot(shared);
    let mut r = Registry::with_prefix("ladle");

    // Agents and slots.
    let by_state = |state: AgentState| s.agents.iter().filter(|a| a.state == state).count() as u64;
    gauges(
        &mut r,
        "agents",
        "Agents known to the scheduler, by state",
        [AgentState::Alive, AgentState::Draining, AgentState::Lost]
            .into_iter()
            .map(|st| (vec![("state", st.as_str().to_owned())], by_state(st)))
            .collect(),
    );
    let live: Vec<&AgentRow> = s
        .agents
        .iter()
        .filter(|a| a.state != AgentState::Lost)
        .collect();
    let sum = |f: fn(&AgentRow) -> u64| live.iter().map(|a| f(a)).sum::<u64>();
    gauges(
        &mut r,
        "slots",
        "Slots of the agents that are not lost, by kind",
        vec![
            (vec![("kind", "cpu".into())], sum(|a| a.cpu_slots)),
            (vec![("kind", "gpu".into())], sum(|a| a.gpu_slots)),
        ],
    );
    gauges(
        &mut r,
        "slots_busy",
        "Busy slots of the agents that are not lost, by kind",
        vec![
            (vec![("kind", "cpu".into())], sum(|a| a.cpu_busy)),
            (vec![("kind", "gpu".into())], sum(|a| a.gpu_busy)),
        ],
    );
    let per_agent = |f: fn(&AgentRow) -> u64, kind: &'static str| {
        live.iter()
            .map(|a| {
                (
                    vec![
                        ("agent", a.id.clone()),
                        ("host", a.host.clone()),
                        ("kind", kind.into()),
                    ],
                    f(a),
                )
            })
            .collect::<Vec<_>>()
    };
    let mut slots = per_agent(|a| a.cpu_slots, "cpu");
    slots.extend(per_agent(|a| a.gpu_slots, "gpu"));
    gauges(&mut r, "agent_slots", "Slots per agent, by kind", slots);
    let mut busy = per_agent(|a| a.cpu_busy, "cpu");
    busy.extend(per_agent(|a| a.gpu_busy, "gpu"));
    gauges(
        &mut r,
        "agent_slots_busy",
        "Busy slots per agent, by kind",
        busy,
    );
    gauges(
        &mut r,
        "agent_memory_bytes",
        "Memory per agent: its machine's total, and what is available",
        live.iter()
            .flat_map(|a| {
                [
                    (
                        vec![
                            ("agent", a.id.clone()),
                            ("host", a.host.clone()),
                            ("kind", "total".into()),
                        ],
                        a.memory,
                    ),
                    (
                        vec![
                            ("agent", a.id.clone()),
                            ("host", a.host.clone()),
                            ("kind", "available".into()),
                        ],
                        a.memory_available,
                    ),
                ]
            })
            .collect(),
    );

    // Tasks, cluster-wide.
    gauge(
        &mut r,
        "tasks_queued",
        "Tasks (a map's chunk counts one) waiting for a slot",
        s.queued,
    );
    gauge(
        &mut r,
        "tasks_running",
        "Tasks placed on agents and not finished",
        s.running,
    );
    gauge(
        &mut r,
        "gpu_tasks_queued",
        "Queued tasks that need a GPU slot",
        s.gpu_queued,
    );
    gauge(
        &mut r,
        "sessions",
        "Driver sessions (jobs) open",
        s.sessions,
    );
    let c = s.counters;
    counter(&mut r, "placements", "Tasks placed on agents", c.placements);
    counter(
        &mut r,
        "steals",
        "Unstarted tasks moved from a busy agent to an idle one",
        c.steals,
    );
    counter(
        &mut r,
        "requeues",
        "Placements put back in the queue because their agent was lost",
        c.requeues,
    );
    counter(
        &mut r,
        "retries",
        "Tasks run again after their own error (retries) or a worker crash",
        c.retries,
    );
    counter(
        &mut r,
        "worker_crashes",
        "Tasks whose worker process died under them (a worker that held three counts three)",
        c.worker_crashes,
    );
    counters(
        &mut r,
        "tasks_finished",
        "Tasks with a result, by outcome (split: a chunk given back to its driver to run item by item)",
        vec![
            (vec![("outcome", "done".into())], c.tasks_done),
            (vec![("outcome", "failed".into())], c.tasks_failed),
            (vec![("outcome", "cancelled".into())], c.tasks_cancelled),
            (vec![("outcome", "split".into())], c.tasks_split),
        ],
    );
    counters(
        &mut r,
        "items_finished",
        "Items (a map's inputs) with a result, by outcome",
        vec![
            (vec![("outcome", "done".into())], c.items_done),
            (vec![("outcome", "failed".into())], c.items_failed),
        ],
    );
    counter(
        &mut r,
        "tasks_refused",
        "Tasks refused because their session sent past its budget",
        s.refused,
    );
    counter(
        &mut r,
        "jobs_started",
        "Jobs (driver sessions) opened",
        c.jobs_started,
    );
    counter(&mut r, "jobs_ended", "Jobs ended", c.jobs_ended);
    counter(
        &mut r,
        "output_lines",
        "Output lines of tasks received from agents",
        c.output_lines,
    );
    r.register_collector(Box::new(Histograms {
        name: "task_duration_seconds",
        help: "Run time of finished tasks, as their agents measured it",
        rows: vec![(Vec::new(), s.durations)],
    }));

    // Per job: the open ones and the recent history (at most FINISHED_JOBS).
    let item_rows = |f: fn(&JobRow) -> u64| {
        s.jobs
            .iter()
            .map(|j| (job_labels(j), f(j)))
            .collect::<Vec<_>>()
    };
    counters(
        &mut r,
        "job_items_submitted",
        "Items each job submitted",
        item_rows(|j| j.submitted),
    );
    counters(
        &mut r,
        "job_items_done",
        "Items of each job that succeeded",
        item_rows(|j| j.done),
    );
    counters(
        &mut r,
        "job_items_failed",
        "Items of each job that failed",
        item_rows(|j| j.failed),
    );
    counters(
        &mut r,
        "job_items_cancelled",
        "Items of each job that were cancelled",
        item_rows(|j| j.cancelled),
    );
    counters(
        &mut r,
        "job_retries",
        "Runs again of each job's tasks (own error or worker crash)",
        item_rows(|j| j.retries),
    );
    counters(
        &mut r,
        "job_requeues",
        "Placements of each job's tasks moved off lost agents",
        item_rows(|j| j.requeues),
    );
    let open_rows = |f: fn(&JobRow) -> u64| {
        s.jobs
            .iter()
            .filter(|j| j.open)
            .map(|j| (job_labels(j), f(j)))
            .collect::<Vec<_>>()
    };
    gauges(
        &mut r,
        "job_items_running",
        "Items of each open job running now",
        open_rows(|j| j.running),
    );
    gauges(
        &mut r,
        "job_items_queued",
        "Items of each open job waiting for a slot",
        open_rows(|j| j.waiting),
    );
    r.register_collector(Box::new(Histograms {
        name: "job_task_duration_seconds",
        help: "Run time of each job's finished tasks",
        rows: s
            .jobs
            .iter()
            .map(|j| (job_labels(j), j.durations.clone()))
            .collect(),
    }));

    // The shell: bytes and the core's time.
    let t = &shared.telemetry;
    counters(
        &mut r,
        "value_bytes",
        "Bytes of values crossing the scheduler: inline arguments and results, and blobs",
        vec![
            (
                vec![
                    ("direction", "in".into()),
                    ("peer", "driver".into()),
                    ("kind", "inline".into()),
                ],
                t.inline(true, Peer::Driver),
            ),
            (
                vec![
                    ("direction", "out".into()),
                    ("peer", "agent".into()),
                    ("kind", "inline".into()),
                ],
                t.inline(false, Peer::Agent),
            ),
            (
                vec![
                    ("direction", "in".into()),
                    ("peer", "agent".into()),
                    ("kind", "inline".into()),
                ],
                t.inline(true, Peer::Agent),
            ),
            (
                vec![
                    ("direction", "out".into()),
                    ("peer", "driver".into()),
                    ("kind", "inline".into()),
                ],
                t.inline(false, Peer::Driver),
            ),
            (
                vec![
                    ("direction", "in".into()),
                    ("peer", "any".into()),
                    ("kind", "blob".into()),
                ],
                t.blob_in.load(Ordering::Relaxed),
            ),
            (
                vec![
                    ("direction", "out".into()),
                    ("peer", "any".into()),
                    ("kind", "blob".into()),
                ],
                t.blob_out.load(Ordering::Relaxed),
            ),
        ],
    );
    let (blobs, blob_bytes) = shared.blobs.job_usage();
    gauge(
        &mut r,
        "job_blobs",
        "Jobs' values held in the blob store",
        blobs,
    );
    gauge(
        &mut r,
        "job_blob_bytes",
        "Bytes of jobs' values held in the blob store",
        blob_bytes,
    );
    r.register_collector(Box::new(EventTimes(shared.telemetry.event_seconds.clone())));
    gauge(
        &mut r,
        "uptime_seconds",
        "Seconds since the scheduler started",
        Instant::now()
            .saturating_duration_since(shared.started)
            .as_secs(),
    );
    counter(
        &mut r,
        "calls_refused",
        "Calls refused at the door (bad or missing credential, role)",
        shared.refusals.total(),
    );

    let mut text = String::new();
    encode(&mut text, &r)?;
    Ok(text)
}

/// The same text in Prometheus' own format (0.0.4), for scrapers and tools that do not ask for
/// OpenMetrics (`promtool check metrics`, older Prometheus): a counter's family is named with
/// its `_total` there, and there is no `# EOF` or `# UNIT`.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let named = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match named {
            Some(renamed) => text.push_str(&renamed),
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

/// The core's time per event kind: histograms the shell keeps (prometheus-client's own).
#[derive(Debug)]
struct EventTimes(Vec<prometheus_client::metrics::histogram::Histogram>);

impl Collector for EventTimes {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(
            "core_event_seconds",
            "Time the scheduler's core took per event, its commands carried out, by kind",
            None,
            MetricType::Histogram,
        )?;
        for (kind, h) in Event::KINDS.iter().zip(&self.0) {
            let labels: Labels = vec![("event", (*kind).to_owned())];
            h.encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
