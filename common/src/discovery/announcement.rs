//! What a scheduler says about itself on the network, its encoding, and its signature.
//!
//! A scheduler with a cluster token signs its announcements with it (HMAC-SHA-256), and an agent
//! with a token believes only announcements signed with the same one: otherwise anyone on the
//! network could announce a scheduler of their own and collect the token agents present to it.

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::token::Token;

/// Marks Ladle's datagrams, and the version of their layout.
const MAGIC: &[u8] = b"LADLE-DISCOVERY/2\n";

/// The largest datagram either side handles.
pub const MAX_DATAGRAM: usize = 8192;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub cluster: String,
    /// gRPC addresses (`http://host:port`), the most likely to work first.
    pub addresses: Vec<String>,
    pub protocol: u32,
    pub version: String,
    /// When the scheduler started (ms since the Unix epoch): of two schedulers of a cluster, the
    /// newer is the one to follow.
    pub started_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct Signed {
    body: Vec<u8>,
    /// HMAC-SHA-256 of `body` under the cluster token; empty when the scheduler has none.
    mac: Vec<u8>,
}

/// What a listener makes of a datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Heard {
    /// Not a Ladle announcement (other software shares groups): ignored silently.
    Foreign,
    Trusted(Announcement),
    /// An announcement this listener cannot believe, and why.
    Untrusted(Announcement, &'static str),
}

