//! Content-addressed blobs on the scheduler's disk: job executables and shared constants.
//! A blob is stored under its SHA-256 once, whatever number of drivers send it, and its hash
//! is checked on the way in.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Mutex,
};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("{0:?} is not a SHA-256 in lower-case hex")]
    BadHash(String),
    #[error(
        "the blob is {size} bytes, more than the scheduler's limit of {limit} (max_blob_bytes)"
    )]
    TooLarge { size: u64, limit: u64 },
    #[error("the upload's content does not match its hash (expected {expected}, got {actual})")]
    Mismatch { expected: String, actual: String },
    #[error("the upload has {actual} bytes, not the {expected} it announced")]
    WrongSize { expected: u64, actual: u64 },
    #[error("blob storage failed: {0}")]
    Io(#[from] std::io::Error),
}

pub struct BlobStore {
    dir: PathBuf,
    limit: u64,
    fetches: Mutex<HashMap<String, u64>>,
}

pub fn valid_hash(sha256: &str) -> bool {
    sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl BlobStore {
    pub fn open(dir: &Path, limit: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            limit,
            fetches: Mutex::new(HashMap::new()),
        })
    }

    /// The file of a stored blob.
    pub fn path(&self, sha256: &str) -> Result<PathBuf, BlobError> {
        if !valid_hash(sha256) {
            return Err(BlobError::BadHash(sha256.to_owned()));
        }
        Ok(self.dir.join(sha256))
    }

    pub fn has(&self, sha256: &str) -> bool {
        self.path(sha256).is_ok_and(|p| p.is_file())
    }

    /// Receives a blob in pieces; stores it only if it matches `sha256` and `size`.
    pub async fn receive(
        &self,
        sha256: &str,
        size: u64,
        mut next: impl AsyncNext,
    ) -> Result<(), BlobError> {
        let target = self.path(sha256)?;
        if size > self.limit {
            return Err(BlobError::TooLarge {
                size,
                limit: self.limit,
            });
        }
        let tmp = self.dir.join(format!("{sha256}.{}.part", uuid_like()));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            let mut hasher = Sha256::new();
            let mut received = 0u64;
            while let Some(chunk) = next.next_chunk().await? {
                received += chunk.len() as u64;
                if received > size {
                    return Err(BlobError::WrongSize {
                        expected: size,
                        actual: received,
                    });
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await?;
            }
            if received != size {
                return Err(BlobError::WrongSize {
                    expected: size,
                    actual: received,
                });
            }
            file.flush().await?;
            let actual = hex::encode(hasher.finalize());
            if actual != sha256 {
                return Err(BlobError::Mismatch {
                    expected: sha256.to_owned(),
                    actual,
                });
            }
            tokio::fs::rename(&tmp, &target).await?;
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    pub fn count_fetch(&self, sha256: &str) {
        let mut fetches = self.fetches.lock().unwrap_or_else(|p| p.into_inner());
        *fetches.entry(sha256.to_owned()).or_default() += 1;
    }

    /// How often each blob was fetched by agents.
    pub fn fetch_counts(&self) -> HashMap<String, u64> {
        self.fetches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A source of upload pieces (the gRPC stream, in the service).
pub trait AsyncNext {
    fn next_chunk(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Option<bytes::Bytes>, BlobError>> + Send;
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
