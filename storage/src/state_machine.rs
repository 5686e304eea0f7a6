//! openraft's state machine over the MVCC store, and the snapshot files.
//!
//! Applying an entry is one atomic engine batch holding the entry's effect, its log id and
//! (for membership entries) the membership, so a restart resumes exactly after the last
//! applied entry and openraft replays the rest from the log.
//!
//! Raft snapshots are lazy. openraft asks for one every --snapshot-count entries
//! (`build_snapshot`); that only flushes the key-value engine, raises the purge guard to the
//! point's index (the log may drop entries only once the engine holds their effect
//! durably) and records the point. The key space is written out only when a follower
//! needs it (`get_current_snapshot`): one export at a time, on its own thread, into
//! `<dir>/snapshot-<term>-<index>.snap`, at the point current when it starts, never
//! below the last recorded one. Only the newest file is kept; files are dropped at start.
//! A snapshot installed from the leader is kept as this member's file.

use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, StorageIOError};

use crate::applied::AppliedIndex;
use crate::mvcc::snapshot::SnapshotPoint;
use crate::mvcc::{AppliedMeta, CommandResponse, CommandResult, MvccStore};
use crate::raft_types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::snapshot_data::{export_done, ExportDone, SnapshotData};

const SNAPSHOT_PREFIX: &str = "snapshot-";
const SNAPSHOT_SUFFIX: &str = ".snap";
const INCOMING: &str = "incoming.snap.tmp";
/// Files of this member's snapshot directory that are not whole snapshots.
const PARTIAL_SUFFIX: &str = ".tmp";

#[derive(Clone)]
struct SnapshotFile {
    meta: SnapshotMeta,
    path: PathBuf,
}

/// What this member has of Raft snapshots.
#[derive(Default)]
struct Snapshots {
    /// The newest point `build_snapshot` recorded: its effect is flushed and the purge
    /// guard stands at it. No snapshot older than it is ever handed out, as the log
    /// behind it may be gone.
    built: Option<SnapshotMeta>,
    /// The newest whole snapshot file: an export, or a snapshot installed from the leader.
    file: Option<SnapshotFile>,
    /// The export being written, if any; at most one runs.
    running: Option<RunningExport>,
}

struct RunningExport {
    meta: SnapshotMeta,
    /// The file it writes, renamed to its snapshot path once whole.
    partial: PathBuf,
    done: ExportDone,
    cancel: Arc<AtomicBool>,
}

/// What an export's thread reports once it holds its point: the point's meta and a
/// read handle on the file it is writing.
type ExportStarted = Result<(SnapshotMeta, std::fs::File, ExportDone), String>;

fn index_of(meta: &SnapshotMeta) -> u64 {
    meta.last_log_id.map_or(0, |l| l.index)
}

/// The state machine openraft drives. Clones share everything.
#[derive(Clone)]
pub struct StateMachine {
    store: MvccStore,
    dir: PathBuf,
    purge_guard: Arc<AtomicU64>,
    snapshots: Arc<Mutex<Snapshots>>,
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

/// The meta of a snapshot of `point`. Its id names the point only, so that a point
/// recorded and the export made of it later carry the same meta.
fn meta_of(point: &SnapshotPoint) -> Result<SnapshotMeta, std::io::Error> {
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
        snapshot_id: format!("{term}-{index}-r{}", point.revision),
    })
}

