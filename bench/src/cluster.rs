//! A real cluster for the benchmark: `ladle-scheduler` and `ladle-agent` processes on loopback,
//! found next to this binary.

use std::{
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// The processes of the clusters started and not yet stopped, each with whether it leads a process
/// group of its own: an interrupted benchmark ends them too ([`kill_all`]), instead of leaving a
/// scheduler and agents behind to skew the next run.
static RUNNING: Mutex<Vec<(u32, bool)>> = Mutex::new(Vec::new());

/// Child benchmark processes (W8's drivers): asked to stop with SIGTERM, so that they end the
/// clusters they started themselves.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

pub fn remember(pid: u32, group: bool) {
    if let Ok(mut running) = RUNNING.lock() {
        running.push((pid, group));
    }
}

pub fn forget(pid: u32) {
    if let Ok(mut running) = RUNNING.lock() {
        running.retain(|&(p, _)| p != pid);
    }
    if let Ok(mut children) = CHILDREN.lock() {
        children.retain(|&p| p != pid);
    }
}

/// Remembers a child benchmark process, to be stopped with SIGTERM by [`kill_all`].
pub fn remember_child(pid: u32) {
    if let Ok(mut children) = CHILDREN.lock() {
        children.push(pid);
    }
}

/// SIGTERM to a process (a child benchmark: it then ends its own cluster).
pub fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", "--", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// `kill -9` of a process, or of the process group it leads; whether it was delivered.
fn kill(pid: u32, group: bool) -> bool {
    let target = if group {
        format!("-{pid}")
    } else {
        pid.to_string()
    };
    // A process already gone (a node W5 killed, killed again when the cluster goes) is no news.
    Command::new("kill")
        .args(["-KILL", "--", &target])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Kills every process of every cluster still running (on SIGINT or SIGTERM), after asking the
/// child benchmarks to end theirs.
pub fn kill_all() {
    let children: Vec<u32> = CHILDREN
        .lock()
        .map(|mut c| c.drain(..).collect())
        .unwrap_or_default();
    if !children.is_empty() {
        for &pid in &children {
            terminate(pid);
        }
        std::thread::sleep(Duration::from_secs(1));
        for pid in children {
            let _ = kill(pid, false);
        }
    }
    if let Ok(mut running) = RUNNING.lock() {
        for (pid, group) in running.drain(..) {
            let _ = kill(pid, group);
        }
    }
}

/// Resolves on SIGINT or SIGTERM; never, if they cannot be listened for.
pub async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
}

/// Whether the benchmark's clusters run with TLS and credentials per role (`--tls`), as a cluster
/// of several machines does; W8's child processes are given the flag too.
static TLS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_tls(on: bool) {
    TLS.store(on, std::sync::atomic::Ordering::Relaxed);
}

pub fn tls() -> bool {
    TLS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether the schedulers serve their HTTP port (`--observed`); without it they do not, so that
/// the two modes measure what watching costs.
static HTTP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_http(on: bool) {
    HTTP.store(on, std::sync::atomic::Ordering::Relaxed);
}

pub struct LocalCluster {
    pub address: String,
    /// The cluster's files (from `ladle-scheduler init`), under `--tls`.
    files: Option<PathBuf>,
    logs: Option<PathBuf>,
    scheduler: Child,
    pub agents: Vec<Child>,
    dir: tempfile::TempDir,
}

pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .context("the benchmark binary has no directory")?;
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release --bins)",
            path.display()
        );
    }
    Ok(path)
}

