//! What the shell measures of itself for `/metrics`: the core's time per event (under its lock,
//! the commands carried out included) and the bytes of values that cross the scheduler.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::core::Event;

/// Where bytes of values (arguments, results, blobs) come from or go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Driver,
    Agent,
}

/// Directions × peers, for the byte counters.
const SLOTS: usize = 4;

pub struct Telemetry {
    /// Seconds the core took per event, by kind ([`Event::KINDS`]).
    pub event_seconds: Vec<Histogram>,
    /// Inline values: arguments in from drivers and out to agents, results in from agents and
    /// out to drivers; blobs: uploads in, fetches out (by role of the caller, not known here: all
    /// counted as one peer each way).
    inline: [AtomicU64; SLOTS],
    pub blob_in: AtomicU64,
    pub blob_out: AtomicU64,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            // 1 µs to about 4 s, by fours.
            event_seconds: Event::KINDS
                .iter()
                .map(|_| Histogram::new(exponential_buckets(1e-6, 4.0, 12)))
                .collect(),
            inline: Default::default(),
            blob_in: AtomicU64::new(0),
            blob_out: AtomicU64::new(0),
        }
    }
}

fn slot(incoming: bool, peer: Peer) -> usize {
    usize::from(incoming) * 2 + usize::from(peer == Peer::Agent)
}

impl Telemetry {
    pub fn observe_event(&self, kind: usize, seconds: f64) {
        if let Some(h) = self.event_seconds.get(kind) {
            h.observe(seconds);
        }
    }

    /// Inline value bytes that came in from (`incoming`) or went out to a peer.
    pub fn count_inline(&self, incoming: bool, peer: Peer, bytes: u64) {
        if bytes > 0 {
            self.inline[slot(incoming, peer)].fetch_add(bytes, Ordering::Relaxed);
        }
    }

    pub fn inline(&self, incoming: bool, peer: Peer) -> u64 {
        self.inline[slot(incoming, peer)].load(Ordering::Relaxed)
    }
}
