//! The second step of a write, after kvstore_txn.rs put its batch into the engine: what
//! readers and watchers see moves. The newest-version cache, the lease table, the
//! compacted revision (and the compactor's wake-up) and the alarms take the changes,
//! the events go to the live watch feed, and last the revision moves. After etcd's
//! watchable_store_txn.go, which notifies watchers once its write transaction ended.
//!
//! Called only by the applier, under the apply lock. It must never move the revision
//! before the feed has the batch: a watcher that keeps up always finds the next
//! revision in the feed, never only in history.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::keys::KvRecord;
use super::state::Inner;
use super::types::*;
use super::EventBatch;

/// One key a write transaction changed: its new stored version (a tombstone for a
/// delete) and the revision of the version it replaced (0: none).
pub(crate) struct Change {
    pub key: Bytes,
    pub record: KvRecord,
    pub prev_revision: Revision,
}

/// What a committed write transaction changed, for publishing.
pub(crate) struct Committed {
    /// The revision it wrote at (the store's revision + 1 when `changes` is not empty).
    pub revision: Revision,
    /// Each changed key, in order.
    pub changes: Vec<Change>,
    /// One event per change, in order.
    pub events: Vec<Event>,
    /// Lease table edits: Some to write, None to remove.
    pub leases: BTreeMap<LeaseId, Option<Lease>>,
    pub compact: Option<Revision>,
    /// The whole alarm set, when it changed.
    pub alarms: Option<BTreeSet<AlarmMember>>,
    /// The whole auth state, when it changed.
    pub auth: Option<crate::auth::AuthState>,
}

/// Makes a committed write visible to readers and watchers.
pub(crate) fn publish(inner: &Inner, committed: Committed) {
    let Committed {
        revision,
        changes,
        events,
        leases,
        compact,
        alarms,
        auth,
    } = committed;
    // Before the revision moves (latest.rs): a reader at the new revision must not find
    // a key's older version cached as its newest.
    for change in &changes {
        inner.latest.set(&change.key, revision, &change.record);
    }
    if !leases.is_empty() {
        let mut table = inner.leases.write().unwrap_or_else(|e| e.into_inner());
        for (id, lease) in leases {
            match lease {
                Some(lease) => table.insert(id, lease),
                None => table.remove(&id),
            };
        }
    }
    if let Some(compact) = compact {
        inner.compact_revision.store(compact, Ordering::SeqCst);
        inner.compactor.wake();
    }
    if let Some(alarms) = alarms {
        *inner.alarms.write().unwrap_or_else(|e| e.into_inner()) = alarms;
    }
    if let Some(auth) = auth {
        *inner.auth.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(auth);
    }
    if changes.is_empty() {
        debug_assert!(events.is_empty(), "events without changes");
        return;
    }
    let before = inner.revision.load(Ordering::SeqCst);
    debug_assert_eq!(
        revision,
        before + 1,
        "a write transaction moves the revision by exactly one"
    );
    debug_assert_eq!(events.len(), changes.len(), "one event per change");
    debug_assert!(
        events.iter().all(|e| e.kv.mod_revision == revision),
        "every event of a write is at its revision"
    );
    // No receivers is fine: nobody is watching.
    let _ = inner.feed.send(Arc::new(EventBatch { revision, events }));
    inner.revision.store(revision, Ordering::SeqCst);
}
