//! The agent as a whole: settings in, joined and serving until shut down. The binary and the
//! SDK's embedded cluster both start it from here.

use std::future::Future;

use std::net::SocketAddrV4;

use ladle_common::{
    address,
    client::{AuthError, ClientAuth, ClientKeys},
    discovery::{Listener, Locator, Watch},
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
    #[error(
        "this agent holds no credential, so it cannot tell a real scheduler announced on the \
         network from an impostor, and does not join one: give it the cluster's agent.cluster \
         (`cluster_file`, LADLE_CLUSTER_FILE), or the scheduler's address (`scheduler`), or set \
         `allow_unsigned_discovery = true` on a network you trust"
    )]
    UnsignedDiscovery,
    #[error("cannot listen for scheduler announcements on {group}: {source}")]
    Multicast {
        group: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Address(#[from] address::AddressError),
    #[error("cannot read the agent's credentials: {0}")]
    Auth(#[from] AuthError),
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
/// In the state directory: the secret the scheduler gave this agent when it first joined, which
/// proves on every later join that it is the same agent.
pub const SECRET_FILE: &str = "agent-secret";

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
    let auth = ClientAuth::resolve(&ClientKeys {
        cluster_file: settings.cluster_file.as_deref(),
        token: settings.token.as_deref(),
        token_file: settings.token_file.as_deref(),
        tls_ca: settings.tls_ca.as_deref(),
        tls_server_name: settings.tls_server_name.as_deref(),
        tls_client_cert: settings.tls_client_cert.as_deref(),
        tls_client_key: settings.tls_client_key.as_deref(),
    })?;
    let locator = locator(&settings, &auth)?;
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
        agent_secret: std::fs::read_to_string(state_dir.join(SECRET_FILE))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
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
        auth.clone(),
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
        secret_file: state_dir.join(SECRET_FILE),
        auth,
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
fn locator(settings: &AgentSettings, auth: &ClientAuth) -> Result<Locator, AgentError> {
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
    if let Some(scheduler) = auth.scheduler() {
        return Ok(Locator::Address(address::normalize(scheduler)?));
    }
    if !settings.multicast {
        return Err(AgentError::NoScheduler);
    }
    // Announcements are checked with the cluster file's discovery key (or the shared token);
    // the scheduler they name must then prove itself with TLS against the file's trust anchor.
    let key = auth
        .file
        .as_ref()
        .and_then(|f| f.discovery_key())
        .or_else(|| auth.credential.clone());
    if key.is_none() {
        if !settings.allow_unsigned_discovery {
            return Err(AgentError::UnsignedDiscovery);
        }
        warn!(
            "`allow_unsigned_discovery` is on: this agent joins whichever scheduler of cluster {:?} \
             announces itself on the network, and runs the code it serves",
            settings.cluster
        );
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
            // The cluster file names the cluster it belongs to.
            auth.file
                .as_ref()
                .map_or_else(|| settings.cluster.clone(), |f| f.cluster.clone()),
            ladle_proto::PROTOCOL_VERSION,
            key,
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
