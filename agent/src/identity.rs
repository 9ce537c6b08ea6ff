//! The agent's stable id, kept in its state directory across restarts. The directory is locked
//! while the agent runs, so two agents never share one id by accident.

use std::{
    fs::{self, File, TryLockError},
    io,
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
        let id = match fs::read_to_string(&id_path) {
            Ok(text) => {
                let id = text.trim().to_owned();
                if uuid::Uuid::parse_str(&id).is_err() {
                    return Err(IdentityError::Corrupt { path: id_path });
                }
                id
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
