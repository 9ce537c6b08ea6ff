//! The agent's settings: defaults < `--config` TOML file < `LADLE_*` environment < flags.

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
// Missing keys take the value from Default, the same defaults the loader starts from.
#[serde(default, deny_unknown_fields)]
pub struct AgentSettings {
    /// The scheduler to join (`http://host:7070`; a DNS name is tried at every address it
    /// resolves to). LADLE_SCHEDULER sets it too. Unset: `scheduler_file`, else multicast.
    pub scheduler: Option<String>,
    /// A file the scheduler writes its address to (`address_file` there), on a filesystem both
    /// see; read again on every reconnection.
    pub scheduler_file: Option<PathBuf>,
    /// The cluster to join: schedulers announcing another name are ignored.
    pub cluster: String,
    /// Listen for schedulers announcing themselves on multicast when no address or file is given.
    pub multicast: bool,
    pub multicast_group: Ipv4Addr,
    pub multicast_port: u16,
    /// How long to wait for an announcement before saying, in the log, that none came.
    #[serde(with = "humantime_serde")]
    pub discovery_wait: Duration,
    /// The cluster file for agents, from `ladle-scheduler init` (`agent.cluster`): the agent's
    /// credential, the trust anchor it checks the scheduler against (TLS), the key that signs
    /// announcements, and usually the scheduler's address.
    pub cluster_file: Option<PathBuf>,
    /// One shared token instead of a cluster file. Prefer `token_file`, or LADLE_TOKEN.
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    /// TLS without a cluster file (or overriding its trust): the CA the scheduler's certificate
    /// is signed by, the name it carries, and a client certificate and key for mutual TLS.
    pub tls_ca: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    pub tls_client_cert: Option<PathBuf>,
    pub tls_client_key: Option<PathBuf>,
    /// Join a scheduler heard of on multicast although this agent holds no credential to check
    /// its announcements with. Anyone on the network could then serve it code: off unless the
    /// network is trusted.
    pub allow_unsigned_discovery: bool,
    /// Where the agent keeps its id (and later its cache). Default: /var/lib/ladle/agent for
    /// root, else the user's state directory.
    pub state_dir: Option<PathBuf>,
    /// CPU tasks run at once. Default: the CPUs this process may use.
    pub cpu_slots: Option<u32>,
    /// The name shown in the agent table. Default: the machine's hostname; for an agent given a
    /// state directory of its own (not `…/agent`), the hostname and that directory's name
    /// (`node7-a2`), so that several agents on one machine are told apart.
    pub hostname: Option<String>,
    /// Free-form labels shown to operators (`labels.zone = "a"`, or LADLE_LABELS__ZONE=a).
    pub labels: BTreeMap<String, String>,
    /// The longest wait between two attempts to reach the scheduler.
    #[serde(with = "humantime_serde")]
    pub reconnect_max_delay: Duration,
    /// Bound on the cache of job executables and shared constants, in bytes.
    pub cache_max_bytes: u64,
    /// Which CUDA devices to offer: `"all"` (the default), `"none"`, or ordinals
    /// (`[0, 2]` in TOML, `"0,2"` in LADLE_GPUS or `--gpus`).
    pub gpus: GpuSelection,
    /// Declares this many GPU slots (ordinals 0..n) instead of asking the CUDA driver: for
    /// devices the driver cannot see, and for tests.
    pub gpu_slots: Option<u32>,
    /// Run the agent under `SCHED_BATCH`, so that it never preempts a task at the moment the task
    /// hands over its result (its workers keep the normal policy). Off: the agent preempts like
    /// any process.
    pub yield_to_tasks: bool,
}

/// Which of the machine's CUDA devices the agent offers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum GpuSelection {
    #[default]
    All,
    None,
    Only(Vec<u32>),
}

