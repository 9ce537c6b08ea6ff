//! The agent's stable id, kept in its state directory across restarts. The directory is locked
//! while the agent runs, so two agents never share one id by accident.

use std::{
    fs::{self, File, TryLockError},
    io::{self, Read},
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("cannot use state directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "state directory {0} is in use by another running agent: give each agent on a machine its own `state_dir`"
    )]
    InUse(PathBuf),
    #[error("{path} does not hold an agent id (delete it to make a new one)")]
    Corrupt { path: PathBuf },
}

/// The most of an id file that is read: an id is 36 characters, so a larger file holds none.
const MAX_ID_FILE_BYTES: u64 = 1024;

/// The agent id an id file's `content` holds, if it holds one.
fn id_in(content: &[u8]) -> Option<String> {
    if content.len() as u64 > MAX_ID_FILE_BYTES {
        return None;
    }
    let id = std::str::from_utf8(content).ok()?.trim();
    uuid::Uuid::parse_str(id).is_ok().then(|| id.to_owned())
}

/// Holds the lock on the state directory for as long as it lives.
#[derive(Debug)]
pub struct Identity {
    pub id: String,
    pub dir: PathBuf,
    _lock: File,
}

impl Identity {
    pub fn load_or_create(dir: &Path) -> Result<Self, IdentityError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| IdentityError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join("agent.lock");
        let lock = File::create(&lock_path).map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(IdentityError::InUse(dir.to_owned())),
            Err(TryLockError::Error(source)) => {
                return Err(IdentityError::Io {
                    path: lock_path,
                    source,
                });
            }
        }

        let id_path = dir.join("agent-id");
        let id = match File::open(&id_path) {
            Ok(file) => {
                let mut content = Vec::new();
                file.take(MAX_ID_FILE_BYTES + 1)
                    .read_to_end(&mut content)
                    .map_err(io_err(&id_path))?;
                match id_in(&content) {
                    Some(id) => id,
                    None => return Err(IdentityError::Corrupt { path: id_path }),
                }
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let id = uuid::Uuid::new_v4().to_string();
                crate::durable::write(&id_path, &format!("{id}\n")).map_err(io_err(&id_path))?;
                id
            }
            Err(source) => {
                return Err(IdentityError::Io {
                    path: id_path,
                    source,
                });
            }
        };
        Ok(Self {
            id,
            dir: dir.to_owned(),
            _lock: lock,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_survives_a_restart_and_the_directory_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::load_or_create(dir.path()).unwrap();
        assert!(matches!(
            Identity::load_or_create(dir.path()),
            Err(IdentityError::InUse(_))
        ));
        let id = first.id.clone();
        drop(first);
        assert_eq!(Identity::load_or_create(dir.path()).unwrap().id, id);
    }

    #[test]
    fn a_damaged_id_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("agent-id"), "not an id").unwrap();
        assert!(matches!(
            Identity::load_or_create(dir.path()),
            Err(IdentityError::Corrupt { .. })
        ));
    }
}

/// Fuzz target of the id file's reader: the file survives the agent, and whatever damaged it.
/// 1024 cases, microseconds apiece; `PROPTEST_CASES` runs more.
#[cfg(test)]
mod fuzz_tests {
    use ladle_fuzz::{arbitrary_bytes, config, mutations_of_any};
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_binary_or_huge_id_file_is_reported_as_damaged() {
        for content in [vec![0xff, 0xfe, b'\n'], vec![b' '; 1 << 20]] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("agent-id"), content).unwrap();
            assert!(matches!(
                Identity::load_or_create(dir.path()),
                Err(IdentityError::Corrupt { .. })
            ));
        }
    }

    proptest! {
        #![proptest_config(config(1024))]

        #[test]
        fn id_file_reader_never_panics_and_accepts_only_ids(
            content in prop_oneof![
                arbitrary_bytes(1100),
                mutations_of_any(vec![
                    b"67e55044-10b1-426f-9247-bb680e5fe0c8\n".to_vec(),
                    b"  {67e55044-10b1-426f-9247-bb680e5fe0c8}\r\n".to_vec(),
                ]),
            ],
        ) {
            if let Some(id) = id_in(&content) {
                prop_assert!(uuid::Uuid::parse_str(&id).is_ok());
                prop_assert_eq!(id.trim(), id.as_str());
            }
        }
    }
}
