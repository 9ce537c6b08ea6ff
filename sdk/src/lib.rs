//! Ladle's SDK: futures-based map/reduce over a cluster, or over an embedded one with no set-up.
//!
//! ```no_run
//! #[ladle::task]
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! #[ladle::task]
//! fn add(a: u64, b: u64) -> u64 {
//!     a + b
//! }
//!
//! #[ladle::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let cluster = ladle::Cluster::from_env().await?;
//!     let squares = cluster.map(square, 0..10u64).await?;
//!     let total = cluster.map_reduce(square, add, 0..10u64).await?;
//!     assert_eq!(squares.iter().sum::<u64>(), total);
//!     Ok(())
//! }
//! ```
//!
//! The same executable is the driver when a person runs it and a worker when an agent starts
//! it: `#[ladle::main]` sees to that, and `#[ladle::task]` registers the functions workers run.

mod cluster;
mod error;
mod futures;
#[cfg(test)]
mod fuzz_support;
pub mod gpu;
mod lone_wait;
mod map;
mod nested;
mod output;
mod pool;
mod registry;
mod shared;
mod task;
mod worker;

pub use cluster::{
    CLUSTER_ENV, Cluster, Options, RECONNECT_TIMEOUT_ENV, SCHEDULER_ENV, SCHEDULER_FILE_ENV,
    executable::EXECUTABLE_ENV,
};
pub use error::Error;
pub use futures::{ReturnWhen, TaskFuture, Waited, as_completed, gather, gather_all, wait};
pub use gpu::GpuUse;
pub use ladle_macros::{main, task};
pub use map::{AsCompleted, MapCancel, MapStream};
pub use nested::{block_on, cluster};
pub use shared::Shared;
pub use task::{ErrorKind, Reducer, Task, TaskError};

/// Every Rust block of the README, compiled by `cargo test` so that it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;

/// The name of the agent running this task, as `ladle-scheduler agents` shows it; `None` in the
/// driver.
pub fn current_agent() -> Option<String> {
    std::env::var(ladle_common::worker_protocol::AGENT_ENV).ok()
}

/// A byte buffer for big binary arguments and results: it travels as one block of bytes,
/// copied once, where a `Vec<u8>` is encoded and decoded byte by byte (about ten times slower
/// for a 16 MiB value). `ByteBuf::from(vec)` and `.into_vec()` convert without copying.
pub use serde_bytes::ByteBuf;

/// The CUDA bindings [`gpu::context`] hands out, for kernels of your own.
pub use cudarc;

/// Streams of results (`StreamExt::next`) without a dependency of your own.
pub use ::futures::{Stream, StreamExt};

/// What the attributes expand to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::registry::Entry;
    pub use crate::worker::serve_if_worker;
    pub use inventory;

    /// What `#[ladle::main]` does first: serve as a worker if an agent started this process;
    /// otherwise log warnings (a lost scheduler, a reconnection) to stderr, `RUST_LOG` to change.
    pub fn start() {
        crate::worker::serve_if_worker();
        ladle_common::logging::init("warn");
    }

    /// Runs an async `main` on a multi-threaded runtime (`LADLE_RUNTIME=current_thread`: on
    /// this thread alone).
    pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
        let mut builder = match std::env::var("LADLE_RUNTIME").as_deref() {
            Ok("current_thread") => tokio::runtime::Builder::new_current_thread(),
            _ => tokio::runtime::Builder::new_multi_thread(),
        };
        match builder.enable_all().build() {
            Ok(runtime) => {
                let output = runtime.block_on(future);
                // Stopping the runtime drops what its tasks still held (a map's clone of the
                // cluster, say); every session whose last handle is gone then says goodbye, on
                // its own thread, before the process goes.
                drop(runtime);
                crate::cluster::session::wait_all_closed(crate::cluster::session::CLOSE_WAIT);
                output
            }
            Err(err) => {
                eprintln!("ladle: cannot start the async runtime: {err}");
                std::process::exit(1);
            }
        }
    }
}
