//! What a scheduler says about itself on the network, and its encoding.

use serde::{Deserialize, Serialize};

/// Marks Ladle's datagrams, and the version of their layout.
const MAGIC: &[u8] = b"LADLE-DISCOVERY/1\n";

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

impl Announcement {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        // Encoding owned strings and integers into a Vec cannot fail.
        out.extend(postcard::to_allocvec(self).unwrap_or_default());
        out
    }

    /// `None` for anything that is not a Ladle announcement (other software shares groups).
    pub fn decode(datagram: &[u8]) -> Option<Self> {
        let body = datagram.strip_prefix(MAGIC)?;
        postcard::from_bytes(body).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_ignores_foreign_datagrams() {
        let a = Announcement {
            cluster: "prod".into(),
            addresses: vec!["http://10.0.0.1:7070".into()],
            protocol: 2,
            version: "0.1.0".into(),
            started_ms: 1234,
        };
        assert_eq!(Announcement::decode(&a.encode()), Some(a.clone()));
        assert_eq!(Announcement::decode(b"M-SEARCH * HTTP/1.1\r\n"), None);
        let mut cut = a.encode();
        cut.truncate(cut.len() - 3);
        assert_eq!(Announcement::decode(&cut), None);
    }
}
