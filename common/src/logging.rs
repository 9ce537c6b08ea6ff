//! Logging to stderr through `tracing`, filtered by `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the process-wide subscriber. `default` applies when `RUST_LOG` is unset or
/// unreadable; a bad `RUST_LOG` is reported rather than silently ignored.
pub fn init(default: &str) {
    let (filter, bad) = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => match EnvFilter::try_new(&spec) {
            Ok(filter) => (filter, None),
            Err(err) => (EnvFilter::new(default), Some(format!("{spec:?}: {err}"))),
        },
        _ => (EnvFilter::new(default), None),
    };
    // A second init (tests, embedded use) keeps the first subscriber: that is fine.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
    if let Some(bad) = bad {
        tracing::warn!("ignoring RUST_LOG {bad}");
    }
}
