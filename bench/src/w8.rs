//! W8 and W8r: big values, 1 GiB in 64 items of 16 MiB — as arguments made in the driver (W8:
//! each task returns the sum of its bytes) or as results (W8r: each task returns 16 MiB derived
//! from its index). Each repetition runs in a child process of the benchmark (this executable
//! again, with `--big-child`) on a cluster of its own, so that the driver's peak RSS is this
//! workload's alone.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::cluster::{self, LocalCluster};

pub const ITEMS: u64 = 64;
pub const ITEM_BYTES: usize = 16 << 20;
const HEARTBEAT_TIMEOUT: &str = "5s";
/// A repetition, cluster start-up included, gives up after this long.
const LIMIT: Duration = Duration::from_secs(600);

/// The byte every position of item `i` holds.
fn fill(i: u64) -> u8 {
    (i % 251) as u8
}

#[ladle::task]
fn byte_sum(bytes: ladle::ByteBuf) -> u64 {
    bytes.iter().map(|&b| u64::from(b)).sum()
}

#[ladle::task]
fn pattern(i: u64) -> ladle::ByteBuf {
    ladle::ByteBuf::from(vec![fill(i); ITEM_BYTES])
}

/// The peak RSS (VmHWM) of the scheduler, the agents and every worker seen under them, polled,
/// since workers end with their job.
struct Watch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<HashMap<u32, u64>>,
}

impl Watch {
    fn start(cluster: &LocalCluster) -> Self {
        let agents: Vec<u32> = cluster.agents.iter().map(|a| a.id()).collect();
        let mut fixed = agents.clone();
        fixed.push(cluster.scheduler_pid());
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peaks: HashMap<u32, u64> = HashMap::new();
            loop {
                let last = stopping.load(Ordering::Relaxed);
                let workers = agents.iter().flat_map(|&a| cluster::children(a));
                for pid in fixed.iter().copied().chain(workers) {
                    if let Some(hwm) = cluster::status_bytes(pid, "VmHWM") {
                        let peak = peaks.entry(pid).or_default();
                        *peak = (*peak).max(hwm);
                    }
                }
                if last {
                    return peaks;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self { stop, thread }
    }

    /// The sum of every process's peak.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map(|peaks| peaks.values().sum())
            .unwrap_or(0)
    }
}

/// In the child: one repetition of `workload`, its figures printed as one JSON line.
pub async fn child(workload: &str, logs: Option<PathBuf>) -> anyhow::Result<()> {
    // The scheduler's default heartbeat timeout, not W5's 2 s: nothing is killed here, and an
    // agent busy moving 16 MiB values on this small machine must not be taken for lost.
    let local = crate::blocking(|| LocalCluster::start_with(2, 1, logs, HEARTBEAT_TIMEOUT))?;
    let cluster = local.connect().await?;
    // The first task starts the workers: start-up, not the workload.
    cluster.submit(crate::identity, 0)?.await?;
    let watch = Watch::start(&local);
    // The driver's resident memory once its inputs are made (W8) and before the workload: what
    // the workload adds is its peak less this.
    let before;
    let wall = match workload {
        "W8" => {
            let inputs: Vec<ladle::ByteBuf> = (0..ITEMS)
                .map(|i| ladle::ByteBuf::from(vec![fill(i); ITEM_BYTES]))
                .collect();
            before = cluster::status_bytes(std::process::id(), "VmRSS").unwrap_or(0);
            let t = Instant::now();
            let sums = cluster.map(byte_sum, inputs).await?;
            let wall = t.elapsed();
            ensure!(sums.len() as u64 == ITEMS, "W8: {} results", sums.len());
            for (i, &sum) in (0..ITEMS).zip(&sums) {
                let want = u64::from(fill(i)) * ITEM_BYTES as u64;
                ensure!(sum == want, "W8: item {i} sums to {sum}, not {want}");
            }
            wall
        }
        "W8r" => {
            before = cluster::status_bytes(std::process::id(), "VmRSS").unwrap_or(0);
            let t = Instant::now();
            let results = cluster.map(pattern, 0..ITEMS).await?;
            let wall = t.elapsed();
            ensure!(
                results.len() as u64 == ITEMS,
                "W8r: {} results",
                results.len()
            );
            for (i, bytes) in (0..ITEMS).zip(&results) {
                ensure!(
                    bytes.len() == ITEM_BYTES && bytes.iter().all(|&b| b == fill(i)),
                    "W8r: result {i} is not {ITEM_BYTES} bytes of {}",
                    fill(i)
                );
            }
            wall
        }
        other => bail!("no big-value workload {other}"),
    };
    let cluster_peak = watch.finish();
    let driver_peak = cluster::status_bytes(std::process::id(), "VmHWM").unwrap_or(0);
    println!(
        "{}",
        json!({
            "wall_s": wall.as_secs_f64(),
            "driver_peak_rss_bytes": driver_peak,
            "driver_rss_before_bytes": before,
            "driver_peak_beyond_before_bytes": driver_peak.saturating_sub(before),
            "cluster_peak_rss_bytes": cluster_peak,
        })
    );
    drop(cluster);
    drop(local);
    Ok(())
}

/// In the parent: one child per repetition; each one's figures.
pub async fn run(workload: &str, reps: usize, logs: Option<PathBuf>) -> anyhow::Result<Vec<Value>> {
    let exe = std::env::current_exe()?;
    let mut figures = Vec::with_capacity(reps);
    for _ in 0..reps {
        let mut command = tokio::process::Command::new(&exe);
        command.args(["--big-child", workload]);
        if crate::cluster::tls() {
            command.arg("--tls");
        }
        if let Some(dir) = &logs {
            command.arg("--logs").arg(dir);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().context("the child benchmark has no pid")?;
        cluster::remember_child(pid);
        let mut stdout = child.stdout.take().context("the child's stdout")?;
        let finished = tokio::time::timeout(LIMIT, async {
            let mut out = String::new();
            stdout.read_to_string(&mut out).await?;
            Ok::<_, std::io::Error>((child.wait().await?, out))
        })
        .await;
        let (status, out) = match finished {
            Ok(finished) => finished?,
            Err(_) => {
                // It ends the cluster it started on SIGTERM; SIGKILL if it does not.
                cluster::terminate(pid);
                if tokio::time::timeout(Duration::from_secs(5), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
                cluster::forget(pid);
                bail!("{workload}: gave up after {LIMIT:?}");
            }
        };
        cluster::forget(pid);
        ensure!(
            status.success(),
            "{workload}: the child benchmark failed ({status})"
        );
        let line = out
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .with_context(|| format!("{workload}: the child printed no figures"))?;
        figures.push(serde_json::from_str(line)?);
    }
    Ok(figures)
}
