//! The handle to the open database that the façade's readers and the writer thread share,
//! and how the writer takes it for itself (compaction) or gives it up (a reopen). A reader
//! never waits for a compaction: it is told [`StoreError::Busy`] at once (it runs on the
//! runtime's threads, where a wait of seconds would stop pings, pongs and the watchdog).

use super::types::StoreError;
use redb::Database;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, TryLockError};

/// The open database, shared by the writer and the readers; empty while the writer opens
/// it again after an I/O error (readers then get [`StoreError::Reopening`]).
pub(crate) struct DbCell {
    db: RwLock<Option<Arc<Database>>>,
    /// Set (before the lock is taken) while the writer holds the database to itself.
    exclusive: AtomicBool,
}

impl DbCell {
    pub(super) fn new(db: Database) -> Self {
        Self {
            db: RwLock::new(Some(Arc::new(db))),
            exclusive: AtomicBool::new(false),
        }
    }

    /// The database to read; [`StoreError::Busy`] at once while a compaction holds it, and
    /// [`StoreError::Reopening`] while the writer opens it again.
    pub(crate) fn get(&self) -> Result<Arc<Database>, StoreError> {
        let held = match self.db.try_read() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            // The writer holds the lock: for long (a compaction: do not wait), or for the
            // moment a swap takes (wait).
            Err(TryLockError::WouldBlock) if self.exclusive.load(Ordering::Acquire) => {
                return Err(StoreError::Busy)
            }
            Err(TryLockError::WouldBlock) => self.db.read().unwrap_or_else(|p| p.into_inner()),
        };
        held.clone().ok_or(StoreError::Reopening)
    }

    /// Whether a compaction holds the database now.
    #[cfg(test)]
    pub(crate) fn busy(&self) -> bool {
        self.exclusive.load(Ordering::Acquire)
    }

    pub(crate) fn set(&self, db: Arc<Database>) {
        *self.db.write().unwrap_or_else(|p| p.into_inner()) = Some(db);
    }

    pub(crate) fn clear(&self) {
        *self.db.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Runs `f` with the database to itself: readers arriving meanwhile wait, readers
    /// already reading get until `patience` to finish (else `f` does not run). `own` is the
    /// caller's handle, given up for it; the returned handle replaces it.
    pub(crate) fn exclusive<T>(
        &self,
        own: Arc<Database>,
        patience: std::time::Duration,
        f: impl FnOnce(&mut Database) -> T,
    ) -> (Arc<Database>, Option<T>) {
        // Announced before the lock is taken: a reader that finds the lock held then
        // knows not to wait for it.
        self.exclusive.store(true, Ordering::Release);
        let out = {
            let mut guard = self.db.write().unwrap_or_else(|p| p.into_inner());
            match guard.take() {
                None => (own, None),
                Some(shared) => {
                    drop(own);
                    match sole(shared, patience) {
                        Ok(mut alone) => {
                            let r = f(&mut alone);
                            let back = Arc::new(alone);
                            *guard = Some(back.clone());
                            (back, Some(r))
                        }
                        Err(still) => {
                            *guard = Some(still.clone());
                            (still, None)
                        }
                    }
                }
            }
        };
        self.exclusive.store(false, Ordering::Release);
        out
    }
}

/// The database itself, once every other handle is gone (readers finish within
/// `patience`); the handle back if they do not.
pub(crate) fn sole(
    mut db: Arc<Database>,
    patience: std::time::Duration,
) -> Result<Database, Arc<Database>> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        match Arc::try_unwrap(db) {
            Ok(alone) => return Ok(alone),
            Err(still) if std::time::Instant::now() < deadline => {
                db = still;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(still) => return Err(still),
        }
    }
}
