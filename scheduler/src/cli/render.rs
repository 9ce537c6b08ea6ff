//! How the CLI shows agents and the cluster: tables for people, JSON for scripts.

use std::collections::BTreeMap;

use comfy_table::{ContentArrangement, Table, presets::NOTHING};
use ladle_proto::v1::{AgentInfo, AgentState, ClusterStatusResponse, JobInfo};
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
         values      {blobs} stored for running jobs ({blob_mib:.1} MiB)",
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
    )
}

/// One job as `jobs --json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct JobRow {
    pub id: String,
    pub name: String,
    pub driver_host: String,
    pub unfinished: u64,
    pub running: u64,
    pub delivered: u64,
    pub driver_connected: bool,
}

pub fn job_rows(jobs: Vec<JobInfo>) -> Vec<JobRow> {
    jobs.into_iter()
        .map(|j| JobRow {
            id: j.id,
            name: j.name,
            driver_host: j.driver_host,
            unfinished: j.unfinished,
            running: j.running,
            delivered: j.delivered,
            driver_connected: j.driver_connected,
        })
        .collect()
}

pub fn jobs_table(rows: &[JobRow]) -> String {
    if rows.is_empty() {
        return "no jobs are running".into();
    }
    let mut table = Table::new();
    table
        .load_style(NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(["ID", "NAME", "DRIVER", "UNFINISHED", "RUNNING", "DONE"]);
    for row in rows {
        table.add_row([
            row.id.chars().take(12).collect::<String>(),
            row.name.clone(),
            if row.driver_connected {
                row.driver_host.clone()
            } else {
                format!("{} (away)", row.driver_host)
            },
            row.unfinished.to_string(),
            row.running.to_string(),
            row.delivered.to_string(),
        ]);
    }
    table.to_string()
}
