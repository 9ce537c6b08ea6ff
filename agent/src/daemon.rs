//! The agent as a whole: settings in, joined and serving until shut down. The binary and the
//! SDK's embedded cluster both start it from here.

use std::future::Future;

use std::net::SocketAddrV4;

use ladle_common::{
    address,
    discovery::{Listener, Locator, Watch},
    token::Token,
};
use ladle_proto::v1::{Gpu, Hello};
use thiserror::Error;
use tracing::{info, warn};

use crate::{
    blobs::BlobCache,
    executor,
    gpu::{self, Discovery},
    identity::{Identity, IdentityError},
    resources,
    session::{AgentError as SessionError, Session},
    settings::AgentSettings,
    settings::GpuSelection,
};

#[derive(Debug, Error)]
pub enum AgentError {
    #[error(
        "no scheduler to join and multicast discovery is off: set `scheduler` (LADLE_SCHEDULER, --scheduler), `scheduler_file`, or turn `multicast` on"
    )]
    NoScheduler,
    #[error("cannot listen for scheduler announcements on {group}: {source}")]
    Multicast {
        group: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Address(#[from] address::AddressError),
    #[error("cannot read the cluster token: {0}")]
    Token(#[from] ladle_common::token::TokenError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("`cpu_slots` is 0 and this machine has no GPU: the agent could run nothing")]
    NothingToOffer,
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// In the state directory while the agent is joined: the scheduler's address.
pub const HEALTH_FILE: &str = "joined";
/// In the state directory while an operator has the agent drained: a restarted scheduler, or
/// a restarted agent, keeps it drained until the operator undrains it.
pub const DRAINED_FILE: &str = "drained";

/// Whether the agent using `settings`' state directory is joined to a scheduler now (for
/// container health checks): the address it is joined to, or why not.
pub fn health(settings: &AgentSettings) -> Result<String, String> {
    let file = settings.state_dir().join(HEALTH_FILE);
    match std::fs::read_to_string(&file) {
        Ok(address) => Ok(address.trim().to_owned()),
        Err(_) => Err(format!(
            "not joined to a scheduler (no {}: the agent is not running, or looking for its scheduler)",
            file.display()
        )),
    }
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    settings: AgentSettings,
    discovery: &str,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let token = Token::resolve(settings.token.as_deref(), settings.token_file.as_deref())?;
    let locator = locator(&settings, token.as_ref())?;
    let state_dir = settings.state_dir();
    let identity = Identity::load_or_create(&state_dir)?;

    let gpus = gpu_slots(&settings);
    let cpu_slots = settings.cpu_slots.unwrap_or_else(resources::cpus);
    if cpu_slots == 0 && gpus.is_empty() {
        return Err(AgentError::NothingToOffer);
    }
    let mut probe = resources::Probe::new();
    let hello = Hello {
        protocol_version: ladle_proto::PROTOCOL_VERSION,
        agent_id: identity.id.clone(),
        hostname: settings.name(&resources::hostname()),
        version: ladle_common::VERSION.into(),
        resources: Some(probe.resources(cpu_slots, gpus.clone())),
        labels: settings.labels.clone().into_iter().collect(),
        discovery: discovery.into(),
        draining: state_dir.join(DRAINED_FILE).exists(),
    };
    info!(
        "ladle-agent {} starting as {} (state in {})",
        ladle_common::VERSION,
        identity.id,
        state_dir.display()
    );

    let cache = BlobCache::new(
        state_dir.join("blobs"),
        settings.cache_max_bytes,
        token.clone(),
    );
    let (executor, outgoing) = executor::start(
        executor::Slots {
            cpu: cpu_slots,
            gpus: gpus.iter().map(|g| g.ordinal).collect(),
        },
        hello.hostname.clone(),
        cache.clone(),
        state_dir.join("run"),
    );
    let session = Session {
        address: locator.describe(),
        locator,
        // How the agent came to its scheduler, unless the caller says (an embedded agent).
        fixed_discovery: (discovery != "address").then(|| discovery.to_owned()),
        cache,
        health_file: state_dir.join(HEALTH_FILE),
        drained_file: state_dir.join(DRAINED_FILE),
        token,
        hello,
        reconnect_max_delay: settings.reconnect_max_delay,
        executor,
        outgoing,
    };
    session.run(shutdown).await?;
    info!("stopped");
    drop(identity);
    Ok(())
}

/// Where the agent looks for its scheduler: the address given, else the file, else multicast.
fn locator(settings: &AgentSettings, token: Option<&Token>) -> Result<Locator, AgentError> {
    // An empty address (LADLE_SCHEDULER="") means none: discovery.
    if let Some(scheduler) = settings
        .scheduler
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    {
        return Ok(Locator::Address(address::normalize(scheduler)?));
    }
    if let Some(path) = &settings.scheduler_file {
        return Ok(Locator::File(path.clone()));
    }
    if !settings.multicast {
        return Err(AgentError::NoScheduler);
    }
    let group = SocketAddrV4::new(settings.multicast_group, settings.multicast_port);
    let listener = Listener::bind(group).map_err(|source| AgentError::Multicast {
        group: group.to_string(),
        source,
    })?;
    info!(
        "no scheduler address given: listening for cluster {:?} on {}",
        settings.cluster, listener.describe
    );
    Ok(Locator::Multicast {
        watch: Watch::start(
            listener,
            settings.cluster.clone(),
            ladle_proto::PROTOCOL_VERSION,
            token.cloned(),
        ),
        wait: settings.discovery_wait,
    })
}

/// The GPU slots the agent offers: the ones declared in its settings, or else the CUDA devices
/// the driver reports, as far as the settings allow.
fn gpu_slots(settings: &AgentSettings) -> Vec<Gpu> {
    if let Some(n) = settings.gpu_slots {
        info!("{n} GPU slot(s) declared in the settings; the CUDA driver is not asked");
        return (0..n)
            .map(|ordinal| Gpu {
                ordinal,
                name: "declared".into(),
                memory_bytes: 0,
                compute_capability: String::new(),
                declared: true,
            })
            .collect();
    }
    if settings.gpus == GpuSelection::None {
        info!("GPUs disabled in the settings (gpus = \"none\")");
        return Vec::new();
    }
    let found = gpu::discover();
    match &found {
        Discovery::NoDriver => {
            info!("no CUDA driver on this machine (libcuda not found): no GPU slots")
        }
        Discovery::DriverError(err) => {
            warn!("the CUDA driver is installed but failed ({err}): no GPU slots")
        }
        Discovery::Found(gpus) => {
            for g in gpus {
                info!(
                    "GPU {}: {} ({} MiB, compute {})",
                    g.ordinal,
                    g.name,
                    g.memory_bytes >> 20,
                    g.compute_capability
                );
            }
        }
    }
    let (offered, skipped): (Vec<Gpu>, Vec<Gpu>) = found
        .gpus()
        .into_iter()
        .partition(|g| settings.gpus.allows(g.ordinal));
    for g in skipped {
        info!(
            "GPU {} left out by the settings (gpus = {:?})",
            g.ordinal, settings.gpus
        );
    }
    if let GpuSelection::Only(wanted) = &settings.gpus {
        for ordinal in wanted {
            if !offered.iter().any(|g| g.ordinal == *ordinal) {
                warn!("the settings name GPU {ordinal}, which the CUDA driver does not report");
            }
        }
    }
    offered
}
