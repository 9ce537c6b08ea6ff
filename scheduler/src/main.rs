//! `ladle-scheduler`: the server (`serve`) and the management CLI (every other command).

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ladle_common::{
    client::{ClientAuth, ClientKeys},
    cluster_file,
    settings::{self, SettingsError, Sources},
};
use ladle_scheduler::{
    cli::{self, Target},
    server,
    settings::SchedulerSettings,
};

#[derive(Parser)]
#[command(
    name = "ladle-scheduler",
    version,
    about = "Ladle's scheduler and its management CLI"
)]
struct Cli {
    /// TOML settings file (the same file serves `serve` and, for its token and port, the CLI).
    #[arg(long, global = true, env = "LADLE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make a new cluster's files: TLS certificates and credentials per role, one file per kind
    /// of machine (scheduler.cluster, agent.cluster, driver.cluster, admin.cluster,
    /// view.cluster). Copy agent.cluster to the agents and driver.cluster to whoever runs jobs.
    Init(InitArgs),
    /// Run the scheduler.
    Serve(ServeArgs),
    /// List the agents and their state.
    Agents {
        /// Print JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// One-screen summary of the cluster.
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// List the running jobs (one per driver session), counted in items.
    Jobs {
        /// Also the recently finished jobs (the last 100).
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// A job's recent and failed tasks, with their errors (id, id prefix or name; also after
    /// its driver has gone).
    Tasks {
        job: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Print a job's retained output (its last 256 KiB of lines, also after its driver has
    /// gone).
    Logs {
        job: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Where the dashboard and the Prometheus metrics are: the address to open (with this
    /// CLI's credential in it, which the page then keeps in a cookie) and, with --prometheus, a
    /// scrape configuration for prometheus.yml.
    Dashboard {
        /// Print a Prometheus scrape configuration instead.
        #[arg(long)]
        prometheus: bool,
        /// Write the cluster's CA (PEM) here, for a browser or Prometheus to trust the
        /// scheduler's certificate.
        #[arg(long, value_name = "FILE")]
        write_ca: Option<PathBuf>,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// A live view of the cluster in the terminal: status, agents and jobs, refreshed until
    /// interrupted (with --json, one JSON object per refresh).
    Watch {
        /// Time between refreshes (e.g. "1s", "500ms").
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Cancel a job's unfinished tasks (id, id prefix or name): its driver's futures fail as
    /// cancelled and the agents stop the work.
    Cancel {
        job: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Stop placing new work on an agent (id, id prefix or hostname).
    Drain {
        agent: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Let a drained agent take work again.
    Undrain {
        agent: String,
        #[command(flatten)]
        target: TargetArgs,
    },
}

#[derive(Args)]
struct InitArgs {
    /// Where to write the files.
    #[arg(long, value_name = "DIR", default_value = "ladle-cluster")]
    out: PathBuf,
    /// Cluster name [default: the settings' `cluster`, "default"].
    #[arg(long)]
    cluster: Option<String>,
    /// The address agents and drivers will use (host:port); written into every file, so that
    /// they need no LADLE_SCHEDULER.
    #[arg(long, value_name = "HOST:PORT")]
    scheduler: Option<String>,
    /// More names or addresses for the scheduler's certificate (repeatable).
    #[arg(long = "name", value_name = "NAME")]
    names: Vec<String>,
    /// Your own certificate, key and CA (PEM) instead of ones made here; with --server-name,
    /// the name clients check in the certificate.
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "tls_ca", "server_name"])]
    tls_cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    #[arg(long, value_name = "NAME", requires = "tls_cert")]
    server_name: Option<String>,
    /// Replace files that exist.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct ServeArgs {
    /// The scheduler's cluster file, from `init` (scheduler.cluster) [env: LADLE_CLUSTER_FILE].
    #[arg(long, value_name = "FILE")]
    cluster_file: Option<PathBuf>,
    /// Interface to listen on [default: 0.0.0.0 with a cluster file (TLS and credentials),
    /// 127.0.0.1 without].
    #[arg(long)]
    bind: Option<String>,
    /// Port to listen on; 0 picks a free one [default: 7070].
    #[arg(long)]
    port: Option<u16>,
    /// Cluster name [default: default].
    #[arg(long)]
    cluster: Option<String>,
    /// Write the scheduler's address to this file once it listens.
    #[arg(long, value_name = "FILE")]
    address_file: Option<PathBuf>,
    /// Where the scheduler keeps its blob store (executables, jobs' values) [default:
    /// /var/lib/ladle/scheduler as root, else ~/.local/state/ladle/scheduler; `state_dir`].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Address clients should use, when it differs from what the scheduler sees.
    #[arg(long)]
    advertise: Option<String>,
    /// An agent silent for this long is lost (e.g. "5s").
    #[arg(long)]
    heartbeat_timeout: Option<String>,
    /// Do not announce the scheduler on multicast (agents then need its address).
    #[arg(long)]
    no_multicast: bool,
}

#[derive(Args)]
struct TargetArgs {
    /// The scheduler to talk to [default: this machine, on the configured port].
    #[arg(long, env = "LADLE_SCHEDULER")]
    scheduler: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve(_));
    ladle_common::logging::init(if serving {
        "warn,ladle_scheduler=info,ladle_common=info"
    } else {
        "warn"
    });
    let settings = match load_settings(&cli) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("ladle-scheduler: {err}");
            return ExitCode::from(SettingsError::EXIT_CODE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("ladle-scheduler: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ladle-scheduler: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_settings(cli: &Cli) -> Result<SchedulerSettings, SettingsError> {
    let mut flags: Vec<(&'static str, config::Value)> = Vec::new();
    if let Command::Serve(args) = &cli.command {
        let mut put = |key, value: Option<String>| {
            if let Some(value) = value {
                flags.push((key, config::Value::from(value)));
            }
        };
        put(
            "cluster_file",
            args.cluster_file.as_ref().map(|p| p.display().to_string()),
        );
        put("bind", args.bind.clone());
        put("port", args.port.map(|p| p.to_string()));
        put("cluster", args.cluster.clone());
        put(
            "address_file",
            args.address_file.as_ref().map(|p| p.display().to_string()),
        );
        put(
            "state_dir",
            args.state_dir.as_ref().map(|p| p.display().to_string()),
        );
        put("advertise", args.advertise.clone());
        put("heartbeat_timeout", args.heartbeat_timeout.clone());
        if args.no_multicast {
            flags.push(("multicast", config::Value::from(false)));
        }
    }
    settings::load(
        &SchedulerSettings::default(),
        Sources {
            file: cli.config.as_deref(),
            flags,
            env: None,
        },
    )
}

async fn run(command: Command, settings: SchedulerSettings) -> anyhow::Result<()> {
    match command {
        Command::Init(args) => init(args, &settings),
        Command::Serve(_) => {
            let listening = server::listen(settings).await?;
            listening.serve(shutdown_signal()).await?;
            Ok(())
        }
        Command::Agents { json, target } => {
            let target = target_of(&target, &settings)?;
            let rows = target.agents().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("{}", cli::agents_table(&rows));
            }
            Ok(())
        }
        Command::Status { json, target } => {
            let target = target_of(&target, &settings)?;
            let status = target.status().await?;
            if json {
                let value = serde_json::json!({
                    "cluster": status.cluster,
                    "scheduler_version": status.scheduler_version,
                    "protocol_version": status.protocol_version,
                    "uptime_ms": status.uptime_ms,
                    "token_required": status.token_required,
                    "security": status.security,
                    "calls_refused": status.calls_refused,
                    "dashboard": status.dashboard_url,
                    "foreign_output_lines": status.foreign_output_lines,
                    "agents": { "alive": status.agents_alive, "draining": status.agents_draining, "lost": status.agents_lost },
                    "cpu_slots": { "busy": status.cpu_slots_busy, "total": status.cpu_slots_total },
                    "gpu_slots": { "busy": status.gpu_slots_busy, "total": status.gpu_slots_total },
                    "jobs": status.jobs,
                    "tasks": { "queued": status.tasks_queued, "running": status.tasks_running, "gpu_queued": status.gpu_tasks_queued, "refused": status.tasks_refused, "session_unfinished_peak": status.session_unfinished_peak },
                    "job_values": { "blobs": status.job_blobs, "bytes": status.job_blob_bytes },
                    "blob_fetches": status.blob_fetches,
                });
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!("{}", cli::status_text(&status, &target.address));
            }
            Ok(())
        }
        Command::Jobs { all, json, target } => {
            let target = target_of(&target, &settings)?;
            let rows = cli::job_rows(target.jobs(all).await?);
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if rows.is_empty() && all {
                println!("no jobs have run since the scheduler started");
            } else {
                println!("{}", cli::jobs_table(&rows));
            }
            Ok(())
        }
        Command::Tasks { job, json, target } => {
            let target = target_of(&target, &settings)?;
            let reply = target.tasks(&job).await?;
            let job = cli::job_row(reply.job.unwrap_or_default());
            let recent = cli::task_rows(reply.recent);
            let failed = cli::task_rows(reply.failed);
            if json {
                let value = serde_json::json!({ "job": job, "recent": recent, "failed": failed });
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print!("{}", cli::tasks_text(&job, &recent, &failed));
            }
            Ok(())
        }
        Command::Logs { job, json, target } => {
            let target = target_of(&target, &settings)?;
            let reply = target.logs(&job).await?;
            if json {
                let lines: Vec<_> = reply
                    .lines
                    .iter()
                    .map(|l| serde_json::json!({ "host": l.host, "stderr": l.stderr, "text": l.text }))
                    .collect();
                let value = serde_json::json!({
                    "job": cli::job_row(reply.job.unwrap_or_default()),
                    "lines": lines,
                    "dropped": reply.dropped,
                });
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                if reply.dropped > 0 {
                    eprintln!(
                        "({} older lines were dropped: a job keeps its last 256 KiB)",
                        reply.dropped
                    );
                }
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                for line in &reply.lines {
                    if line.stderr {
                        writeln!(out, "[{}] (stderr) {}", line.host, line.text)?;
                    } else {
                        writeln!(out, "[{}] {}", line.host, line.text)?;
                    }
                }
            }
            Ok(())
        }
        Command::Dashboard {
            prometheus,
            write_ca,
            target,
        } => {
            let target = target_of(&target, &settings)?;
            let status = target.status().await?;
            println!(
                "{}",
                cli::dashboard_text(
                    &status.dashboard_url,
                    &target.auth,
                    prometheus,
                    write_ca.as_deref()
                )?
            );
            Ok(())
        }
        Command::Watch {
            interval,
            json,
            target,
        } => {
            let target = target_of(&target, &settings)?;
            cli::watch(&target, interval, json, shutdown_signal()).await?;
            Ok(())
        }
        Command::Cancel { job, target } => {
            let target = target_of(&target, &settings)?;
            let reply = target.cancel_job(&job).await?;
            let name = reply
                .job
                .map(|j| format!("{} ({})", j.id, j.name))
                .unwrap_or_default();
            println!(
                "job {name}: {} unfinished {} cancelled",
                reply.cancelled,
                if reply.cancelled == 1 {
                    "item"
                } else {
                    "items"
                }
            );
            Ok(())
        }
        Command::Drain { agent, target } => set_drain(&agent, true, &target, &settings).await,
        Command::Undrain { agent, target } => set_drain(&agent, false, &target, &settings).await,
    }
}

async fn set_drain(
    agent: &str,
    draining: bool,
    target: &TargetArgs,
    settings: &SchedulerSettings,
) -> anyhow::Result<()> {
    let target = target_of(target, settings)?;
    let row = target.set_drain(agent, draining).await?;
    println!("agent {} ({}) is {}", row.id, row.hostname, row.state);
    if row.state == "lost" {
        // The agent keeps its drain state itself: a scheduler restarted before it rejoins goes
        // by what the agent last heard.
        println!(
            "it is not connected: it hears of this when it rejoins this scheduler; if the scheduler restarts first, run this again once the agent is back"
        );
    }
    if draining
        && let Ok(status) = target.status().await
        && status.agents_alive == 0
    {
        eprintln!(
            "warning: no agent accepts work now: new tasks wait (their drivers are told) until              an agent joins or is undrained"
        );
    }
    Ok(())
}

fn init(args: InitArgs, settings: &SchedulerSettings) -> anyhow::Result<()> {
    let own = match (
        &args.tls_cert,
        &args.tls_key,
        &args.tls_ca,
        &args.server_name,
    ) {
        (Some(cert), Some(key), Some(ca), Some(name)) => Some(cluster_file::OwnCertificates {
            cert_pem: ladle_common::tls::read_pem("the TLS certificate", cert, "CERTIFICATE")?,
            key_pem: ladle_common::tls::read_pem("the TLS key", key, "PRIVATE KEY")?,
            ca_pem: ladle_common::tls::read_pem("the CA", ca, "CERTIFICATE")?,
            server_name: name.clone(),
        }),
        _ => None,
    };
    let cluster = args.cluster.unwrap_or_else(|| settings.cluster.clone());
    let files = cluster_file::generate(&cluster_file::InitOptions {
        cluster: cluster.clone(),
        scheduler: args.scheduler.clone(),
        names: args.names,
        own,
    })?;
    let paths = cluster_file::write_all(&args.out, &files, args.force)?;
    let dir = args.out.display();
    println!(
        "cluster {cluster:?}: wrote {} files to {dir}/ (mode 0600):",
        paths.len()
    );
    for (name, role) in [
        (
            "scheduler.cluster",
            "this machine: ladle-scheduler serve --cluster-file",
        ),
        (
            "agent.cluster",
            "copy to every agent machine: ladle-agent --cluster-file",
        ),
        (
            "driver.cluster",
            "for whoever runs jobs: LADLE_CLUSTER_FILE=…/driver.cluster",
        ),
        ("admin.cluster", "for operators' CLI (drain, cancel)"),
        ("view.cluster", "for read-only status"),
    ] {
        println!("  {name:<18} {role}");
    }
    if args.scheduler.is_none() {
        println!(
            "(no --scheduler HOST:PORT was given: agents find the scheduler on multicast, drivers need LADLE_SCHEDULER)"
        );
    }
    Ok(())
}

/// The scheduler named on the command line or in LADLE_SCHEDULER, else the cluster file's, else
/// the one these settings describe on this machine; and the credential from the settings.
fn target_of(args: &TargetArgs, settings: &SchedulerSettings) -> anyhow::Result<Target> {
    let auth = ClientAuth::resolve(&ClientKeys {
        cluster_file: settings.cluster_file.as_deref(),
        token: settings.token.as_deref(),
        token_file: settings.token_file.as_deref(),
        tls_ca: settings.tls_ca.as_deref(),
        tls_server_name: settings.tls_server_name.as_deref(),
        tls_client_cert: settings.tls_client_cert.as_deref(),
        tls_client_key: settings.tls_client_key.as_deref(),
    })
    .context("cannot read the client's credentials")?;
    let address = match args.scheduler.as_deref().or(auth.scheduler()) {
        Some(address) => address.to_owned(),
        None => {
            let ip = settings.bind_address(auth.tls.is_some());
            let host = if ip.is_unspecified() {
                "127.0.0.1".to_owned()
            } else {
                ip.to_string()
            };
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            format!("http://{host}:{}", settings.port)
        }
    };
    let address = auth.shown(&address);
    Ok(Target { address, auth })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
