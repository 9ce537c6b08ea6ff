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
    let mut data = BytesMut::new();
    let mut hasher = Sha256::new();
    let mut announced = expected;
    while let Some(piece) = stream.message().await.map_err(refused)? {
        if let Some(blob) = &piece.blob {
            if let Some(want) = expected
                && blob.size != want
            {
                return Err(BlobTransferError::WrongSize {
                    sha256: sha256.to_owned(),
                    expected: want,
                    actual: blob.size,
                });
            }
            announced = Some(blob.size);
            data.reserve(usize::try_from(blob.size).unwrap_or(0));
        }
        let got = (data.len() + piece.data.len()) as u64;
        if let Some(size) = announced
            && got > size
        {
            return Err(BlobTransferError::WrongSize {
                sha256: sha256.to_owned(),
                expected: size,
                actual: got,
            });
        }
        hasher.update(&piece.data);
        data.extend_from_slice(&piece.data);
    }
    let actual = hex_digest(hasher.finalize().as_slice());
    if actual != sha256 {
        return Err(BlobTransferError::Mismatch {
            sha256: sha256.to_owned(),
            actual,
        });
    }
    if let Some(size) = announced
        && size != data.len() as u64
    {
        return Err(BlobTransferError::WrongSize {
            sha256: sha256.to_owned(),
            expected: size,
            actual: data.len() as u64,
        });
    }
    Ok(data.freeze())
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
