//! The channel every client of the scheduler uses (agents, the CLI, the SDK): it fails fast when
//! nobody listens, notices a dead peer, speaks TLS when the client holds a trust anchor, and
//! presents the client's credential on every call.

use std::{path::Path, time::Duration};

use ladle_proto::TOKEN_METADATA_KEY;
use thiserror::Error;
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    service::Interceptor,
    transport::{Channel, Endpoint},
};

use crate::{
    address,
    cluster_file::{ClusterFile, ClusterFileError},
    tls::{ClientTls, TlsError, read_pem},
    token::{Token, TokenError},
};

#[derive(Debug, Error)]
pub enum ConnectError {
    #[error(transparent)]
    Address(#[from] address::AddressError),
    #[error("cannot reach the scheduler at {address}: {reason}")]
    Unreachable { address: String, reason: String },
    #[error(
        "the scheduler at {address} did not answer in plaintext gRPC: it most likely requires TLS. \
         Give this client the cluster's file (LADLE_CLUSTER_FILE, `cluster_file`) or its CA \
         (`tls_ca`) ({reason})"
    )]
    Plaintext { address: String, reason: String },
    #[error(
        "the scheduler at {address} presented a certificate that {anchor} does not vouch for: \
         this is another cluster's scheduler, or an impostor, or the wrong cluster file ({reason})"
    )]
    Untrusted {
        address: String,
        anchor: String,
        reason: String,
    },
    #[error(
        "refusing to send a credential in the clear to {address}: beyond this machine every \
         connection must be TLS. Give this client the cluster's file (LADLE_CLUSTER_FILE, \
         `cluster_file`) or the scheduler's CA (`tls_ca`)"
    )]
    CredentialInTheClear { address: String },
    #[error(
        "{address} asks for TLS (https://) but this client holds no trust anchor: give it the \
         cluster's file (LADLE_CLUSTER_FILE, `cluster_file`) or its CA (`tls_ca`)"
    )]
    NoTrust { address: String },
}

/// How a client proves itself and whom it trusts.
#[derive(Clone, Debug, Default)]
pub struct ClientAuth {
    pub credential: Option<Token>,
    /// With one, every connection is TLS, whatever the address's scheme says.
    pub tls: Option<ClientTls>,
    /// The cluster file these came from, when there is one.
    pub file: Option<ClusterFile>,
}

/// The keys every client's settings share, as given.
#[derive(Clone, Debug, Default)]
pub struct ClientKeys<'a> {
    pub cluster_file: Option<&'a Path>,
    pub token: Option<&'a str>,
    pub token_file: Option<&'a Path>,
    pub tls_ca: Option<&'a Path>,
    pub tls_server_name: Option<&'a str>,
    pub tls_client_cert: Option<&'a Path>,
    pub tls_client_key: Option<&'a Path>,
}

#[derive(Debug, Error)]
pub enum AuthError {
    #[error(transparent)]
    File(#[from] ClusterFileError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(
        "both `cluster_file` and `{0}` are set: the cluster file holds the credential; keep one"
    )]
    Both(&'static str),
}

impl ClientAuth {
    pub fn resolve(keys: &ClientKeys<'_>) -> Result<Self, AuthError> {
        let identity = match (keys.tls_client_cert, keys.tls_client_key) {
            (Some(cert), Some(key)) => Some((
                read_pem("the client certificate", cert, "CERTIFICATE")?,
                read_pem("the client key", key, "PRIVATE KEY")?,
            )),
            (None, None) => None,
            (Some(_), None) => {
                return Err(TlsError::Half("tls_client_cert", "tls_client_key").into());
            }
            (None, Some(_)) => {
                return Err(TlsError::Half("tls_client_key", "tls_client_cert").into());
            }
        };
        if let Some(path) = keys.cluster_file {
            if keys.token.is_some() || keys.token_file.is_some() {
                return Err(AuthError::Both(if keys.token.is_some() {
                    "token"
                } else {
                    "token_file"
                }));
            }
            let file = ClusterFile::load(path)?;
            let mut tls = file.client_tls(path);
            tls.identity = identity;
            if let Some(ca) = keys.tls_ca {
                tls.ca_pem = read_pem("the CA", ca, "CERTIFICATE")?;
                tls.anchor = format!("the CA in {}", ca.display());
            }
            if let Some(name) = keys.tls_server_name {
                tls.server_name = Some(name.to_owned());
            }
            return Ok(Self {
                credential: file.credential(),
                tls: Some(tls),
                file: Some(file),
            });
        }
        let credential = Token::resolve(keys.token, keys.token_file)?;
        if identity.is_some() && keys.tls_ca.is_none() {
            return Err(TlsError::Half("tls_client_cert", "tls_ca").into());
        }
        let tls = match keys.tls_ca {
            Some(ca) => Some(ClientTls {
                ca_pem: read_pem("the CA", ca, "CERTIFICATE")?,
                server_name: keys.tls_server_name.map(str::to_owned),
                identity,
                anchor: format!("the CA in {}", ca.display()),
            }),
            None => None,
        };
        Ok(Self {
            credential,
            tls,
            file: None,
        })
    }

    /// A client holding just a token (or nothing), in plaintext: loopback and tests.
    pub fn token(credential: Option<Token>) -> Self {
        Self {
            credential,
            ..Self::default()
        }
    }

