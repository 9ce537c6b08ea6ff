//! The agent's cache of blobs (job executables and shared constants), fetched from the scheduler
//! once each, checked against their hash, and bounded in size (oldest evicted first).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use ladle_common::client::{self, ClientAuth};
use ladle_proto::v1::{BlobRef, FetchBlobRequest};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::{debug, info};

#[derive(Clone)]
pub struct BlobCache {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    max_bytes: u64,
    /// The scheduler the agent joined last (discovery may move it).
    /// And the DNS name it was found by (the name its certificate carries).
    address: Mutex<(String, Option<String>)>,
    auth: ClientAuth,
    /// One lock per blob, so concurrent needs of the same blob fetch it once.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn valid_hash(sha256: &str) -> bool {
    sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl BlobCache {
    pub fn new(dir: PathBuf, max_bytes: u64, auth: ClientAuth) -> Self {
        Self {
            inner: Arc::new(Inner {
                dir,
                max_bytes,
                address: Mutex::new((String::new(), None)),
                auth,
                locks: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Blobs come from the scheduler at `address` from now on.
    pub fn set_scheduler(&self, address: &str, name: Option<&str>) {
        *self.inner.address.lock().unwrap_or_else(|p| p.into_inner()) =
            (address.to_owned(), name.map(str::to_owned));
    }

    /// The local file of blob `sha256`, fetched from the scheduler if it is not here yet.
    pub async fn get(&self, sha256: &str) -> Result<PathBuf, String> {
        if !valid_hash(sha256) {
            return Err(format!("{sha256:?} is not a blob hash"));
        }
        let path = self.inner.dir.join(sha256);
        let lock = {
            let mut locks = self.inner.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(sha256.to_owned()).or_default().clone()
        };
        let _held = lock.lock().await;
        if path.is_file() {
            touch(&path);
            return Ok(path);
        }
        self.fetch(sha256, &path).await?;
        self.evict(&path);
        Ok(path)
    }

    async fn fetch(&self, sha256: &str, path: &Path) -> Result<(), String> {
        tokio::fs::create_dir_all(&self.inner.dir)
            .await
            .map_err(|e| format!("cannot create {}: {e}", self.inner.dir.display()))?;
        let mut client = self.client().await?;
        let mut stream = client
            .fetch_blob(FetchBlobRequest {
                sha256: sha256.to_owned(),
            })
            .await
            .map_err(|s| format!("cannot fetch blob {sha256}: {}", s.message()))?
            .into_inner();
        let tmp = path.with_extension(format!("part{}", std::process::id()));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| e.to_string())?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            while let Some(chunk) = stream.message().await.map_err(|s| s.message().to_owned())? {
                hasher.update(&chunk.data);
                size += chunk.data.len() as u64;
                file.write_all(&chunk.data)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            file.flush().await.map_err(|e| e.to_string())?;
            let actual = hex::encode(hasher.finalize());
            if actual != sha256 {
                return Err(format!("blob {sha256} arrived with hash {actual}: refused"));
            }
            set_executable(&tmp)?;
            tokio::fs::rename(&tmp, path)
                .await
                .map_err(|e| e.to_string())?;
            info!(blob = %sha256, bytes = size, "fetched blob from the scheduler");
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn client(&self) -> Result<ladle_common::blobs::BlobClient, String> {
        let (address, name) = self
            .inner
            .address
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let auth = self.inner.auth.for_name(name.as_deref());
        let channel = client::connect(&address, &auth)
            .await
            .map_err(|e| e.to_string())?;
        Ok(ladle_common::blobs::client(
            channel,
            self.inner.auth.interceptor(),
        ))
    }

    /// Stores `data` (a task's big result) in the scheduler's blob store as part of job `job`,
    /// in pieces; returns how it is known there.
    pub async fn upload(&self, data: bytes::Bytes, job: &str) -> Result<BlobRef, String> {
        // Hashing a big value takes milliseconds: not on the agent's one thread.
        let hashed = data.clone();
        let blob = tokio::task::spawn_blocking(move || ladle_common::blobs::describe(&hashed))
            .await
            .map_err(|e| e.to_string())?;
        let mut client = self.client().await?;
        ladle_common::blobs::upload(&mut client, &blob, data, job)
            .await
            .map_err(|e| e.to_string())?;
        Ok(blob)
    }

    /// Fetches blob `sha256` (a task's big argument) straight into memory, hash-checked: it is
    /// used once, so it does not go through the cache on disk.
    pub async fn fetch_value(&self, sha256: &str) -> Result<bytes::Bytes, String> {
        if !valid_hash(sha256) {
            return Err(format!("{sha256:?} is not a blob hash"));
        }
        let mut client = self.client().await?;
        ladle_common::blobs::fetch(&mut client, sha256, None)
            .await
            .map_err(|e| e.to_string())
    }

    /// Keeps the cache under its bound, removing the least recently used blobs first.
    fn evict(&self, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(&self.inner.dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                let modified = meta.modified().ok()?;
                meta.is_file().then(|| (modified, meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        for (_, len, path) in files {
            if total <= self.inner.max_bytes {
                break;
            }
            if path != keep && std::fs::remove_file(&path).is_ok() {
                debug!(path = %path.display(), "evicted from the blob cache");
                total -= len;
                // Its lock goes too: the map of locks would otherwise keep every blob ever seen.
                if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                    self.inner
                        .locks
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(name);
                }
            }
        }
    }
}

fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}

fn set_executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())
}
