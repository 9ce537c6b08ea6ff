//! Moving blobs (executables, shared constants, big arguments and results) to and from the
//! scheduler's blob store: content-addressed by SHA-256, in pieces of
//! [`BLOB_PIECE_BYTES`](crate::limits::BLOB_PIECE_BYTES), never as one message.

use bytes::{Bytes, BytesMut};
use ladle_proto::v1::{
    BlobChunk, BlobRef, FetchBlobRequest, blob_service_client::BlobServiceClient,
};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tonic::{service::interceptor::InterceptedService, transport::Channel};

use crate::{client::TokenInterceptor, limits::BLOB_PIECE_BYTES};

pub type BlobClient = BlobServiceClient<InterceptedService<Channel, TokenInterceptor>>;

#[derive(Debug, Error)]
pub enum BlobTransferError {
    #[error("the scheduler refused blob {sha256}: {message}")]
    Refused { sha256: String, message: String },
    #[error("blob {sha256} arrived with hash {actual}: refused")]
    Mismatch { sha256: String, actual: String },
    #[error("blob {sha256} arrived with {actual} bytes, not the {expected} announced")]
    WrongSize {
        sha256: String,
        expected: u64,
        actual: u64,
    },
}

/// A blob client on `channel` with the contract's message limits.
pub fn client(channel: Channel, token: TokenInterceptor) -> BlobClient {
    crate::with_message_limits!(BlobServiceClient::with_interceptor(channel, token))
}

/// The hash and size of `bytes`.
pub fn describe(bytes: &[u8]) -> BlobRef {
    BlobRef {
        sha256: hex_digest(Sha256::digest(bytes).as_slice()),
        size: bytes.len() as u64,
    }
}

fn hex_digest(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

/// Uploads `data`, known as `blob`, as part of job `job_id` (empty: kept beyond any job). When
/// the scheduler holds it already it is not sent again (but becomes the job's too).
pub async fn upload(
    client: &mut BlobClient,
    blob: &BlobRef,
    data: Bytes,
    job_id: &str,
) -> Result<(), BlobTransferError> {
    let refused = |s: tonic::Status| BlobTransferError::Refused {
        sha256: blob.sha256.clone(),
        message: s.message().to_owned(),
    };
    // Asking first saves sending a big value twice; the upload of a blob the scheduler holds
    // only records that the job uses it.
    let present = client
        .has_blob(blob.clone())
        .await
        .map_err(refused)?
        .into_inner()
        .present;
    let data = if present { Bytes::new() } else { data };
    let mut pieces = Vec::with_capacity(data.len() / BLOB_PIECE_BYTES + 1);
    let mut offset = 0usize;
    loop {
        let end = (offset + BLOB_PIECE_BYTES).min(data.len());
        pieces.push(BlobChunk {
            blob: (offset == 0).then(|| blob.clone()),
            data: data.slice(offset..end),
            job_id: if offset == 0 {
                job_id.to_owned()
            } else {
                String::new()
            },
        });
        offset = end;
        if offset >= data.len() {
            break;
        }
    }
    if present && job_id.is_empty() {
        return Ok(());
    }
    client
        .upload_blob(tokio_stream::iter(pieces))
        .await
        .map_err(refused)?;
    Ok(())
}

/// Fetches blob `sha256` whole into memory, checking its hash; `expected` is its size when known
/// (a larger blob is refused before it is read).
pub async fn fetch(
    client: &mut BlobClient,
    sha256: &str,
    expected: Option<u64>,
) -> Result<Bytes, BlobTransferError> {
    let refused = |s: tonic::Status| BlobTransferError::Refused {
        sha256: sha256.to_owned(),
        message: s.message().to_owned(),
    };
    let mut stream = client
        .fetch_blob(FetchBlobRequest {
            sha256: sha256.to_owned(),
        })
        .await
        .map_err(refused)?
        .into_inner();
    let mut arriving = Arriving::new(sha256, expected);
    while let Some(piece) = stream.message().await.map_err(refused)? {
        arriving.piece(&piece)?;
    }
    arriving.finish()
}

/// What is reserved for a blob before its bytes arrive. Its size is the scheduler's word: a
/// wrong one must not cost memory that never comes, nor abort the process (a size no allocator
/// can give); a bigger blob's buffer grows as its pieces come.
const RESERVE_AHEAD: usize = 4 * BLOB_PIECE_BYTES;

/// A blob arriving in pieces: checked against its announced size as they come, hashed, kept.
struct Arriving<'a> {
    sha256: &'a str,
    /// The size the caller knows it has, if any.
    expected: Option<u64>,
    /// The size it is known to have: `expected`, or what the scheduler announced.
    announced: Option<u64>,
    data: BytesMut,
    hasher: Sha256,
}

