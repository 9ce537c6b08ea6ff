//! How the CLI shows agents and the cluster: tables for people, JSON for scripts.

use std::collections::BTreeMap;

use comfy_table::{ContentArrangement, Table, presets::NOTHING};
use ladle_proto::v1::{AgentInfo, AgentState, ClusterStatusResponse, JobInfo, TaskInfo};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct GpuRow {
    pub ordinal: u32,
    pub name: String,
    pub memory_bytes: u64,
    pub compute_capability: String,
    pub declared: bool,
}

/// One agent as `agents --json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct AgentRow {
    pub id: String,
    pub hostname: String,
    pub state: &'static str,
    pub cpus: u32,
    pub cpu_slots: u32,
    pub cpu_slots_busy: u32,
    pub gpus: Vec<GpuRow>,
    pub gpu_slots_busy: u32,
    pub memory_bytes: u64,
    pub memory_available_bytes: u64,
    pub load_average: f64,
    pub last_heartbeat_ms_ago: u64,
    pub connected_ms_ago: u64,
    pub version: String,
    pub labels: BTreeMap<String, String>,
    pub peer: String,
    pub discovery: String,
}

fn state_name(state: i32) -> &'static str {
    match AgentState::try_from(state) {
        Ok(AgentState::Alive) => "alive",
        Ok(AgentState::Draining) => "draining",
        Ok(AgentState::Lost) => "lost",
        _ => "unknown",
    }
}

pub fn agent_rows(agents: Vec<AgentInfo>) -> Vec<AgentRow> {
    agents
        .into_iter()
        .map(|a| {
            let resources = a.resources.unwrap_or_default();
            let load = a.load.unwrap_or_default();
            AgentRow {
                state: state_name(a.state),
                id: a.id,
                hostname: a.hostname,
                cpus: resources.cpus,
                cpu_slots: resources.cpu_slots,
                cpu_slots_busy: load.busy_cpu_slots,
                gpus: resources
                    .gpus
                    .into_iter()
                    .map(|g| GpuRow {
                        ordinal: g.ordinal,
                        name: g.name,
                        memory_bytes: g.memory_bytes,
                        compute_capability: g.compute_capability,
                        declared: g.declared,
                    })
                    .collect(),
                gpu_slots_busy: load.busy_gpu_slots,
                memory_bytes: resources.memory_bytes,
                memory_available_bytes: load.memory_available_bytes,
                load_average: load.load_average,
                last_heartbeat_ms_ago: a.last_heartbeat_ms_ago,
                connected_ms_ago: a.connected_ms_ago,
                version: a.version,
                labels: a.labels.into_iter().collect(),
                peer: a.peer,
                discovery: a.discovery,
            }
        })
        .collect()
}

fn gib(bytes: u64) -> String {
    // Display only: the precision lost in the conversion does not matter.
    #[allow(clippy::cast_precision_loss)]
    let g = bytes as f64 / f64::from(1u32 << 30);
    format!("{g:.1} GiB")
}

fn ago(ms: u64) -> String {
    if ms < 60_000 {
        format!("{:.1}s ago", Duration::from_millis(ms).as_secs_f64())
    } else {
        format!(
            "{} ago",
            humantime::format_duration(Duration::from_secs(ms / 1000))
        )
    }
}

use std::time::Duration;

fn gpus_cell(row: &AgentRow) -> String {
    if row.gpus.is_empty() {
        return "-".into();
    }
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for gpu in &row.gpus {
        *names
            .entry(if gpu.name.is_empty() {
                "declared"
            } else {
                gpu.name.as_str()
            })
            .or_default() += 1;
    }
    let kinds: Vec<String> = names
        .iter()
        .map(|(name, n)| format!("{n}× {name}"))
        .collect();
    format!(
        "{}/{} ({})",
        row.gpu_slots_busy,
        row.gpus.len(),
        kinds.join(", ")
    )
}

