//! The change feed: every event from a start revision on, for one key range, in
//! revision order, with prev_kv, first from history (the engine) and then live.
//!
//! Each watcher subscribes to the store's broadcast of event batches before it reads
//! anything. While it is behind it reads the change log from the engine; once caught up it
//! takes batches from the broadcast. If it falls so far behind that the broadcast ring
//! overwrites batches it has not read (a slow watcher), it goes back to reading history:
//! writers never wait for watchers, and a watcher never skips or repeats a revision.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

use super::keys::{self, ChangeRecord, KvRecord};
use super::kvstore::MvccStore;
use super::range::KeyRange;
use super::reader::to_kv;
use super::types::*;
use super::EventBatch;
use crate::error::StoreError;

/// Change records one history read looks at before returning what it has.
const HISTORY_SCAN_LIMIT_CHANGES: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The start revision (or the watcher's position) is below the compacted revision.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted { compact_revision: Revision },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the store is closed")]
    Closed,
}

pub struct Watcher {
    store: MvccStore,
    rx: broadcast::Receiver<Arc<EventBatch>>,
    range: KeyRange,
    /// The first revision not yet delivered.
    next_rev: Revision,
    /// A live batch received but not yet delivered (after a gap, or across a cancel).
    pending: Option<Arc<EventBatch>>,
}

impl MvccStore {
    /// Watches [key, range_end) (etcd's range conventions) from `start_rev`; a start of
    /// 0 or less means "from the next revision".
    pub fn watch(&self, key: Bytes, range_end: Bytes, start_rev: Revision) -> Watcher {
        let rx = self.inner.feed.subscribe();
        let next_rev = if start_rev <= 0 {
            self.revision() + 1
        } else {
            start_rev
        };
        Watcher {
            store: self.clone(),
            rx,
            range: KeyRange::new(&key, &range_end),
            next_rev,
            pending: None,
        }
    }
}

impl Watcher {
    /// The first revision this watcher has not delivered yet.
    pub fn next_revision(&self) -> Revision {
        self.next_rev
    }

    /// True when every revision the store has applied has been delivered.
    pub fn caught_up(&self) -> bool {
        self.next_rev > self.store.revision()
    }

    /// Waits for the next events: those of one or more whole revisions, at most
    /// `max_revisions` of them, in order.
    ///
    /// Live batches already queued are used first; history is read only for a gap (the
    /// watcher started in the past, or lagged past the feed's capacity). A watcher that
    /// keeps up therefore never depends on history that a compaction may remove.
    /// Cancel-safe: the only await is the feed's `recv`, and its batch is kept.
    pub async fn next(&mut self, max_revisions: usize) -> Result<Vec<Event>, WatchError> {
        let max_revisions = max_revisions.max(1);
        loop {
            let mut events = Vec::new();
            let mut revisions = 0;
            while revisions < max_revisions {
                let batch = match self.pending.take() {
                    Some(batch) => batch,
                    None => match self.rx.try_recv() {
                        Ok(batch) => batch,
                        Err(TryRecvError::Lagged(_)) => continue,
                        Err(TryRecvError::Empty) | Err(TryRecvError::Closed) => break,
                    },
                };
                if batch.revision < self.next_rev || batch.events.is_empty() {
                    // Delivered already; or a batch without events (the store moved
                    // without live events: a snapshot was installed), whose revisions
                    // the history read below delivers.
                    continue;
                }
                if batch.revision > self.next_rev {
                    // A gap: history first, then this batch.
                    self.pending = Some(batch);
                    break;
                }
                if self.take_live(&batch, &mut events) {
                    revisions += 1;
                }
            }
            if !events.is_empty() {
                return Ok(events);
            }
            if self.next_rev <= self.store.revision() {
                let events = self.read_history(max_revisions)?;
                if !events.is_empty() {
                    return Ok(events);
                }
                continue;
            }
            match self.rx.recv().await {
                Ok(batch) => self.pending = Some(batch),
                // Missed batches are in history; the next loop reads them from there.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return Err(WatchError::Closed),
            }
        }
    }

    /// Takes a live batch if it is the next revision; a later one means a gap, which
    /// the history path fills. Returns whether it matched events.
    fn take_live(&mut self, batch: &EventBatch, out: &mut Vec<Event>) -> bool {
        if batch.revision != self.next_rev {
            return false;
        }
        self.next_rev += 1;
        let before = out.len();
        out.extend(
            batch
                .events
                .iter()
                .filter(|e| self.range.contains(&e.kv.key))
                .cloned(),
        );
        out.len() > before
    }

