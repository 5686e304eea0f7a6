//! Segment files: naming, creation with preallocation, and reading one back on open.
//!
//! A segment is `{seq:016x}.wal`, created at its full size (fallocate) so that appends
//! never change the file size and fdatasync has no size metadata to write. Data is
//! written front to back; everything after the last record is zero. The one gap
//! allowed: zeros up to a page boundary where a `Resume` record names the offset the
//! zeros start at (the writer skipped there so that a batch dirties one page less).
//!
//! On open, `scan` walks the records of one segment and decides what a damaged record
//! means: in the last segment, damage after which no valid record follows is a torn
//! tail (a crash mid-write) and is cut; damage anywhere else is a hard error that names
//! the file and offset. This module never skips a damaged record and carries on.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::record::{self, BadRecord, Decoded, RecordKind, ALIGN_BYTES, PAGE_SIZE_BYTES};
use super::WalError;

const SEGMENT_SUFFIX: &str = ".wal";
const TMP_SUFFIX: &str = ".tmp";

pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}{SEGMENT_SUFFIX}"))
}

/// Segment files in `dir`, by sequence number. Leftover temporary files are removed.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut segments = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| WalError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| WalError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(TMP_SUFFIX) {
            // A segment whose creation did not finish: it never held data.
            std::fs::remove_file(entry.path()).map_err(|e| WalError::io(&entry.path(), e))?;
            continue;
        }
        let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) else {
            continue;
        };
        let Ok(seq) = u64::from_str_radix(stem, 16) else {
            continue;
        };
        segments.push((seq, entry.path()));
    }
    segments.sort_by_key(|(seq, _)| *seq);
    for pair in segments.windows(2) {
        if pair[1].0 != pair[0].0 + 1 {
            return Err(WalError::Corrupt {
                path: pair[1].1.clone(),
                offset: 0,
                reason: format!("segment {:016x} is missing before it", pair[0].0 + 1),
            });
        }
    }
    Ok(segments)
}

/// Deletes purged segment files on a thread of its own, in the order given (oldest
/// first). Unlinking a 64 MiB segment took 7-12 ms on ext4 mounted with `discard`
/// (docs/decisions.md): time the log's writer thread must not spend between
/// two fdatasyncs, as every write waits for it then. A crash before a deletion leaves
/// a whole purged segment behind, which the next open replays and the next purge
/// deletes, as a crash between a purge and its unlink always could; oldest first, so
/// the segments left are still consecutive. Dropping the deleter waits for the
/// deletions queued: a reopened log never lists a file this one is about to delete.
pub struct SegmentDeleter {
    tx: Option<std::sync::mpsc::Sender<Vec<PathBuf>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SegmentDeleter {
    /// One queue entry per purge, each naming segments no later purge names again: the
    /// queue holds at most as many paths as the directory holds segments.
    pub fn start(dir: &Path) -> Result<SegmentDeleter, WalError> {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<PathBuf>>();
        let dir = dir.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("raftkv-wal-gc".into())
            .spawn(move || {
                for paths in rx {
                    for path in &paths {
                        match std::fs::remove_file(path) {
                            Ok(()) => tracing::debug!(path = %path.display(), "wal: removed a purged segment"),
                            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                            // It stays until the next open lists it again.
                            Err(e) => tracing::warn!(path = %path.display(), error = %e, "wal: could not remove a purged segment"),
                        }
                    }
                    if let Err(e) = sync_dir(&dir) {
                        tracing::warn!(error = %e, "wal: could not sync the log directory after removing segments");
                    }
                }
            })
            .map_err(|e| WalError::io(Path::new("raftkv-wal-gc thread"), e))?;
        Ok(SegmentDeleter {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues `paths` for deletion and returns at once.
    pub fn delete(&self, paths: Vec<PathBuf>) {
        if let Some(tx) = &self.tx {
            // The thread outlives every sender but this one; if it died, the files stay
            // until the next open.
            let _ = tx.send(paths);
        }
    }
}

impl Drop for SegmentDeleter {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Creates segment `seq` at its full size, durably (file and directory entry).
pub fn create_segment(dir: &Path, seq: u64, size_bytes: u64) -> Result<File, WalError> {
    let path = segment_path(dir, seq);
    let tmp = dir.join(format!("{seq:016x}{TMP_SUFFIX}"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| WalError::io(&tmp, e))?;
    preallocate(&file, size_bytes).map_err(|e| WalError::io(&tmp, e))?;
    file.sync_all().map_err(|e| WalError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| WalError::io(&path, e))?;
    sync_dir(dir)?;
    Ok(file)
}

pub fn open_segment(path: &Path) -> Result<File, WalError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| WalError::io(path, e))
}

/// Reserves `size_bytes` for the file so that later writes inside it change no size.
/// Falls back to a sparse `set_len` where the file system has no fallocate.
pub fn preallocate(file: &File, size_bytes: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(size_bytes)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: fallocate on a valid, open file descriptor; no memory is shared.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => file.set_len(size_bytes),
        _ => Err(err),
    }
}

pub fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WalError::io(dir, e))
}

/// One record found by `scan`.
pub struct ScannedRecord<'a> {
    pub kind: RecordKind,
    pub payload: &'a [u8],
    pub offset: usize,
}

/// A torn tail found by `scan` in the last segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Where the damaged data starts: the end of the last whole record.
    pub offset: usize,
    /// Bytes from `offset` to the last non-zero byte, inclusive.
    pub dropped_bytes: usize,
    pub reason: String,
}

/// The outcome of scanning one segment.
pub struct Scan<'a> {
    pub records: Vec<ScannedRecord<'a>>,
    /// Where the next record goes: the end of the last whole record.
    pub end_offset: usize,
    pub torn_tail: Option<TornTail>,
}