pub fn agents_table(rows: &[AgentRow]) -> String {
    if rows.is_empty() {
        return "no agents have joined this scheduler".into();
    }
    let mut table = Table::new();
    table
        .load_style(NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header([
            "ID",
            "HOST",
            "STATE",
            "CPU SLOTS",
            "GPUS",
            "MEMORY USED",
            "HEARTBEAT",
            "FOUND BY",
            "VERSION",
        ]);
    for row in rows {
        // Busy or used, then total, in every column; a lost agent's last load would be stale.
        let lost = row.state == "lost";
        let or_stale = |cell: String| if lost { "-".to_owned() } else { cell };
        table.add_row([
            row.id.chars().take(12).collect::<String>(),
            row.hostname.clone(),
            row.state.to_owned(),
            or_stale(format!("{}/{}", row.cpu_slots_busy, row.cpu_slots)),
            if lost && !row.gpus.is_empty() {
                "-".to_owned()
            } else {
                gpus_cell(row)
            },
            or_stale(format!(
                "{} / {}",
                gib(row.memory_bytes.saturating_sub(row.memory_available_bytes)),
                gib(row.memory_bytes)
            )),
            ago(row.last_heartbeat_ms_ago),
            row.discovery.clone(),
            row.version.clone(),
        ]);
    }
    table.to_string()
}

/// "1 task", "2 tasks".
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

pub fn status_text(status: &ClusterStatusResponse, address: &str) -> String {
    let agents = status.agents_alive + status.agents_draining + status.agents_lost;
    format!(
        "cluster     {cluster} at {address}\n\
         scheduler   ladle {version}, protocol {protocol}, up {uptime}\n\
         security    {security}\n\
         agents      {agents} ({alive} alive, {draining} draining, {lost} lost)\n\
         cpu slots   {cpu_busy} busy of {cpu_total}\n\
         gpu slots   {gpu_busy} busy of {gpu_total}{gpu_waiting}\n\
         jobs        {jobs} running, {queued} queued, {running} placed on agents\n\
         values      {blobs} stored for running jobs ({blob_mib:.1} MiB)\n\
         dashboard   {dashboard}",
        cluster = status.cluster,
        version = status.scheduler_version,
        protocol = status.protocol_version,
        uptime = humantime::format_duration(Duration::from_secs(status.uptime_ms / 1000)),
        security = match (status.security.as_str(), status.calls_refused) {
            ("", _) if status.token_required => "cluster token required".to_owned(),
            ("", _) => "NO TOKEN: anyone who reaches it may join".to_owned(),
            (described, 0) => described.to_owned(),
            (described, refused) => format!("{described}; {refused} calls refused"),
        },
        alive = status.agents_alive,
        draining = status.agents_draining,
        lost = status.agents_lost,
        cpu_busy = status.cpu_slots_busy,
        cpu_total = status.cpu_slots_total,
        gpu_busy = status.gpu_slots_busy,
        gpu_total = status.gpu_slots_total,
        gpu_waiting = match (status.gpu_tasks_queued, status.gpu_slots_total) {
            (0, _) => String::new(),
            (n, 0) => format!(
                ", {} waiting: no agent has a GPU",
                count(n, "GPU task", "GPU tasks")
            ),
            (n, _) => format!(
                ", {} waiting for a free one",
                count(n, "GPU task", "GPU tasks")
            ),
        },
        jobs = status.jobs,
        queued = count(status.tasks_queued, "task", "tasks"),
        running = status.tasks_running,
        blobs = count(status.job_blobs, "value", "values"),
        blob_mib = status.job_blob_bytes as f64 / f64::from(1 << 20),
        dashboard = if status.dashboard_url.is_empty() {
            "not served (http = false)"
        } else {
            &status.dashboard_url
        },
    )
}

/// One job as `jobs --json` prints it: its tasks (a map's chunk counts one) as the session
/// holds them, and its items (what the driver submitted, nested tasks included).
#[derive(Clone, Debug, Serialize)]
pub struct JobRow {
    pub id: String,
    pub name: String,
    pub driver_host: String,
    pub state: String,
    pub unfinished: u64,
    pub running: u64,
    pub delivered: u64,
    pub driver_connected: bool,
    pub items: ItemCounts,
    /// Items done, failed or cancelled per item submitted, 0 to 1.
    pub progress: f64,
    pub retries: u64,
    pub requeues: u64,
    pub wall_ms: u64,
    pub ended_ms_ago: u64,
    pub items_per_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ItemCounts {
    pub total: u64,
    pub done: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub running: u64,
    pub queued: u64,
}

pub fn job_rows(jobs: Vec<JobInfo>) -> Vec<JobRow> {
    jobs.into_iter().map(job_row).collect()
}

pub fn job_row(j: JobInfo) -> JobRow {
    let (queued, cancelled) = (j.items_waiting, j.items_cancelled);
    let resolved = j.items_done + j.items_failed + cancelled;
    JobRow {
        progress: if j.items_submitted == 0 {
            0.0
        } else {
            (resolved as f64 / j.items_submitted as f64).min(1.0)
        },
        items: ItemCounts {
            total: j.items_submitted,
            done: j.items_done,
            failed: j.items_failed,
            cancelled,
            running: j.items_running,
            queued,
        },
        id: j.id,
        name: j.name,
        driver_host: j.driver_host,
        state: j.state,
        unfinished: j.unfinished,
        running: j.running,
        delivered: j.delivered,
        driver_connected: j.driver_connected,
        retries: j.retries,
        requeues: j.requeues,
        wall_ms: j.wall_ms,
        ended_ms_ago: j.ended_ms_ago,
        items_per_s: j.items_per_s,
    }
}

/// A bar of `width` cells filled to `fraction`.
fn bar(fraction: f64, width: usize) -> String {
    let filled = ((fraction.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

fn duration(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms / 100 * 100)).to_string()
}

pub fn jobs_table(rows: &[JobRow]) -> String {
    if rows.is_empty() {
        return "no jobs are running".into();
    }
    let mut table = Table::new();
    table
        .load_style(NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header([
            "ID",
            "NAME",
            "STATE",
            "DRIVER",
            "PROGRESS",
            "ITEMS",
            "FAILED",
            "CANCELLED",
            "RUNNING",
            "QUEUED",
            "ITEMS/S",
            "WALL",
        ]);
    for row in rows {
        let state = if row.state == "running" && !row.driver_connected {
            "driver away".to_owned()
        } else {
            row.state.clone()
        };
        table.add_row([
            row.id.chars().take(12).collect::<String>(),
            row.name.clone(),
            state,
            row.driver_host.clone(),
            format!("{} {:>3.0}%", bar(row.progress, 10), row.progress * 100.0),
            format!(
                "{}/{}",
                row.items.done + row.items.failed + row.items.cancelled,
                row.items.total
            ),
            row.items.failed.to_string(),
            row.items.cancelled.to_string(),
            row.items.running.to_string(),
            row.items.queued.to_string(),
            format!("{:.0}", row.items_per_s),
            duration(row.wall_ms),
        ]);
    }
    table.to_string()
}

/// One task as `tasks --json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct TaskRow {
    pub task_id: u64,
    pub function: String,
    pub items: u32,
    pub nested: bool,
    pub state: String,
    pub error: String,
    pub agent: String,
    pub attempt: u32,
    pub run_ms: f64,
    pub ended_ms_ago: u64,
}

pub fn task_rows(tasks: Vec<TaskInfo>) -> Vec<TaskRow> {
    tasks
        .into_iter()
        .map(|t| TaskRow {
            task_id: t.task_id,
            function: t.function,
            items: t.items,
            nested: t.nested,
            state: t.state,
            error: t.error,
            agent: t.agent,
            attempt: t.attempt,
            run_ms: t.run_ns as f64 / 1e6,
            ended_ms_ago: t.ended_ms_ago,
        })
        .collect()
}

/// A job's recent tasks, then its failures with their errors.
pub fn tasks_text(job: &JobRow, recent: &[TaskRow], failed: &[TaskRow]) -> String {
    let mut text = format!(
        "job {} ({}), {}: {}/{} items, {} failed\n",
        job.id,
        job.name,
        job.state,
        job.items.done + job.items.failed,
        job.items.total,
        job.items.failed
    );
    let table = |rows: &[TaskRow], with_error: bool| {
        let mut table = Table::new();
        let mut header = vec![
            "TASK", "FUNCTION", "ITEMS", "STATE", "AGENT", "ATTEMPT", "RUN", "ENDED",
        ];
        if with_error {
            header.push("ERROR");
        }
        table
            .load_style(NOTHING)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_header(header);
        for t in rows {
            let mut row = vec![
                if t.nested {
                    format!("{} (nested)", t.task_id & !(1 << 63))
                } else {
                    t.task_id.to_string()
                },
                t.function.clone(),
                t.items.to_string(),
                t.state.clone(),
                t.agent.clone(),
                t.attempt.to_string(),
                format!("{:.1} ms", t.run_ms),
                format!("{} ago", duration(t.ended_ms_ago)),
            ];
            if with_error {
                row.push(t.error.clone());
            }
            table.add_row(row);
        }
        table.to_string()
    };
    if failed.is_empty() {
        text.push_str("no failed tasks\n");
    } else {
        text.push_str(&format!("\nfailed ({}, newest first):\n", failed.len()));
        text.push_str(&table(failed, true));
        text.push('\n');
    }
    if recent.is_empty() {
        text.push_str("no finished tasks yet\n");
    } else {
        text.push_str(&format!("\nrecent ({}, newest first):\n", recent.len()));
        text.push_str(&table(recent, false));
        text.push('\n');
    }
    text
}
