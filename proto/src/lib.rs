//! The generated protocol of Ladle, package `ladle.v1`.

/// Bumped whenever a change to the protocol is not understood by the previous release.
/// Agents and drivers present it in their first message; the scheduler refuses a mismatch.
pub const PROTOCOL_VERSION: u32 = 6;

/// The metadata key that carries the cluster token on every call.
pub const TOKEN_METADATA_KEY: &str = "x-ladle-token";

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("ladle.v1");
}
