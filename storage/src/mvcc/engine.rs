//! The ordered key-value engine under the MVCC key space: LSM trees (lsm-tree, the
//! engine inside fjall), behind the handful of calls the store makes — point get,
//! ordered range scans both ways, atomic batches, durable flush, and whole-tree
//! rotation for snapshot install. This is the only file that names the engine.
//!
//! Why an LSM and not sled 0.34 (docs/decisions.md, "not sled"): dropping history
//! is a stream of deletes, and once the key space outgrows sled's page cache its
//! deletes stall writers for seconds; an LSM writes a delete as one small tombstone and
//! reclaims space in background merges.
//!
//! Why lsm-tree without fjall's journal: the Raft log already is the durable record of
//! every write, so a second write-ahead log only doubles the bytes written, and fjall
//! fsyncs that journal under the lock every write takes (docs/decisions.md, "without
//! a journal"). Here a write goes to an in-memory table only; a background thread per
//! tree writes full memtables out as sorted files and merges them. After a crash the
//! tree holds a prefix of the applied batches (memtables are rotated between batches
//! and written out in order), and Raft replays the rest from its log: `flush` is what
//! makes applied state durable before the log behind it may be purged.
//!
//! This module must never fsync on a write: `apply_batch` touches memory only, and
//! waits only when `MAX_SEALED_MEMTABLES` are queued for writing (back-pressure on a
//! disk that cannot keep up, logged).

use std::collections::HashMap;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lsm_tree::config::{
    BlockSizePolicy, BloomConstructionPolicy, CompressionPolicy, FilterPolicy, FilterPolicyEntry,
    PartitioningPolicy, PinningPolicy, RestartIntervalPolicy,
};
use lsm_tree::{AbstractTree, AnyTree, Guard, SequenceNumberCounter};

pub use lsm_tree::Error as EngineError;
/// Keys and values as the engine returns them; they dereference to `[u8]`.
pub type Slice = lsm_tree::Slice;

/// The file naming the current data tree, replaced atomically on a snapshot install.
const CURRENT_FILE: &str = "CURRENT";
const TREES_DIR: &str = "trees";
const FIRST_TREE: &str = "mvcc-0";
/// Full memtables waiting to be written out before writers wait for the disk.
const MAX_SEALED_MEMTABLES: usize = 4;
/// Runs in level 0 before memtables wait to be written out until merges catch up;
/// well under the 255 lsm-tree can record (`Worker::wait_for_merges`).
const MAX_L0_RUNS: usize = 64;
/// How often a writer or flusher held back by back-pressure checks again, at least.
const BACK_PRESSURE_RECHECK_MS: u64 = 100;
/// How often a tree's worker looks for work when nobody signals it.
const WORKER_TICK_MS: u64 = 1_000;
/// After a failed flush or merge, the worker waits this long before trying again.
const WORKER_RETRY_MS: u64 = 1_000;
/// Sorted files are cut at this size: the last file of a merge is finished just before
/// the merge result is installed, so smaller files keep that step short.
const TABLE_TARGET_SIZE_BYTES: u64 = 32 << 20;

/// Engine limits and tuning.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Block cache shared by every tree.
    pub cache_size_bytes: u64,
    /// A tree's in-memory write buffer before it is written out as a sorted file.
    pub memtable_size_bytes: u64,
}

/// The database: a folder of trees and the name of the current one.
#[derive(Clone)]
pub struct Db(Arc<DbInner>);

struct DbInner {
    dir: PathBuf,
    cache: Arc<lsm_tree::Cache>,
    descriptors: Arc<lsm_tree::DescriptorTable>,
    options: EngineOptions,
    /// Every open tree, by name, so that `flush` and `size_on_disk_bytes` see them all.
    open: Mutex<HashMap<String, Tree>>,
}

/// One ordered tree with its own background worker.
#[derive(Clone)]
pub struct Tree(Arc<TreeInner>);