/// Walks every record of `buf` (a whole segment file). `is_last` allows a torn tail.
pub fn scan<'a>(
    buf: &'a [u8],
    path: &Path,
    is_last: bool,
    max_payload_size_bytes: usize,
) -> Result<Scan<'a>, WalError> {
    let mut records = Vec::new();
    let mut offset = 0usize;
    loop {
        match record::decode(buf, offset, max_payload_size_bytes) {
            Decoded::Record {
                kind,
                payload,
                next_offset,
            } => {
                if kind == RecordKind::Resume {
                    // The writer writes one only after a gap of zeros (handled below).
                    return Err(WalError::Corrupt {
                        path: path.to_path_buf(),
                        offset: offset as u64,
                        reason: "a resume record with no skipped bytes before it".into(),
                    });
                }
                records.push(ScannedRecord {
                    kind,
                    payload,
                    offset,
                });
                offset = next_offset;
            }
            Decoded::End => {
                if let Some(resumed_at) = resume_after_gap(buf, offset, max_payload_size_bytes) {
                    offset = resumed_at;
                    continue;
                }
                let Some(last_nonzero) = last_nonzero_byte(buf, offset) else {
                    return Ok(Scan {
                        records,
                        end_offset: offset,
                        torn_tail: None,
                    });
                };
                let reason = "data after the end-of-data mark".to_string();
                let torn = classify_damage(
                    buf,
                    path,
                    offset,
                    last_nonzero,
                    is_last,
                    reason,
                    max_payload_size_bytes,
                )?;
                return Ok(Scan {
                    records,
                    end_offset: offset,
                    torn_tail: Some(torn),
                });
            }
            Decoded::Bad { reason } => {
                let last_nonzero = last_nonzero_byte(buf, offset).unwrap_or(offset);
                let torn = classify_damage(
                    buf,
                    path,
                    offset,
                    last_nonzero,
                    is_last,
                    reason_text(reason),
                    max_payload_size_bytes,
                )?;
                return Ok(Scan {
                    records,
                    end_offset: offset,
                    torn_tail: Some(torn),
                });
            }
        }
    }
}

/// Where records go on after the zeros at `offset`, if the writer skipped from there:
/// `offset` is inside a page, every byte from it to the page boundary is zero, and the
/// page starts with a whole `Resume` record naming `offset`. Anything less is not a
/// skip (a torn or damaged tail, judged by the caller as any other).
fn resume_after_gap(buf: &[u8], offset: usize, max_payload_size_bytes: usize) -> Option<usize> {
    let page_bytes = PAGE_SIZE_BYTES as usize;
    if offset.is_multiple_of(page_bytes) {
        return None;
    }
    let boundary = offset.div_ceil(page_bytes) * page_bytes;
    let Decoded::Record {
        kind: RecordKind::Resume,
        payload,
        next_offset,
    } = record::decode(buf, boundary, max_payload_size_bytes)
    else {
        return None;
    };
    if payload != (offset as u64).to_le_bytes() {
        return None;
    }
    if buf.get(offset..boundary)?.iter().any(|&b| b != 0) {
        return None;
    }
    Some(next_offset)
}

fn reason_text(reason: BadRecord) -> String {
    reason.to_string()
}

/// Damage at `offset` is a torn tail only in the last segment and only when no valid
/// record follows it; otherwise acknowledged records could lie beyond it.
fn classify_damage(
    buf: &[u8],
    path: &Path,
    offset: usize,
    last_nonzero: usize,
    is_last: bool,
    reason: String,
    max_payload_size_bytes: usize,
) -> Result<TornTail, WalError> {
    if !is_last {
        return Err(WalError::Corrupt {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason: format!("{reason} in a segment that is not the last"),
        });
    }
    if let Some(valid_at) = next_valid_record(
        buf,
        offset + ALIGN_BYTES,
        last_nonzero,
        max_payload_size_bytes,
    ) {
        return Err(WalError::Corrupt {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason: format!("{reason}, and a valid record follows at offset {valid_at}"),
        });
    }
    Ok(TornTail {
        offset,
        dropped_bytes: last_nonzero + 1 - offset,
        reason,
    })
}

/// The offset of the first aligned, whole, valid record in `[from, last_nonzero]`.
fn next_valid_record(
    buf: &[u8],
    from: usize,
    last_nonzero: usize,
    max_payload_size_bytes: usize,
) -> Option<usize> {
    let mut offset = from.div_ceil(ALIGN_BYTES) * ALIGN_BYTES;
    while offset <= last_nonzero {
        let word = buf.get(offset..offset + 4)?;
        let kind_byte = buf.get(offset + 8).copied().unwrap_or(0);
        // Cheap filters first: a zero length or an unknown kind cannot start a record.
        if word != [0, 0, 0, 0] && RecordKind::from_u8(kind_byte).is_some() {
            if let Decoded::Record { .. } = record::decode(buf, offset, max_payload_size_bytes) {
                return Some(offset);
            }
        }
        offset += ALIGN_BYTES;
    }
    None
}

/// The index of the last non-zero byte at or after `from`.
pub fn last_nonzero_byte(buf: &[u8], from: usize) -> Option<usize> {
    let tail = buf.get(from..)?;
    tail.iter().rposition(|&b| b != 0).map(|i| from + i)
}

/// Overwrites `[offset, offset + len)` with zeros and makes it durable.
pub fn zero_range(file: &File, path: &Path, offset: u64, len: usize) -> Result<(), WalError> {
    const CHUNK_BYTES: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK_BYTES.min(len)];
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(CHUNK_BYTES);
        file.write_all_at(&zeros[..n], offset + done as u64)
            .map_err(|e| WalError::io(path, e))?;
        done += n;
    }
    file.sync_data().map_err(|e| WalError::io(path, e))
}
