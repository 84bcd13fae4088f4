//! The files of one doc: the exclusive lock beside the database, and removing the files
//! of a doc that was opened but never written (client-chosen room ids must not leave a
//! file each behind).
//!
//! The lock is an OS lock on `<id>.db.lock`. Because a lock file may be unlinked by the
//! owner that removes a never-written doc, whoever takes the lock then checks that the path
//! still names the file it locked; if not, it locked a removed file and tries again. So at
//! any moment at most one process holds the lock on the file the path names.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::error::StorageError;

/// The lock file beside `db`.
pub(super) fn lock_path(db: &Path) -> PathBuf {
    db.with_extension("db.lock")
}

/// Takes the exclusive lock beside the database file `db`.
pub(super) fn take_lock(db: &Path) -> Result<File, StorageError> {
    let lock_path = lock_path(db);
    let io = |source| StorageError::Io {
        path: lock_path.display().to_string(),
        source,
    };
    // A removal racing us makes us retry; a few rounds are plenty (each needs another
    // owner to open, find the doc empty and close it in between).
    for _ in 0..16 {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StorageError::InUse {
                    path: db.display().to_string(),
                })
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(io(source)),
        }
        if still_named(&file, &lock_path) {
            return Ok(file);
        }
    }
    Err(StorageError::InUse {
        path: db.display().to_string(),
    })
}

/// Whether `path` still names the open `file` (it was not removed or replaced since).
#[cfg(unix)]
fn still_named(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Lock files are never removed where inodes cannot be compared.
#[cfg(not(unix))]
fn still_named(_file: &File, _path: &Path) -> bool {
    true
}

/// Removes the database `db` (and its WAL files), then its lock file, while `lock` (the
/// held lock) is still held; the lock is released last.
pub(super) fn remove_doc(db: &Path, lock: File) {
    let mut names = vec![db.to_path_buf()];
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        names.push(name.into());
    }
    for name in &names {
        if let Err(e) = std::fs::remove_file(name) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %name.display(), error = %e, "cannot remove the file of an empty doc");
                return;
            }
        }
    }
    if cfg!(unix) {
        if let Err(e) = std::fs::remove_file(lock_path(db)) {
            tracing::warn!(path = %lock_path(db).display(), error = %e, "cannot remove a lock file");
        }
    }
    drop(lock);
}
