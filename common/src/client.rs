//! The channel every client of the scheduler uses (agents, the CLI, the SDK): it fails fast when
//! nobody listens, notices a dead peer, and presents the cluster token on every call.

use std::time::Duration;

use ladle_proto::TOKEN_METADATA_KEY;
use thiserror::Error;
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    service::Interceptor,
    transport::{Channel, Endpoint},
};

use crate::{address, token::Token};

#[derive(Debug, Error)]
pub enum ConnectError {
    #[error(transparent)]
    Address(#[from] address::AddressError),
    #[error("cannot reach the scheduler at {address}: {reason}")]
    Unreachable { address: String, reason: String },
}

/// How long a client waits for the scheduler's TCP handshake before it says so.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Opens a channel to the scheduler at `address` (`host:port` or `http://host:port`).
pub async fn connect(address: &str) -> Result<Channel, ConnectError> {
    let url = address::normalize(address)?;
    endpoint(address)?
        .connect()
        .await
        .map_err(|e| ConnectError::Unreachable {
            address: url,
            reason: error_chain(&e),
        })
}

/// The endpoint every client uses: its timeouts, keep-alive and flow-control windows.
pub fn endpoint(address: &str) -> Result<Endpoint, ConnectError> {
    let url = address::normalize(address)?;
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| ConnectError::Unreachable {
            address: url.clone(),
            reason: e.to_string(),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(crate::limits::KEEPALIVE_INTERVAL)
        .keep_alive_timeout(crate::limits::KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(crate::limits::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(crate::limits::CONNECTION_WINDOW_BYTES);
    Ok(endpoint)
}

/// Adds the cluster token (when there is one) to every request.
#[derive(Clone, Debug)]
pub struct TokenInterceptor {
    value: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl TokenInterceptor {
    pub fn new(token: Option<&Token>) -> Self {
        // Token::new admits printable ASCII only, which is always a valid header value.
        let value = token.and_then(|t| MetadataValue::try_from(t.as_str()).ok());
        Self { value }
    }
}

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.value {
            request
                .metadata_mut()
                .insert(TOKEN_METADATA_KEY, value.clone());
        }
        Ok(request)
    }
}

/// The whole chain of an error's causes on one line: transport errors hide the useful part
/// ("connection refused") a few levels down.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}
