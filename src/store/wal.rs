//! The write-ahead log in front of redb: a preallocated file of fixed size that every group
//! commit appends one record to (one `fdatasync`, usually one 4 KiB page written), while
//! redb applies the same changes without a durable commit of its own. A durable redb commit
//! (a checkpoint) makes the log's records redundant: it starts a new generation, written
//! from the start of the file again.
//!
//! A record is `generation u64 | length u32 | crc32 u32 | payload`, the CRC over the first
//! twelve bytes and the payload. Reading stops at the first record of another generation,
//! of a length that cannot be, or whose CRC fails: a torn write at the tail (power lost
//! mid-record) is detected there and never replayed; what follows is an older generation's
//! leftovers or zeros.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The log file inside `data_dir`.
pub(crate) const WAL_FILE: &str = "roomhook.wal";
/// Bytes of a record's header.
const HEADER: u64 = 16;
/// The smallest log worth having; a smaller file is made again.
const MIN_SIZE: u64 = 64 * 1024;

/// The log's size for a store budget: a sixteenth of it, between 1 and 8 MiB.
pub(crate) fn size_for(max_store_bytes: u64) -> u64 {
    const MIB: u64 = 1024 * 1024;
    if max_store_bytes == 0 {
        return 8 * MIB;
    }
    (max_store_bytes / 16).clamp(MIB, 8 * MIB)
}

/// How reading the log ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tail {
    /// At a clean end (zeros, an older generation, or the end of the file).
    Clean,
    /// At a record that is not whole (a torn write) at this offset: the log ends before it.
    Torn {
        /// Offset of the broken record.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
}

/// The open log.
pub(crate) struct Wal {
    file: File,
    path: PathBuf,
    size: u64,
    generation: u64,
    offset: u64,
    /// Offset of the last record appended (for [`Wal::void_last`]).
    last: Option<u64>,
    /// The record being written (its buffer kept between records).
    scratch: Vec<u8>,
}

impl Wal {
    /// Opens the log in `dir` (making it, `size` bytes of zeros, when missing or too small).
    /// Positioned at the end of generation `generation`'s records, as [`read`] finds them.
    pub fn open(dir: &Path, size: u64, generation: u64) -> io::Result<(Wal, Vec<Vec<u8>>, Tail)> {
        let path = dir.join(WAL_FILE);
        let existing = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if existing < MIN_SIZE {
            allocate(dir, &path, size)?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)?;
        let size = file.metadata()?.len();
        let (records, end, tail) = read(&file, size, generation)?;
        forget_cache(&file);
        Ok((
            Wal {
                file,
                path,
                size,
                generation,
                offset: end,
                last: None,
                scratch: Vec::new(),
            },
            records,
            tail,
        ))
    }

    /// The generation being written.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's size.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Reads the current generation's records again (after redb was reopened).
    pub(crate) fn records(&self) -> io::Result<Vec<Vec<u8>>> {
        let (records, _, _) = read(&self.file, self.size, self.generation)?;
        forget_cache(&self.file);
        Ok(records)
    }

    /// Bytes of records in the current generation.
    pub(crate) fn used(&self) -> u64 {
        self.offset
    }

    /// Whether a record of `len` payload bytes fits.
    pub(crate) fn fits(&self, len: usize) -> bool {
        self.offset + HEADER + len as u64 <= self.size
    }

    /// Appends a record and makes it durable (`fdatasync`). The caller checked [`fits`].
    pub fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        buf.extend_from_slice(&self.generation.to_le_bytes());
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc(&buf[..12], payload).to_le_bytes());
        buf.extend_from_slice(payload);
        // Known before the write: a record that failed half-way can be taken back too.
        self.last = Some(self.offset);
        let written = self
            .file
            .write_all_at(&buf, self.offset)
            .and_then(|()| self.file.sync_data());
        let len = buf.len() as u64;
        self.scratch = buf;
        written?;
        self.offset += len;
        Ok(())
    }

    /// Takes back the last record (redb could not apply it): its header is zeroed, so it is
    /// never replayed, and the next record goes where it was.
    pub(crate) fn void_last(&mut self) -> io::Result<()> {
        if let Some(at) = self.last.take() {
            self.file.write_all_at(&[0u8; HEADER as usize], at)?;
            self.file.sync_data()?;
            self.offset = at;
        }
        Ok(())
    }

    /// A durable redb commit recorded `generation` as the log's next one: the records so
    /// far are redundant and the next one is written at the start of the file.
    pub(crate) fn restart(&mut self, generation: u64) {
        self.generation = generation;
        self.offset = 0;
        self.last = None;
    }
}