impl<'a> Arriving<'a> {
    fn new(sha256: &'a str, expected: Option<u64>) -> Self {
        Self {
            sha256,
            expected,
            announced: expected,
            data: BytesMut::new(),
            hasher: Sha256::new(),
        }
    }

    fn wrong_size(&self, expected: u64, actual: u64) -> BlobTransferError {
        BlobTransferError::WrongSize {
            sha256: self.sha256.to_owned(),
            expected,
            actual,
        }
    }

    fn piece(&mut self, piece: &BlobChunk) -> Result<(), BlobTransferError> {
        if let Some(blob) = &piece.blob {
            if let Some(want) = self.expected
                && blob.size != want
            {
                return Err(self.wrong_size(want, blob.size));
            }
            self.announced = Some(blob.size);
            let missing = blob.size.saturating_sub(self.data.len() as u64);
            self.data
                .reserve(usize::try_from(missing).map_or(RESERVE_AHEAD, |m| m.min(RESERVE_AHEAD)));
        }
        let got = (self.data.len() + piece.data.len()) as u64;
        if let Some(size) = self.announced
            && got > size
        {
            return Err(self.wrong_size(size, got));
        }
        self.hasher.update(&piece.data);
        self.data.extend_from_slice(&piece.data);
        Ok(())
    }