fn wait_for<T>(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl LocalCluster {
    /// A scheduler and `agents` agents of `slots` CPU slots each, all joined; an agent silent
    /// for 2 s is lost (W5 kills one).
    /// With `logs`, the processes' stderr goes to files there, at the level RUST_LOG gives.
    pub fn start(agents: usize, slots: u32, logs: Option<PathBuf>) -> anyhow::Result<Self> {
        Self::start_with(agents, slots, logs, "2s")
    }

    /// As [`LocalCluster::start`], with the scheduler's `heartbeat_timeout` (humantime).
    pub fn start_with(
        agents: usize,
        slots: u32,
        logs: Option<PathBuf>,
        heartbeat_timeout: &str,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let address_file = dir.path().join("address");
        let files = if tls() {
            let files = dir.path().join("cluster");
            let made = Command::new(sibling("ladle-scheduler")?)
                .args(["init", "--out"])
                .arg(&files)
                .stdout(Stdio::null())
                .status()?;
            if !made.success() {
                bail!("ladle-scheduler init failed");
            }
            Some(files)
        } else {
            None
        };
        let mut serve = Command::new(sibling("ladle-scheduler")?);
        if let Some(files) = &files {
            serve.env("LADLE_CLUSTER_FILE", files.join("scheduler.cluster"));
        }
        let scheduler = serve
            .args([
                "serve",
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--heartbeat-timeout",
                heartbeat_timeout,
                "--address-file",
            ])
            .arg(&address_file)
            .env("LADLE_STATE_DIR", dir.path().join("scheduler"))
            .env(
                "LADLE_HTTP",
                HTTP.load(std::sync::atomic::Ordering::Relaxed).to_string(),
            )
            .env("LADLE_HTTP_PORT", "0")
            .env("RUST_LOG", log_level(&logs))
            .stdout(Stdio::null())
            .stderr(log_file(&logs, "scheduler")?)
            .spawn()?;
        remember(scheduler.id(), false);
        let address = match wait_for("the scheduler's address", Duration::from_secs(20), || {
            std::fs::read_to_string(&address_file)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        }) {
            Ok(address) => address,
            Err(err) => {
                let mut scheduler = scheduler;
                let _ = scheduler.kill();
                let _ = scheduler.wait();
                forget(scheduler.id());
                return Err(err);
            }
        };
        let mut cluster = Self {
            logs,
            address,
            files,
            scheduler,
            agents: Vec::new(),
            dir,
        };
        for i in 0..agents {
            cluster.add_agent(i, slots)?;
        }
        let want = agents;
        let scheduler = sibling("ladle-scheduler")?;
        let address = cluster.address.clone();
        let files = cluster.files.clone();
        wait_for("the agents to join", Duration::from_secs(20), || {
            let mut status = Command::new(&scheduler);
            if let Some(files) = &files {
                status.env("LADLE_CLUSTER_FILE", files.join("view.cluster"));
            }
            let out = status
                .args(["status", "--json", "--scheduler", &address])
                .output()
                .ok()?;
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (status["agents"]["alive"].as_u64()? as usize == want).then_some(())
        })?;
        Ok(cluster)
    }

    /// A driver's session on this cluster (with the driver's credential under `--tls`).
    pub async fn connect(&self) -> anyhow::Result<ladle::Cluster> {
        Ok(match &self.files {
            Some(files) => {
                ladle::Cluster::connect_with_file(
                    Some(&self.address),
                    &files.join("driver.cluster"),
                )
                .await?
            }
            None => ladle::Cluster::connect(&self.address).await?,
        })
    }

    fn add_agent(&mut self, i: usize, slots: u32) -> anyhow::Result<()> {
        let mut agent = Command::new(sibling("ladle-agent")?);
        if let Some(files) = &self.files {
            agent.arg("--cluster-file").arg(files.join("agent.cluster"));
        }
        let agent = agent
            .args([
                "--scheduler",
                &self.address,
                "--cpu-slots",
                &slots.to_string(),
                "--hostname",
                &format!("bench-{i}"),
            ])
            .arg("--state-dir")
            .arg(self.dir.path().join(format!("agent-{i}")))
            .env("RUST_LOG", log_level(&self.logs))
            .stdout(Stdio::null())
            .stderr(log_file(&self.logs, &format!("agent-{i}"))?)
            // Its own process group, so that a lost node can be simulated by killing the
            // agent together with its workers.
            .process_group(0)
            .spawn()?;
        remember(agent.id(), true);
        self.agents.push(agent);
        Ok(())
    }

    /// Where the scheduler serves its dashboard (under `--observed`).
    pub fn dashboard_url(&self) -> anyhow::Result<String> {
        let out = Command::new(sibling("ladle-scheduler")?)
            .args(["status", "--json", "--scheduler", &self.address])
            .output()?;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        status["dashboard"]
            .as_str()
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("the scheduler serves no dashboard"))
    }

    pub fn scheduler_pid(&self) -> u32 {
        self.scheduler.id()
    }

    /// kill -9 of the agent and its workers: a lost node.
    pub fn kill_node(&mut self, i: usize) {
        let pid = self.agents[i].id();
        let _ = kill(pid, true);
        let _ = self.agents[i].wait();
        forget(pid);
    }

    /// kill -9 of the agent's worker processes only.
    pub fn kill_workers(&self, i: usize) -> usize {
        let agent = self.agents[i].id();
        children(agent)
            .into_iter()
            .filter(|&pid| kill(pid, false))
            .count()
    }
}

pub fn log_level(logs: &Option<PathBuf>) -> String {
    match logs {
        Some(_) => std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        None => "warn".into(),
    }
}

pub fn log_file(logs: &Option<PathBuf>, name: &str) -> anyhow::Result<Stdio> {
    Ok(match logs {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            Stdio::from(std::fs::File::create(dir.join(format!("{name}.log")))?)
        }
        None => Stdio::null(),
    })
}

/// Processes whose parent is `parent`, from /proc.
pub fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

/// A size line of /proc/<pid>/status (`VmHWM`, `VmRSS`), in bytes.
pub fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.split(':').next() == Some(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for agent in &mut self.agents {
            let _ = kill(agent.id(), true);
            let _ = agent.wait();
            forget(agent.id());
        }
        let _ = self.scheduler.kill();
        let _ = self.scheduler.wait();
        forget(self.scheduler.id());
    }
}
