//! openraft's state machine over the MVCC store, and the snapshot files.
//!
//! Applying an entry is one atomic engine batch holding the entry's effect, its log id and
//! (for membership entries) the membership, so a restart resumes exactly after the last
//! applied entry and openraft replays the rest from the log.
//!
//! Snapshots live in `<dir>/snapshot-<term>-<index>.snap`; only the newest is kept.
//! Building one first flushes the key-value engine, then raises the purge guard to the snapshot's
//! index: the log may drop entries only once the engine holds their effect durably.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, StorageIOError};

use crate::applied::AppliedIndex;
use crate::mvcc::snapshot::SnapshotPoint;
use crate::mvcc::{AppliedMeta, CommandResponse, CommandResult, MvccStore};
use crate::raft_types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

const SNAPSHOT_PREFIX: &str = "snapshot-";
const SNAPSHOT_SUFFIX: &str = ".snap";
const INCOMING: &str = "incoming.snap.tmp";

#[derive(Clone)]
struct SnapshotFile {
    meta: SnapshotMeta,
    path: PathBuf,
}

/// The state machine openraft drives. Clones share everything.
#[derive(Clone)]
pub struct StateMachine {
    store: MvccStore,
    dir: PathBuf,
    purge_guard: Arc<AtomicU64>,
    current: Arc<Mutex<Option<SnapshotFile>>>,
    /// The index of the last applied log entry, for waiters (a write's local apply, a
    /// linearizable read's read index; applied.rs), where openraft's metrics would
    /// clone its whole metrics struct per waiter at every change.
    applied_index: Arc<AppliedIndex>,
    /// Closes `applied_index` when the last clone of this state machine is dropped.
    _close_applied: Arc<CloseOnDrop>,
}

/// Fails the applied-index waiters when the state machine goes away (the member
/// stops), so requests waiting for an apply end at once instead of at their timeout.
struct CloseOnDrop(Arc<AppliedIndex>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("encoding into memory cannot fail")
}

fn meta_of(point: &SnapshotPoint, id_suffix: &str) -> Result<SnapshotMeta, std::io::Error> {
    let last_log_id: Option<LogId> = if point.applied.is_empty() {
        None
    } else {
        postcard::from_bytes(&point.applied).map_err(io_err)?
    };
    let last_membership: StoredMembership = if point.membership.is_empty() {
        StoredMembership::default()
    } else {
        postcard::from_bytes(&point.membership).map_err(io_err)?
    };
    let (term, index) = last_log_id.map_or((0, 0), |l| (l.leader_id.term, l.index));
    Ok(SnapshotMeta {
        last_log_id,
        last_membership,
        snapshot_id: format!("{term}-{index}-{id_suffix}"),
    })
}

impl StateMachine {
    /// `dir` holds the snapshot files; `purge_guard` is shared with the log store.
    pub fn open(
        store: MvccStore,
        dir: &Path,
        purge_guard: Arc<AtomicU64>,
    ) -> Result<StateMachine, std::io::Error> {
        std::fs::create_dir_all(dir)?;
        let _ = std::fs::remove_file(dir.join(INCOMING));
        let applied_index = Arc::new(AppliedIndex::default());
        let sm = StateMachine {
            store,
            dir: dir.to_path_buf(),
            purge_guard,
            current: Arc::new(Mutex::new(None)),
            applied_index: applied_index.clone(),
            _close_applied: Arc::new(CloseOnDrop(applied_index)),
        };
        // What the engine recovered is durable: the log may be purged up to it.
        let applied = sm.applied_log_id()?;
        sm.applied_index.advance(applied.map_or(0, |l| l.index));
        sm.purge_guard
            .store(applied.map_or(0, |l| l.index), Ordering::SeqCst);
        *sm.current.lock().unwrap_or_else(|e| e.into_inner()) = sm.find_latest_snapshot()?;
        Ok(sm)
    }

    pub fn store(&self) -> &MvccStore {
        &self.store
    }

    /// The index of the last applied log entry, to wait on.
    pub fn applied_index(&self) -> Arc<AppliedIndex> {
        self.applied_index.clone()
    }

    fn applied_log_id(&self) -> Result<Option<LogId>, std::io::Error> {
        let (applied, _) = self.store.applied_meta().map_err(io_err)?;
        match applied {
            None => Ok(None),
            Some(bytes) => postcard::from_bytes(&bytes).map_err(io_err),
        }
    }

