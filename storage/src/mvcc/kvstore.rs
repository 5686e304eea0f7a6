//! The MVCC store: opening the engine, the store's counters (revision, compacted revision),
//! the lease cache and the event feed, and the read entry points.
//!
//! Writes go through `kvstore_txn.rs`, compaction through `compaction.rs`, watchers
//! through `watch.rs`, snapshots through `snapshot.rs`. This file must never fsync on a
//! request path: the engine is flushed only off it, and the Raft log is what makes writes
//! durable.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::broadcast;

use super::compactor::Compactor;
use super::keys::{self};
use super::range::{self, View};
use super::reader::read_i64;
use super::state::{Inner, MvccOptions};
use super::types::*;
use crate::auth::AuthState;
use crate::error::{Error, MvccError, StoreError};

/// The applied log id and membership as stored (opaque bytes of the Raft layer).
pub type StoredMeta = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Opaque bytes the Raft layer stores with every applied entry, in the same batch.
#[derive(Debug, Clone, Default)]
pub struct AppliedMeta {
    /// The entry's log index (0 outside the log, as in tests): a simple token names it.
    pub index: u64,
    pub applied: Vec<u8>,
    pub membership: Option<Vec<u8>>,
}

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct MvccStore {
    pub(crate) inner: Arc<Inner>,
}

impl MvccStore {
    pub fn open(path: &Path, options: MvccOptions) -> Result<MvccStore, StoreError> {
        let db = super::engine::Db::open(
            path,
            super::engine::EngineOptions {
                cache_size_bytes: options.cache_capacity_bytes,
                memtable_size_bytes: options.memtable_size_bytes,
            },
        )?;
        let tree = db.current_tree()?;
        // Trees left by an interrupted snapshot install are garbage.
        db.drop_stale_trees(&tree)?;
        // What the engine recovered may still sit only in the OS cache: make it durable
        // before anyone treats it as the state the Raft log may be purged behind.
        db.flush()?;
        let (feed, _) = broadcast::channel(options.feed_capacity_batches);
        let inner = Arc::new(Inner {
            db,
            tree: RwLock::new(tree),
            revision: AtomicI64::new(1),
            latest: super::latest::LatestCache::new(options.latest_cache_size_bytes),
            compact_revision: AtomicI64::new(-1),
            leases: RwLock::new(BTreeMap::new()),
            alarms: RwLock::new(Default::default()),
            auth: RwLock::new(Default::default()),
            tokens: Mutex::new(crate::auth::tokens::SimpleTokens::new(
                std::time::Duration::from_secs(options.token_ttl_s),
            )),
            feed,
            apply_lock: Mutex::new(()),
            compaction_lock: Mutex::new(()),
            compactor: Compactor::default(),
            options,
        });
        let store = MvccStore { inner };
        store.load_counters()?;
        super::compaction::start(&store.inner);
        Ok(store)
    }

