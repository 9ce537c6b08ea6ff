//! Where a client looks for the scheduler, and the addresses to try on each attempt.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use thiserror::Error;

use super::Watch;
use crate::address;

/// One address to try, and how it was found (shown in the agent table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub url: String,
    pub how: &'static str,
}

#[derive(Debug, Error)]
pub enum LocateError {
    #[error(transparent)]
    Address(#[from] address::AddressError),
    #[error("cannot read the scheduler's address from {path}: {reason}")]
    File { path: String, reason: String },
    #[error("cannot resolve {host}: {reason}")]
    Dns { host: String, reason: String },
    #[error(
        "no scheduler of cluster {cluster:?} announced itself for {waited:?} (listening on {listening})"
    )]
    Silence {
        cluster: String,
        waited: Duration,
        listening: String,
    },
}

pub enum Locator {
    /// An address as given: an IP, or a DNS name whose every address is tried.
    Address(String),
    /// A file the scheduler writes its address to, read again on every attempt.
    File(PathBuf),
    /// Announcements on multicast.
    Multicast { watch: Watch, wait: Duration },
}

impl Locator {
    /// For the logs: where the agent looks.
    pub fn describe(&self) -> String {
        match self {
            Self::Address(a) => a.clone(),
            Self::File(path) => format!("the address in {}", path.display()),
            Self::Multicast { watch, .. } => format!(
                "multicast announcements of cluster {:?} ({})",
                watch.cluster, watch.describe
            ),
        }
    }

    /// The addresses to try now, in order.
    pub async fn candidates(&self) -> Result<Vec<Candidate>, LocateError> {
        match self {
            Self::Address(a) => expand(a, "address").await,
            Self::File(path) => {
                let text =
                    tokio::fs::read_to_string(path)
                        .await
                        .map_err(|e| LocateError::File {
                            path: path.display().to_string(),
                            reason: e.to_string(),
                        })?;
                let line = text.lines().next().unwrap_or_default().trim();
                if line.is_empty() {
                    return Err(LocateError::File {
                        path: path.display().to_string(),
                        reason: "it is empty".into(),
                    });
                }
                expand(line, "file").await
            }
            Self::Multicast { watch, wait } => {
                let addresses =
                    watch
                        .addresses(*wait)
                        .await
                        .ok_or_else(|| LocateError::Silence {
                            cluster: watch.cluster.clone(),
                            waited: *wait,
                            listening: watch.describe.clone(),
                        })?;
                let mut all = Vec::new();
                for a in addresses {
                    all.extend(expand(&a, "multicast").await.unwrap_or_default());
                }
                Ok(all)
            }
        }
    }
}

/// An address as a list of candidates: as it is for an IP, one per resolved address for a name.
async fn expand(address: &str, how: &'static str) -> Result<Vec<Candidate>, LocateError> {
    let url = address::normalize(address)?;
    let authority = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let (host, port) = authority.rsplit_once(':').unwrap_or((authority, ""));
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok() {
        return Ok(vec![Candidate { url, how }]);
    }
    let port: u16 = port.parse().unwrap_or_default();
    let resolved = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|e| LocateError::Dns {
            host: bare.to_owned(),
            reason: e.to_string(),
        })?;
    let how = if how == "address" { "dns" } else { how };
    let mut seen = Vec::new();
    for addr in resolved {
        let url = format!("http://{addr}");
        if !seen.iter().any(|c: &Candidate| c.url == url) {
            seen.push(Candidate { url, how });
        }
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_ip_is_tried_as_it_is_and_a_name_as_every_address_it_resolves_to() {
        let ip = Locator::Address("10.1.2.3:7070".into());
        assert_eq!(
            ip.candidates().await.ok(),
            Some(vec![Candidate {
                url: "http://10.1.2.3:7070".into(),
                how: "address"
            }])
        );
        let name = Locator::Address("localhost:7070".into());
        let found = name.candidates().await.unwrap_or_default();
        assert!(
            found
                .iter()
                .any(|c| c.url == "http://127.0.0.1:7070" && c.how == "dns"),
            "{found:?}"
        );
    }

    #[tokio::test]
    async fn a_file_is_read_on_every_attempt() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("address");
        let file = Locator::File(path.clone());
        let missing = file.candidates().await.err().map(|e| e.to_string());
        assert!(missing.is_some_and(|e| e.contains("address")));
        std::fs::write(&path, "http://10.0.0.9:7070\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            file.candidates().await.ok(),
            Some(vec![Candidate {
                url: "http://10.0.0.9:7070".into(),
                how: "file"
            }])
        );
    }
}
