//! Where a client looks for the scheduler, and the addresses to try on each attempt.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use thiserror::Error;
use tokio::io::AsyncReadExt;

use super::Watch;
use crate::address;

/// One address to try, and how it was found (shown in the agent table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub url: String,
    pub how: &'static str,
    /// The DNS name the address was resolved from: the name a TLS certificate must carry when
    /// the client checks no fixed one.
    pub name: Option<String>,
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
                let unreadable = |reason: String| LocateError::File {
                    path: path.display().to_string(),
                    reason,
                };
                let mut content = Vec::new();
                tokio::fs::File::open(path)
                    .await
                    .map_err(|e| unreadable(e.to_string()))?
                    .take(MAX_ADDRESS_FILE_BYTES as u64 + 1)
                    .read_to_end(&mut content)
                    .await
                    .map_err(|e| unreadable(e.to_string()))?;
                expand(address_in_file(&content).map_err(unreadable)?, "file").await
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

/// The most of an address file that is read: it holds one line, so a larger file is not one (a
/// wrong path: a log, a device), and is not read whole.
pub const MAX_ADDRESS_FILE_BYTES: usize = 4096;

/// The address in an address file's `content`: its first line, trimmed.
fn address_in_file(content: &[u8]) -> Result<&str, String> {
    if content.len() > MAX_ADDRESS_FILE_BYTES {
        return Err(format!(
            "it is larger than {MAX_ADDRESS_FILE_BYTES} bytes: not an address file"
        ));
    }
    let text = std::str::from_utf8(content).map_err(|e| format!("it is not text: {e}"))?;
    let line = text.lines().next().unwrap_or_default().trim();
    if line.is_empty() {
        return Err("it is empty".into());
    }
    Ok(line)
}

/// An address as a list of candidates: as it is for an IP, one per resolved address for a name.
async fn expand(address: &str, how: &'static str) -> Result<Vec<Candidate>, LocateError> {
    let url = address::normalize(address)?;
    let authority = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let (host, port) = authority.rsplit_once(':').unwrap_or((authority, ""));
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok() {
        return Ok(vec![Candidate {
            url,
            how,
            name: None,
        }]);
    }
    let port: u16 = port.parse().unwrap_or_default();
    let resolved = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|e| LocateError::Dns {
            host: bare.to_owned(),
            reason: e.to_string(),
        })?;
    let how = if how == "address" { "dns" } else { how };
    let scheme = url.split_once("://").map_or("http", |(scheme, _)| scheme);
    let mut seen = Vec::new();
    for addr in resolved {
        let url = format!("{scheme}://{addr}");
        if !seen.iter().any(|c: &Candidate| c.url == url) {
            seen.push(Candidate {
                url,
                how,
                name: Some(bare.to_owned()),
            });
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
                how: "address",
                name: None,
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
                how: "file",
                name: None,
            }])
        );
    }
}

/// Fuzz targets of the address file's reader: what the scheduler (or whatever else the path
/// names) wrote there. 1024 cases each, microseconds apiece, so well under a second; the DNS
/// lookup that follows for a name is left out (it would make the test slow and depend on the
/// network). `PROPTEST_CASES` runs more.
#[cfg(test)]
mod fuzz_tests {
    use ladle_fuzz::{arbitrary_bytes, config, mutations_of_any};
    use proptest::prelude::*;

    use super::*;

    fn check(content: &[u8]) -> Result<(), TestCaseError> {
        if let Ok(line) = address_in_file(content) {
            prop_assert!(!line.is_empty() && line.trim() == line && !line.contains('\n'));
            // What `expand` does with it next, short of resolving a name.
            let _ = address::normalize(line);
        }
        Ok(())
    }

    #[tokio::test]
    async fn an_address_file_larger_than_the_limit_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("address");
        let mut big = b"http://10.0.0.9:7070\n".to_vec();
        big.resize(1 << 20, b'x');
        std::fs::write(&path, &big).unwrap_or_else(|e| panic!("{e}"));
        let err = Locator::File(path)
            .candidates()
            .await
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("larger than 4096 bytes")),
            "{err:?}"
        );
    }

    proptest! {
        #![proptest_config(config(1024))]

        #[test]
        fn address_file_reader_never_panics_on_arbitrary_bytes(
            content in prop_oneof![arbitrary_bytes(MAX_ADDRESS_FILE_BYTES + 8), ".{0,64}".prop_map(String::into_bytes)],
        ) {
            check(&content)?;
        }

        #[test]
        fn address_file_reader_never_panics_on_damaged_address_files(
            content in mutations_of_any(vec![
                b"http://10.0.0.9:7070\n".to_vec(),
                b"  [fe80::1%eth0]:7070\r\nsecond line\n".to_vec(),
                "https://sch\u{e9}duleur.example:443/\n".as_bytes().to_vec(),
            ]),
        ) {
            check(&content)?;
        }
    }
}
