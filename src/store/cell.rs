//! The handle to the open database that the façade's readers and the writer thread share,
//! and how the writer takes it for itself (compaction) or gives it up (a reopen).

use super::types::StoreError;
use redb::Database;
use std::sync::Arc;

/// The open database, shared by the writer and the readers; empty while the writer opens
/// it again after an I/O error (readers then get [`StoreError::Reopening`]).
pub(crate) struct DbCell(std::sync::RwLock<Option<Arc<Database>>>);

impl DbCell {
    pub(super) fn new(db: Database) -> Self {
        Self(std::sync::RwLock::new(Some(Arc::new(db))))
    }

    pub(crate) fn get(&self) -> Result<Arc<Database>, StoreError> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(StoreError::Reopening)
    }

    pub(crate) fn set(&self, db: Arc<Database>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(db);
    }

    pub(crate) fn clear(&self) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = None;
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
        let mut guard = self.0.write().unwrap_or_else(|p| p.into_inner());
        let Some(shared) = guard.take() else {
            return (own, None);
        };
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
