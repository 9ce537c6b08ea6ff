//! A scheduler and an agent inside the driver's process, for programs run with no cluster
//! configured. They are the real ones, on loopback; the workers are still separate processes.

use std::future::Future;

use ladle_agent::settings::AgentSettings;
use ladle_scheduler::settings::SchedulerSettings;
use tokio::sync::oneshot;

use crate::error::Error;

pub(crate) struct Embedded {
    pub address: String,
    stops: Vec<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

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
    pub(crate) async fn start() -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("ladle-")
            .tempdir()
            .map_err(|e| Error::Embedded(format!("cannot make a temporary directory: {e}")))?;
        let settings = SchedulerSettings {
            bind: Some(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            port: 0,
            state_dir: Some(dir.path().join("scheduler")),
            ..SchedulerSettings::default()
        };
        let listening = ladle_scheduler::server::listen_quietly(settings)
            .await
            .map_err(|e| Error::Embedded(e.to_string()))?;
        let address = listening.advertised.clone();
        let (stop_scheduler, scheduler_stopped) = stopper();
        tokio::spawn(async move {
            if let Err(err) = listening.serve(scheduler_stopped).await {
                tracing::error!("the embedded scheduler stopped: {err}");
            }
        });

        let agent = AgentSettings {
            scheduler: Some(address.clone()),
            state_dir: Some(dir.path().join("agent")),
            ..AgentSettings::default()
        };
        let (stop_agent, agent_stopped) = stopper();
        tokio::spawn(async move {
            if let Err(err) = ladle_agent::daemon::run(agent, "embedded", agent_stopped).await {
                tracing::error!("the embedded agent stopped: {err}");
            }
        });
        Ok(Self {
            address,
            stops: vec![stop_agent, stop_scheduler],
            _dir: dir,
        })
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
    }
}