struct TreeInner {
    name: String,
    dir: PathBuf,
    lsm: AnyTree,
    /// Sequence numbers for batches (and lsm-tree's own version records).
    seqno: SequenceNumberCounter,
    /// Readers see every write with a sequence number below this: every finished batch
    /// and nothing of one in progress.
    read_seqno: Arc<AtomicU64>,
    /// One batch at a time, so that `read_seqno` never uncovers half of a batch. Holds
    /// the deferred pairs (`Batch::insert_deferred`) not yet in a memtable.
    write_lock: Mutex<Deferred>,
    memtable_size_bytes: u64,
    worker: Arc<Worker>,
    /// The flusher and the merger.
    worker_threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// What a tree's two background threads share with the writers: the flusher writes
/// out sealed memtables, the merger merges sorted files. Apart, a long merge never
/// keeps memtables waiting (writers would then wait on back-pressure).
struct Worker {
    lsm: AnyTree,
    read_seqno: Arc<AtomicU64>,
    strategy: Arc<dyn lsm_tree::compaction::CompactionStrategy + Send + Sync>,
    state: Mutex<WorkerState>,
    /// Signalled when there is work for either thread, or when the tree closes.
    wake: Condvar,
    /// Signalled after each round of work, for writers waiting on back-pressure.
    done: Condvar,
    stop: AtomicBool,
}

#[derive(Default, Clone, Copy)]
struct WorkerState {
    /// A memtable was sealed.
    flush_pending: bool,
    /// Files were written out: the merger may have work.
    merge_pending: bool,
    /// A full merge was asked for (space reclaim).
    merge_all: bool,
    /// Full merges asked for so far, and how many of those asks a finished merge has
    /// answered (a merge answers every ask made before it started).
    merge_all_asked: u64,
    merge_all_answered: u64,
    /// Whether the last finished full merge failed.
    merge_all_failed: bool,
}

/// A space reclaim asked for (`Db::reclaim_space`): each tree's worker and its ask.
pub struct Reclaim {
    asks: Vec<(Arc<Worker>, u64)>,
}

/// How a space reclaim ended, as far as `Reclaim::wait` saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReclaimOutcome {
    /// Every tree merged its files.
    Done,
    /// A tree's merge failed (the merger logged why).
    Failed,
    /// The wait ran out first, or the tree closed; the merges go on.
    StillRunning,
}

impl Reclaim {
    /// Blocks until every tree's merge that answers this ask has finished, for at most
    /// `max_wait`.
    pub fn wait(&self, max_wait: Duration) -> ReclaimOutcome {
        let deadline = Instant::now() + max_wait;
        let mut failed = false;
        for (worker, ask) in &self.asks {
            let mut state = lock(&worker.state);
            while state.merge_all_answered < *ask {
                let now = Instant::now();
                if now >= deadline || worker.stop.load(Ordering::Acquire) {
                    return ReclaimOutcome::StillRunning;
                }
                let tick = (deadline - now).min(Duration::from_millis(WORKER_TICK_MS));
                state = worker
                    .done
                    .wait_timeout(state, tick)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            failed |= state.merge_all_failed;
        }
        if failed {
            ReclaimOutcome::Failed
        } else {
            ReclaimOutcome::Done
        }
    }
}

/// Writes applied atomically by `Tree::apply_batch`.
#[derive(Default)]
pub struct Batch {
    ops: Vec<(Slice, Option<Slice>)>,
    deferred: Vec<(Slice, Slice)>,
}

/// Deferred pairs by key: each key's last value, written into the memtable just
/// before it is sealed. At most a handful of keys (the store defers one).
type Deferred = std::collections::BTreeMap<Slice, Slice>;

/// Deferred keys at most; a batch deferring more is a bug in the caller.
const MAX_DEFERRED_KEYS: usize = 8;

impl Batch {
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.ops
            .push((Slice::from(key.as_ref()), Some(Slice::from(value.as_ref()))));
    }

    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.ops.push((Slice::from(key.as_ref()), None));
    }

    /// Sets `key` to `value`, but writes it into the memtable only when the memtable
    /// is sealed (before every rotation, in `flush` and at close), keeping only the
    /// last value: bookkeeping that must be exact in what becomes durable but is
    /// rewritten by every batch, like the applied log id, costs one memtable insert
    /// per memtable instead of one per batch. Since memtables are sealed only between
    /// batches, the sealed memtable then holds the value of its own last batch, and a
    /// crash still leaves a consistent prefix. Only `Tree::get_latest` sees a value
    /// that is still deferred.
    pub fn insert_deferred(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.deferred
            .push((Slice::from(key.as_ref()), Slice::from(value.as_ref())));
    }

    pub fn len(&self) -> usize {
        self.ops.len() + self.deferred.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.deferred.is_empty()
    }
}

