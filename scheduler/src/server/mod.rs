//! The shell around the core: gRPC services, the clock, and the listener.

mod admin;
mod agents;
mod auth;
mod blob_service;
pub mod blobs;
mod convert;
mod drivers;
mod http;
mod open_files;
pub mod security;
mod state;
mod telemetry;

use std::{
    future::Future,
    net::{IpAddr, SocketAddr, SocketAddrV4},
    path::Path,
    sync::Arc,
    time::Duration,
};

use ladle_common::{
    credentials::Permission,
    discovery::{Announcement, Announcer},
    token::Token,
    with_message_limits,
};
use ladle_proto::v1::{
    admin_service_server::AdminServiceServer, agent_service_server::AgentServiceServer,
    blob_service_server::BlobServiceServer, driver_service_server::DriverServiceServer,
};
use tokio::net::TcpListener;
use tonic::{service::interceptor::InterceptedService, transport::server::TcpIncoming};
use tracing::{info, warn};

use crate::{core::CoreConfig, settings::SchedulerSettings};

pub use state::Shared;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid settings: {0}")]
    Settings(#[from] crate::settings::SettingsCheck),
    #[error(transparent)]
    Security(#[from] security::SecurityError),
    #[error("the TLS settings cannot be used: {0}")]
    Tls(tonic::transport::Error),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot write the address file {path}: {source}")]
    AddressFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot use the state directory {path}: {source}")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Http(#[from] http::HttpError),
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A scheduler that is listening, before it serves.
pub struct Listening {
    listener: TcpListener,
    shared: Arc<Shared>,
    security: security::Security,
    /// The address clients should use (`http://host:port`).
    pub advertised: String,
    pub local: SocketAddr,
    announcer: Option<Announcer>,
    http: Option<http::HttpListening>,
}

/// Binds the port and writes the address file: after this, clients can connect.
pub async fn listen(settings: SchedulerSettings) -> Result<Listening, ServeError> {
    listen_with(settings, true).await
}

/// As `listen`, without the start-up announcements: for a scheduler embedded in a program,
/// on loopback, where they would only be noise.
pub async fn listen_quietly(settings: SchedulerSettings) -> Result<Listening, ServeError> {
    listen_with(settings, false).await
}

async fn listen_with(
    mut settings: SchedulerSettings,
    announce: bool,
) -> Result<Listening, ServeError> {
    settings.check()?;
    let security = security::Security::from_settings(&settings)?;
    if let Some(cluster) = &security.cluster {
        settings.cluster = cluster.clone();
    }
    let ip = settings.bind_address(security.secured());
    security.check_bind(ip)?;
    let address = SocketAddr::new(ip, settings.port);
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::Bind { address, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { address, source })?;

    if announce && !security.secured() {
        warn!(
            "this scheduler has no {}, so it listens on loopback only ({local}): agents on other \
             machines cannot join. Run `ladle-scheduler init` and serve with its scheduler.cluster \
             (LADLE_CLUSTER_FILE).",
            if security.accepted.is_open() {
                "credentials"
            } else {
                "TLS"
            }
        );
    }

    let scheme = if security.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let advertised = format!(
        "{scheme}://{}",
        settings
            .advertise
            .clone()
            .unwrap_or_else(|| advertise_for(local))
    );
    if let Some(path) = &settings.address_file {
        write_atomically(path, &format!("{advertised}\n")).map_err(|source| {
            ServeError::AddressFile {
                path: path.display().to_string(),
                source,
            }
        })?;
    }
    info!(cluster = %settings.cluster, "ladle-scheduler {} listening on {local}, advertised as {advertised}",
          ladle_common::VERSION);

    let core = CoreConfig {
        protocol_version: ladle_proto::PROTOCOL_VERSION,
        heartbeat_timeout: settings.heartbeat_timeout,
        forget_lost_after: settings.forget_lost_after,
        max_crashes: settings.max_task_crashes.max(1),
        driver_grace: settings.driver_grace,
        budget: crate::core::Budget {
            tasks: settings.session_max_tasks,
            bytes: settings.session_max_bytes,
        },
    };
    let state_dir = settings.state_dir();
    let blobs = blobs::BlobStore::open(&state_dir.join("blobs"), settings.max_blob_bytes).map_err(
        |source| ServeError::StateDir {
            path: state_dir.display().to_string(),
            source,
        },
    )?;
    let announcer = announcer(
        &settings,
        local,
        announce,
        scheme,
        security.discovery_key.clone(),
    );
    let http = if settings.http {
        let http = http::listen(ip, settings.http_port, security.tls.as_ref()).await?;
        Some(http)
    } else {
        None
    };
    let shared = Arc::new(Shared::new(core, settings, &security, blobs));
    if let Some(http) = &http {
        let _ = shared.http_url.set(http.url());
    }
    Ok(Listening {
        listener,
        shared,
        security,
        advertised,
        local,
        announcer,
        http,
    })
}

impl Listening {
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServeError> {
        let Listening {
            listener,
            shared,
            security,
            announcer,
            http,
            ..
        } = self;
        let dashboard =
            http.map(|h| tokio::spawn(h.serve(shared.clone(), security.accepted.clone())));
        let open_files = open_files::raise_limit();
        let ticker = tokio::spawn(state::tick_forever(shared.clone(), open_files));
        let announcing = announcer.map(|a| tokio::spawn(a.run()));
        let guard =
            |needs| auth::AuthCheck::new(security.accepted.clone(), shared.refusals.clone(), needs);
        let incoming = open_files::Incoming::new(accepting(listener));
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &security.tls {
            builder = builder.tls_config(tls.config()).map_err(ServeError::Tls)?;
        }
        let result = builder
            .http2_keepalive_interval(Some(ladle_common::limits::KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(ladle_common::limits::KEEPALIVE_TIMEOUT))
            .initial_stream_window_size(ladle_common::limits::STREAM_WINDOW_BYTES)
            .initial_connection_window_size(ladle_common::limits::CONNECTION_WINDOW_BYTES)
            // Every service takes the one message limit of ladle_common::limits.
            .add_service(InterceptedService::new(
                with_message_limits!(AgentServiceServer::new(agents::AgentService::new(
                    shared.clone()
                ))),
                guard(Permission::Attach),
            ))
            .add_service(InterceptedService::new(
                with_message_limits!(DriverServiceServer::new(drivers::DriverService::new(
                    shared.clone()
                ))),
                guard(Permission::Submit),
            ))
            .add_service(InterceptedService::new(
                with_message_limits!(BlobServiceServer::new(blob_service::BlobService::new(
                    shared.clone()
                ))),
                guard(Permission::Blobs),
            ))
            .add_service(InterceptedService::new(
                with_message_limits!(AdminServiceServer::new(admin::AdminService::new(
                    shared.clone()
                ))),
                guard(Permission::Read),
            ))
            .serve_with_incoming_shutdown(incoming, {
                let shared = shared.clone();
                async move {
                    shutdown.await;
                    info!("shutting down: closing every stream");
                    // A graceful stop waits for open calls, and agent and driver streams never
                    // end by themselves.
                    shared.close_all(&tonic::Status::unavailable(
                        "the scheduler is shutting down",
                    ));
                }
            })
            .await;
        ticker.abort();
        if let Some(task) = announcing {
            task.abort();
        }
        if let Some(task) = dashboard {
            task.abort();
        }
        result.map_err(ServeError::from)
    }
}

/// The multicast announcer, unless switched off, embedded, or listening on loopback only (where
/// no other machine could use the address).
fn announcer(
    settings: &SchedulerSettings,
    local: SocketAddr,
    announce: bool,
    scheme: &'static str,
    token: Option<Token>,
) -> Option<Announcer> {
    if !settings.multicast || !announce {
        return None;
    }
    if local.ip().is_loopback() {
        info!("not announcing on multicast: the scheduler listens on loopback only");
        return None;
    }
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let per_interface = settings.advertise.is_none() && local.ip().is_unspecified();
    let addresses = match &settings.advertise {
        Some(advertise) => vec![format!("{scheme}://{advertise}")],
        // Filled in by the announcer from the interfaces of the moment.
        None if per_interface => Vec::new(),
        None => vec![format!("{scheme}://{local}")],
    };
    Some(Announcer {
        group: SocketAddrV4::new(settings.multicast_group, settings.multicast_port),
        ttl: settings.multicast_ttl,
        interval: settings.announce_interval.max(Duration::from_millis(100)),
        announcement: Announcement {
            cluster: settings.cluster.clone(),
            addresses,
            protocol: ladle_proto::PROTOCOL_VERSION,
            version: ladle_common::VERSION.into(),
            started_ms,
        },
        port: local.port(),
        per_interface,
        scheme,
        token,
    })
}

/// What to tell clients when listening on every interface: the host's name, which the other
/// machines of a cluster can usually resolve.
fn advertise_for(local: SocketAddr) -> String {
    match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => format!("{}:{}", hostname(), local.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => format!("{}:{}", hostname(), local.port()),
        _ => local.to_string(),
    }
}

/// The machine's name, from the kernel (uname), not /proc: a hardened unit may hide /proc/sys.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer it is given.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).trim().to_owned())
        .filter(|s| rc == 0 && !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Readers never see a half-written file.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// The connections the server takes, Nagle off on each. The listener is ours (bound before
/// serving, for port 0), and tonic's own `tcp_nodelay` does not reach connections it did not
/// accept itself: with Nagle on, a message written while the previous one is unacknowledged
/// waits for the peer's delayed ACK (40 ms on Linux), as the last results of every map did.
fn accepting(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn accepted_connections_send_small_messages_at_once() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let mut incoming = super::accepting(listener);
        let _client = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let accepted = incoming
            .next()
            .await
            .expect("a connection")
            .expect("accepted");
        assert!(accepted.nodelay().expect("TCP_NODELAY"));
    }
}
