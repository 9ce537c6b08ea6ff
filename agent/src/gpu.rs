//! Finding the machine's CUDA devices through cudarc, with the driver library loaded at run time:
//! the same binary runs on machines without CUDA, and then reports no GPU.

use cudarc::driver::{result, sys};
use ladle_proto::v1::Gpu;

/// What the driver said, for the agent's log.
#[derive(Debug)]
pub enum Discovery {
    /// No libcuda could be loaded: not a CUDA machine.
    NoDriver,
    /// The driver loaded but failed (no device node, driver/library mismatch, …).
    DriverError(String),
    Found(Vec<Gpu>),
}

impl Discovery {
    pub fn gpus(&self) -> Vec<Gpu> {
        match self {
            Self::Found(gpus) => gpus.clone(),
            _ => Vec::new(),
        }
    }
}

/// Enumerates CUDA devices without creating a context on them.
pub fn discover() -> Discovery {
    // SAFETY: only tries to load the library; a missing one is reported as false.
    let present = unsafe { sys::is_culib_present() };
    if !present {
        return Discovery::NoDriver;
    }
    match enumerate() {
        Ok(gpus) => Discovery::Found(gpus),
        Err(err) => Discovery::DriverError(err.to_string()),
    }
}

fn enumerate() -> Result<Vec<Gpu>, result::DriverError> {
    result::init()?;
    let count = result::device::get_count()?;
    let mut gpus = Vec::new();
    for ordinal in 0..count {
        let dev = result::device::get(ordinal)?;
        let name = result::device::get_name(dev)?;
        // SAFETY: `dev` came from cuDeviceGet just above.
        let (memory, major, minor) = unsafe {
            (
                result::device::total_mem(dev)?,
                result::device::get_attribute(
                    dev,
                    sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                )?,
                result::device::get_attribute(
                    dev,
                    sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                )?,
            )
        };
        gpus.push(Gpu {
            ordinal: u32::try_from(ordinal).unwrap_or_default(),
            name,
            memory_bytes: memory as u64,
            compute_capability: format!("{major}.{minor}"),
            declared: false,
        });
    }
    Ok(gpus)
}
