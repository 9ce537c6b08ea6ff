//! Ladle's node daemon: it finds its resources, joins the scheduler, stays joined through
//! restarts of either side, and (with the SDK's issue) runs tasks in worker processes.

pub mod blobs;
pub mod cpu_policy;
pub mod daemon;
pub mod durable;
pub mod executor;
pub mod gpu;
pub mod identity;
pub mod resources;
pub mod session;
pub mod settings;

/// The decoders' fuzz targets check what they allocate, which takes counting every allocation.
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: ladle_fuzz::CountingAllocator = ladle_fuzz::CountingAllocator;
