//! What the scheduler, the agent, the CLI and the SDK share.

pub mod address;
pub mod blobs;
pub mod client;
pub mod cluster_file;
pub mod credentials;
pub mod discovery;
pub mod limits;
pub mod logging;
pub mod settings;
pub mod tls;
pub mod token;
pub mod worker_protocol;

/// This release of Ladle, as every binary reports it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The decoders' fuzz targets check what they allocate, which takes counting every allocation.
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: ladle_fuzz::CountingAllocator = ladle_fuzz::CountingAllocator;
