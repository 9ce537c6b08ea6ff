//! What guards the scheduler's door, assembled from its settings: the credentials it accepts, the
//! TLS identity it presents, and the key that signs its announcements.

use std::{net::IpAddr, sync::Arc};

use ladle_common::{
    cluster_file::{ClusterFile, ClusterFileError},
    credentials::Accepted,
    tls::{ServerTls, TlsError, read_pem},
    token::{Token, TokenError},
};

use crate::settings::SchedulerSettings;

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error(transparent)]
    File(#[from] ClusterFileError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(
        "both `cluster_file` and `{0}` are set: the cluster file holds the credentials, by role; a shared token beside them would grant every role. Keep one"
    )]
    TokenBesideFile(&'static str),
    #[error(
        "`tls_client_ca` is set but the scheduler has no TLS: give `cluster_file`, or `tls_cert` and `tls_key`"
    )]
    ClientCaWithoutTls,
    #[error(
        "refusing to listen on {ip} without TLS: anyone on the network could read the credentials \
         and the data. Run `ladle-scheduler init` and serve with its `scheduler.cluster` \
         (LADLE_CLUSTER_FILE), or give `tls_cert` and `tls_key`; or bind to 127.0.0.1"
    )]
    PlaintextBeyondLoopback { ip: IpAddr },
    #[error(
        "refusing to listen on {ip} without credentials: anyone who reaches it could run code on \
         every agent. Run `ladle-scheduler init` and serve with its `scheduler.cluster` \
         (LADLE_CLUSTER_FILE); or bind to 127.0.0.1"
    )]
    OpenBeyondLoopback { ip: IpAddr },
}

pub struct Security {
    pub accepted: Arc<Accepted>,
    pub tls: Option<ServerTls>,
    /// Signs announcements: the cluster file's discovery key, else the legacy token.
    pub discovery_key: Option<Token>,
    /// The cluster the file belongs to: it names the cluster, whatever `cluster` says.
    pub cluster: Option<String>,
}

impl Security {
    pub fn from_settings(settings: &SchedulerSettings) -> Result<Self, SecurityError> {
        let token = Token::resolve(settings.token.as_deref(), settings.token_file.as_deref())?;
        if settings.cluster_file.is_some() && token.is_some() {
            return Err(SecurityError::TokenBesideFile(
                if settings.token.is_some() {
                    "token"
                } else {
                    "token_file"
                },
            ));
        }
        let (mut tls, accepted, discovery_key, cluster) = match &settings.cluster_file {
            Some(path) => {
                let file = ClusterFile::load(path)?;
                let (tls, accepted) = file.server(path)?;
                (
                    Some(tls),
                    accepted,
                    file.discovery_key(),
                    Some(file.cluster),
                )
            }
            None => (None, Accepted::default(), token.clone(), None),
        };
        match (&settings.tls_cert, &settings.tls_key) {
            (Some(cert), Some(key)) => {
                tls = Some(ServerTls {
                    cert_pem: read_pem("the TLS certificate", cert, "CERTIFICATE")?,
                    key_pem: read_pem("the TLS key", key, "PRIVATE KEY")?,
                    client_ca_pem: None,
                });
            }
            (Some(_), None) => return Err(TlsError::Half("tls_cert", "tls_key").into()),
            (None, Some(_)) => return Err(TlsError::Half("tls_key", "tls_cert").into()),
            (None, None) => {}
        }
        match (&mut tls, &settings.tls_client_ca) {
            (Some(tls), Some(ca)) => {
                tls.client_ca_pem = Some(read_pem("the client CA", ca, "CERTIFICATE")?);
            }
            (None, Some(_)) => return Err(SecurityError::ClientCaWithoutTls),
            _ => {}
        }
        Ok(Self {
            accepted: Arc::new(accepted.with_token(token)),
            tls,
            discovery_key,
            cluster,
        })
    }

    /// Credentials and TLS both: the only way beyond loopback.
    pub fn secured(&self) -> bool {
        self.tls.is_some() && !self.accepted.is_open()
    }

    /// Refuses an address beyond loopback unless the door is guarded.
    pub fn check_bind(&self, ip: IpAddr) -> Result<(), SecurityError> {
        if ip.is_loopback() {
            return Ok(());
        }
        if self.accepted.is_open() {
            return Err(SecurityError::OpenBeyondLoopback { ip });
        }
        if self.tls.is_none() {
            return Err(SecurityError::PlaintextBeyondLoopback { ip });
        }
        Ok(())
    }

    /// For the status line: what guards the door.
    pub fn describe(&self) -> &'static str {
        match (
            self.tls.is_some(),
            self.accepted.has_roles(),
            self.accepted.is_open(),
        ) {
            (_, _, true) => "open: no credentials (loopback only)",
            (true, true, _) => "TLS, credentials per role",
            (true, false, _) => "TLS, one shared token",
            (false, true, _) => "plaintext (loopback only), credentials per role",
            (false, false, _) => "plaintext (loopback only), one shared token",
        }
    }
}
