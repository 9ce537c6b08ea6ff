//! Shipping the program: its executable is known by content hash and uploaded once.

use std::{io::Read, path::PathBuf};

use ladle_common::client::TokenInterceptor;
use ladle_proto::v1::{BlobChunk, BlobRef, blob_service_client::BlobServiceClient};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

use crate::error::Error;

/// Overrides the executable agents run (a build for the agents' platform, say).
pub const EXECUTABLE_ENV: &str = "LADLE_WORKER_EXECUTABLE";

const CHUNK: usize = 1 << 20;

pub(crate) fn path() -> Result<PathBuf, Error> {
    match std::env::var_os(EXECUTABLE_ENV) {
        Some(path) => Ok(PathBuf::from(path)),
        None => std::env::current_exe().map_err(|source| Error::Executable {
            path: "(current executable)".into(),
            source,
        }),
    }
}

/// The hash and size of a file.
pub(crate) fn describe(path: &std::path::Path) -> Result<BlobRef, Error> {
    let fail = |source| Error::Executable {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(fail)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(fail)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(BlobRef {
        sha256: hex::encode(hasher.finalize()),
        size,
    })
}

/// Hashes `bytes`.
pub(crate) fn describe_bytes(bytes: &[u8]) -> BlobRef {
    BlobRef {
        sha256: hex::encode(Sha256::digest(bytes)),
        size: bytes.len() as u64,
    }
}

type Blobs =
    BlobServiceClient<tonic::service::interceptor::InterceptedService<Channel, TokenInterceptor>>;

/// Uploads `data` (already read) unless the scheduler holds it.
pub(crate) async fn upload(
    client: &mut Blobs,
    blob: &BlobRef,
    data: bytes::Bytes,
    what: &str,
) -> Result<(), Error> {
    let fail = |message: String| Error::Upload {
        what: what.to_owned(),
        message,
    };
    let present = client
        .has_blob(blob.clone())
        .await
        .map_err(|s| fail(s.message().to_owned()))?
        .into_inner()
        .present;
    if present {
        return Ok(());
    }
    let mut chunks = Vec::new();
    let mut offset = 0usize;
    loop {
        let end = (offset + CHUNK).min(data.len());
        chunks.push(BlobChunk {
            blob: (offset == 0).then(|| blob.clone()),
            data: data.slice(offset..end),
        });
        offset = end;
        if offset >= data.len() {
            break;
        }
    }
    client
        .upload_blob(tokio_stream::iter(chunks))
        .await
        .map_err(|s| fail(s.message().to_owned()))?;
    Ok(())
}