    /// Reads the counters, leases, alarms and auth state from the current tree into
    /// memory (at open, and after a snapshot was installed).
    pub(crate) fn load_counters(&self) -> Result<(), StoreError> {
        let tree = self.tree();
        let compact = read_i64(&tree, keys::META_COMPACT)?.unwrap_or(-1);
        let revision = current_revision(&tree, compact)?;
        let mut leases = BTreeMap::new();
        for item in tree.scan_prefix([keys::LEASE]) {
            let (_, value) = item?;
            let lease: Lease = postcard::from_bytes(&value)
                .map_err(|e| StoreError::Corrupt(format!("undecodable lease record: {e}")))?;
            leases.insert(lease.id, lease);
        }
        let alarms: Vec<AlarmMember> = match tree.get(keys::META_ALARMS)? {
            Some(bytes) => postcard::from_bytes(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("undecodable alarm list: {e}")))?,
            None => Vec::new(),
        };
        let auth: AuthState = match tree.get(keys::META_AUTH)? {
            Some(bytes) => postcard::from_bytes(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("undecodable auth state: {e}")))?,
            None => AuthState::default(),
        };
        self.inner.revision.store(revision, Ordering::SeqCst);
        self.inner.compact_revision.store(compact, Ordering::SeqCst);
        *self.inner.auth.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(auth);
        // A state loaded whole (an installed snapshot) skipped the entries that would
        // have ended tokens (a user deleted, a password changed): none are kept.
        self.inner
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        *self.inner.leases.write().unwrap_or_else(|e| e.into_inner()) = leases;
        *self.inner.alarms.write().unwrap_or_else(|e| e.into_inner()) =
            alarms.into_iter().collect();
        Ok(())
    }

    /// The user a simple token stands for on this member, restarting its TTL; None
    /// for a token this member does not know (yet: see `tokens::token_index`).
    pub fn token_user(&self, token: &str) -> Option<String> {
        self.inner
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .user(token, std::time::Instant::now())
    }

    /// Users, roles and whether authentication is on, as of the last applied entry.
    pub fn auth(&self) -> Arc<AuthState> {
        self.inner
            .auth
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The raised alarms, in member and type order.
    pub fn alarms(&self) -> Vec<AlarmMember> {
        self.inner
            .alarms
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }

    pub fn has_alarm(&self, alarm: AlarmType) -> bool {
        self.inner
            .alarms
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|a| a.alarm == alarm)
    }

    pub(crate) fn tree(&self) -> super::engine::Tree {
        self.inner
            .tree
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The store's current revision: that of the last changing write.
    pub fn revision(&self) -> Revision {
        self.inner.revision.load(Ordering::SeqCst)
    }

    /// Reads below this revision fail as compacted; -1 before any compaction.
    pub fn compact_revision(&self) -> Revision {
        self.inner.compact_revision.load(Ordering::SeqCst)
    }

    /// A Range at a revision of the committed store (not inside a write).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, Error> {
        let tree = self.tree();
        let current = self.revision();
        let rev = if req.revision <= 0 {
            current
        } else {
            req.revision
        };
        if rev > current {
            return Err(MvccError::FutureRevision.into());
        }
        if rev < self.compact_revision() {
            return Err(MvccError::Compacted.into());
        }
        let view = View::committed(&tree, &self.inner.latest, rev);
        let mut response = range::execute(&view, req)?;
        response.revision = current;
        Ok(response)
    }

    /// Forgets the Raft log id and membership the key space was applied up to, keeping
    /// the key space: for restoring a snapshot as the start of a new cluster.
    pub fn forget_raft_state(&self) -> Result<(), StoreError> {
        let tree = self.tree();
        tree.remove(keys::META_APPLIED)?;
        tree.remove(keys::META_MEMBERSHIP)?;
        // Alarms name members of the old cluster.
        tree.remove(keys::META_ALARMS)?;
        self.flush()
    }

    /// The applied log id and membership last written with `apply`, as given.
    pub fn applied_meta(&self) -> Result<StoredMeta, StoreError> {
        let tree = self.tree();
        Ok((
            tree.get_latest(keys::META_APPLIED)?.map(|v| v.to_vec()),
            tree.get(keys::META_MEMBERSHIP)?.map(|v| v.to_vec()),
        ))
    }

    pub fn lease(&self, id: LeaseId) -> Option<Lease> {
        self.inner
            .leases
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    pub fn leases(&self) -> Vec<Lease> {
        self.inner
            .leases
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The keys attached to a lease, in key order.
    pub fn lease_keys(&self, id: LeaseId) -> Result<Vec<bytes::Bytes>, StoreError> {
        let prefix = keys::attach_prefix(id);
        let mut out = Vec::new();
        for item in self.tree().scan_prefix(prefix) {
            let (k, _) = item?;
            out.push(bytes::Bytes::copy_from_slice(&k[prefix.len()..]));
        }
        Ok(out)
    }

    /// Makes everything applied so far durable in the engine. Off the request path: the
    /// snapshot builder calls it before the log may be purged.
    pub fn flush(&self) -> Result<(), StoreError> {
        Ok(self.inner.db.flush()?)
    }

    /// Gives the space of deleted and compacted data back to the file system, in the
    /// background (etcd's defragmentation, without stopping anything); the returned
    /// `Reclaim` waits for it.
    pub fn reclaim_space(&self) -> super::engine::Reclaim {
        self.inner.db.reclaim_space()
    }

    pub fn size_on_disk_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.inner.db.size_on_disk_bytes()?)
    }

    /// Waits until physical compaction has caught up with the compacted revision.
    pub fn wait_for_compaction(&self) {
        super::compaction::wait_idle(&self.inner);
    }
}

/// The store's revision, derived rather than stored with every write (one engine
/// insert less per write): the revision of the newest change record. Compaction keeps
/// the records at its own revision and a snapshot carries them, so the newest record
/// survives both; `META_REVISION`, which a snapshot install still writes, and the
/// compacted revision only bound it from below. 1 for an empty store, as in etcd.
fn current_revision(tree: &super::engine::Tree, compact: Revision) -> Result<Revision, StoreError> {
    let newest_change = match tree
        .range(keys::change_key(0, 0)..=keys::change_key(i64::MAX, u32::MAX))
        .next_back()
    {
        None => None,
        Some(item) => {
            let (k, _) = item?;
            let (rev, _) = keys::split_change_key(&k)
                .ok_or_else(|| StoreError::Corrupt(format!("bad change key {k:?}")))?;
            Some(rev)
        }
    };
    let floor = read_i64(tree, keys::META_REVISION)?;
    Ok([newest_change, floor, Some(compact)]
        .into_iter()
        .flatten()
        .fold(1, Revision::max))
}
