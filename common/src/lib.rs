//! What the scheduler, the agent, the CLI and the SDK share.

pub mod address;
pub mod blobs;
pub mod client;
pub mod discovery;
#[cfg(any(test, feature = "fuzz"))]
pub mod fuzz;
pub mod limits;
pub mod logging;
pub mod settings;
pub mod token;
pub mod worker_protocol;

/// This release of Ladle, as every binary reports it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