    fn read_history(&mut self, max_revisions: usize) -> Result<Vec<Event>, WatchError> {
        let start = self.next_rev;
        let compacted = self.store.compact_revision();
        if start < compacted {
            return Err(WatchError::Compacted {
                compact_revision: compacted,
            });
        }
        let upto = self.store.revision();
        let tree = self.store.tree();
        let mut events = Vec::new();
        let mut revisions_with_events = 0usize;
        let mut last_rev_with_events = 0;
        let mut prev_rev = 0;
        let mut next = upto + 1;
        let lower = keys::change_key(start, 0);
        let upper = keys::change_key(upto, u32::MAX);
        for (scanned, item) in tree.range(lower..=upper).enumerate() {
            let (k, v) = item.map_err(StoreError::from)?;
            let (rev, _) = keys::split_change_key(&k)
                .ok_or_else(|| StoreError::Corrupt(format!("bad change key {k:?}")))?;
            // Stop only between revisions, so every read finishes whole revisions.
            if rev != prev_rev
                && (revisions_with_events >= max_revisions || scanned >= HISTORY_SCAN_LIMIT_CHANGES)
            {
                next = rev;
                break;
            }
            prev_rev = rev;
            let change = ChangeRecord::decode(&v)
                .ok_or_else(|| StoreError::Corrupt(format!("bad change at {k:?}")))?;
            if !self.range.contains(&change.key) {
                continue;
            }
            if let Some(event) = history_event(&tree, &change, rev, rev <= compacted)? {
                if rev != last_rev_with_events {
                    revisions_with_events += 1;
                    last_rev_with_events = rev;
                }
                events.push(event);
            }
        }
        // Compaction may have removed records while we read: then the read is not whole.
        let compacted_now = self.store.compact_revision();
        if start < compacted_now {
            return Err(WatchError::Compacted {
                compact_revision: compacted_now,
            });
        }
        self.next_rev = next;
        Ok(events)
    }
}

/// Whether a later change of the same txn overwrote `change`'s key: a put keeps its
/// own record then (`shadowed`); a delete is followed by a put, which is what is
/// stored (`stored`, the record at (key, rev)).
fn overwritten_in_its_revision(change: &ChangeRecord, stored: &[u8]) -> bool {
    change.shadowed.is_some()
        || (change.tombstone && KvRecord::decode(stored, false).is_some_and(|r| !r.tombstone))
}

/// Rebuilds the event of one change record; None when compaction removed the version.
/// `at_compacted`: `rev` is the compacted revision.
fn history_event(
    tree: &super::engine::Tree,
    change: &ChangeRecord,
    rev: Revision,
    at_compacted: bool,
) -> Result<Option<Event>, StoreError> {
    // The change record says what happened. The stored version at (key, rev) is the
    // last write of that revision; compaction keeps it at the compacted revision, even
    // a tombstone (as etcd 3.5.13 and later do). Without it there is no event.
    let Some(raw) = tree.get(keys::kv_key(&change.key, rev))? else {
        return Ok(None);
    };
    // At the compacted revision etcd keeps only a key's last write of the revision: an
    // earlier change of the same key in that txn has no event there.
    if at_compacted && overwritten_in_its_revision(change, &raw) {
        return Ok(None);
    }
    // A put that a later change of its txn overwrote carries its own record.
    let record = match &change.shadowed {
        Some(record) => record.clone(),
        None => KvRecord::decode(&raw, true)
            .ok_or_else(|| StoreError::Corrupt(format!("bad record of {:?}", change.key)))?,
    };
    // As etcd: a create event has no prev_kv; others get the version before the txn.
    let is_create = !change.tombstone && record.create_revision == rev;
    let prev_kv = if change.prev_revision > 0 && !is_create {
        match tree.get(keys::kv_key(&change.key, change.prev_revision))? {
            Some(raw) => KvRecord::decode(&raw, true)
                .filter(|r| !r.tombstone)
                .map(|r| to_kv(change.key.clone(), change.prev_revision, r, true)),
            None => None,
        }
    } else {
        None
    };
    Ok(Some(if change.tombstone {
        Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: change.key.clone(),
                mod_revision: rev,
                ..KeyValue::default()
            },
            prev_kv,
        }
    } else {
        Event {
            kind: EventKind::Put,
            kv: to_kv(change.key.clone(), rev, record, true),
            prev_kv,
        }
    }))
}
