//! The agent's settings: defaults < `--config` TOML file < `LADLE_*` environment < flags.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
// Missing keys take the value from Default, the same defaults the loader starts from.
#[serde(default, deny_unknown_fields)]
pub struct AgentSettings {
    /// The scheduler to join (`http://host:7070`). LADLE_SCHEDULER sets it too.
    pub scheduler: Option<String>,
    /// The cluster's shared token. Prefer `token_file`, or the LADLE_TOKEN variable.
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    /// Where the agent keeps its id (and later its cache). Default: /var/lib/ladle/agent for
    /// root, else the user's state directory.
    pub state_dir: Option<PathBuf>,
    /// CPU tasks run at once. Default: the CPUs this process may use.
    pub cpu_slots: Option<u32>,
    /// The name shown in the agent table. Default: the machine's hostname.
    pub hostname: Option<String>,
    /// Free-form labels shown to operators (`labels.zone = "a"`, or LADLE_LABELS__ZONE=a).
    pub labels: BTreeMap<String, String>,
    /// The longest wait between two attempts to reach the scheduler.
    #[serde(with = "humantime_serde")]
    pub reconnect_max_delay: Duration,
    /// Bound on the cache of job executables and shared constants, in bytes.
    pub cache_max_bytes: u64,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            scheduler: None,
            token: None,
            token_file: None,
            state_dir: None,
            cpu_slots: None,
            hostname: None,
            labels: BTreeMap::new(),
            reconnect_max_delay: Duration::from_secs(2),
            cache_max_bytes: 4 << 30,
        }
    }
}

impl AgentSettings {
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
