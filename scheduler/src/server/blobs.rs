//! Content-addressed blobs on the scheduler's disk: job executables and shared constants.
//! A blob is stored under its SHA-256 once, whatever number of drivers send it, and its hash
//! is checked on the way in.
//!
//! Values of jobs (big arguments and results, shared constants) belong to the jobs that uploaded
//! or referred to them, and are deleted when the last of those jobs ends; blobs uploaded outside
//! any job (executables) are kept, bounded by `max_blob_bytes` each.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
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
    owners: Mutex<Owners>,
    /// Jobs whose values go at the given time unless the job is open again by then.
    deferred: Mutex<Vec<(std::time::Instant, Arc<str>)>>,
}

/// How long the values of a job whose driver went away without a goodbye are kept: past the
/// SDK's default reconnect timeout (60 s), so that a driver that opens its session again finds
/// its shared constants and big arguments.
pub const VALUE_RETENTION: std::time::Duration = std::time::Duration::from_secs(300);

/// Which jobs hold which blobs.
#[derive(Default)]
struct Owners {
    /// Blobs held by at least one job, with their size and holders. A blob not listed here is
    /// kept for good (an executable, or one stored before this scheduler started).
    blobs: HashMap<String, Held>,
    by_job: HashMap<Arc<str>, HashSet<String>>,
    /// Blobs that must never go, whatever jobs also hold them (uploaded outside a job).
    pinned: HashSet<String>,
}

struct Held {
    size: u64,
    jobs: HashSet<Arc<str>>,
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
            owners: Mutex::new(Owners::default()),
            deferred: Mutex::new(Vec::new()),
        })
    }

    /// Releases the job's values after [`VALUE_RETENTION`], unless the job is open again then.
    pub fn release_later(&self, job: &str) {
        let at = std::time::Instant::now() + VALUE_RETENTION;
        self.deferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((at, job.into()));
    }

    /// Jobs whose deferred release is due at `now` (taken off the list).
    pub fn due_releases(&self, now: std::time::Instant) -> Vec<Arc<str>> {
        let mut deferred = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
        if deferred.first().is_none_or(|(at, _)| *at > now) {
            return Vec::new();
        }
        let (due, later): (Vec<_>, Vec<_>) = deferred.drain(..).partition(|(at, _)| *at <= now);
        *deferred = later;
        due.into_iter().map(|(_, job)| job).collect()
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, Owners> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that job `job` uses blob `sha256` (it uploaded it, or submitted a task naming
    /// it); the blob goes when the last job holding it ends, unless pinned. Unknown blobs and
    /// empty job ids are ignored.
    pub fn claim(&self, sha256: &str, job: &str) {
        if job.is_empty() {
            return;
        }
        let Ok(path) = self.path(sha256) else {
            return;
        };
        let mut owners = self.owners();
        if owners.pinned.contains(sha256) {
            return;
        }
        let job: Arc<str> = match owners.by_job.get_key_value(job) {
            Some((key, _)) => key.clone(),
            None => job.into(),
        };
        if !owners.blobs.contains_key(sha256) {
            let Ok(meta) = std::fs::metadata(&path) else {
                return;
            };
            owners.blobs.insert(
                sha256.to_owned(),
                Held {
                    size: meta.len(),
                    jobs: HashSet::new(),
                },
            );
        }
        if let Some(held) = owners.blobs.get_mut(sha256) {
            held.jobs.insert(job.clone());
        }
        owners
            .by_job
            .entry(job)
            .or_default()
            .insert(sha256.to_owned());
    }

    /// Keeps `sha256` for good (uploaded outside any job).
    fn pin(&self, sha256: &str) {
        let mut owners = self.owners();
        owners.pinned.insert(sha256.to_owned());
        if let Some(held) = owners.blobs.remove(sha256) {
            for job in held.jobs {
                if let Some(set) = owners.by_job.get_mut(&job) {
                    set.remove(sha256);
                }
            }
        }
    }

    /// The job ended: deletes the blobs no other job holds. Returns how many were deleted.
    pub fn release_job(&self, job: &str) -> usize {
        let mut gone = Vec::new();
        {
            let mut owners = self.owners();
            let Some(shas) = owners.by_job.remove(job) else {
                return 0;
            };
            for sha in shas {
                let last = owners.blobs.get_mut(&sha).is_some_and(|held| {
                    held.jobs.remove(job);
                    held.jobs.is_empty()
                });
                if last {
                    owners.blobs.remove(&sha);
                    gone.push(sha);
                }
            }
        }
        for sha in &gone {
            if let Ok(path) = self.path(sha)
                && let Err(err) = std::fs::remove_file(&path)
                && err.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("cannot delete blob {}: {err}", path.display());
            }
        }
        if !gone.is_empty() {
            tracing::debug!(job, blobs = gone.len(), "deleted the ended job's values");
        }
        gone.len()
    }

    /// Blobs held by running jobs: how many, and their bytes.
    pub fn job_usage(&self) -> (u64, u64) {
        let owners = self.owners();
        let bytes = owners.blobs.values().map(|h| h.size).sum();
        (owners.blobs.len() as u64, bytes)
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

    /// Receives a blob in pieces for job `job` (empty: outside any job, kept for good); stores
    /// it only if it matches `sha256` and `size`.
    pub async fn receive(
        &self,
        sha256: &str,
        size: u64,
        job: &str,
        next: impl AsyncNext,
    ) -> Result<(), BlobError> {
        self.store(sha256, size, next).await?;
        self.held_by(sha256, job);
        Ok(())
    }

    /// A blob present already, uploaded again for `job`: it is that job's too (or pinned).
    pub fn held_by(&self, sha256: &str, job: &str) {
        if job.is_empty() {
            self.pin(sha256);
        } else {
            self.claim(sha256, job);
        }
    }

    async fn store(
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