impl GpuSelection {
    pub fn allows(&self, ordinal: u32) -> bool {
        match self {
            Self::All => true,
            Self::None => false,
            Self::Only(list) => list.contains(&ordinal),
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "all" => Ok(Self::All),
            "none" | "" => Ok(Self::None),
            list => list
                .split(',')
                .map(|o| {
                    o.trim().parse::<u32>().map_err(|_| {
                        format!("{o:?} is not a device ordinal (want \"all\", \"none\" or a list such as \"0,2\")")
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Self::Only),
        }
    }
}

impl Serialize for GpuSelection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::All => s.serialize_str("all"),
            Self::None => s.serialize_str("none"),
            Self::Only(list) => list.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for GpuSelection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            One(u32),
            List(Vec<u32>),
        }
        match Raw::deserialize(d)? {
            Raw::Text(text) => Self::parse(&text).map_err(serde::de::Error::custom),
            Raw::One(ordinal) => Ok(Self::Only(vec![ordinal])),
            Raw::List(list) => Ok(Self::Only(list)),
        }
    }
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            scheduler: None,
            scheduler_file: None,
            cluster: "default".into(),
            multicast: true,
            multicast_group: ladle_common::discovery::DEFAULT_GROUP,
            multicast_port: ladle_common::discovery::DEFAULT_PORT,
            discovery_wait: Duration::from_secs(10),
            cluster_file: None,
            token: None,
            token_file: None,
            tls_ca: None,
            tls_server_name: None,
            tls_client_cert: None,
            tls_client_key: None,
            allow_unsigned_discovery: false,
            state_dir: None,
            cpu_slots: None,
            hostname: None,
            labels: BTreeMap::new(),
            reconnect_max_delay: Duration::from_secs(2),
            cache_max_bytes: 4 << 30,
            gpus: GpuSelection::All,
            gpu_slots: None,
            yield_to_tasks: true,
        }
    }
}

impl AgentSettings {
    /// The name the agent goes by (see `hostname`), given the machine's hostname.
    pub fn name(&self, machine: &str) -> String {
        if let Some(name) = &self.hostname {
            return name.clone();
        }
        let own_dir = self
            .state_dir
            .as_deref()
            .and_then(|d| d.file_name())
            .and_then(|n| n.to_str())
            .map(|n| {
                n.chars()
                    .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                    .collect::<String>()
            })
            .map(|n| n.trim_matches('.').to_owned())
            .filter(|n| !n.is_empty() && n != "agent");
        match own_dir {
            Some(dir) => format!("{machine}-{dir}"),
            None => machine.to_owned(),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        let is_root = std::env::var("USER").is_ok_and(|u| u == "root")
            || dirs::home_dir().is_some_and(|h| h == std::path::Path::new("/root"));
        if is_root {
            return PathBuf::from("/var/lib/ladle/agent");
        }
        dirs::state_dir()
            .or_else(dirs::data_local_dir)
            .unwrap_or_else(std::env::temp_dir)
            .join("ladle")
            .join("agent")
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use ladle_common::settings::{Sources, load};

    use super::*;

    #[test]
    fn agents_sharing_a_machine_are_named_apart_by_their_state_directories() {
        let with_dir = |dir: Option<&str>, name: Option<&str>| AgentSettings {
            state_dir: dir.map(PathBuf::from),
            hostname: name.map(str::to_owned),
            ..AgentSettings::default()
        };
        assert_eq!(with_dir(None, None).name("node7"), "node7");
        assert_eq!(
            with_dir(Some("/var/lib/ladle/agent"), None).name("node7"),
            "node7"
        );
        assert_eq!(with_dir(Some("/tmp/a2"), None).name("node7"), "node7-a2");
        assert_eq!(with_dir(Some("/tmp/a 2/"), None).name("node7"), "node7-a2");
        assert_eq!(
            with_dir(Some("/tmp/a2"), Some("gpu-1")).name("node7"),
            "gpu-1"
        );
    }

    fn with(toml: &str, env: &[(&str, &str)]) -> Result<AgentSettings, String> {
        let mut f = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
        f.write_all(toml.as_bytes()).map_err(|e| e.to_string())?;
        load(
            &AgentSettings::default(),
            Sources {
                file: Some(f.path()),
                env: Some(
                    env.iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..Default::default()
            },
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn gpus_are_all_by_default_and_restricted_from_a_file_or_the_environment() {
        assert_eq!(with("", &[]).map(|s| s.gpus), Ok(GpuSelection::All));
        assert_eq!(
            with("gpus = [0, 2]\n", &[]).map(|s| s.gpus),
            Ok(GpuSelection::Only(vec![0, 2]))
        );
        assert_eq!(
            with("gpus = \"none\"\n", &[]).map(|s| s.gpus),
            Ok(GpuSelection::None)
        );
        assert_eq!(
            with("", &[("LADLE_GPUS", "1,3")]).map(|s| s.gpus),
            Ok(GpuSelection::Only(vec![1, 3]))
        );
        assert_eq!(
            with("", &[("LADLE_GPU_SLOTS", "2")]).map(|s| s.gpu_slots),
            Ok(Some(2))
        );
    }

    #[test]
    fn a_bad_gpu_list_is_refused_naming_the_key() {
        let err = with("gpus = \"0,x\"\n", &[]).expect_err("refused");
        assert!(err.contains("gpus") && err.contains("\"x\""), "{err}");
    }
}