/// Looks at the log in `dir` without changing it (for `roomhook store check`): how many
/// records of `generation` it holds, their bytes, and how it ends. `None`: no log.
pub(crate) fn inspect(dir: &Path, generation: u64) -> io::Result<Option<(usize, u64, Tail)>> {
    let path = dir.join(WAL_FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let size = file.metadata()?.len();
    let (records, end, tail) = read(&file, size, generation)?;
    forget_cache(&file);
    Ok(Some((records.len(), end, tail)))
}

/// Reads generation `generation`'s records from the start of the file: the payloads, where
/// they end, and how reading ended.
pub(crate) fn read(
    file: &File,
    size: u64,
    generation: u64,
) -> io::Result<(Vec<Vec<u8>>, u64, Tail)> {
    let mut data = vec![0u8; size as usize];
    file.read_exact_at(&mut data, 0)?;
    let mut records = Vec::new();
    let mut at = 0usize;
    let tail = loop {
        let Some(header) = data.get(at..at + HEADER as usize) else {
            break Tail::Clean;
        };
        let g = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
        if g != generation {
            break Tail::Clean;
        }
        let len = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")) as usize;
        let want = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes"));
        let Some(payload) = data.get(at + HEADER as usize..at + HEADER as usize + len) else {
            break Tail::Torn {
                offset: at as u64,
                reason: format!("a length of {len} bytes runs past the end of the log"),
            };
        };
        if crc(&header[..12], payload) != want {
            break Tail::Torn {
                offset: at as u64,
                reason: "its checksum does not match (a write cut short)".into(),
            };
        }
        records.push(payload.to_vec());
        at += HEADER as usize + len;
    };
    Ok((records, at as u64, tail))
}

/// What a power cut in the middle of a write leaves (for the tests): after the last whole
/// record of `generation`, the start of one more, its header whole, its payload cut short.
/// Returns where it was put.
pub fn tear_tail(dir: &Path, generation: u64) -> io::Result<u64> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(WAL_FILE))?;
    let size = file.metadata()?.len();
    let (_, end, _) = read(&file, size, generation)?;
    let mut torn = Vec::new();
    torn.extend_from_slice(&generation.to_le_bytes());
    torn.extend_from_slice(&4000u32.to_le_bytes());
    torn.extend_from_slice(&0x5eed_u32.to_le_bytes());
    torn.extend_from_slice(&[0xab; 300]);
    let n = torn.len().min((size - end) as usize);
    file.write_all_at(&torn[..n], end)?;
    file.sync_data()?;
    Ok(end)
}

fn crc(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header);
    h.update(payload);
    h.finalize()
}

/// Makes the log: zeros written for real (so that later records overwrite allocated blocks
/// and an `fdatasync` has no file-system metadata to write), made durable, then renamed in.
fn allocate(dir: &Path, path: &Path, size: u64) -> io::Result<()> {
    let tmp = dir.join(format!("{WAL_FILE}.new"));
    {
        let file = File::create(&tmp)?;
        let zeros = vec![0u8; 64 * 1024];
        let mut at = 0u64;
        while at < size {
            let n = zeros.len().min((size - at) as usize);
            file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        file.sync_all()?;
        forget_cache(&file);
    }
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// Drops the file's cached pages: pages cached by a large write or read-ahead may be large
/// folios, and one dirtied byte would then write a whole folio (up to 2 MiB) back.
fn forget_cache(file: &File) {
    let _ = nix::fcntl::posix_fadvise(
        file,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, records, tail) = Wal::open(dir.path(), MIN_SIZE, 7).unwrap();
        assert!(records.is_empty());
        assert_eq!(tail, Tail::Clean);
        wal.append(b"one").unwrap();
        wal.append(b"two").unwrap();
        wal.append(b"three").unwrap();
        let third = wal.used() - HEADER - 5;
        drop(wal);
        let (_, records, tail) = Wal::open(dir.path(), MIN_SIZE, 7).unwrap();
        assert_eq!(
            records,
            vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
        assert_eq!(tail, Tail::Clean);
        // A write cut short: the third record's last byte never reached the disk.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(WAL_FILE))
            .unwrap();
        f.write_all_at(&[0], third + HEADER + 4).unwrap();
        let (mut wal, records, tail) = Wal::open(dir.path(), MIN_SIZE, 7).unwrap();
        assert_eq!(records, vec![b"one".to_vec(), b"two".to_vec()]);
        assert!(matches!(tail, Tail::Torn { offset, .. } if offset == third));
        // The next record takes the torn one's place; a later generation starts over.
        wal.append(b"four").unwrap();
        wal.restart(8);
        wal.append(b"five").unwrap();
        let (_, records, _) = Wal::open(dir.path(), MIN_SIZE, 8).unwrap();
        assert_eq!(records, vec![b"five".to_vec()]);
        let (_, records, tail) = Wal::open(dir.path(), MIN_SIZE, 7).unwrap();
        assert!(
            records.is_empty(),
            "generation 7 starts where 8 wrote: {records:?}"
        );
        assert_eq!(tail, Tail::Clean);
    }

    #[test]
    fn a_voided_record_is_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _, _) = Wal::open(dir.path(), MIN_SIZE, 1).unwrap();
        wal.append(b"kept").unwrap();
        wal.append(b"taken back").unwrap();
        wal.void_last().unwrap();
        let (_, records, tail) = Wal::open(dir.path(), MIN_SIZE, 1).unwrap();
        assert_eq!(records, vec![b"kept".to_vec()]);
        assert_eq!(tail, Tail::Clean);
        assert!(wal.fits(MIN_SIZE as usize - 2 * HEADER as usize - 4));
        assert!(!wal.fits(MIN_SIZE as usize));
    }
}
