//! Injected storage faults, for tests of what happens when the disk fails (not part of the
//! documented API): while on, every commit of the storages opened from one
//! [`SqliteStorage`](super::SqliteStorage) fails with an SQLite I/O error before writing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A switch shared by a provider and the writers of the docs it opened.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct FaultSwitch(Arc<AtomicBool>);

impl FaultSwitch {
    /// Turns injected I/O errors on or off.
    pub fn set(&self, failing: bool) {
        self.0.store(failing, Ordering::Release);
    }

    /// The error a commit fails with while the switch is on.
    pub(super) fn check(&self) -> Result<(), rusqlite::Error> {
        if self.0.load(Ordering::Acquire) {
            Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
                Some("injected I/O error".into()),
            ))
        } else {
            Ok(())
        }
    }
}
