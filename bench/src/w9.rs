//! W9: scale through the real server. One `ladle-scheduler` process; simulated agents of 8 slots
//! (1,000 by default, in this process on a runtime of their own, see [`crate::sim_agent`]) join
//! it over gRPC and finish every task the moment it is assigned; this process, as the driver,
//! then runs the tasks (1,000,000 by default) of `identity` through one `map` (W9) or one
//! `submit` each (W9s).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow, bail, ensure};
use futures::stream::FuturesUnordered;
use ladle::{Cluster, StreamExt};
use ladle_proto::v1::{ClusterStatusRequest, admin_service_client::AdminServiceClient};
use tonic::transport::Channel;

use crate::{cluster, sim_agent::Fleet};

/// The whole of one repetition, start-up included, gives up after this long.
const LIMIT: Duration = Duration::from_secs(600);
/// How often the admin service is asked how many tasks are unfinished.
const POLL: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// One `map` over all the inputs.
    Map,
    /// One `submit` per input, then all awaited.
    Submit,
}

pub struct Figures {
    /// From starting the scheduler to every agent alive in its table.
    pub startup_s: f64,
    pub wall_s: f64,
    /// From the first submission to the first result.
    pub first_result_s: f64,
    /// Tasks of the scheduler (chunks of items, for a map) the simulated agents answered.
    pub chunks: u64,
    /// VmHWM of the scheduler at the end.
    pub scheduler_peak_rss_bytes: u64,
    /// VmRSS of the scheduler once the agents joined and the driver connected, before it
    /// submitted anything.
    pub scheduler_base_rss_bytes: u64,
    /// The largest `tasks_queued + tasks_running` the admin service reported.
    pub peak_unfinished: u64,
}

impl Figures {
    /// What the scheduler's memory grew by, per task it held unfinished at the peak.
    pub fn bytes_per_queued_task(&self) -> f64 {
        self.scheduler_peak_rss_bytes
            .saturating_sub(self.scheduler_base_rss_bytes) as f64
            / self.peak_unfinished.max(1) as f64
    }
}

pub async fn run(
    variant: Variant,
    agents: usize,
    tasks: u64,
    logs: Option<PathBuf>,
    observed: bool,
) -> anyhow::Result<Figures> {
    tokio::time::timeout(LIMIT, run_once(variant, agents, tasks, logs, observed))
        .await
        .map_err(|_| anyhow!("W9: gave up after {LIMIT:?}"))?
}