impl StateMachine {
    /// `dir` holds the snapshot files; `purge_guard` is shared with the log store.
    pub fn open(
        store: MvccStore,
        dir: &Path,
        purge_guard: Arc<AtomicU64>,
    ) -> Result<StateMachine, std::io::Error> {
        crate::durable::create_dir_all(dir)?;
        remove_snapshot_files(dir, None)?;
        let applied_index = Arc::new(AppliedIndex::default());
        let sm = StateMachine {
            store,
            dir: dir.to_path_buf(),
            purge_guard,
            snapshots: Arc::new(Mutex::new(Snapshots::default())),
            applied_index: applied_index.clone(),
            _close_applied: Arc::new(CloseOnDrop(applied_index)),
        };
        // What the engine recovered is durable: the log may be purged up to it.
        let applied = sm.applied_log_id()?;
        sm.applied_index.advance(applied.map_or(0, |l| l.index));
        sm.purge_guard
            .store(applied.map_or(0, |l| l.index), Ordering::SeqCst);
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

    /// Debug and test builds: the engine holds the log through `index`, so the purge
    /// guard may rise to it (ARCHITECTURE.md, invariant 3). Called after a flush or an
    /// install, before the guard rises; raft_log.rs asserts that no purge passes it.
    fn debug_assert_engine_holds(&self, index: u64) {
        if cfg!(debug_assertions) {
            let held = self.applied_log_id().ok().flatten().map_or(0, |l| l.index);
            assert!(
                held >= index,
                "the purge guard would pass the engine's durable point: {index} > {held}"
            );
        }
    }

    fn snapshots(&self) -> MutexGuard<'_, Snapshots> {
        crate::mvcc::engine::lock(&self.snapshots)
    }

    /// Records a point whose effect the engine holds durably (built or installed):
    /// nothing older is handed out from now on, and an older file is dropped.
    fn record_point(&self, meta: &SnapshotMeta) -> Result<(), std::io::Error> {
        let mut snapshots = self.snapshots();
        if snapshots
            .built
            .as_ref()
            .is_some_and(|b| index_of(b) > index_of(meta))
        {
            return Ok(());
        }
        snapshots.built = Some(meta.clone());
        if let Some(file) = snapshots
            .file
            .take_if(|f| index_of(&f.meta) < index_of(meta))
        {
            std::fs::remove_file(&file.path)?;
        }
        Ok(())
    }