    fn find_latest_snapshot(&self) -> Result<Option<SnapshotFile>, std::io::Error> {
        let mut newest: Option<(u64, PathBuf)> = None;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(body) = name
                .strip_prefix(SNAPSHOT_PREFIX)
                .and_then(|n| n.strip_suffix(SNAPSHOT_SUFFIX))
            else {
                continue;
            };
            let index: u64 = body
                .rsplit('-')
                .next()
                .and_then(|i| i.parse().ok())
                .unwrap_or(0);
            if newest.as_ref().is_none_or(|(n, _)| index >= *n) {
                newest = Some((index, path));
            }
        }
        let Some((_, path)) = newest else {
            return Ok(None);
        };
        let point = read_point(&mut std::fs::File::open(&path)?)?;
        Ok(Some(SnapshotFile {
            meta: meta_of(&point, "disk")?,
            path,
        }))
    }

    fn snapshot_path(&self, meta: &SnapshotMeta) -> PathBuf {
        let (term, index) = meta
            .last_log_id
            .map_or((0, 0), |l| (l.leader_id.term, l.index));
        self.dir
            .join(format!("{SNAPSHOT_PREFIX}{term}-{index}{SNAPSHOT_SUFFIX}"))
    }

    /// Makes `file` the current snapshot and removes the others.
    fn set_current(&self, file: SnapshotFile) -> Result<(), std::io::Error> {
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let is_snapshot = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(SNAPSHOT_PREFIX) && n.ends_with(SNAPSHOT_SUFFIX));
            if is_snapshot && path != file.path {
                std::fs::remove_file(&path)?;
            }
        }
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
        Ok(())
    }

    fn apply_one(&self, entry: &Entry) -> Result<CommandResult, std::io::Error> {
        let mut meta = AppliedMeta {
            applied: encode(&Some(entry.log_id)),
            membership: None,
        };
        match &entry.payload {
            EntryPayload::Blank => {
                self.store.apply_meta(&meta).map_err(io_err)?;
                Ok(Ok(CommandResponse::Applied))
            }
            EntryPayload::Membership(membership) => {
                meta.membership = Some(encode(&StoredMembership::new(
                    Some(entry.log_id),
                    membership.clone(),
                )));
                self.store.apply_meta(&meta).map_err(io_err)?;
                Ok(Ok(CommandResponse::Applied))
            }
            EntryPayload::Normal(command) => self.store.apply(command, &meta).map_err(io_err),
        }
    }
}

/// Bytes of a snapshot export written out to disk at a time, at most.
const EXPORT_WRITEBACK_CHUNK_BYTES: u64 = 8 << 20;

/// A file writer that writes each `EXPORT_WRITEBACK_CHUNK_BYTES` out to disk as it goes
/// (sync_file_range), so that the export's closing fsync has little left to do. One
/// fsync of a file of hundreds of MB holds up the log's fdatasyncs on the same file
/// system (ext4 commits the newly allocated blocks of both in one journal transaction),
/// and every request behind them waits. Not a durability step: the closing sync_all is.
struct WrittenBack<'a> {
    file: &'a mut std::fs::File,
    offset: u64,
    written_back: u64,
}

impl<'a> WrittenBack<'a> {
    fn new(file: &'a mut std::fs::File) -> WrittenBack<'a> {
        WrittenBack {
            file,
            offset: 0,
            written_back: 0,
        }
    }
}

impl std::io::Write for WrittenBack<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.offset += n as u64;
        if self.offset - self.written_back >= EXPORT_WRITEBACK_CHUNK_BYTES {
            use std::os::unix::io::AsRawFd;
            let len = self.offset - self.written_back;
            // SAFETY: sync_file_range on a valid, open descriptor; no memory is shared.
            // Best effort: a failure leaves the data to the closing sync_all.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.written_back as libc::off64_t,
                    len as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                );
            }
            self.written_back = self.offset;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Reads the point (header) of a snapshot file.
