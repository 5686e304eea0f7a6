//! The write-ahead log: raftkv's source of truth on disk.
//!
//! Owns the segment files under one directory, replays them on open (cutting a torn
//! tail, refusing real corruption) and runs the group-commit writer thread. It knows
//! record kinds but not what an entry means: the Raft log store (`raft_log.rs`) encodes
//! and decodes openraft's types.
//!
//! Layout: `record.rs` (framing), `segment.rs` (files, scan, repair), `writer.rs` (the
//! thread). It must never acknowledge a record before fdatasync returned for it, and
//! never rewrite a byte of a live record.

pub mod record;
pub mod segment;
mod writer;

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub use record::RecordKind;
use writer::HeldBack;
pub use writer::{Completion, Request};

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("wal: {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("wal: corrupt log: {path} at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("wal: {dir} is locked by another process (is another raftkv using this data dir?)")]
    Locked { dir: PathBuf },
    #[error("wal: record of {size_bytes} bytes is larger than the limit of {limit_bytes}")]
    RecordTooLarge {
        size_bytes: usize,
        limit_bytes: usize,
    },
    #[error("wal: the log is closed")]
    Closed,
}

impl WalError {
    pub fn io(path: &Path, source: std::io::Error) -> WalError {
        WalError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Limits of the log. Every one is a bound on memory, latency or disk.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Size of each preallocated segment file.
    pub segment_size_bytes: u64,
    /// Largest record payload; must fit a segment with room to spare.
    pub max_record_size_bytes: usize,
    /// A batch stops taking requests past this many bytes...
    pub batch_max_bytes: usize,
    /// ...or this many requests.
    pub batch_max_requests: usize,
    /// Requests waiting for the writer; submitters wait when it is full.
    pub queue_capacity: usize,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size_bytes: 64 << 20,
            max_record_size_bytes: 16 << 20,
            batch_max_bytes: 8 << 20,
            batch_max_requests: 4096,
            queue_capacity: 8192,
        }
    }
}

/// The state each segment's header repeats, so that older segments can be deleted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct HeaderState {
    pub vote: Option<Vec<u8>>,
    pub committed: Option<Vec<u8>>,
    pub purge: Option<Vec<u8>>,
}

impl HeaderState {
    fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("encoding a header into memory cannot fail")
    }
}

/// What `Wal::open` found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OpenReport {
    pub segments: usize,
    pub records: usize,
    /// Set when a torn tail was cut: (segment, offset, dropped bytes).
    pub torn_tail: Option<(PathBuf, u64, usize)>,
}

/// An open log. Dropping it closes the writer after the queued requests are written.
pub struct Wal {
    tx: Option<mpsc::Sender<Request>>,
    /// Unsynced requests waiting to go with the next one (writer.rs).
    held_back: Arc<HeldBack>,
    thread: Option<JoinHandle<()>>,
    max_record_size_bytes: usize,
    _lock: File,
}

impl Wal {
    /// Opens (or creates) the log in `dir`, calling `visit` with every record in order.
    /// Segment headers are expanded into the Vote, Committed and Purge records they
    /// repeat. `visit` may refuse a record (a gap in the entries, say): that is
    /// corruption and open fails naming the place.
    pub fn open(
        dir: &Path,
        options: WalOptions,
        mut visit: impl FnMut(RecordKind, &[u8]) -> Result<(), String>,
    ) -> Result<(Wal, OpenReport), WalError> {
        assert!(options.max_record_size_bytes as u64 * 2 <= options.segment_size_bytes);
        crate::durable::create_dir_all(dir).map_err(|e| WalError::io(dir, e))?;
        let lock = lock_dir(dir)?;
        let mut segments = segment::list_segments(dir)?;
        if segments.is_empty() {
            segments.push(create_first_segment(dir, &options)?);
        }
        let mut report = OpenReport::default();
        let mut closed = Vec::new();
        let mut header = HeaderState::default();
        let mut active = None;
        let count = segments.len();
        for (i, (seq, path)) in segments.into_iter().enumerate() {
            let is_last = i + 1 == count;
            let buf = std::fs::read(&path).map_err(|e| WalError::io(&path, e))?;
            let scan = segment::scan(&buf, &path, is_last, options.max_record_size_bytes)?;
            let max_entry_index = replay(&scan, &path, &mut header, &mut visit)?;
            report.records += scan.records.len();
            report.segments += 1;
            if is_last {
                let file = open_active(&path, buf.len(), &scan, &options, &mut report)?;
                active = Some((seq, path, file, scan.end_offset as u64, max_entry_index));
            } else {
                closed.push(writer::ClosedSegment {
                    seq,
                    path,
                    max_entry_index,
                });
            }
        }
        let (seq, path, file, offset, max_entry_index) =
            active.expect("the last segment is active");
        let writer = writer::Writer {
            dir: dir.to_path_buf(),
            options: options.clone(),
            seq,
            path,
            file,
            offset,
            max_entry_index,
            closed,
            header,
            failed: None,
            dirty: true,
            deleter: segment::SegmentDeleter::start(dir)?,
        };
        let (tx, rx) = mpsc::channel(options.queue_capacity);
        let held_back = Arc::new(HeldBack::default());
        let writer_held_back = held_back.clone();
        let thread = std::thread::Builder::new()
            .name("raftkv-wal".into())
            .spawn(move || writer.run(rx, writer_held_back))
            .map_err(|e| WalError::io(dir, e))?;
        Ok((
            Wal {
                tx: Some(tx),
                held_back,
                thread: Some(thread),
                max_record_size_bytes: options.max_record_size_bytes,
                _lock: lock,
            },
            report,
        ))
    }

