//! What this node offers (CPUs, memory, GPUs) and how loaded it is.

use ladle_proto::v1::{Gpu, Load, Resources};
use sysinfo::{MemoryRefreshKind, RefreshKind, System};

/// CPUs this process may use: honours cgroup quotas and CPU affinity, as containers need.
pub fn cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

pub fn hostname() -> String {
    System::host_name().unwrap_or_else(|_| "unknown-host".into())
}

/// Reads memory and load; keeps its `System` so refreshes stay cheap. Where the OS will not
/// tell (an unusual kernel or sandbox), the figures read as zero rather than stopping the agent.
pub struct Probe {
    system: Option<System>,
}

impl Default for Probe {
    fn default() -> Self {
        Self::new()
    }
}

impl Probe {
    pub fn new() -> Self {
        Self {
            system: System::new_with_specifics(
                RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()),
            )
            .ok(),
        }
    }

    /// (total, available) bytes of memory.
    fn memory(&mut self) -> (u64, u64) {
        match &mut self.system {
            Some(system) => {
                system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
                (system.total_memory(), system.available_memory())
            }
            None => (0, 0),
        }
    }

    pub fn resources(&mut self, cpu_slots: u32, gpus: Vec<Gpu>) -> Resources {
        Resources {
            cpus: cpus(),
            memory_bytes: self.memory().0,
            cpu_slots,
            gpus,
        }
    }

    pub fn load(&mut self, busy_cpu_slots: u32, busy_gpu_slots: u32) -> Load {
        Load {
            busy_cpu_slots,
            busy_gpu_slots,
            load_average: System::load_average().map_or(0.0, |l| l.one),
            memory_available_bytes: self.memory().1,
        }
    }
}
