//! What a store holds in memory beside the engine: the counters, the caches, the live
//! watch feed, the locks and the compactor's handle. Plain shared state: the files that
//! read and change it (kvstore.rs, kvstore_txn.rs, publish.rs, compaction.rs,
//! snapshot.rs) import it; it imports none of them.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::broadcast;

use super::compactor::Compactor;
use super::types::*;
use super::EventBatch;

/// Limits and tuning of the store.
#[derive(Debug, Clone)]
pub struct MvccOptions {
    /// The engine's block cache.
    pub cache_capacity_bytes: u64,
    /// The engine's in-memory write buffer per tree.
    pub memtable_size_bytes: u64,
    /// Each recently used key's newest version, in memory (`latest.rs`).
    pub latest_cache_size_bytes: u64,
    /// Revisions compacted per engine batch; bounds how long one batch holds the tree.
    pub compaction_batch_revisions: usize,
    /// Pause between compaction batches, so that writers always get the tree.
    pub compaction_pause_ms: u64,
    /// Event batches (one per changing revision) the live feed holds for slow watchers
    /// before they fall back to reading history.
    pub feed_capacity_batches: usize,
    /// How long a simple token lives unused (etcd's --auth-token-ttl).
    pub token_ttl_s: u64,
}

impl Default for MvccOptions {
    fn default() -> Self {
        MvccOptions {
            cache_capacity_bytes: 64 << 20,
            memtable_size_bytes: 16 << 20,
            latest_cache_size_bytes: 32 << 20,
            compaction_batch_revisions: 32,
            compaction_pause_ms: 1,
            feed_capacity_batches: 4096,
            token_ttl_s: crate::auth::tokens::DEFAULT_TOKEN_TTL_S,
        }
    }
}

pub(crate) struct Inner {
    pub db: super::engine::Db,
    pub tree: RwLock<super::engine::Tree>,
    pub revision: AtomicI64,
    /// Each recently used key's newest version; filled only by the applier.
    pub latest: super::latest::LatestCache,
    pub compact_revision: AtomicI64,
    pub leases: RwLock<BTreeMap<LeaseId, Lease>>,
    /// Raised alarms (NOSPACE makes the applier refuse writes that need space).
    pub alarms: RwLock<std::collections::BTreeSet<AlarmMember>>,
    /// Users, roles and whether authentication is on (auth.rs); replaced whole by each
    /// auth change, so readers hold a consistent copy without a lock.
    pub auth: RwLock<Arc<crate::auth::AuthState>>,
    /// The simple tokens applied entries handed out; in memory only (tokens.rs).
    pub tokens: Mutex<crate::auth::tokens::SimpleTokens>,
    pub feed: broadcast::Sender<Arc<EventBatch>>,
    /// Serialises writers: one apply at a time.
    pub apply_lock: Mutex<()>,
    /// Held by a compaction batch, a snapshot export and a snapshot install.
    pub compaction_lock: Mutex<()>,
    pub compactor: Compactor,
    pub options: MvccOptions,
}
