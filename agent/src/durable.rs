//! Small state files that must survive a power cut as well as a restart (the agent's id, an
//! operator's drain): written whole under a temporary name, flushed, renamed into place, and the
//! directory flushed, so that after a crash the file is either the old one or the new one.

use std::{
    fs::{self, File},
    io::{self, Write},
    path::Path,
};

/// Replaces `path` with `contents`.
pub fn write(path: &Path, contents: &str) -> io::Result<()> {
    write_with_mode(path, contents, 0o644)
}

/// As `write`, readable by the agent's user only (a secret).
pub fn write_private(path: &Path, contents: &str) -> io::Result<()> {
    write_with_mode(path, contents, 0o600)
}

fn write_with_mode(path: &Path, contents: &str, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let created = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp);
    let written = created.and_then(|mut file| {
        file.write_all(contents.as_bytes())?;
        file.sync_all()
    });
    if let Err(err) = written.and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(err);
    }
    sync_dir(path)
}

/// Removes `path`; a file already gone is no error.
pub fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    }
    sync_dir(path)
}

/// Flushes the directory entry of `path` (its creation, rename or removal). Filesystems that
/// cannot flush a directory (some network and FUSE ones say EINVAL) keep what they keep.
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    match File::open(dir)?.sync_all() {
        Err(err)
            if err.kind() == io::ErrorKind::InvalidInput
                || err.kind() == io::ErrorKind::Unsupported =>
        {
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_and_removed_once_or_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drained");
        write(&path, "first\n").unwrap();
        write(&path, "second\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "second\n");
        assert!(!path.with_extension("tmp").exists());
        remove(&path).unwrap();
        assert!(!path.exists());
        remove(&path).unwrap();
    }
}