    fn check(&self, request: &Request) -> Result<(), WalError> {
        for (kind, payload) in &request.records {
            if payload.len() > self.max_record_size_bytes {
                return Err(WalError::RecordTooLarge {
                    size_bytes: payload.len(),
                    limit_bytes: self.max_record_size_bytes,
                });
            }
            let needs_index = matches!(
                kind,
                RecordKind::Entry | RecordKind::Purge | RecordKind::Truncate
            );
            assert!(
                !payload.is_empty() && (!needs_index || payload.len() >= 8),
                "{kind:?} record payload too short"
            );
            assert!(
                !matches!(kind, RecordKind::Resume | RecordKind::SegmentHeader),
                "{kind:?} records are the log's own framing"
            );
        }
        Ok(())
    }

    /// Queues a request; waits only while the queue is full. A request that needs no
    /// sync is held back and goes with the next one (or is written at close).
    pub async fn submit(&self, request: Request) -> Result<(), WalError> {
        self.check(&request)?;
        let tx = self.tx.as_ref().ok_or(WalError::Closed)?;
        let Some(request) = self.held_back.hold_or_merge(request) else {
            return Ok(());
        };
        tx.send(request).await.map_err(|refused| closed(refused.0))
    }

    /// `submit` for threads outside an async runtime.
    pub fn submit_blocking(&self, request: Request) -> Result<(), WalError> {
        self.check(&request)?;
        let tx = self.tx.as_ref().ok_or(WalError::Closed)?;
        let Some(request) = self.held_back.hold_or_merge(request) else {
            return Ok(());
        };
        tx.blocking_send(request)
            .map_err(|refused| closed(refused.0))
    }
}

/// The writer is gone (its thread ended): `request` will never be written. Its
/// completions learn it, those of the held-back requests merged into it among them
/// (their `submit` returned Ok long ago, and their callers still wait).
fn closed(request: Request) -> WalError {
    (request.done)(Err(std::io::Error::other("the log's writer has stopped")));
    WalError::Closed
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Takes an exclusive advisory lock on `dir/LOCK` for the life of the returned file.
fn lock_dir(dir: &Path) -> Result<File, WalError> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| WalError::io(&path, e))?;
    // SAFETY: flock on a valid, open file descriptor.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(WalError::Locked {
            dir: dir.to_path_buf(),
        });
    }
    Ok(file)
}

/// Creates segment 1 of a new log, holding an empty header, durably.
fn create_first_segment(dir: &Path, options: &WalOptions) -> Result<(u64, PathBuf), WalError> {
    use std::os::unix::fs::FileExt;
    let file = segment::create_segment(dir, 1, options.segment_size_bytes)?;
    let mut header = Vec::new();
    record::encode_into(
        &mut header,
        RecordKind::SegmentHeader,
        &HeaderState::default().encode(),
    );
    let path = segment::segment_path(dir, 1);
    file.write_all_at(&header, 0)
        .map_err(|e| WalError::io(&path, e))?;
    file.sync_data().map_err(|e| WalError::io(&path, e))?;
    Ok((1, path))
}