    /// The snapshot to send a follower now: the newest file if it is not older than
    /// the last recorded point, else the running export if it is not, else a new export
    /// of the present. None while no point was ever recorded and no file exists.
    async fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, std::io::Error> {
        let built = {
            let snapshots = self.snapshots();
            let floor = snapshots.built.as_ref().map(index_of);
            if let Some(file) = snapshots.file.clone() {
                if floor.is_none_or(|f| index_of(&file.meta) >= f) {
                    let data = std::fs::File::open(&file.path)?;
                    return Ok(Some(Snapshot {
                        meta: file.meta,
                        snapshot: Box::new(SnapshotData::file(tokio::fs::File::from_std(data))),
                    }));
                }
            }
            let Some(built) = snapshots.built.clone() else {
                return Ok(None);
            };
            if let Some(running) = &snapshots.running {
                if index_of(&running.meta) >= index_of(&built) {
                    let file = std::fs::File::open(&running.partial)?;
                    return Ok(Some(Snapshot {
                        meta: running.meta.clone(),
                        snapshot: Box::new(SnapshotData::exporting(
                            tokio::fs::File::from_std(file),
                            running.done.clone(),
                        )),
                    }));
                }
                // A newer point was recorded since it started: its followers would
                // find the log behind it purged.
                running.cancel.store(true, Ordering::Relaxed);
            }
            built
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sm = self.clone();
        let spawned = std::thread::Builder::new()
            .name("snapshot-export".into())
            .spawn(move || sm.export_present(tx));
        let started = match spawned {
            Ok(_) => rx
                .await
                .unwrap_or_else(|_| Err("the export stopped before it started".into())),
            Err(e) => Err(e.to_string()),
        };
        // A failed export fails only its sending (a full disk must not stop the member);
        // openraft asks again after a back-off.
        let (meta, data) = match started {
            Ok((meta, file, done)) => (
                meta,
                SnapshotData::exporting(tokio::fs::File::from_std(file), done),
            ),
            Err(reason) => {
                tracing::warn!(error = %reason, "snapshot export could not start");
                (built, SnapshotData::failed(reason))
            }
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(data),
        }))
    }

    /// The body of an export's thread: holds compaction off, takes the point of this
    /// moment, reports it on `started`, writes the snapshot and makes it the current file.
    fn export_present(&self, started: tokio::sync::oneshot::Sender<ExportStarted>) {
        let pin = self.store.pin_for_export();
        let begun = (|| -> Result<_, std::io::Error> {
            let point = pin.point().map_err(io_err)?;
            let meta = meta_of(&point)?;
            let partial = snapshot_path(&self.dir, &meta).with_extension("snap.tmp");
            let file = std::fs::File::create(&partial)?;
            let reader = std::fs::File::open(&partial)?;
            Ok((point, meta, partial, file, reader))
        })();
        let (point, meta, partial, mut file, reader) = match begun {
            Ok(begun) => begun,
            Err(e) => {
                let _ = started.send(Err(e.to_string()));
                return;
            }
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let done = export_done(done_rx);
        let cancel = Arc::new(AtomicBool::new(false));
        self.snapshots().running = Some(RunningExport {
            meta: meta.clone(),
            partial: partial.clone(),
            done: done.clone(),
            cancel: cancel.clone(),
        });
        let _ = started.send(Ok((meta.clone(), reader, done)));

        let started_at = std::time::Instant::now();
        let written = (|| -> Result<_, std::io::Error> {
            let summary = pin
                .export(
                    &point,
                    std::io::BufWriter::with_capacity(1 << 20, WrittenBack::new(&mut file)),
                    &cancel,
                )
                .map_err(io_err)?;
            file.sync_all()?;
            Ok(summary)
        })();
        drop(pin);
        let path = snapshot_path(&self.dir, &meta);
        let mut snapshots = self.snapshots();
        // Renamed under the lock: a reader that finds this export still running opens
        // its partial file, which must then still be there.
        let written = written.and_then(|summary| {
            std::fs::rename(&partial, &path)?;
            Ok((summary, path.clone()))
        });
        if snapshots
            .running
            .as_ref()
            .is_some_and(|r| r.partial == partial)
        {
            snapshots.running = None;
        }
        let ended = match written {
            Ok((summary, path)) => {
                tracing::info!(
                    index = index_of(&meta),
                    revision = point.revision,
                    size_bytes = summary.size_bytes,
                    pairs = summary.pairs,
                    elapsed_ms = started_at.elapsed().as_millis() as u64,
                    "snapshot exported for a follower"
                );
                let file = SnapshotFile {
                    meta: meta.clone(),
                    path: path.clone(),
                };
                let newer = snapshots
                    .file
                    .as_ref()
                    .is_none_or(|f| index_of(&f.meta) <= index_of(&meta));
                if newer {
                    snapshots.file = Some(file);
                    remove_snapshot_files(&self.dir, Some(&path)).map_err(|e| e.to_string())
                } else {
                    std::fs::remove_file(&path).map_err(|e| e.to_string())
                }
            }
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                tracing::warn!(index = index_of(&meta), error = %e, "snapshot export failed");
                Err(e.to_string())
            }
        };
        drop(snapshots);
        // No fsync of the directory after the rename: snapshot files are not kept
        // across restarts (`open` removes them), so nothing relies on the name lasting.
        let _ = done_tx.send(ended);
    }

    fn apply_one(&self, entry: &Entry) -> Result<CommandResult, std::io::Error> {
        let mut meta = AppliedMeta {
            index: entry.log_id.index,
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

/// `<dir>/snapshot-<term>-<index>.snap`.
fn snapshot_path(dir: &Path, meta: &SnapshotMeta) -> PathBuf {
    let (term, index) = meta
        .last_log_id
        .map_or((0, 0), |l| (l.leader_id.term, l.index));
    dir.join(format!("{SNAPSHOT_PREFIX}{term}-{index}{SNAPSHOT_SUFFIX}"))
}

/// Removes the snapshot files in `dir` (whole or partial) except `keep`, and the
/// partial files of exports that are not running (none at start).
fn remove_snapshot_files(dir: &Path, keep: Option<&Path>) -> Result<(), std::io::Error> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let whole = name.starts_with(SNAPSHOT_PREFIX) && name.ends_with(SNAPSHOT_SUFFIX);
        let partial = keep.is_none() && name.ends_with(PARTIAL_SUFFIX);
        if (whole || partial) && Some(path.as_path()) != keep {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
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
            // Entries come in log order, each after what was applied before it: the
            // applied index never goes back (ARCHITECTURE.md, invariant 4).
            debug_assert!(
                entry.log_id.index > last_index.unwrap_or(self.applied_index.get())
                    || self.applied_index.get() == 0,
                "entry {} applied at or below the applied index {}",
                entry.log_id.index,
                last_index.unwrap_or(self.applied_index.get())
            );
            let result = self
                .apply_one(&entry)
                .map_err(|e| StorageIOError::apply(entry.log_id, &e))?;
            results.push(result);
            last_index = Some(entry.log_id.index);
        }
        if let Some(index) = last_index {
            self.applied_index.advance(index);
            debug_assert!(
                self.applied_index.get() >= index,
                "the applied index went back"
            );
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            sm: self.clone(),
            point: self.store.snapshot_point().map_err(|e| e.to_string()),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.dir.join(INCOMING))
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(SnapshotData::file(file)))
    }

    /// Loads a snapshot from the leader into the engine. The file is not kept: should
    /// this member lead and a follower need a snapshot, it exports its own.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError> {
        let err = |e: std::io::Error| {
            StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), &e))
        };
        let file = snapshot.into_std().await.map_err(err)?;
        let sm = self.clone();
        let meta_owned = meta.clone();
        tokio::task::spawn_blocking(move || -> Result<(), std::io::Error> {
            let mut file = file;
            file.seek(SeekFrom::Start(0))?;
            let point = sm
                .store
                .install_snapshot(std::io::BufReader::with_capacity(1 << 20, &mut file))
                .map_err(io_err)?;
            let installed = meta_of(&point)?;
            if installed.last_log_id != meta_owned.last_log_id {
                return Err(io_err(format!(
                    "snapshot holds {:?} but was announced as {:?}",
                    installed.last_log_id, meta_owned.last_log_id
                )));
            }
            // The install switched the engine over durably: like a built point.
            sm.record_point(&meta_owned)?;
            sm.debug_assert_engine_holds(index_of(&meta_owned));
            sm.purge_guard
                .fetch_max(index_of(&meta_owned), Ordering::SeqCst);
            sm.applied_index.advance(index_of(&meta_owned));
            match std::fs::remove_file(sm.dir.join(INCOMING)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })
        .await
        .map_err(|e| err(io_err(e)))?
        .map_err(err)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.current_snapshot()
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}

/// Records the point captured when openraft asked for the builder (see the module
/// comment: the key space is exported only when a follower needs it).
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
        let meta = tokio::task::spawn_blocking(move || -> Result<SnapshotMeta, std::io::Error> {
            // Everything applied so far becomes durable in the engine: the log behind the
            // point may then be purged.
            let started = std::time::Instant::now();
            sm.store.flush().map_err(io_err)?;
            let meta = meta_of(&point)?;
            sm.record_point(&meta)?;
            sm.debug_assert_engine_holds(index_of(&meta));
            sm.purge_guard.fetch_max(index_of(&meta), Ordering::SeqCst);
            tracing::info!(
                index = index_of(&meta),
                revision = point.revision,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "snapshot point recorded (exported when a follower needs it)"
            );
            Ok(meta)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, &io_err(e)))?
        .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotData::point_only()),
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
