//! The ordered key-value engine under the MVCC key space: fjall (an LSM tree), behind
//! the handful of calls the store makes — point get, ordered range scans both ways,
//! atomic batches, durable flush, and whole-tree rotation for snapshot install.
//!
//! Why an LSM and not sled 0.34 (bench/RESULTS.md, "Why not sled"): dropping history
//! is a stream of deletes, and once the key space outgrows sled's page cache its
//! deletes stall writers for seconds; an LSM writes a delete as one small tombstone and
//! reclaims space in background merges.
//!
//! This module must never fsync on a write: `apply_batch` only appends to fjall's
//! journal buffer. Durability comes from the Raft log; `Db::flush` (off the request
//! path) is what makes applied state durable before the log may be purged.

use std::ops::{Bound, RangeBounds};
use std::path::Path;

pub use fjall::Error as EngineError;
/// Keys and values as the engine returns them; they dereference to `[u8]`.
pub type Slice = fjall::Slice;

/// Keyspace holding which data tree is current (its name), so that a snapshot install
/// can switch trees atomically.
const META_KEYSPACE: &str = "meta";
const CURRENT_TREE: &[u8] = b"data_tree";
const FIRST_TREE: &str = "mvcc-0";

/// Engine limits and tuning.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Block cache shared by every tree.
    pub cache_size_bytes: u64,
    /// A tree's in-memory write buffer before it is written out as a sorted file.
    pub memtable_size_bytes: u64,
}

/// The database: the current data tree lives in it, found through `meta`.
#[derive(Clone)]
pub struct Db {
    db: fjall::Database,
    meta: fjall::Keyspace,
    options: EngineOptions,
}

/// One ordered tree (a fjall keyspace).
#[derive(Clone)]
pub struct Tree {
    db: fjall::Database,
    keyspace: fjall::Keyspace,
    name: String,
}

/// Writes applied atomically by `Tree::apply_batch`.
#[derive(Default)]
pub struct Batch {
    ops: Vec<(Slice, Option<Slice>)>,
}

impl Batch {
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.ops
            .push((Slice::from(key.as_ref()), Some(Slice::from(value.as_ref()))));
    }

    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.ops.push((Slice::from(key.as_ref()), None));
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

impl Db {
    pub fn open(path: &Path, options: EngineOptions) -> Result<Db, EngineError> {
        let db = fjall::Database::builder(path)
            .cache_size(options.cache_size_bytes)
            // Never fsync on our behalf: the Raft log is the durable record, and
            // `flush` is called where durability is needed.
            .manual_journal_persist(true)
            .open()?;
        let meta = db.keyspace(META_KEYSPACE, fjall::KeyspaceCreateOptions::default)?;
        Ok(Db { db, meta, options })
    }

    fn create_options(&self) -> fjall::KeyspaceCreateOptions {
        fjall::KeyspaceCreateOptions::default()
            .manual_journal_persist(true)
            .max_memtable_size(self.options.memtable_size_bytes)
    }

    /// The current data tree, created empty on first open.
    pub fn current_tree(&self) -> Result<Tree, EngineError> {
        let name = match self.meta.get(CURRENT_TREE)? {
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => FIRST_TREE.to_string(),
        };
        self.open_tree(&name)
    }

    pub fn open_tree(&self, name: &str) -> Result<Tree, EngineError> {
        let keyspace = self.db.keyspace(name, || self.create_options())?;
        Ok(Tree {
            db: self.db.clone(),
            keyspace,
            name: name.to_string(),
        })
    }

    /// A new, empty tree whose name no tree has (for a snapshot install).
    pub fn fresh_tree(&self, current: &Tree) -> Result<Tree, EngineError> {
        let n: u64 = current
            .name
            .strip_prefix("mvcc-")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let name = format!("mvcc-{}", n + 1);
        if self.db.keyspace_exists(&name) {
            let stale = self.open_tree(&name)?;
            self.db.delete_keyspace(stale.keyspace)?;
        }
        self.open_tree(&name)
    }

    /// Makes `tree` the current one, durably, then deletes `old`.
    pub fn switch_to(&self, tree: &Tree, old: Tree) -> Result<(), EngineError> {
        self.flush()?;
        self.meta.insert(CURRENT_TREE, tree.name.as_bytes())?;
        self.flush()?;
        self.db.delete_keyspace(old.keyspace)
    }

    /// Deletes `tree` and everything in it.
    pub fn drop_tree(&self, tree: Tree) -> Result<(), EngineError> {
        self.db.delete_keyspace(tree.keyspace)
    }

    /// Deletes data trees other than the current one (left by an interrupted install).
    pub fn drop_stale_trees(&self, current: &Tree) -> Result<(), EngineError> {
        for name in self.db.list_keyspace_names() {
            let name: &str = name.as_ref();
            if name.starts_with("mvcc-") && name != current.name {
                let stale = self.open_tree(name)?;
                self.db.delete_keyspace(stale.keyspace)?;
            }
        }
        Ok(())
    }

    /// Makes every write so far durable (fdatasync of the journal).
    pub fn flush(&self) -> Result<(), EngineError> {
        self.db.persist(fjall::PersistMode::SyncData)
    }

    pub fn size_on_disk_bytes(&self) -> Result<u64, EngineError> {
        self.db.disk_space()
    }
}

fn owned_bound(b: Bound<&[u8]>) -> Bound<Slice> {
    match b {
        Bound::Included(k) => Bound::Included(Slice::from(k)),
        Bound::Excluded(k) => Bound::Excluded(Slice::from(k)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// An ordered scan; `next_back` walks from the end.
pub struct Iter(fjall::Iter);

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

impl Tree {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Slice>, EngineError> {
        self.keyspace.get(key)
    }

    pub fn insert(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<(), EngineError> {
        self.keyspace
            .insert(Slice::from(key.as_ref()), Slice::from(value.as_ref()))
    }

    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<(), EngineError> {
        self.keyspace.remove(Slice::from(key.as_ref()))
    }

    /// Every pair with a key in `range`, in key order.
    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Iter {
        let start = owned_bound(range.start_bound().map(|k| k.as_ref()));
        let end = owned_bound(range.end_bound().map(|k| k.as_ref()));
        Iter(self.keyspace.range::<Slice, _>((start, end)))
    }

    /// Every pair whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Iter {
        Iter(self.keyspace.prefix(prefix))
    }

    /// Applies every write of `batch` atomically (all or none after a crash).
    pub fn apply_batch(&self, batch: Batch) -> Result<(), EngineError> {
        if batch.ops.is_empty() {
            return Ok(());
        }
        let mut writes = self.db.batch();
        for (key, value) in batch.ops {
            match value {
                Some(value) => writes.insert(&self.keyspace, key, value),
                None => writes.remove(&self.keyspace, key),
            }
        }
        writes.commit()
    }
}