    fn finish(self) -> Result<Bytes, BlobTransferError> {
        let actual = hex_digest(self.hasher.finalize().as_slice());
        if actual != self.sha256 {
            return Err(BlobTransferError::Mismatch {
                sha256: self.sha256.to_owned(),
                actual,
            });
        }
        if let Some(size) = self.announced
            && size != self.data.len() as u64
        {
            return Err(BlobTransferError::WrongSize {
                sha256: self.sha256.to_owned(),
                expected: size,
                actual: self.data.len() as u64,
            });
        }
        Ok(self.data.freeze())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_digest_is_lower_case_hex() {
        let blob = super::describe(b"abc");
        assert_eq!(
            blob.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(blob.size, 3);
    }
}

/// Fuzz targets of a blob's arrival in pieces: sizes and bytes are the scheduler's. 512 cases
/// each, of blobs up to 4 KiB: under a millisecond apiece, so under a second each;
/// `PROPTEST_CASES` runs more.
#[cfg(test)]
mod fuzz_tests {
    use ladle_fuzz::{allocated_by, allocation_bound, arbitrary_bytes, config};
    use proptest::{prelude::*, sample::Index};

    use super::*;

    /// Pieces as they arrive: the size the piece announces, if it does, and its bytes.
    type Pieces = Vec<(Option<u64>, Vec<u8>)>;

    /// `content` cut at `cuts`, the first piece announcing its size (as the scheduler sends it).
    fn honest(content: &[u8], cuts: &[Index]) -> Pieces {
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(content.len() + 1)).collect();
        at.push(0);
        at.push(content.len());
        at.sort_unstable();
        at.windows(2)
            .enumerate()
            .map(|(n, w)| {
                (
                    (n == 0).then_some(content.len() as u64),
                    content[w[0]..w[1]].to_vec(),
                )
            })
            .collect()
    }

    #[derive(Clone, Debug)]
    enum Damage {
        Announce(Index, u64),
        Unannounce(Index),
        DropPiece(Index),
        FlipByte(Index, Index),
        ExtraPiece(Index, Vec<u8>),
    }

    fn damage() -> impl Strategy<Value = Damage> {
        let size = prop_oneof![any::<u64>(), Just(u64::MAX), Just(1 << 40), 0..4200u64];
        prop_oneof![
            (any::<Index>(), size).prop_map(|(i, s)| Damage::Announce(i, s)),
            any::<Index>().prop_map(Damage::Unannounce),
            any::<Index>().prop_map(Damage::DropPiece),
            (any::<Index>(), any::<Index>()).prop_map(|(i, b)| Damage::FlipByte(i, b)),
            (any::<Index>(), arbitrary_bytes(64)).prop_map(|(i, b)| Damage::ExtraPiece(i, b)),
        ]
    }

    fn apply(pieces: &mut Pieces, damage: &Damage) {
        let len = pieces.len();
        let pick = |i: &Index| (len > 0).then(|| i.index(len));
        match damage {
            Damage::Announce(i, size) => {
                if let Some(n) = pick(i) {
                    pieces[n].0 = Some(*size);
                }
            }
            Damage::Unannounce(i) => {
                if let Some(n) = pick(i) {
                    pieces[n].0 = None;
                }
            }
            Damage::DropPiece(i) => {
                if let Some(n) = pick(i) {
                    pieces.remove(n);
                }
            }
            Damage::FlipByte(i, b) => {
                if let Some(n) = pick(i)
                    && !pieces[n].1.is_empty()
                {
                    let at = b.index(pieces[n].1.len());
                    pieces[n].1[at] ^= 0x55;
                }
            }
            Damage::ExtraPiece(i, bytes) => {
                let at = i.index(len + 1);
                pieces.insert(at, (None, bytes.clone()));
            }
        }
    }

    /// The pieces' arrival, as `fetch` runs it.
    fn arrive(
        sha256: &str,
        expected: Option<u64>,
        pieces: &Pieces,
    ) -> Result<Bytes, BlobTransferError> {
        let mut arriving = Arriving::new(sha256, expected);
        for (size, data) in pieces {
            arriving.piece(&BlobChunk {
                blob: size.map(|size| BlobRef {
                    sha256: sha256.to_owned(),
                    size,
                }),
                data: Bytes::copy_from_slice(data),
                job_id: String::new(),
            })?;
        }
        arriving.finish()
    }

    #[test]
    fn a_blob_announced_far_larger_than_what_arrives_reserves_a_bounded_amount() {
        let content = b"abc";
        let sha256 = describe(content).sha256;
        for size in [u64::MAX, 1 << 40, 1 << 31] {
            for expected in [None, Some(size)] {
                let pieces = vec![(Some(size), content.to_vec())];
                let (result, allocated) = allocated_by(|| arrive(&sha256, expected, &pieces));
                assert!(
                    matches!(result, Err(BlobTransferError::WrongSize { expected, actual: 3, .. }) if expected == size),
                    "{result:?}"
                );
                assert!(
                    allocated <= RESERVE_AHEAD + 4096,
                    "{allocated} bytes for a {size}-byte blob"
                );
            }
        }
    }

    proptest! {
        #![proptest_config(config(512))]

        #[test]
        fn a_blob_arriving_in_any_pieces_is_whole_and_checked(
            content in arbitrary_bytes(4096),
            cuts in prop::collection::vec(any::<Index>(), 0..8),
            known in any::<bool>(),
        ) {
            let sha256 = describe(&content).sha256;
            let expected = known.then_some(content.len() as u64);
            let got = arrive(&sha256, expected, &honest(&content, &cuts)).ok();
            prop_assert_eq!(got.as_deref(), Some(&content[..]));
        }

        #[test]
        fn blob_arrival_never_panics_nor_accepts_damaged_pieces(
            content in arbitrary_bytes(4096),
            cuts in prop::collection::vec(any::<Index>(), 0..8),
            damages in prop::collection::vec(damage(), 1..4),
            expected in prop_oneof![Just(None), Just(Some(0)), any::<u64>().prop_map(Some)],
        ) {
            let sha256 = describe(&content).sha256;
            let mut pieces = honest(&content, &cuts);
            for d in &damages {
                apply(&mut pieces, d);
            }
            let received: usize = pieces.iter().map(|(_, d)| d.len()).sum();
            let (got, allocated) = allocated_by(|| arrive(&sha256, expected, &pieces));
            prop_assert!(allocated <= allocation_bound(received), "{allocated} bytes for {received}");
            if let Ok(bytes) = got {
                prop_assert_eq!(&bytes[..], &content[..]);
                prop_assert!(expected.is_none_or(|e| e == bytes.len() as u64));
            }
        }
    }
}
