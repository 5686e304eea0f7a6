//! The log's single writer thread: group commit.
//!
//! Requests queue in a bounded channel. The thread takes the first one, then every
//! request already waiting (up to a batch limit), writes them with one pwrite per
//! segment touched, and covers them all with one fdatasync. Whatever arrives while that
//! fdatasync runs forms the next batch. Completions run after the data is durable.
//!
//! Two things keep each fdatasync to as few pages as the data needs (on flash, the pages
//! written are the wear and most of the cost at low load):
//! - A request that asks for no sync (the committed log id) is held back (`HeldBack`)
//!   and goes with the next request submitted, in order, instead of dirtying a page of
//!   its own; it does not even wake this thread.
//! - A synced batch that would straddle a page boundary but fits in fewer pages from the
//!   next boundary starts there, behind a `Resume` record; the bytes skipped stay zeros.
//!
//! It never reorders requests, never acknowledges before fdatasync returns, and after
//! any write or sync error it fails every later request: after a failed fdatasync the
//! page cache can no longer be trusted, so only a restart (which rereads the disk) may
//! continue.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::record::{self, RecordKind, PAGE_SIZE_BYTES};
use super::segment;
use super::{HeaderState, WalError, WalOptions};

/// Called once per request with the outcome, after its records are durable (or failed).
pub type Completion = Box<dyn FnOnce(io::Result<()>) + Send + 'static>;

/// Records to write, in order, and what to do when they are on disk.
pub struct Request {
    pub records: Vec<(RecordKind, Vec<u8>)>,
    /// Must the records be fdatasync'd before `done` runs? Appends and votes: yes.
    pub sync: bool,
    pub done: Completion,
}

pub(super) struct ClosedSegment {
    pub seq: u64,
    pub path: PathBuf,
    pub max_entry_index: Option<u64>,
}

/// Unsynced requests held back at most: past this many they are sent on their own
/// (they ride on a later fdatasync all the same).
const HELD_BACK_MAX_REQUESTS: usize = 64;

/// Unsynced requests waiting for the next request submitted. `Wal::submit` puts them
/// in front of it, so the order of requests is the order they were submitted in; the
/// writer writes whatever is left when the log closes.
#[derive(Default)]
pub struct HeldBack {
    requests: Mutex<Vec<Request>>,
}

impl HeldBack {
    /// Holds `request` back if it needs no sync and there is room; gives it back
    /// otherwise, with everything held back before it in front.
    pub fn hold_or_merge(&self, request: Request) -> Option<Request> {
        let mut held = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        if !request.sync && held.len() < HELD_BACK_MAX_REQUESTS {
            held.push(request);
            return None;
        }
        if held.is_empty() {
            // The common case on the write path: nothing to merge, nothing allocated.
            return Some(request);
        }
        held.push(request);
        Some(merge(std::mem::take(&mut *held)))
    }

    /// Everything held back, as one request.
    fn take(&self) -> Option<Request> {
        let held = std::mem::take(&mut *self.requests.lock().unwrap_or_else(|e| e.into_inner()));
        (!held.is_empty()).then(|| merge(held))
    }
}

/// One request doing what `requests` ask, in order: their records, a sync if any asks
/// for one, and each completion.
fn merge(mut requests: Vec<Request>) -> Request {
    if requests.len() == 1 {
        return requests.remove(0);
    }
    let sync = requests.iter().any(|r| r.sync);
    let mut records = Vec::with_capacity(requests.iter().map(|r| r.records.len()).sum());
    let mut dones = Vec::with_capacity(requests.len());
    for request in requests {
        records.extend(request.records);
        dones.push(request.done);
    }
    Request {
        records,
        sync,
        done: Box::new(move |result: io::Result<()>| {
            for done in dones {
                let copy = match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                };
                done(copy);
            }
        }),
    }
}

pub(super) struct Writer {
    pub dir: PathBuf,
    pub options: WalOptions,
    pub seq: u64,
    pub path: PathBuf,
    pub file: File,
    pub offset: u64,
    pub max_entry_index: Option<u64>,
    pub closed: Vec<ClosedSegment>,
    pub header: HeaderState,
    pub failed: Option<String>,
    /// Bytes were written since the last fdatasync: the page at `offset` is dirty, so
    /// skipping to the next page would save nothing.
    pub dirty: bool,
    /// Deletes purged segments off this thread.
    pub deleter: segment::SegmentDeleter,
}