fn io_error(message: String) -> EngineError {
    EngineError::Io(std::io::Error::other(message))
}

/// Locks `m`; a poisoned lock (a holder panicked) is taken as it is, as everywhere in
/// raftkv (request paths never panic, so poisoning means a bug already logged).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Db {
    pub fn open(path: &Path, options: EngineOptions) -> Result<Db, EngineError> {
        if path.join("keyspaces").exists() {
            return Err(io_error(format!(
                "{} holds a key space in the fjall format of raftkv before 0.2; move it \
                 away and restart: the member then catches up from the cluster",
                path.display()
            )));
        }
        crate::durable::create_dir_all(&path.join(TREES_DIR))?;
        Ok(Db(Arc::new(DbInner {
            dir: path.to_path_buf(),
            cache: Arc::new(lsm_tree::Cache::with_capacity_bytes(
                options.cache_size_bytes,
            )),
            descriptors: Arc::new(lsm_tree::DescriptorTable::new(OPEN_FILES_MAX)),
            options,
            open: Mutex::new(HashMap::new()),
        })))
    }

    /// The current data tree, created empty on first open.
    pub fn current_tree(&self) -> Result<Tree, EngineError> {
        let name = match std::fs::read_to_string(self.0.dir.join(CURRENT_FILE)) {
            Ok(name) => name.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => FIRST_TREE.to_string(),
            Err(e) => return Err(e.into()),
        };
        self.open_tree(&name)
    }

    pub fn open_tree(&self, name: &str) -> Result<Tree, EngineError> {
        let mut open = lock(&self.0.open);
        if let Some(tree) = open.get(name) {
            return Ok(tree.clone());
        }
        let tree = Tree::open(name, &self.0.dir.join(TREES_DIR).join(name), &self.0)?;
        open.insert(name.to_string(), tree.clone());
        Ok(tree)
    }

    /// A new, empty tree whose name no tree has (for a snapshot install).
    pub fn fresh_tree(&self, current: &Tree) -> Result<Tree, EngineError> {
        let n: u64 = current
            .0
            .name
            .strip_prefix("mvcc-")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let name = format!("mvcc-{}", n + 1);
        let dir = self.0.dir.join(TREES_DIR).join(&name);
        if let Some(stale) = lock(&self.0.open).remove(&name) {
            stale.close();
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        self.open_tree(&name)
    }

    /// Makes `tree` the current one, durably, then deletes `old`.
    pub fn switch_to(&self, tree: &Tree, old: Tree) -> Result<(), EngineError> {
        tree.flush()?;
        crate::durable::replace_file(
            &self.0.dir.join(CURRENT_FILE),
            tree.0.name.as_bytes(),
            0o644,
        )?;
        self.drop_tree(old)
    }

    /// Deletes `tree` and everything in it.
    pub fn drop_tree(&self, tree: Tree) -> Result<(), EngineError> {
        lock(&self.0.open).remove(&tree.0.name);
        tree.close();
        match std::fs::remove_dir_all(&tree.0.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Deletes data trees other than the current one (left by an interrupted install).
    pub fn drop_stale_trees(&self, current: &Tree) -> Result<(), EngineError> {
        for entry in std::fs::read_dir(self.0.dir.join(TREES_DIR))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != current.0.name {
                if let Some(stale) = lock(&self.0.open).remove(&name) {
                    stale.close();
                }
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        Ok(())
    }

    /// Asks every tree's worker to write out its memtables and merge all of its files
    /// into one sorted run, dropping deleted and superseded data: space goes back to
    /// the file system in the background while reads and writes go on. Returns at once,
    /// with the `Reclaim` whose `wait` waits for it.
    pub fn reclaim_space(&self) -> Reclaim {
        let mut asks = Vec::new();
        for tree in lock(&self.0.open).values() {
            {
                let mut deferred = lock(&tree.0.write_lock);
                tree.rotate_memtable(&mut deferred);
            }
            {
                let mut state = lock(&tree.0.worker.state);
                state.flush_pending = true;
                state.merge_all = true;
                state.merge_all_asked += 1;
                asks.push((tree.0.worker.clone(), state.merge_all_asked));
            }
            tree.0.worker.wake.notify_all();
        }
        Reclaim { asks }
    }

    /// Makes every write so far durable: writes out every tree's memtables.
    pub fn flush(&self) -> Result<(), EngineError> {
        let trees: Vec<Tree> = lock(&self.0.open).values().cloned().collect();
        for tree in trees {
            tree.flush()?;
        }
        Ok(())
    }

    /// The sorted files' size plus what waits in memtables to be written out (etcd's
    /// db size is never 0 either: its file is preallocated).
    pub fn size_on_disk_bytes(&self) -> Result<u64, EngineError> {
        Ok(lock(&self.0.open)
            .values()
            .map(|t| t.0.lsm.disk_space() + t.0.lsm.latest_memtable_size_sum())
            .sum())
    }
}

/// Open file descriptors the engine keeps for its sorted files (shared by all trees).
const OPEN_FILES_MAX: usize = 512;

fn owned_bound(b: Bound<&[u8]>) -> Bound<Slice> {
    match b {
        Bound::Included(k) => Bound::Included(Slice::from(k)),
        Bound::Excluded(k) => Bound::Excluded(Slice::from(k)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// An ordered scan; `next_back` walks from the end.
pub struct Iter(Box<dyn DoubleEndedIterator<Item = lsm_tree::IterGuardImpl> + Send + 'static>);

impl Iterator for Iter {
    type Item = Result<(Slice, Slice), EngineError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|g| g.into_inner())
    }
}

impl DoubleEndedIterator for Iter {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.0.next_back().map(|g| g.into_inner())
    }
}

fn tree_config(dir: &Path, db: &DbInner, seqno: SequenceNumberCounter) -> lsm_tree::Config {
    // lsm-tree bumps this counter when it installs versions; readers use `read_seqno`
    // instead, which only batches move.
    let versions_seqno = SequenceNumberCounter::default();
    lsm_tree::Config::new(dir, seqno, versions_seqno)
        .use_cache(db.cache.clone())
        .use_descriptor_table(Some(db.descriptors.clone()))
        // fjall's defaults, which the numbers in bench/RESULTS.md were measured with.
        .data_block_size_policy(BlockSizePolicy::all(4 * 1_024))
        .data_block_restart_interval_policy(RestartIntervalPolicy::new([10, 16]))
        .index_block_pinning_policy(PinningPolicy::new([true, true, false]))
        .filter_block_pinning_policy(PinningPolicy::new([true, false]))
        .index_block_partitioning_policy(PartitioningPolicy::new([false, false, false, true]))
        .filter_block_partitioning_policy(PartitioningPolicy::new([false, false, false, true]))
        .filter_policy(FilterPolicy::new([
            FilterPolicyEntry::Bloom(BloomConstructionPolicy::FalsePositiveRate(0.0001)),
            FilterPolicyEntry::Bloom(BloomConstructionPolicy::BitsPerKey(10.0)),
        ]))
        // Level 0 (fresh flushes) uncompressed; lz4 from level 1 on, not only from
        // level 2 as fjall does. Every level-0 merge rewrites the level-1 tables its key
        // range overlaps, and a memtable holds both random user keys ('k') and new
        // change records ('r'), so its range overlaps nearly all of level 1: uncompressed,
        // that was most of the engine's disk writes (docs/decisions.md).
        .data_block_compression_policy(CompressionPolicy::new([
            lsm_tree::CompressionType::None,
            lsm_tree::CompressionType::Lz4,
        ]))
}

impl Tree {
    fn open(name: &str, dir: &Path, db: &DbInner) -> Result<Tree, EngineError> {
        // Durable in TREES_DIR before anything is written in it: the log is purged
        // once the tables in it are, and a tree whose folder a power cut takes back
        // would take them along.
        crate::durable::create_dir_all(dir)?;
        let seqno = SequenceNumberCounter::default();
        let lsm = tree_config(dir, db, seqno.clone()).open()?;
        // Everything recovered is visible; new batches number after it.
        if let Some(highest) = lsm.get_highest_persisted_seqno() {
            seqno.fetch_max(highest + 1);
        }
        let read_seqno = Arc::new(AtomicU64::new(seqno.get()));
        let worker = Arc::new(Worker {
            lsm: lsm.clone(),
            read_seqno: read_seqno.clone(),
            strategy: Arc::new(
                lsm_tree::compaction::Leveled::default()
                    .with_table_target_size(TABLE_TARGET_SIZE_BYTES),
            ),
            state: Mutex::new(WorkerState::default()),
            wake: Condvar::new(),
            done: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let flusher = {
            let worker = worker.clone();
            std::thread::Builder::new()
                .name(format!("flush-{name}"))
                .spawn(move || worker.run_flusher())?
        };
        let merger = {
            let worker = worker.clone();
            std::thread::Builder::new()
                .name(format!("merge-{name}"))
                .spawn(move || worker.run_merger())?
        };
        Ok(Tree(Arc::new(TreeInner {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            lsm,
            seqno,
            read_seqno,
            write_lock: Mutex::new(Deferred::new()),
            memtable_size_bytes: db.options.memtable_size_bytes,
            worker,
            worker_threads: Mutex::new(vec![flusher, merger]),
        })))
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    fn read_seqno(&self) -> u64 {
        self.0.read_seqno.load(Ordering::Acquire)
    }

    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Slice>, EngineError> {
        self.0.lsm.get(key, self.read_seqno())
    }

    /// Like `get`, but also sees a value still deferred (`Batch::insert_deferred`).
    /// Takes the write lock: not for the read path.
    pub fn get_latest(&self, key: impl AsRef<[u8]>) -> Result<Option<Slice>, EngineError> {
        let deferred = lock(&self.0.write_lock);
        if let Some(value) = deferred.get(key.as_ref()) {
            return Ok(Some(value.clone()));
        }
        self.0.lsm.get(key, self.read_seqno())
    }

    pub fn insert(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<(), EngineError> {
        let mut batch = Batch::default();
        batch.insert(key, value);
        self.apply_batch(batch)
    }

    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<(), EngineError> {
        let mut batch = Batch::default();
        batch.remove(key);
        self.apply_batch(batch)
    }

    /// Every pair with a key in `range`, in key order.
    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Iter {
        let start = owned_bound(range.start_bound().map(|k| k.as_ref()));
        let end = owned_bound(range.end_bound().map(|k| k.as_ref()));
        Iter(
            self.0
                .lsm
                .range::<Slice, _>((start, end), self.read_seqno(), None),
        )
    }

    /// Every pair whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Iter {
        Iter(self.0.lsm.prefix(prefix, self.read_seqno(), None))
    }

    /// Applies every write of `batch` atomically: readers see all of it or none, and
    /// after a crash the tree holds all of it or none.
    pub fn apply_batch(&self, batch: Batch) -> Result<(), EngineError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut deferred = lock(&self.0.write_lock);
        let mut memtable_size_bytes = 0;
        if !batch.ops.is_empty() {
            let seqno = self.0.seqno.next();
            for (key, value) in batch.ops {
                if !deferred.is_empty() {
                    // A plain write of a deferred key supersedes its deferred value.
                    deferred.remove(&key);
                }
                let (_, size) = match value {
                    Some(value) => self.0.lsm.insert(key, value, seqno),
                    None => self.0.lsm.remove(key, seqno),
                };
                memtable_size_bytes = size;
            }
            self.0.read_seqno.store(seqno + 1, Ordering::Release);
        }
        deferred.extend(batch.deferred);
        debug_assert!(
            deferred.len() <= MAX_DEFERRED_KEYS,
            "too many deferred keys"
        );
        if memtable_size_bytes >= self.0.memtable_size_bytes {
            // Between two batches, so a memtable never holds part of one.
            if self.rotate_memtable(&mut deferred) {
                self.0.worker.signal();
            }
            drop(deferred);
            self.0.worker.wait_for_room();
        }
        Ok(())
    }

    /// Seals the active memtable, writing the deferred pairs into it first. The caller
    /// holds the write lock (`deferred` is its guard's content). Whether one was sealed.
    fn rotate_memtable(&self, deferred: &mut Deferred) -> bool {
        write_deferred(&self.0.lsm, &self.0.seqno, &self.0.read_seqno, deferred);
        self.0.lsm.rotate_memtable().is_some()
    }

    /// Writes out everything applied so far (memtables become sorted files, fsynced,
    /// with the tree's version record).
    pub fn flush(&self) -> Result<(), EngineError> {
        {
            let mut deferred = lock(&self.0.write_lock);
            self.rotate_memtable(&mut deferred);
        }
        self.0.worker.flush_sealed()
    }

    /// Stops the worker (waiting for its current round) without writing anything out:
    /// for a tree about to be deleted.
    fn close(&self) {
        self.0.worker.stop.store(true, Ordering::Release);
        self.0.worker.signal();
        for thread in lock(&self.0.worker_threads).drain(..) {
            if thread.join().is_err() {
                tracing::error!(tree = %self.0.name, "engine worker panicked");
            }
        }
    }
}

impl Drop for TreeInner {
    /// A clean close writes out what is in memory, so that a reopen needs no replay.
    fn drop(&mut self) {
        if !self.worker.stop.load(Ordering::Acquire) {
            let deferred = self.write_lock.get_mut().unwrap_or_else(|e| e.into_inner());
            write_deferred(&self.lsm, &self.seqno, &self.read_seqno, deferred);
            self.lsm.rotate_memtable();
            if let Err(e) = self.worker.flush_sealed() {
                tracing::warn!(tree = %self.name, error = %e, "engine: writing out memtables at close");
            }
        }
        self.worker.stop.store(true, Ordering::Release);
        self.worker.signal();
        for thread in lock(&self.worker_threads).drain(..) {
            let _ = thread.join();
        }
    }
}

/// Writes the deferred pairs into the active memtable as one batch and forgets them
/// (the memtable now holds them). Under the write lock, or at close.
fn write_deferred(
    lsm: &AnyTree,
    seqno: &SequenceNumberCounter,
    read_seqno: &AtomicU64,
    deferred: &mut Deferred,
) {
    if deferred.is_empty() {
        return;
    }
    let at = seqno.next();
    for (key, value) in std::mem::take(deferred) {
        lsm.insert(key, value, at);
    }
    read_seqno.store(at + 1, Ordering::Release);
}

impl Worker {
    /// A memtable was sealed (or the tree closes): wakes the flusher.
    fn signal(&self) {
        lock(&self.state).flush_pending = true;
        self.wake.notify_all();
    }

    /// Waits until `ready` or a tick has passed; the flags then, or None when stopping.
    fn wait_for(&self, ready: impl Fn(&WorkerState) -> bool) -> Option<WorkerState> {
        let state = lock(&self.state);
        let (state, _) = self
            .wake
            .wait_timeout_while(state, Duration::from_millis(WORKER_TICK_MS), |s| {
                !ready(s) && !self.stop.load(Ordering::Acquire)
            })
            .unwrap_or_else(|e| e.into_inner());
        if self.stop.load(Ordering::Acquire) {
            return None;
        }
        Some(*state)
    }

    fn run_flusher(&self) {
        while let Some(_state) = self.wait_for(|s| s.flush_pending) {
            lock(&self.state).flush_pending = false;
            self.wait_for_merges();
            let result = self.flush_sealed();
            lock(&self.state).merge_pending = true;
            self.wake.notify_all();
            if let Err(e) = result {
                tracing::error!(error = %e, "engine: writing out memtables failed; retrying");
                std::thread::sleep(Duration::from_millis(WORKER_RETRY_MS));
                self.signal();
            }
        }
    }

    fn run_merger(&self) {
        while self.wait_for(|s| s.merge_pending || s.merge_all).is_some() {
            // Taken under one lock: an ask arriving after the wait is then either in
            // this round (a full merge) or left for the next, never cleared unanswered.
            let (merge_all, asked) = {
                let mut s = lock(&self.state);
                let merge_all = s.merge_all;
                s.merge_pending = false;
                s.merge_all = false;
                (merge_all, s.merge_all_asked)
            };
            // A full merge starts once what was sealed for it is written out.
            let result = if merge_all {
                let result = self.flush_sealed().and_then(|()| self.merge_all());
                let mut s = lock(&self.state);
                s.merge_all_answered = asked;
                s.merge_all_failed = result.is_err();
                result
            } else {
                self.compact()
            };
            // A flusher may be waiting for level 0 to shrink (`wait_for_merges`).
            self.done.notify_all();
            if let Err(e) = result {
                tracing::error!(error = %e, "engine: merging sorted files failed; retrying");
                std::thread::sleep(Duration::from_millis(WORKER_RETRY_MS));
                lock(&self.state).merge_pending = true;
            }
        }
    }

    /// Readers never go below this, so versions older than it may be dropped.
    fn gc_seqno(&self) -> u64 {
        self.read_seqno.load(Ordering::Acquire)
    }

    fn flush_sealed(&self) -> Result<(), EngineError> {
        if self.lsm.sealed_memtable_count() == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let flushing = self.lsm.get_flush_lock();
        let flushed_bytes = self.lsm.flush(&flushing, self.gc_seqno())?;
        drop(flushing);
        tracing::debug!(
            flushed_bytes = flushed_bytes.unwrap_or(0),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "engine: memtables written out"
        );
        self.done.notify_all();
        Ok(())
    }

    fn compact(&self) -> Result<(), EngineError> {
        self.lsm.compact(self.strategy.clone(), self.gc_seqno())
    }

    /// Merges every file into one run (what a defragmentation asks for).
    fn merge_all(&self) -> Result<(), EngineError> {
        let started = Instant::now();
        let before_bytes = self.lsm.disk_space();
        self.lsm
            .major_compact(TABLE_TARGET_SIZE_BYTES, self.gc_seqno())?;
        tracing::info!(
            before_bytes,
            after_bytes = self.lsm.disk_space(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "engine: space reclaimed (all files merged)"
        );
        Ok(())
    }

    /// Back-pressure on flushes: waits while level 0 holds `MAX_L0_RUNS` runs, so
    /// that merges catch up (sealed memtables then queue up, and writers wait in
    /// `wait_for_room`). lsm-tree 3.1.10 stores a level's run count in one byte: a
    /// level 0 past 255 runs writes a version record that cannot be read back, and
    /// the tree would not open again.
    fn wait_for_merges(&self) {
        let l0_runs = self.lsm.l0_run_count();
        if l0_runs >= MAX_L0_RUNS {
            // Said when the wait starts too: a merge that keeps failing would make it
            // last, and the writers behind it.
            tracing::warn!(
                l0_runs,
                l0_runs_max = MAX_L0_RUNS,
                "engine: level 0 is full; memtables wait for merges before being written out"
            );
        }
        let waited = self.wait_while(
            || self.lsm.l0_run_count() >= MAX_L0_RUNS,
            |state| {
                state.merge_pending = true;
                self.wake.notify_all();
            },
        );
        if let Some(waited) = waited {
            tracing::warn!(
                waited_ms = waited.as_millis() as u64,
                l0_runs_max = MAX_L0_RUNS,
                "engine: writing out memtables waited for merges to catch up"
            );
        }
    }

    /// Back-pressure: waits while `MAX_SEALED_MEMTABLES` wait to be written out.
    fn wait_for_room(&self) {
        let waited = self.wait_while(
            || self.lsm.sealed_memtable_count() >= MAX_SEALED_MEMTABLES,
            |_| {},
        );
        if let Some(waited) = waited {
            tracing::warn!(
                waited_ms = waited.as_millis() as u64,
                sealed_max = MAX_SEALED_MEMTABLES,
                "engine: writes waited for memtables to be written out (slow disk?)"
            );
        }
    }

    /// Waits while `full` holds and the tree is open, rechecking after each round of
    /// background work (or every `BACK_PRESSURE_RECHECK_MS`) and calling `nudge` under
    /// the state lock first. How long it waited; None when `full` did not hold.
    fn wait_while(
        &self,
        full: impl Fn() -> bool,
        nudge: impl Fn(&mut WorkerState),
    ) -> Option<Duration> {
        if !full() {
            return None;
        }
        let started = Instant::now();
        let mut state = lock(&self.state);
        while full() && !self.stop.load(Ordering::Acquire) {
            nudge(&mut state);
            state = self
                .done
                .wait_timeout(state, Duration::from_millis(BACK_PRESSURE_RECHECK_MS))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Some(started.elapsed())
    }
}