fn read_point(file: &mut std::fs::File) -> Result<SnapshotPoint, std::io::Error> {
    let mut head = [0u8; 13];
    file.read_exact(&mut head)?;
    if &head[..8] != b"RKVSNAP1" || head[8] != 1 {
        return Err(io_err("not a raftkv snapshot"));
    }
    let len = u32::from_le_bytes([head[9], head[10], head[11], head[12]]) as usize;
    if len > 64 << 20 {
        return Err(io_err("snapshot header too large"));
    }
    let mut header = vec![0u8; len];
    file.read_exact(&mut header)?;
    file.seek(SeekFrom::Start(0))?;
    postcard::from_bytes(&header).map_err(io_err)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let (applied, membership) = self
            .store
            .applied_meta()
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
        let applied = match applied {
            None => None,
            Some(bytes) => {
                postcard::from_bytes(&bytes).map_err(|e| StorageIOError::read_state_machine(&e))?
            }
        };
        let membership = match membership {
            None => StoredMembership::default(),
            Some(bytes) => {
                postcard::from_bytes(&bytes).map_err(|e| StorageIOError::read_state_machine(&e))?
            }
        };
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut results = Vec::new();
        let mut last_index = None;
        for entry in entries {
            let result = self
                .apply_one(&entry)
                .map_err(|e| StorageIOError::apply(entry.log_id, &e))?;
            results.push(result);
            last_index = Some(entry.log_id.index);
        }
        if let Some(index) = last_index {
            self.applied_index.advance(index);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            sm: self.clone(),
            point: self.store.snapshot_point().map_err(|e| e.to_string()),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.dir.join(INCOMING))
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let err = |e: std::io::Error| {
            StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), &e))
        };
        let file = snapshot.into_std().await;
        let sm = self.clone();
        let meta_owned = meta.clone();
        tokio::task::spawn_blocking(move || -> Result<(), std::io::Error> {
            file.sync_all()?;
            let mut file = file;
            file.seek(SeekFrom::Start(0))?;
            let point = sm
                .store
                .install_snapshot(std::io::BufReader::with_capacity(1 << 20, &mut file))
                .map_err(io_err)?;
            let installed = meta_of(&point, "installed")?;
            if installed.last_log_id != meta_owned.last_log_id {
                return Err(io_err(format!(
                    "snapshot holds {:?} but was announced as {:?}",
                    installed.last_log_id, meta_owned.last_log_id
                )));
            }
            sm.purge_guard.store(
                meta_owned.last_log_id.map_or(0, |l| l.index),
                Ordering::SeqCst,
            );
            sm.applied_index
                .advance(meta_owned.last_log_id.map_or(0, |l| l.index));
            let path = sm.snapshot_path(&meta_owned);
            std::fs::rename(sm.dir.join(INCOMING), &path)?;
            sm.set_current(SnapshotFile {
                meta: meta_owned,
                path,
            })
        })
        .await
        .map_err(|e| err(io_err(e)))?
        .map_err(err)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(current) = current else {
            return Ok(None);
        };
        let file = tokio::fs::File::open(&current.path)
            .await
            .map_err(|e| StorageIOError::read_snapshot(Some(current.meta.signature()), &e))?;
        Ok(Some(Snapshot {
            meta: current.meta,
            snapshot: Box::new(file),
        }))
    }
}

/// Builds a snapshot of the point captured when openraft asked for the builder.
pub struct SnapshotBuilder {
    sm: StateMachine,
    point: Result<SnapshotPoint, String>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let point = self
            .point
            .clone()
            .map_err(|e| StorageIOError::write_snapshot(None, &io_err(e)))?;
        let sm = self.sm.clone();
        let built = tokio::task::spawn_blocking(move || -> Result<SnapshotFile, std::io::Error> {
            // Everything applied so far becomes durable in the engine: the log behind the
            // snapshot may then be purged.
            sm.store.flush().map_err(io_err)?;
            let started = std::time::Instant::now();
            let tmp = sm.dir.join("building.snap.tmp");
            let mut file = std::fs::File::create(&tmp)?;
            let summary = sm
                .store
                .export_snapshot(
                    &point,
                    std::io::BufWriter::with_capacity(1 << 20, WrittenBack::new(&mut file)),
                )
                .map_err(io_err)?;
            file.sync_all()?;
            let meta = meta_of(&point, &format!("{:08x}", summary.checksum))?;
            let path = sm.snapshot_path(&meta);
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&sm.dir)?.sync_all()?;
            if let Some(last) = meta.last_log_id {
                sm.purge_guard.fetch_max(last.index, Ordering::SeqCst);
            }
            tracing::info!(
                revision = point.revision,
                size_bytes = summary.size_bytes,
                pairs = summary.pairs,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "snapshot built"
            );
            let file = SnapshotFile { meta, path };
            sm.set_current(file.clone())?;
            Ok(file)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, &io_err(e)))?
        .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let file = tokio::fs::File::open(&built.path)
            .await
            .map_err(|e| StorageIOError::read_snapshot(Some(built.meta.signature()), &e))?;
        Ok(Snapshot {
            meta: built.meta,
            snapshot: Box::new(file),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::{WrittenBack, EXPORT_WRITEBACK_CHUNK_BYTES};

    #[test]
    fn an_export_written_back_in_chunks_holds_every_byte_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("export");
        let mut file = std::fs::File::create(&path).expect("create");
        let total_bytes = (EXPORT_WRITEBACK_CHUNK_BYTES * 5 / 2) as usize;
        let data: Vec<u8> = (0..total_bytes).map(|i| (i % 251) as u8).collect();
        let mut writer = WrittenBack::new(&mut file);
        for piece in data.chunks(100_003) {
            writer.write_all(piece).expect("write");
        }
        // Written back twice, each time once a chunk had piled up since the last.
        let two_chunks = EXPORT_WRITEBACK_CHUNK_BYTES * 2;
        assert!(
            (two_chunks..two_chunks + 100_003).contains(&writer.written_back),
            "{}",
            writer.written_back
        );
        file.sync_all().expect("sync");
        let mut back = Vec::new();
        std::fs::File::open(&path)
            .expect("open")
            .read_to_end(&mut back)
            .expect("read");
        assert!(back == data, "the file differs from what was written");
    }
}