impl Writer {
    pub fn run(mut self, mut rx: mpsc::Receiver<Request>, held_back: Arc<HeldBack>) {
        let mut batch: Vec<Request> = Vec::with_capacity(self.options.batch_max_requests);
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
        while let Some(first) = rx.blocking_recv() {
            let mut batch_bytes = request_size_bytes(&first);
            batch.push(first);
            while batch.len() < self.options.batch_max_requests
                && batch_bytes < self.options.batch_max_bytes
            {
                match rx.try_recv() {
                    Ok(next) => {
                        batch_bytes += request_size_bytes(&next);
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            self.write_and_complete(&mut batch, batch_bytes, &mut buf);
            if buf.capacity() > 4 * self.options.batch_max_bytes {
                buf = Vec::with_capacity(1 << 20);
            }
        }
        // Every sender is gone: the log is closing. Write what no request took along
        // and leave the data durable.
        if let Some(request) = held_back.take() {
            let batch_bytes = request_size_bytes(&request);
            batch.push(request);
            self.write_and_complete(&mut batch, batch_bytes, &mut buf);
        }
        if self.failed.is_none() {
            if let Err(e) = self.file.sync_data() {
                tracing::error!(error = %e, "wal: final sync failed");
            }
        }
    }

    /// Writes `batch`, whose records frame to `batch_bytes` (one fdatasync if any
    /// request asks for it), then completes and empties it.
    fn write_and_complete(
        &mut self,
        batch: &mut Vec<Request>,
        batch_bytes: usize,
        buf: &mut Vec<u8>,
    ) {
        let outcome = match &self.failed {
            Some(reason) => Err(reason.clone()),
            None => self
                .write_batch(batch, batch_bytes, buf)
                .map_err(|e| e.to_string()),
        };
        if let Err(reason) = &outcome {
            if self.failed.is_none() {
                tracing::error!(error = %reason, "wal: write failed; the log refuses all further writes until restart");
                self.failed = Some(reason.clone());
            }
        }
        for request in batch.drain(..) {
            let result = match &outcome {
                Ok(()) => Ok(()),
                Err(reason) => Err(io::Error::other(reason.clone())),
            };
            (request.done)(result);
        }
    }

    fn write_batch(
        &mut self,
        batch: &[Request],
        batch_bytes: usize,
        buf: &mut Vec<u8>,
    ) -> Result<(), WalError> {
        buf.clear();
        debug_assert_eq!(
            batch_bytes,
            batch.iter().map(request_size_bytes).sum::<usize>()
        );
        let sync = batch.iter().any(|r| r.sync);
        if sync {
            self.skip_to_page_if_fewer(batch_bytes as u64, buf);
        }
        let mut purge_upto: Option<u64> = None;
        for request in batch {
            for (kind, payload) in &request.records {
                let size = record::framed_size_bytes(payload.len()) as u64;
                if self.offset + buf.len() as u64 + size > self.options.segment_size_bytes {
                    self.write_buf(buf)?;
                    self.rollover()?;
                }
                record::encode_into(buf, *kind, payload);
                self.track(*kind, payload, &mut purge_upto);
            }
        }
        crate::failpoint::hit("wal-before-write");
        self.write_buf(buf)?;
        crate::failpoint::hit("wal-after-write");
        if sync {
            self.timed_sync(batch.len())?;
            crate::failpoint::hit("wal-after-sync");
        }
        if let Some(upto) = purge_upto {
            if !sync {
                self.file
                    .sync_data()
                    .map_err(|e| WalError::io(&self.path, e))?;
                self.dirty = false;
            }
            self.delete_purged_segments(upto);
        }
        Ok(())
    }

    /// Starts the batch at the next page boundary, behind a `Resume` record, when that
    /// makes the coming fdatasync write fewer pages: the page at `offset` is clean (the
    /// last fdatasync wrote it) and the batch would cross into a page it fits without.
    /// The skipped bytes stay the zeros the segment was created with.
    fn skip_to_page_if_fewer(&mut self, batch_bytes: u64, buf: &mut Vec<u8>) {
        debug_assert!(buf.is_empty());
        let in_page = self.offset % PAGE_SIZE_BYTES;
        if self.dirty || in_page == 0 {
            return;
        }
        let resume_bytes = record::framed_size_bytes(8) as u64;
        let pages_here = (in_page + batch_bytes).div_ceil(PAGE_SIZE_BYTES);
        let pages_skipped = (resume_bytes + batch_bytes).div_ceil(PAGE_SIZE_BYTES);
        let boundary = self.offset - in_page + PAGE_SIZE_BYTES;
        if pages_skipped >= pages_here
            || boundary + resume_bytes + batch_bytes > self.options.segment_size_bytes
        {
            return;
        }
        let gap_start = self.offset;
        self.offset = boundary;
        record::encode_into(buf, RecordKind::Resume, &gap_start.to_le_bytes());
    }

    /// Remembers what a new segment's header must repeat.
    fn track(&mut self, kind: RecordKind, payload: &[u8], purge_upto: &mut Option<u64>) {
        match kind {
            RecordKind::Entry => {
                let index = leading_u64(payload);
                self.max_entry_index = Some(self.max_entry_index.map_or(index, |m| m.max(index)));
            }
            RecordKind::Vote => self.header.vote = Some(payload.to_vec()),
            RecordKind::Committed => self.header.committed = Some(payload.to_vec()),
            RecordKind::Purge => {
                self.header.purge = Some(payload.to_vec());
                *purge_upto = Some(leading_u64(payload));
            }
            RecordKind::Truncate | RecordKind::SegmentHeader | RecordKind::Resume => {}
        }
    }

    fn write_buf(&mut self, buf: &mut Vec<u8>) -> Result<(), WalError> {
        if buf.is_empty() {
            return Ok(());
        }
        self.file
            .write_all_at(buf, self.offset)
            .map_err(|e| WalError::io(&self.path, e))?;
        self.offset += buf.len() as u64;
        self.dirty = true;
        buf.clear();
        Ok(())
    }

    /// fdatasync of the active segment, timed for /metrics and warned about when slow.
    fn timed_sync(&mut self, requests: usize) -> Result<(), WalError> {
        let started = std::time::Instant::now();
        crate::failpoint::fsync_delay();
        self.file
            .sync_data()
            .map_err(|e| WalError::io(&self.path, e))?;
        self.dirty = false;
        let elapsed = started.elapsed();
        if crate::stats::WAL_FSYNC.observe_slow(elapsed, crate::stats::SLOW_FSYNC_WARN) {
            tracing::warn!(
                took_ms = elapsed.as_millis() as u64,
                expected_ms = crate::stats::SLOW_FSYNC_WARN.as_millis() as u64,
                requests,
                segment = %self.path.display(),
                "wal: slow fdatasync"
            );
        }
        Ok(())
    }

    /// Seals the active segment (durably) and starts the next one with a header record.
    fn rollover(&mut self) -> Result<(), WalError> {
        self.file
            .sync_data()
            .map_err(|e| WalError::io(&self.path, e))?;
        let next_seq = self.seq + 1;
        let file = segment::create_segment(&self.dir, next_seq, self.options.segment_size_bytes)?;
        let previous = std::mem::replace(&mut self.file, file);
        drop(previous);
        self.closed.push(ClosedSegment {
            seq: self.seq,
            path: self.path.clone(),
            max_entry_index: self.max_entry_index.take(),
        });
        self.seq = next_seq;
        self.path = segment::segment_path(&self.dir, next_seq);
        self.offset = 0;
        let mut header = Vec::new();
        record::encode_into(
            &mut header,
            RecordKind::SegmentHeader,
            &self.header.encode(),
        );
        self.write_buf(&mut header)?;
        tracing::debug!(seq = next_seq, "wal: started a new segment");
        Ok(())
    }

    /// Hands sealed segments whose entries are all purged to the deleter (their files go
    /// on another thread). The active one stays.
    fn delete_purged_segments(&mut self, upto: u64) {
        let keep_from = self
            .closed
            .iter()
            .position(|s| s.max_entry_index.is_some_and(|m| m > upto))
            .unwrap_or(self.closed.len());
        if keep_from == 0 {
            return;
        }
        let paths = self
            .closed
            .drain(..keep_from)
            .map(|segment| {
                tracing::debug!(seq = segment.seq, upto, "wal: a segment is wholly purged");
                segment.path
            })
            .collect();
        self.deleter.delete(paths);
    }
}

fn request_size_bytes(request: &Request) -> usize {
    request
        .records
        .iter()
        .map(|(_, p)| record::framed_size_bytes(p.len()))
        .sum()
}

/// The u64 LE that starts Entry and Purge payloads (0 if the payload is too short,
/// which `Wal::submit` rules out).
pub(super) fn leading_u64(payload: &[u8]) -> u64 {
    payload
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_le_bytes)
}