/// Hands one segment's records to `visit` in order, a segment header as the Vote,
/// Committed and Purge records it repeats, keeping `header` current. The highest entry
/// index the segment holds.
fn replay(
    scan: &segment::Scan<'_>,
    path: &Path,
    header: &mut HeaderState,
    visit: &mut impl FnMut(RecordKind, &[u8]) -> Result<(), String>,
) -> Result<Option<u64>, WalError> {
    let mut max_entry_index = None;
    for rec in &scan.records {
        let corrupt = |reason: String| WalError::Corrupt {
            path: path.to_path_buf(),
            offset: rec.offset as u64,
            reason,
        };
        if rec.kind == RecordKind::SegmentHeader {
            let state: HeaderState = postcard::from_bytes(rec.payload)
                .map_err(|e| corrupt(format!("undecodable segment header: {e}")))?;
            for (kind, payload) in [
                (RecordKind::Vote, &state.vote),
                (RecordKind::Committed, &state.committed),
                (RecordKind::Purge, &state.purge),
            ] {
                if let Some(payload) = payload {
                    visit(kind, payload).map_err(corrupt)?;
                }
            }
            *header = state;
            continue;
        }
        let needs_index = matches!(
            rec.kind,
            RecordKind::Entry | RecordKind::Purge | RecordKind::Truncate
        );
        if needs_index && rec.payload.len() < 8 {
            return Err(corrupt("record too short for its kind".into()));
        }
        match rec.kind {
            RecordKind::Entry => {
                let index = writer::leading_u64(rec.payload);
                max_entry_index = Some(max_entry_index.map_or(index, |m: u64| m.max(index)));
            }
            RecordKind::Vote => header.vote = Some(rec.payload.to_vec()),
            RecordKind::Committed => header.committed = Some(rec.payload.to_vec()),
            RecordKind::Purge => header.purge = Some(rec.payload.to_vec()),
            _ => {}
        }
        visit(rec.kind, rec.payload).map_err(corrupt)?;
    }
    Ok(max_entry_index)
}

/// Opens the last segment for appending: a torn tail is zeroed (and reported), and a
/// shortened file gets its full size back, so that appends never change its size.
fn open_active(
    path: &Path,
    len_bytes: usize,
    scan: &segment::Scan<'_>,
    options: &WalOptions,
    report: &mut OpenReport,
) -> Result<File, WalError> {
    let file = segment::open_segment(path)?;
    if let Some(torn) = &scan.torn_tail {
        tracing::warn!(
            segment = %path.display(),
            offset = torn.offset,
            dropped_bytes = torn.dropped_bytes,
            reason = %torn.reason,
            "wal: cut a torn tail left by a crash mid-write; the dropped bytes were never acknowledged"
        );
        segment::zero_range(&file, path, torn.offset as u64, torn.dropped_bytes)?;
        report.torn_tail = Some((path.to_path_buf(), torn.offset as u64, torn.dropped_bytes));
    }
    if (len_bytes as u64) < options.segment_size_bytes {
        segment::preallocate(&file, options.segment_size_bytes)
            .map_err(|e| WalError::io(path, e))?;
        file.sync_all().map_err(|e| WalError::io(path, e))?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A request of one Committed record whose completion records its outcome.
    fn request(sync: bool, outcomes: &Arc<Mutex<Vec<bool>>>) -> Request {
        let outcomes = outcomes.clone();
        Request {
            records: vec![(RecordKind::Committed, 1u64.to_le_bytes().to_vec())],
            sync,
            done: Box::new(move |result| {
                outcomes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(result.is_ok())
            }),
        }
    }

    #[tokio::test]
    async fn a_stopped_writer_fails_the_held_back_requests_too() {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = WalOptions {
            segment_size_bytes: 1 << 20,
            max_record_size_bytes: 1 << 16,
            ..WalOptions::default()
        };
        let (mut wal, _) = Wal::open(dir.path(), options, |_, _| Ok(())).expect("open");
        // The writer's thread ended (a panic would do this): its queue is closed.
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        wal.tx = Some(tx);
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        wal.submit(request(false, &outcomes))
            .await
            .expect("held back, not sent yet");
        let refused = wal.submit(request(true, &outcomes)).await;
        assert!(matches!(refused, Err(WalError::Closed)), "{refused:?}");
        let outcomes = outcomes.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(outcomes, vec![false, false], "both completions ran, failed");
    }
}
