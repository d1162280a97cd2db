//! `roomhook store check` and `roomhook store salvage`: what an operator runs when the store
//! cannot be opened or reads fail. `check` verifies the file (redb's integrity check) and
//! decodes every entry, and reads the write-ahead log; `salvage` moves the damaged file aside and copies every readable
//! queue entry, dead letter and webhook mapping into a fresh store.

use super::schema::{DEAD, FILE_NAME, META, NEXT_SEQ, ORPHANS, QUEUE, WEBHOOKS};
use crate::event::Event;
use redb::{Database, ReadableDatabase, ReadableTable};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// What `check` found.
#[derive(Debug, Default)]
pub struct Report {
    /// The store file.
    pub(crate) path: PathBuf,
    /// Its size in bytes.
    pub(crate) file_bytes: u64,
    /// redb's integrity check passed (or the file was repaired on open).
    pub(crate) integrity_ok: bool,
    /// Webhook name → (queued entries, dead letters).
    pub(crate) webhooks: BTreeMap<String, (u64, u64)>,
    /// Queues kept after their webhook left the config: name → since (unix ms).
    pub(crate) orphans: BTreeMap<String, i64>,
    /// Entries whose value does not decode as an event.
    pub(crate) undecodable: u64,
    /// Read errors met while walking the tables.
    pub(crate) read_errors: Vec<String>,
    /// This is the report of a salvage (what was copied), not of a check.
    pub(crate) salvaged: bool,
    /// The write-ahead log: records not yet in the store file (the next start applies
    /// them), and where it ends torn, if it does.
    pub(crate) wal: Option<(usize, Option<String>)>,
}

impl Report {
    /// Whether everything is readable and sound.
    pub fn ok(&self) -> bool {
        self.integrity_ok && self.undecodable == 0 && self.read_errors.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "store {} ({:.1} MiB)",
            self.path.display(),
            self.file_bytes as f64 / 1048576.0
        )?;
        writeln!(
            f,
            "  integrity check: {}",
            if self.integrity_ok {
                "passed"
            } else {
                "FAILED"
            }
        )?;
        for (name, (q, d)) in &self.webhooks {
            match self.orphans.get(name) {
                Some(since) => writeln!(
                    f,
                    "  webhook {name}: {q} queued, {d} dead letters (orphaned since {}: no webhook of that name in the config)",
                    crate::timefmt::rfc3339_ms(*since)
                )?,
                None => writeln!(f, "  webhook {name}: {q} queued, {d} dead letters")?,
            }
        }
        if self.undecodable > 0 {
            writeln!(f, "  {} entries do not decode", self.undecodable)?;
        }
        match &self.wal {
            Some((0, None)) | None => {}
            Some((n, torn)) => {
                if *n > 0 {
                    writeln!(f, "  write-ahead log: {n} group commit(s) not yet in the store file (the next start applies them)")?;
                }
                if let Some(t) = torn {
                    writeln!(f, "  write-ahead log: {t}")?;
                }
            }
        }
        for e in &self.read_errors {
            writeln!(f, "  read error: {e}")?;
        }
        if self.salvaged {
            let n: u64 = self.webhooks.values().map(|(q, d)| q + d).sum();
            return write!(
                f,
                "  salvaged {n} entries; what could not be read is listed above"
            );
        }
        let verdict = if self.ok() {
            "OK"
        } else {
            "PROBLEMS FOUND: stop roomhook and run `roomhook store salvage`"
        };
        write!(f, "  {verdict}")
    }
}

/// Why the store could not be checked or salvaged at all.
#[derive(Debug, thiserror::Error)]
pub enum SalvageError {
    /// No store file in the data directory.
    #[error("no store at {0}")]
    Missing(PathBuf),
    /// The daemon (or another process) has it open.
    #[error(
        "the store {0} is open in a running roomhook: stop it first (systemctl stop roomhook)"
    )]
    InUse(PathBuf),
    /// File-system trouble.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// redb refused.
    #[error("{0}")]
    Redb(#[from] redb::Error),
}

fn open(path: &Path) -> Result<Database, SalvageError> {
    if !path.exists() {
        return Err(SalvageError::Missing(path.to_path_buf()));
    }
    let opened = super::recover::quietly(|| {
        Database::builder()
            .set_cache_size(4 * 1024 * 1024)
            .open(path)
    })
    .ok_or_else(|| {
        SalvageError::Redb(redb::Error::Corrupted(
            "the file is damaged: redb cannot open it".into(),
        ))
    })?;
    opened.map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => SalvageError::InUse(path.to_path_buf()),
        other => SalvageError::Redb(other.into()),
    })
}

