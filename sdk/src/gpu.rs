//! GPUs from inside a task: which device the task was given, and a ready CUDA context on it.
//!
//! ```no_run
//! #[ladle::task(gpu)]
//! fn device_name(_: ()) -> Result<String, ladle::gpu::GpuError> {
//!     let ctx = ladle::gpu::context()?;
//!     Ok(ctx.name()?)
//! }
//! ```

use std::sync::{Arc, OnceLock};

use cudarc::driver::{CudaContext, DriverError};
use ladle_common::worker_protocol::GPU_ENV;

/// Whether a task runs on a GPU slot: `#[ladle::task(gpu)]` requires one,
/// `#[ladle::task(prefer_gpu)]` prefers one, [`crate::Options::gpu`] says so per call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GpuUse {
    /// CPU slots only.
    #[default]
    None,
    /// Only on a free GPU slot, in a worker that owns that device; the task waits in the
    /// queue while no GPU slot is free.
    Required,
    /// On a free GPU slot when there is one, on a CPU slot otherwise: the task asks
    /// [`ordinal`] which it got and runs its GPU or its CPU implementation.
    Preferred,
}

/// Why a task has no CUDA context.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(
        "this task was not given a GPU: mark it #[ladle::task(gpu)], or check ladle::gpu::ordinal() in a GPU-preferring task"
    )]
    NotAssigned,
    #[error("GPU {ordinal} is a declared slot, but this machine has no CUDA driver (libcuda)")]
    NoDriver { ordinal: u32 },
    /// A CUDA call failed; the message carries the error's name (`CUDA_ERROR_OUT_OF_MEMORY`).
    #[error("CUDA error on GPU {ordinal}: {error}")]
    Cuda { ordinal: u32, error: DriverError },
}

impl From<DriverError> for GpuError {
    fn from(error: DriverError) -> Self {
        Self::Cuda {
            ordinal: ordinal().unwrap_or_default(),
            error,
        }
    }
}

/// The ordinal, on its agent's machine, of the GPU this task runs on; `None` on a CPU slot
/// (and in the driver).
pub fn ordinal() -> Option<u32> {
    static ORDINAL: OnceLock<Option<u32>> = OnceLock::new();
    *ORDINAL.get_or_init(|| std::env::var(GPU_ENV).ok()?.parse().ok())
}

/// A CUDA context on this task's GPU, made once per worker and shared by the tasks it runs.
/// The worker owns that one device (`CUDA_VISIBLE_DEVICES` names it), so the context is
/// device 0 of the process.
pub fn context() -> Result<Arc<CudaContext>, GpuError> {
    static CONTEXT: OnceLock<Result<Arc<CudaContext>, DriverError>> = OnceLock::new();
    let ordinal = ordinal().ok_or(GpuError::NotAssigned)?;
    if !driver_present() {
        return Err(GpuError::NoDriver { ordinal });
    }
    CONTEXT
        .get_or_init(|| CudaContext::new(0))
        .clone()
        .map_err(|error| GpuError::Cuda { ordinal, error })
}

/// Whether this machine has a CUDA driver library to load.
pub fn driver_present() -> bool {
    // SAFETY: only tries to load the library; a missing one is reported as false.
    unsafe { cudarc::driver::sys::is_culib_present() }
}
