//! The scheduler's settings: defaults < `--config` TOML file < `LADLE_*` environment < flags.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Port the scheduler listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7070;
/// Port of the dashboard and metrics unless told otherwise.
pub const DEFAULT_HTTP_PORT: u16 = 7080;

#[derive(Clone, Debug, Serialize, Deserialize)]
// Missing keys take the value from Default, the same defaults the loader starts from.
#[serde(default, deny_unknown_fields)]
pub struct SchedulerSettings {
    /// Name of the cluster; agents and drivers of another cluster are kept apart.
    pub cluster: String,
    /// Address to listen on. Unset: every interface when a token is configured, loopback
    /// only when none is.
    pub bind: Option<IpAddr>,
    /// gRPC port; 0 picks a free one (see `address_file`).
    pub port: u16,
    /// The address clients should use, when it differs from what the scheduler can see
    /// (NAT, containers). Written to `address_file`.
    pub advertise: Option<String>,
    /// A file the scheduler writes its address to once it listens (Slurm, tests, port 0).
    pub address_file: Option<PathBuf>,
    /// Serve the dashboard, `/metrics` (Prometheus) and the dashboard's JSON on `http_port`, on
    /// the address the gRPC port listens on, with the same TLS and credentials (any role may
    /// read, `view.cluster` is enough). A port already taken falls back to a free one (logged,
    /// and shown by `status`); 0 picks a free one.
    pub http: bool,
    pub http_port: u16,
    /// The scheduler's cluster file, from `ladle-scheduler init` (`scheduler.cluster`): its TLS
    /// certificate and key, and the credentials it accepts, by role. The CLI presents the admin
    /// credential it also holds; elsewhere, give the CLI `admin.cluster` or `view.cluster`.
    pub cluster_file: Option<PathBuf>,
    /// One shared token that serves every role, instead of a cluster file's credentials per role.
    /// Prefer `token_file`, or the LADLE_TOKEN variable.
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    /// The scheduler's own certificate and key (PEM), instead of the cluster file's.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: clients must present a certificate signed by this CA (PEM).
    pub tls_client_ca: Option<PathBuf>,
    /// For the CLI, when the scheduler's certificate is not the cluster file's: the CA that
    /// signed it, the name it carries, and a client certificate and key for mutual TLS.
    pub tls_ca: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    pub tls_client_cert: Option<PathBuf>,
    pub tls_client_key: Option<PathBuf>,
    /// How often agents send a heartbeat.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// An agent silent for longer than this is lost.
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    /// How long a lost agent stays in the agent table.
    #[serde(with = "humantime_serde")]
    pub forget_lost_after: Duration,
    /// Where the scheduler keeps uploaded executables and shared constants. Default:
    /// /var/lib/ladle/scheduler for root, else the user's state directory.
    pub state_dir: Option<PathBuf>,
    /// The largest value the cluster carries: one task's encoded argument (refused at `submit`)
    /// or result (the task fails, its worker checks before sending).
    pub max_value_bytes: u64,
    /// A session's admission budget: tasks without a result that the scheduler holds for one
    /// driver at most, and the bytes of their inline arguments. The driver waits (its
    /// submissions stay in the program) while its budget is spent.
    pub session_max_tasks: u64,
    pub session_max_bytes: u64,
    /// The largest blob (executable, shared constant) the scheduler stores.
    pub max_blob_bytes: u64,
    /// Worker crashes a task may cause before it fails with an error that says so.
    pub max_task_crashes: u32,
    /// How long a job whose driver's stream broke waits for the driver to come back (it gets
    /// the results of its absence) before its tasks are stopped.
    #[serde(with = "humantime_serde")]
    pub driver_grace: Duration,
    /// Announce the scheduler on UDP multicast, so that agents find it with no address. Only
    /// a scheduler listening beyond loopback announces.
    pub multicast: bool,
    pub multicast_group: Ipv4Addr,
    pub multicast_port: u16,
    /// Router hops the announcements may cross (1: this network only).
    pub multicast_ttl: u32,
    #[serde(with = "humantime_serde")]
    pub announce_interval: Duration,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            cluster: "default".into(),
            bind: None,
            port: DEFAULT_PORT,
            advertise: None,
            address_file: None,
            http: true,
            http_port: DEFAULT_HTTP_PORT,
            cluster_file: None,
            token: None,
            token_file: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_ca: None,
            tls_server_name: None,
            tls_client_cert: None,
            tls_client_key: None,
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(5),
            forget_lost_after: Duration::from_secs(3600),
            state_dir: None,
            max_value_bytes: 1 << 30,
            session_max_tasks: 100_000,
            session_max_bytes: 256 << 20,
            max_blob_bytes: 16 << 30,
            max_task_crashes: 3,
            driver_grace: Duration::from_secs(30),
            multicast: true,
            multicast_group: ladle_common::discovery::DEFAULT_GROUP,
            multicast_port: ladle_common::discovery::DEFAULT_PORT,
            multicast_ttl: 1,
            announce_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsCheck {
    #[error(
        "`heartbeat_timeout` ({timeout:?}) must be longer than `heartbeat_interval` ({interval:?})"
    )]
    TimeoutNotAboveInterval {
        timeout: Duration,
        interval: Duration,
    },
    #[error("`heartbeat_interval` must be at least 10ms")]
    IntervalTooShort,
    #[error("`cluster` must be a non-empty name of letters, digits, '-', '_' or '.'")]
    BadClusterName,
    #[error("`{key}` must be at least {min}")]
    TooSmall { key: &'static str, min: u64 },
    #[error(
        "`max_value_bytes` ({value}) must not exceed `max_blob_bytes` ({blob}): big values are stored as blobs"
    )]
    ValueAboveBlob { value: u64, blob: u64 },
}

impl SchedulerSettings {
    /// Checks the relations between keys that serde cannot see.
    pub fn check(&self) -> Result<(), SettingsCheck> {
        if self.heartbeat_interval < Duration::from_millis(10) {
            return Err(SettingsCheck::IntervalTooShort);
        }
        if self.heartbeat_timeout <= self.heartbeat_interval {
            return Err(SettingsCheck::TimeoutNotAboveInterval {
                timeout: self.heartbeat_timeout,
                interval: self.heartbeat_interval,
            });
        }
        if self.cluster.is_empty()
            || !self
                .cluster
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(SettingsCheck::BadClusterName);
        }
        // One inline chunk must always fit, or a session could never send anything.
        let inline = ladle_common::limits::INLINE_VALUE_BYTES as u64
            + ladle_common::limits::ITEM_OVERHEAD_BYTES as u64;
        for (key, value, min) in [
            ("session_max_tasks", self.session_max_tasks, 1),
            ("session_max_bytes", self.session_max_bytes, inline),
            ("max_value_bytes", self.max_value_bytes, 1),
        ] {
            if value < min {
                return Err(SettingsCheck::TooSmall { key, min });
            }
        }
        if self.max_value_bytes > self.max_blob_bytes {
            return Err(SettingsCheck::ValueAboveBlob {
                value: self.max_value_bytes,
                blob: self.max_blob_bytes,
            });
        }
        Ok(())
    }

    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        if std::env::var_os("USER").is_some_and(|u| u == "root") {
            return PathBuf::from("/var/lib/ladle/scheduler");
        }
        std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(std::env::temp_dir)
            .join("ladle/scheduler")
    }

    /// The interface to listen on, given whether credentials and TLS guard the door.
    pub fn bind_address(&self, secured: bool) -> IpAddr {
        self.bind.unwrap_or(if secured {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        })
    }
}