async fn run_once(
    variant: Variant,
    agents: usize,
    tasks: u64,
    logs: Option<PathBuf>,
    observed: bool,
) -> anyhow::Result<Figures> {
    let started = Instant::now();
    let scheduler = Scheduler::start(logs, observed).await?;
    let fleet = Fleet::start(&scheduler.address, agents)?;
    fleet.joined().await?;
    let mut admin = AdminServiceClient::new(
        ladle_common::client::connect(&scheduler.address, &Default::default()).await?,
    );
    loop {
        let status = admin
            .cluster_status(ClusterStatusRequest {})
            .await?
            .into_inner();
        if status.agents_alive as usize == agents {
            break;
        }
        fleet.check()?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let startup_s = started.elapsed().as_secs_f64();
    // The dashboard and Prometheus on a thousand agents and the whole run's queue.
    let observer = if observed {
        let status = admin
            .cluster_status(ClusterStatusRequest {})
            .await?
            .into_inner();
        Some(crate::observer::Observer::start(&status.dashboard_url)?)
    } else {
        None
    };

    let cluster = Cluster::connect(&scheduler.address).await?;
    let base = cluster::status_bytes(scheduler.pid(), "VmRSS").context("the scheduler's VmRSS")?;

    let peak = Arc::new(AtomicU64::new(0));
    let polling = Arc::new(AtomicBool::new(true));
    let poller = tokio::spawn(poll_unfinished(admin, peak.clone(), polling.clone()));

    let driver = tokio::spawn(drive(cluster.clone(), variant, tasks));
    let driven = tokio::select! {
        driven = driver => driven?,
        failed = fleet.failed() => Err(failed),
    };
    polling.store(false, Ordering::Relaxed);
    let polled = poller.await?;
    let (wall, first) = driven?;
    polled?;
    let figures = Figures {
        startup_s,
        wall_s: wall.as_secs_f64(),
        first_result_s: first.as_secs_f64(),
        chunks: fleet.chunks(),
        scheduler_peak_rss_bytes: cluster::status_bytes(scheduler.pid(), "VmHWM")
            .context("the scheduler's VmHWM")?,
        scheduler_base_rss_bytes: base,
        peak_unfinished: peak.load(Ordering::Relaxed),
    };
    if let Some(observer) = observer {
        observer.finish(match variant {
            Variant::Map => "W9 observed",
            Variant::Submit => "W9s observed",
        });
    }
    drop(cluster);
    drop(fleet);
    drop(scheduler);
    Ok(figures)
}

/// Runs the tasks; returns the wall time and the time to the first result.
async fn drive(
    cluster: Cluster,
    variant: Variant,
    tasks: u64,
) -> anyhow::Result<(Duration, Duration)> {
    let t = Instant::now();
    let mut first = None;
    match variant {
        Variant::Map => {
            let mut results = cluster.map(crate::identity, 0..tasks);
            let mut next = 0u64;
            while let Some(result) = results.next().await {
                let value = result?;
                first.get_or_insert_with(|| t.elapsed());
                ensure!(value == next, "W9: result {next} is {value}");
                next += 1;
            }
            ensure!(next == tasks, "W9: {next} results of {tasks}");
        }
        Variant::Submit => {
            // Submitted on a task of their own and awaited as they come, so that the first
            // result is seen when it arrives, not once the last submission is made.
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let submitter = cluster.clone();
            let submitting = tokio::spawn(async move {
                for i in 0..tasks {
                    if tx.send(submitter.submit(crate::identity, i)?).is_err() {
                        break;
                    }
                    if i % 1024 == 1023 {
                        tokio::task::yield_now().await;
                    }
                }
                Ok::<_, ladle::Error>(())
            });
            let mut pending = FuturesUnordered::new();
            let mut seen = vec![false; tasks as usize];
            let (mut count, mut submitted) = (0u64, false);
            loop {
                tokio::select! {
                    future = rx.recv(), if !submitted => match future {
                        Some(future) => pending.push(future),
                        None => submitted = true,
                    },
                    Some(result) = pending.next(), if !pending.is_empty() => {
                        let value = result?;
                        first.get_or_insert_with(|| t.elapsed());
                        let slot = seen
                            .get_mut(value as usize)
                            .with_context(|| format!("W9s: a result out of range: {value}"))?;
                        ensure!(!*slot, "W9s: {value} came back twice");
                        *slot = true;
                        count += 1;
                    }
                    else => break,
                }
            }
            submitting.await??;
            ensure!(count == tasks, "W9s: {count} results of {tasks}");
        }
    }
    Ok((t.elapsed(), first.unwrap_or_default()))
}

/// Keeps the largest `tasks_queued + tasks_running` in `peak` while `polling`.
async fn poll_unfinished(
    mut admin: AdminServiceClient<Channel>,
    peak: Arc<AtomicU64>,
    polling: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut ticker = tokio::time::interval(POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while polling.load(Ordering::Relaxed) {
        ticker.tick().await;
        let status = admin
            .cluster_status(ClusterStatusRequest {})
            .await
            .context("W9: the admin service's status")?
            .into_inner();
        peak.fetch_max(
            status.tasks_queued + status.tasks_running,
            Ordering::Relaxed,
        );
    }
    Ok(())
}

/// A `ladle-scheduler serve` process on loopback, killed when dropped.
struct Scheduler {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Scheduler {
    async fn start(logs: Option<PathBuf>, http: bool) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let settings = dir.path().join("scheduler.toml");
        let address_file = dir.path().join("address");
        // A long heartbeat timeout: the figure is throughput, and an agent of this loaded
        // machine that misses a beat must not be taken for lost.
        std::fs::write(
            &settings,
            format!(
                "bind = \"127.0.0.1\"\nport = 0\naddress_file = {}\nstate_dir = {}\n\
                 heartbeat_interval = \"1s\"\nheartbeat_timeout = \"60s\"\nmulticast = false\n\
                 http = {http}\nhttp_port = 0\n",
                toml_path(&address_file),
                toml_path(&dir.path().join("state")),
            ),
        )?;
        let mut command = Command::new(cluster::sibling("ladle-scheduler")?);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("LADLE_") {
                command.env_remove(key);
            }
        }
        let child = command
            .arg("--config")
            .arg(&settings)
            .arg("serve")
            .env("RUST_LOG", cluster::log_level(&logs))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(cluster::log_file(&logs, "w9-scheduler")?)
            .spawn()?;
        cluster::remember(child.id(), false);
        let mut scheduler = Self {
            child,
            address: String::new(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(address) = std::fs::read_to_string(&address_file)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
            {
                scheduler.address = address;
                return Ok(scheduler);
            }
            if let Some(status) = scheduler.child.try_wait()? {
                bail!("W9: the scheduler exited before it listened ({status})");
            }
            if Instant::now() > deadline {
                bail!("W9: timed out waiting for the scheduler's address");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        cluster::forget(self.child.id());
    }
}

/// A path as a TOML basic string.
fn toml_path(path: &Path) -> String {
    let text = path.to_string_lossy();
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
