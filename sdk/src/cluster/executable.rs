//! Shipping the program: its executable is known by content hash and uploaded once.

use std::{io::Read, path::PathBuf};

use ladle_proto::v1::BlobRef;
use sha2::{Digest, Sha256};

use crate::error::Error;

/// Overrides the executable agents run (a build for the agents' platform, say).
pub const EXECUTABLE_ENV: &str = "LADLE_WORKER_EXECUTABLE";

const CHUNK: usize = ladle_common::limits::BLOB_PIECE_BYTES;

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