fn mac(token: &Token, body: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length.
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(token.as_str().as_bytes()) else {
        return Vec::new();
    };
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

impl Announcement {
    pub fn encode(&self, token: Option<&Token>) -> Vec<u8> {
        // Encoding owned strings and integers into a Vec cannot fail.
        let body = postcard::to_allocvec(self).unwrap_or_default();
        let signed = Signed {
            mac: token.map(|t| mac(t, &body)).unwrap_or_default(),
            body,
        };
        let mut out = MAGIC.to_vec();
        out.extend(postcard::to_allocvec(&signed).unwrap_or_default());
        out
    }

    /// Reads a datagram as a listener holding `token` (or none).
    pub fn decode(datagram: &[u8], token: Option<&Token>) -> Heard {
        let Some(rest) = datagram.strip_prefix(MAGIC) else {
            return Heard::Foreign;
        };
        let Ok(signed) = postcard::from_bytes::<Signed>(rest) else {
            return Heard::Foreign;
        };
        let Ok(announcement) = postcard::from_bytes::<Announcement>(&signed.body) else {
            return Heard::Foreign;
        };
        match (token, signed.mac.is_empty()) {
            (Some(token), false) => {
                let Ok(mut check) =
                    <Hmac<Sha256> as KeyInit>::new_from_slice(token.as_str().as_bytes())
                else {
                    return Heard::Untrusted(announcement, "its signature cannot be checked");
                };
                check.update(&signed.body);
                if check.verify_slice(&signed.mac).is_ok() {
                    Heard::Trusted(announcement)
                } else {
                    Heard::Untrusted(
                        announcement,
                        "it is signed with another key (another cluster's, or forged)",
                    )
                }
            }
            (Some(_), true) => Heard::Untrusted(
                announcement,
                "it is not signed, and this agent holds the cluster's key",
            ),
            (None, true) => Heard::Trusted(announcement),
            (None, false) => Heard::Untrusted(
                announcement,
                "it is signed, and this agent holds no key to check it with",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Announcement {
        Announcement {
            cluster: "prod".into(),
            addresses: vec!["http://10.0.0.1:7070".into()],
            protocol: 2,
            version: "0.1.0".into(),
            started_ms: 1234,
        }
    }

    #[test]
    fn round_trips_and_ignores_foreign_datagrams() {
        let a = sample();
        assert_eq!(
            Announcement::decode(&a.encode(None), None),
            Heard::Trusted(a.clone())
        );
        assert_eq!(
            Announcement::decode(b"M-SEARCH * HTTP/1.1\r\n", None),
            Heard::Foreign
        );
        let mut cut = a.encode(None);
        cut.truncate(cut.len() - 3);
        assert_eq!(Announcement::decode(&cut, None), Heard::Foreign);
    }

    #[test]
    fn only_announcements_signed_with_the_same_token_are_believed() -> Result<(), String> {
        let ours = Token::new("our-token").map_err(|e| e.to_string())?;
        let theirs = Token::new("their-token").map_err(|e| e.to_string())?;
        let a = sample();
        let signed = a.encode(Some(&ours));
        assert_eq!(
            Announcement::decode(&signed, Some(&ours)),
            Heard::Trusted(a.clone())
        );
        assert!(matches!(
            Announcement::decode(&signed, Some(&theirs)),
            Heard::Untrusted(_, why) if why.contains("another key")
        ));
        assert!(matches!(
            Announcement::decode(&a.encode(None), Some(&ours)),
            Heard::Untrusted(_, why) if why.contains("not signed")
        ));
        assert!(matches!(
            Announcement::decode(&signed, None),
            Heard::Untrusted(_, why) if why.contains("holds no key")
        ));
        Ok(())
    }
}

/// Fuzz targets of the announcement decoder: what anyone on the network can send a listener.
/// 1024 cases each: a datagram is at most 8 KiB and decodes in microseconds, so each property
/// takes well under a second in a debug build; `PROPTEST_CASES` runs more.
#[cfg(test)]
mod fuzz_tests {
    use ladle_fuzz::{allocated_by, allocation_bound, arbitrary_bytes, config, mutations_of_any};
    use proptest::prelude::*;

    use super::*;

    fn token() -> Token {
        Token::new("fuzz-token").unwrap_or_else(|e| panic!("{e}"))
    }

    fn samples() -> Vec<Announcement> {
        vec![
            Announcement {
                cluster: "prod".into(),
                addresses: vec![
                    "http://10.0.0.1:7070".into(),
                    "http://[fe80::1]:7070".into(),
                ],
                protocol: 2,
                version: "0.1.0".into(),
                started_ms: 1_700_000_000_000,
            },
            Announcement {
                cluster: String::new(),
                addresses: Vec::new(),
                protocol: u32::MAX,
                version: "é".into(),
                started_ms: u64::MAX,
            },
        ]
    }

    /// Valid datagrams: each sample unsigned and signed.
    fn valid_datagrams() -> Vec<Vec<u8>> {
        let token = token();
        samples()
            .iter()
            .flat_map(|a| [a.encode(None), a.encode(Some(&token))])
            .collect()
    }

    /// Decodes `datagram` as a listener without a token and as one with it: no panic, within
    /// the allocation bound; what the token holder trusts is one of the announcements signed
    /// with its token, unchanged.
    fn decode_both_ways(datagram: &[u8]) -> Result<(), TestCaseError> {
        let token = token();
        for held in [None, Some(&token)] {
            let (heard, allocated) = allocated_by(|| Announcement::decode(datagram, held));
            prop_assert!(
                allocated <= allocation_bound(datagram.len()),
                "{allocated} bytes"
            );
            if let (Some(_), Heard::Trusted(a)) = (held, heard) {
                prop_assert!(
                    samples().contains(&a),
                    "a forged announcement was trusted: {a:?}"
                );
            }
        }
        Ok(())
    }

    /// Past the magic prefix: random bytes, and a `Signed` whose body is random.
    fn after_the_magic() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            arbitrary_bytes(512).prop_map(|rest| [MAGIC, &rest].concat()),
            (arbitrary_bytes(512), arbitrary_bytes(40)).prop_map(|(body, mac)| {
                let signed = postcard::to_allocvec(&Signed { body, mac }).unwrap_or_default();
                [MAGIC, &signed].concat()
            }),
        ]
    }

    proptest! {
        #![proptest_config(config(1024))]

        #[test]
        fn announcement_decoder_never_panics_on_arbitrary_bytes(
            datagram in prop_oneof![arbitrary_bytes(MAX_DATAGRAM), after_the_magic()],
        ) {
            decode_both_ways(&datagram)?;
        }

        #[test]
        fn announcement_decoder_never_panics_on_damaged_announcements_nor_trusts_them(
            datagram in mutations_of_any(valid_datagrams()),
        ) {
            decode_both_ways(&datagram)?;
        }
    }
}