/// Verifies the store in `data_dir` (the daemon must not be running).
pub fn check(data_dir: &Path) -> Result<Report, SalvageError> {
    let path = data_dir.join(FILE_NAME);
    let mut report = Report {
        path: path.clone(),
        file_bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
        ..Report::default()
    };
    let mut db = match open(&path) {
        Ok(db) => db,
        Err(SalvageError::Redb(e)) => {
            report.read_errors.push(format!("cannot open: {e}"));
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    report.integrity_ok = match super::recover::quietly(|| db.check_integrity()) {
        Some(Ok(ok)) => ok,
        Some(Err(e)) => {
            report.read_errors.push(format!("integrity check: {e}"));
            false
        }
        None => {
            report
                .read_errors
                .push("integrity check: damaged pages".into());
            false
        }
    };
    walk(&db, &mut report, |_, _, _| Ok(()));
    let generation = match super::recover::wal_generation(&db) {
        Ok(g) => g,
        Err(e) => {
            report
                .read_errors
                .push(format!("write-ahead log generation: {e}"));
            None
        }
    };
    if let Some(generation) = generation {
        match super::wal::inspect(data_dir, generation) {
            Ok(Some((n, _, tail))) => {
                let torn = match tail {
                    super::wal::Tail::Clean => None,
                    super::wal::Tail::Torn { offset, reason } => Some(format!(
                        "ends in a torn record at byte {offset} ({reason}): a write cut short, never acknowledged; the next start discards it"
                    )),
                };
                report.wal = Some((n, torn));
            }
            Ok(None) => {}
            Err(e) => report.read_errors.push(format!("write-ahead log: {e}")),
        }
    }
    Ok(report)
}

/// Walks every webhook's queue and dead letters, counting and handing each readable entry
/// to `visit(table, key, value)`.
fn walk(
    db: &Database,
    report: &mut Report,
    mut visit: impl FnMut(&'static str, (u32, u64), &[u8]) -> Result<(), redb::Error>,
) {
    let Ok(read) = db.begin_read() else {
        report
            .read_errors
            .push("cannot begin a read transaction".into());
        return;
    };
    if let Ok(t) = read.open_table(ORPHANS) {
        for (k, v) in t.iter().into_iter().flatten().flatten() {
            report.orphans.insert(k.value().to_string(), v.value());
        }
    }
    let names: Vec<(String, u32)> = match read.open_table(WEBHOOKS) {
        Ok(t) => match t.iter() {
            Ok(it) => it
                .filter_map(|r| r.ok().map(|(k, v)| (k.value().to_string(), v.value())))
                .collect(),
            Err(e) => {
                report.read_errors.push(format!("webhooks table: {e}"));
                Vec::new()
            }
        },
        Err(e) => {
            report.read_errors.push(format!("webhooks table: {e}"));
            Vec::new()
        }
    };
    for (table_name, def) in [("queue", QUEUE), ("dead_letters", DEAD)] {
        let table = match read.open_table(def) {
            Ok(t) => t,
            Err(e) => {
                report.read_errors.push(format!("{table_name} table: {e}"));
                continue;
            }
        };
        for (name, id) in &names {
            // redb panics on some kinds of damaged pages; a damaged stretch ends this walk
            // of this webhook's entries, not the salvage.
            let walked = super::recover::quietly(|| {
                walk_range(&table, table_name, name, *id, report, &mut visit)
            });
            if walked.is_none() {
                report.read_errors.push(format!(
                    "{table_name} of {name}: damaged page, the rest of it is unreadable"
                ));
            }
        }
    }
}

fn walk_range(
    table: &redb::ReadOnlyTable<(u32, u64), &'static [u8]>,
    table_name: &'static str,
    name: &str,
    id: u32,
    report: &mut Report,
    visit: &mut impl FnMut(&'static str, (u32, u64), &[u8]) -> Result<(), redb::Error>,
) {
    {
        {
            let range = match table.range((id, 0)..=(id, u64::MAX)) {
                Ok(r) => r,
                Err(e) => {
                    report
                        .read_errors
                        .push(format!("{table_name} of {name}: {e}"));
                    return;
                }
            };
            for item in range {
                match item {
                    Ok((k, v)) => {
                        let decodes = if table_name == "queue" {
                            Event::decode(v.value()).is_ok()
                        } else {
                            serde_json::from_slice::<super::types::DeadLetter>(v.value()).is_ok()
                        };
                        if !decodes {
                            report.undecodable += 1;
                            continue;
                        }
                        let counts = report.webhooks.entry(name.to_string()).or_default();
                        if table_name == "queue" {
                            counts.0 += 1;
                        } else {
                            counts.1 += 1;
                        }
                        if let Err(e) = visit(table_name, k.value(), v.value()) {
                            report.read_errors.push(format!("copy: {e}"));
                        }
                    }
                    Err(e) => {
                        report
                            .read_errors
                            .push(format!("{table_name} of {name}: {e}"));
                        break;
                    }
                }
            }
        }
    }
}

/// Moves the damaged store aside (`roomhook.redb.damaged-<unix time>`) and copies everything
/// readable into a fresh one. Returns what was copied and where the old file went.
pub fn salvage(data_dir: &Path) -> Result<(Report, PathBuf), SalvageError> {
    let path = data_dir.join(FILE_NAME);
    if !path.exists() {
        return Err(SalvageError::Missing(path));
    }
    let stamp = crate::timefmt::now_ms() / 1000;
    let aside = data_dir.join(format!("{FILE_NAME}.damaged-{stamp}"));
    // Make sure no daemon holds it (a damaged file may not open at all: that is fine), then
    // move it aside.
    match open(&path) {
        Err(SalvageError::InUse(p)) => return Err(SalvageError::InUse(p)),
        Ok(db) => drop(db),
        Err(_) => {}
    }
    std::fs::rename(&path, &aside)?;
    let fresh = Database::create(&path).map_err(redb::Error::from)?;
    {
        let txn = fresh.begin_write().map_err(redb::Error::from)?;
        txn.open_table(WEBHOOKS).map_err(redb::Error::from)?;
        txn.open_table(NEXT_SEQ).map_err(redb::Error::from)?;
        txn.open_table(META).map_err(redb::Error::from)?;
        txn.open_table(QUEUE).map_err(redb::Error::from)?;
        txn.open_table(DEAD).map_err(redb::Error::from)?;
        txn.commit().map_err(redb::Error::from)?;
    }
    let mut report = Report {
        path: path.clone(),
        integrity_ok: true,
        salvaged: true,
        ..Report::default()
    };
    let old = match open(&aside) {
        Ok(db) => db,
        Err(e) => {
            report.read_errors.push(format!(
                "the damaged file cannot be opened at all ({e}); the new store starts empty"
            ));
            return Ok((report, aside));
        }
    };
    let txn = fresh.begin_write().map_err(redb::Error::from)?;
    {
        let read = old.begin_read().map_err(redb::Error::from)?;
        // Webhook ids, next sequence numbers and the store id keep webhook-ids unique.
        let mut names = txn.open_table(WEBHOOKS).map_err(redb::Error::from)?;
        if let Ok(t) = read.open_table(WEBHOOKS) {
            for (k, v) in t.iter().into_iter().flatten().flatten() {
                names
                    .insert(k.value(), v.value())
                    .map_err(redb::Error::from)?;
            }
        }
        let mut seqs = txn.open_table(NEXT_SEQ).map_err(redb::Error::from)?;
        if let Ok(t) = read.open_table(NEXT_SEQ) {
            for (k, v) in t.iter().into_iter().flatten().flatten() {
                seqs.insert(k.value(), v.value())
                    .map_err(redb::Error::from)?;
            }
        }
        let mut orphans = txn.open_table(ORPHANS).map_err(redb::Error::from)?;
        if let Ok(t) = read.open_table(ORPHANS) {
            for (k, v) in t.iter().into_iter().flatten().flatten() {
                orphans
                    .insert(k.value(), v.value())
                    .map_err(redb::Error::from)?;
            }
        }
        let mut meta = txn.open_table(META).map_err(redb::Error::from)?;
        if let Ok(t) = read.open_table(META) {
            for (k, v) in t.iter().into_iter().flatten().flatten() {
                meta.insert(k.value(), v.value())
                    .map_err(redb::Error::from)?;
            }
        }
        let mut queue = txn.open_table(QUEUE).map_err(redb::Error::from)?;
        let mut dead = txn.open_table(DEAD).map_err(redb::Error::from)?;
        walk(&old, &mut report, |table, key, value| {
            if table == "queue" {
                queue.insert(key, value)?;
            } else {
                dead.insert(key, value)?;
            }
            Ok(())
        });
    }
    txn.commit().map_err(redb::Error::from)?;
    drop(fresh);
    report.file_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    Ok((report, aside))
}
