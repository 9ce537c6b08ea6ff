//! `ladle-agent`: the node daemon.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use ladle_agent::{cpu_policy, daemon, settings::AgentSettings};
use ladle_common::settings::{self, SettingsError, Sources};

#[derive(Parser)]
#[command(
    name = "ladle-agent",
    version,
    about = "Ladle's node daemon: joins a scheduler and runs its tasks"
)]
struct Cli {
    /// TOML settings file.
    #[arg(long, env = "LADLE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The cluster's file for agents, from `ladle-scheduler init` (agent.cluster): credential,
    /// trust anchor and usually the scheduler's address [env: LADLE_CLUSTER_FILE].
    #[arg(long, value_name = "FILE")]
    cluster_file: Option<PathBuf>,
    /// The scheduler to join, e.g. https://10.0.0.1:7070 (also LADLE_SCHEDULER) [default: the
    /// address in --scheduler-file, else the one the cluster's scheduler announces on multicast].
    #[arg(long)]
    scheduler: Option<String>,
    /// A file the scheduler writes its address to (its --address-file), read on every reconnection.
    #[arg(long, value_name = "FILE")]
    scheduler_file: Option<PathBuf>,
    /// The cluster to join: schedulers announcing another name are ignored [default: default].
    #[arg(long)]
    cluster: Option<String>,
    /// Do not listen for schedulers on multicast.
    #[arg(long)]
    no_multicast: bool,
    /// Where the agent keeps its id.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// CPU tasks to run at once [default: the CPUs this process may use].
    #[arg(long)]
    cpu_slots: Option<u32>,
    /// Name shown in the agent table [default: the hostname].
    #[arg(long)]
    hostname: Option<String>,
    /// CUDA devices to offer: all, none, or ordinals such as 0,2 [default: all].
    #[arg(long, value_name = "all|none|0,2")]
    gpus: Option<String>,
    /// Declare this many GPU slots instead of asking the CUDA driver (devices it cannot see, tests).
    #[arg(long, value_name = "N")]
    gpu_slots: Option<u32>,
    /// Exit 0 if the agent of this state directory is joined to a scheduler, 1 if not (for
    /// container health checks), instead of running an agent.
    #[arg(long)]
    health_check: bool,
    /// A label KEY=VALUE shown to operators; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ladle_common::logging::init("warn,ladle_agent=info,ladle_common=info");
    keep_workers_out();
    let settings = match load_settings(&cli) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("ladle-agent: {err}");
            return ExitCode::from(SettingsError::EXIT_CODE);
        }
    };
    if cli.health_check {
        return match daemon::health(&settings) {
            Ok(address) => {
                println!("joined to {address}");
                ExitCode::SUCCESS
            }
            Err(why) => {
                eprintln!("ladle-agent: {why}");
                ExitCode::FAILURE
            }
        };
    }
    if settings.yield_to_tasks {
        match cpu_policy::yield_to_tasks() {
            Ok(true) => tracing::debug!("running under SCHED_BATCH (yield_to_tasks)"),
            Ok(false) => tracing::info!(
                "started under a scheduling policy other than the normal one: keeping it (yield_to_tasks does nothing)"
            ),
            Err(err) => tracing::warn!("cannot run under SCHED_BATCH (yield_to_tasks): {err}"),
        }
    }
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("ladle-agent: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ladle-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Workers run the jobs' code as the agent's own user: without this they could read the agent's
/// credentials from /proc/<agent>/environ or its memory, or attach a debugger to it. A process
/// that is not dumpable has those files owned by root and refuses ptrace from its own user; the
/// workers it starts are dumpable again (the flag resets at exec).
fn keep_workers_out() {
    // SAFETY: PR_SET_DUMPABLE takes one integer argument and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!(
            "cannot make the agent undumpable ({}): its workers could read its credentials from /proc",
            std::io::Error::last_os_error()
        );
    }
}

fn load_settings(cli: &Cli) -> Result<AgentSettings, SettingsError> {
    let mut flags: Vec<(&'static str, config::Value)> = Vec::new();
    if let Some(file) = &cli.cluster_file {
        flags.push(("cluster_file", file.display().to_string().into()));
    }
    if let Some(s) = &cli.scheduler {
        flags.push(("scheduler", s.clone().into()));
    }
    if let Some(file) = &cli.scheduler_file {
        flags.push(("scheduler_file", file.display().to_string().into()));
    }
    if let Some(cluster) = &cli.cluster {
        flags.push(("cluster", cluster.clone().into()));
    }
    if cli.no_multicast {
        flags.push(("multicast", false.into()));
    }
    if let Some(dir) = &cli.state_dir {
        flags.push(("state_dir", dir.display().to_string().into()));
    }
    if let Some(n) = cli.cpu_slots {
        flags.push(("cpu_slots", n.to_string().into()));
    }
    if let Some(g) = &cli.gpus {
        flags.push(("gpus", g.clone().into()));
    }
    if let Some(n) = cli.gpu_slots {
        flags.push(("gpu_slots", n.to_string().into()));
    }
    if let Some(h) = &cli.hostname {
        flags.push(("hostname", h.clone().into()));
    }
    let mut labels = config::Map::new();
    for label in &cli.labels {
        let Some((key, value)) = label.split_once('=') else {
            return Err(SettingsError::Invalid {
                key: "labels".into(),
                message: format!("--label {label:?} is not KEY=VALUE"),
                origin: String::new(),
            });
        };
        labels.insert(key.to_owned(), config::Value::from(value));
    }
    if !labels.is_empty() {
        flags.push(("labels", labels.into()));
    }
    settings::load(
        &AgentSettings::default(),
        Sources {
            file: cli.config.as_deref(),
            flags,
            env: None,
        },
    )
}

async fn run(settings: AgentSettings) -> anyhow::Result<()> {
    daemon::run(settings, "address", shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = terminate => {},
    }
}

/// The agent only moves messages between sockets; the work happens in worker processes. One
/// thread does that with no cross-thread wake-ups, which matters most on small machines.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}