    pub fn interceptor(&self) -> TokenInterceptor {
        TokenInterceptor::new(self.credential.as_ref())
    }

    /// As this, checking the scheduler's certificate for `name` (the DNS name an address was
    /// resolved from) unless a fixed name is set.
    pub fn for_name(&self, name: Option<&str>) -> std::borrow::Cow<'_, Self> {
        match (&self.tls, name) {
            (Some(tls), Some(name)) if tls.server_name.is_none() => {
                let mut auth = self.clone();
                if let Some(tls) = &mut auth.tls {
                    tls.server_name = Some(name.to_owned());
                }
                std::borrow::Cow::Owned(auth)
            }
            _ => std::borrow::Cow::Borrowed(self),
        }
    }

    /// `address` as this client reaches it: `https://` whenever it holds a trust anchor (the
    /// connection is TLS whatever the scheme says), for logs and messages.
    pub fn shown(&self, address: &str) -> String {
        match (&self.tls, address.strip_prefix("http://")) {
            (Some(_), Some(rest)) => format!("https://{rest}"),
            _ => address.to_owned(),
        }
    }

    /// The address of the scheduler written into the cluster file, if any.
    pub fn scheduler(&self) -> Option<&str> {
        self.file.as_ref().and_then(|f| f.scheduler.as_deref())
    }
}

/// How long a client waits for the scheduler's TCP handshake before it says so.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Opens a channel to the scheduler at `address` (`host:port`, `http://…` or `https://…`).
pub async fn connect(address: &str, auth: &ClientAuth) -> Result<Channel, ConnectError> {
    let endpoint = endpoint(address, auth.tls.as_ref())?;
    let url = endpoint.uri().to_string();
    let url = url.trim_end_matches('/').to_owned();
    // Whoever is on the path would read it: a secret goes in the clear to this machine only.
    let loopback = endpoint.uri().host().is_some_and(|host| {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    if auth.tls.is_none() && auth.credential.is_some() && !loopback {
        return Err(ConnectError::CredentialInTheClear { address: url });
    }
    endpoint
        .connect()
        .await
        .map_err(|e| explain(url, auth.tls.as_ref(), &e))
}

/// Says what a failed connection most likely means.
fn explain(
    address: String,
    tls: Option<&ClientTls>,
    err: &tonic::transport::Error,
) -> ConnectError {
    let reason = error_chain(err);
    let lower = reason.to_ascii_lowercase();
    match tls {
        Some(tls)
            if lower.contains("invalid peer certificate")
                || lower.contains("unknownissuer")
                || lower.contains("notvalidforname")
                || lower.contains("badsignature") =>
        {
            ConnectError::Untrusted {
                address,
                anchor: tls.anchor.clone(),
                reason,
            }
        }
        None if lower.contains("frame")
            || lower.contains("protocol error")
            || lower.contains("connection reset")
            || lower.contains("connection closed")
            || lower.contains("broken pipe") =>
        {
            ConnectError::Plaintext { address, reason }
        }
        _ => ConnectError::Unreachable { address, reason },
    }
}

/// A call that failed because a plaintext client spoke to a TLS scheduler (the connection opens,
/// the first call breaks): the error that says so, or None for any other failure.
pub fn plaintext_refused(
    address: &str,
    auth: &ClientAuth,
    status: &Status,
) -> Option<ConnectError> {
    if auth.tls.is_some()
        || !matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
        )
    {
        return None;
    }
    let reason = error_chain(status);
    let lower = reason.to_ascii_lowercase();
    let broken = [
        "transport error",
        "protocol error",
        "frame",
        "connection reset",
        "connection closed",
        "broken pipe",
    ]
    .iter()
    .any(|s| lower.contains(s));
    broken.then(|| ConnectError::Plaintext {
        address: address.to_owned(),
        reason,
    })
}

/// The endpoint every client uses: its timeouts, keep-alive and flow-control windows, and TLS
/// whenever the client holds a trust anchor.
pub fn endpoint(address: &str, tls: Option<&ClientTls>) -> Result<Endpoint, ConnectError> {
    let url = address::normalize(address)?;
    let url = match (tls.is_some(), url.strip_prefix("http://")) {
        // A client that trusts a CA never speaks in the clear, whatever the address says.
        (true, Some(rest)) => format!("https://{rest}"),
        (false, None) => return Err(ConnectError::NoTrust { address: url }),
        _ => url,
    };
    let mut endpoint = Endpoint::from_shared(url.clone())
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
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.config())
            .map_err(|e| ConnectError::Unreachable {
                address: url.clone(),
                reason: error_chain(&e),
            })?;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_credential_never_goes_in_the_clear_beyond_loopback() {
        let auth = ClientAuth::token(Some(Token::new("secret").unwrap()));
        for address in [
            "10.0.0.1:7070",
            "http://sched.example:7070",
            "[2001:db8::1]:7070",
        ] {
            assert!(
                matches!(
                    connect(address, &auth).await,
                    Err(ConnectError::CredentialInTheClear { .. })
                ),
                "{address}"
            );
        }
        // On loopback it may (nothing listens on port 1: the attempt itself is the point).
        assert!(matches!(
            connect("127.0.0.1:1", &auth).await,
            Err(ConnectError::Unreachable { .. })
        ));
    }
}
