//! TLS for every connection to the scheduler: the trust a client holds, the identity a
//! scheduler presents, and the certificates `ladle-scheduler init` makes.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use thiserror::Error;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The name every certificate made by `init` carries, and that clients of such a cluster check:
/// the scheduler's certificate does not depend on its host's name or address, which may change.
pub const CLUSTER_SERVER_NAME: &str = "ladle-scheduler";

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{what} ({origin}) holds no PEM {expected}")]
    NotPem {
        what: &'static str,
        origin: String,
        expected: &'static str,
    },
    #[error("`{0}` is set without `{1}`: set both")]
    Half(&'static str, &'static str),
    #[error("cannot make the cluster's certificates: {0}")]
    Generate(String),
}

/// Makes ring the process's TLS crypto with AES-128-GCM preferred, once, before the first TLS
/// connection (client or server). rustls offers AES-256-GCM first; with AES-NI the 128-bit key
/// does the same work in 10 rounds instead of 14, and 128 bits are a security margin nobody
/// attacks. Big values cross two TLS hops (driver to scheduler, scheduler to agent): this is
/// what encryption costs them. A provider the program installed itself is left alone.
pub fn install_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use rustls::{CipherSuite, crypto::ring};
        let mut provider = ring::default_provider();
        let rank = |suite: CipherSuite| match suite {
            CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
            CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 2,
            _ => 3,
        };
        // A stable sort keeps the default order among the TLS 1.2 suites.
        provider.cipher_suites.sort_by_key(|s| rank(s.suite()));
        let _ = provider.install_default();
    });
}

/// What a client trusts, and how it proves itself when the scheduler asks (mutual TLS).
#[derive(Clone)]
pub struct ClientTls {
    pub ca_pem: String,
    /// The name the scheduler's certificate must carry.
    pub server_name: Option<String>,
    /// (certificate, key) in PEM, for a scheduler that requires client certificates.
    pub identity: Option<(String, String)>,
    /// Where the trust anchor came from, for error messages ("the cluster file /etc/…").
    pub anchor: String,
}

/// The client key never shows in logs or `Debug` output.
impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .field("anchor", &self.anchor)
            .field("client_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    pub fn config(&self) -> ClientTlsConfig {
        install_crypto();
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}

/// What a scheduler presents, and whom it asks for a client certificate.
#[derive(Clone)]
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
    /// Clients must present a certificate signed by this CA (mutual TLS).
    pub client_ca_pem: Option<String>,
}

/// The key never shows in logs or `Debug` output.
impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mutual", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    pub fn config(&self) -> ServerTlsConfig {
        install_crypto();
        let mut config =
            ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        if let Some(ca) = &self.client_ca_pem {
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        config
    }
}

/// Reads a PEM file, checking that it holds what it should.
pub fn read_pem(
    what: &'static str,
    path: &Path,
    expected: &'static str,
) -> Result<String, TlsError> {
    let text = std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    })?;
    check_pem(what, &path.display().to_string(), &text, expected)?;
    Ok(text)
}

/// `expected` is the PEM label's last word: "CERTIFICATE", or "PRIVATE KEY".
pub fn check_pem(
    what: &'static str,
    origin: &str,
    text: &str,
    expected: &'static str,
) -> Result<(), TlsError> {
    let found = text.lines().any(|l| {
        l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{expected}-----"))
    });
    if found {
        Ok(())
    } else {
        Err(TlsError::NotPem {
            what,
            origin: origin.to_owned(),
            expected,
        })
    }
}

/// A cluster's own certificate authority and the scheduler's certificate, signed by it.
pub struct MadeCertificates {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

/// Makes a CA and a scheduler certificate for `names` (CLUSTER_SERVER_NAME always among them),
/// valid from last year for ten years. The CA's key is not kept: to re-issue, run `init` again.
pub fn make_certificates(cluster: &str, names: &[String]) -> Result<MadeCertificates, TlsError> {
    let err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let year = current_year();
    let (not_before, not_after) = (
        rcgen::date_time_ymd(year - 1, 1, 1),
        rcgen::date_time_ymd(year + 10, 1, 1),
    );

    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, format!("Ladle cluster {cluster} CA"));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut all = vec![CLUSTER_SERVER_NAME.to_owned()];
    for name in names {
        if !all.contains(name) {
            all.push(name.clone());
        }
    }
    let mut server = CertificateParams::new(all).map_err(err)?;
    server
        .distinguished_name
        .push(DnType::CommonName, CLUSTER_SERVER_NAME);
    server.use_authority_key_identifier_extension = true;
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.not_before = not_before;
    server.not_after = not_after;
    let server_key = KeyPair::generate().map_err(err)?;
    let server_cert = server.signed_by(&server_key, &issuer).map_err(err)?;
    Ok(MadeCertificates {
        ca_pem: ca_cert.pem(),
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
    })
}

fn current_year() -> i32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Close enough for a validity window that starts a year early.
    1970 + i32::try_from(secs / 31_556_952).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_128_gcm_is_offered_first() {
        install_crypto();
        let provider = rustls::crypto::CryptoProvider::get_default().unwrap();
        assert_eq!(
            provider.cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
    }

    #[test]
    fn makes_pem_certificates_and_recognises_them() {
        let made = make_certificates("test", &["10.0.0.1".into(), "head".into()]).unwrap();
        check_pem("CA", "test", &made.ca_pem, "CERTIFICATE").unwrap();
        check_pem("key", "test", &made.server_key_pem, "PRIVATE KEY").unwrap();
        let err = check_pem("CA", "x.pem", &made.server_key_pem, "CERTIFICATE").unwrap_err();
        assert!(err.to_string().contains("x.pem"), "{err}");
    }
}
