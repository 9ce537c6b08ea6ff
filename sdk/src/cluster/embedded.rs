//! A scheduler and an agent inside the driver's process, for programs run with no cluster
//! configured. They are the real ones, on loopback; the workers are still separate processes.

use std::future::Future;

use ladle_agent::settings::AgentSettings;
use ladle_scheduler::settings::SchedulerSettings;
use tokio::sync::oneshot;

use crate::error::Error;

pub(crate) struct Embedded {
    pub address: String,
    /// Made for this process: the embedded scheduler accepts nothing else, so other local users
    /// cannot reach it although it listens on loopback.
    pub credential: ladle_common::token::Token,
    stops: Vec<oneshot::Sender<()>>,
    /// Each thread says here when it has stopped: the directory goes only after both have (or
    /// they would write into it again as it is removed, and leave it behind).
    stopped: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    _dir: tempfile::TempDir,
}

/// How long dropping the cluster waits for its scheduler and agent to stop.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn stopper() -> (
    oneshot::Sender<()>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

impl Embedded {
    /// Starts the scheduler and the agent, each on a thread of its own with its own runtime, as
    /// the real binaries run on one thread each: they answer (heartbeats, keep-alives, workers)
    /// whatever the program's own runtime is doing, even blocked in `main`.
    pub(crate) async fn start() -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("ladle-")
            .tempdir()
            .map_err(|e| Error::Embedded(format!("cannot make a temporary directory: {e}")))?;
        let credential =
            ladle_common::credentials::generate(ladle_common::credentials::Role::Admin)
                .map_err(|e| Error::Embedded(e.to_string()))?;
        let settings = SchedulerSettings {
            token: Some(credential.as_str().to_owned()),
            bind: Some(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            port: 0,
            // No dashboard: its credential is this process's own, which nobody could present.
            http: false,
            state_dir: Some(dir.path().join("scheduler")),
            ..SchedulerSettings::default()
        };
        let (stop_scheduler, scheduler_stopped) = stopper();
        let (listening_tx, listening_rx) = oneshot::channel::<Result<String, String>>();
        let (stopped_tx, stopped) = std::sync::mpsc::channel();
        let done = stopped_tx.clone();
        on_own_thread("ladle-scheduler", async move {
            let _done = Done(done);
            let listening = match ladle_scheduler::server::listen_quietly(settings).await {
                Ok(listening) => listening,
                Err(err) => {
                    let _ = listening_tx.send(Err(err.to_string()));
                    return;
                }
            };
            let _ = listening_tx.send(Ok(listening.advertised.clone()));
            if let Err(err) = listening.serve(scheduler_stopped).await {
                tracing::error!("the embedded scheduler stopped: {err}");
            }
        })
        .await?;
        let address = listening_rx
            .await
            .map_err(|_| Error::Embedded("the scheduler's thread ended before it listened".into()))?
            .map_err(Error::Embedded)?;

        let agent = AgentSettings {
            scheduler: Some(address.clone()),
            token: Some(credential.as_str().to_owned()),
            state_dir: Some(dir.path().join("agent")),
            ..AgentSettings::default()
        };
        let (stop_agent, agent_stopped) = stopper();
        on_own_thread("ladle-agent", async move {
            let _done = Done(stopped_tx);
            if let Err(err) = ladle_agent::daemon::run(agent, "embedded", agent_stopped).await {
                tracing::error!("the embedded agent stopped: {err}");
            }
        })
        .await?;
        Ok(Self {
            address,
            credential,
            stops: vec![stop_agent, stop_scheduler],
            stopped: std::sync::Mutex::new(stopped),
            _dir: dir,
        })
    }
}

/// Runs `future` to its end on a thread of its own, with a runtime of its own.
async fn on_own_thread(
    name: &str,
    future: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    super::io_thread::on_own_thread(name, future)
        .await
        .map(drop)
        .map_err(|e| Error::Embedded(format!("cannot start {name}: {e}")))
}

/// Says its thread has stopped when dropped, however the thread's future ended.
struct Done(std::sync::mpsc::Sender<()>);

impl Drop for Done {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        let threads = self.stops.len();
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        let deadline = std::time::Instant::now() + STOP_WAIT;
        let stopped = self
            .stopped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for _ in 0..threads {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if stopped.recv_timeout(left).is_err() {
                break;
            }
        }
    }
}
