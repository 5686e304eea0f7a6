//! Physical compaction: dropping history below the compacted revision, in the background.
//!
//! Compact(N) is applied instantly: it records N, after which reads below N fail. A
//! background thread then walks the change log up to N in batches of
//! `compaction_batch_revisions`: each change at revision r <= N removes the version it
//! superseded (its prev_revision), removes r itself if r is a tombstone below N, and
//! removes the change record if r < N (records and tombstones at N stay, as etcd keeps
//! them, so a watch from N still sees a delete at N). Each
//! batch is one engine batch; the thread pauses between batches so writers always get in.
//!
//! Invariant: for every key, the newest version at or below the compacted revision (if
//! not a tombstone below it) and every newer version survive. The thread never touches a version
//! above the compacted revision, and every step is idempotent, so a crash mid-way is
//! resumed by simply running again.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::keys::{self, ChangeRecord};
use super::reader::read_i64;
use super::state::Inner;
use crate::error::StoreError;

/// Starts the store's compaction thread, and wakes it at once if a restart interrupted
/// a compaction.
pub(crate) fn start(inner: &Arc<Inner>) {
    let done = compacted_up_to(inner);
    let target = inner.compact_revision.load(Ordering::SeqCst);
    if done < target {
        tracing::info!(
            compact_revision = target,
            finished_up_to = done,
            "mvcc: resuming a compaction that a restart interrupted"
        );
        inner.compactor.wake();
    }
    let weak: Weak<Inner> = Arc::downgrade(inner);
    inner
        .compactor
        .spawn(move || weak.upgrade().map(|inner| compact(&inner)));
}

/// Blocks until no compaction is pending or running, and the last run reached the
/// compacted revision or failed.
pub(crate) fn wait_idle(inner: &Inner) {
    inner
        .compactor
        .wait_idle(|| compacted_up_to(inner) >= inner.compact_revision.load(Ordering::SeqCst));
}

/// The revision the last finished compaction reached (-1: none).
fn compacted_up_to(inner: &Inner) -> i64 {
    read_i64(
        &inner.tree.read().unwrap_or_else(|e| e.into_inner()),
        keys::META_COMPACT_DONE,
    )
    .ok()
    .flatten()
    .unwrap_or(-1)
}

/// Runs compaction up to the current compacted revision.
fn compact(inner: &Inner) -> Result<(), StoreError> {
    let target = inner.compact_revision.load(Ordering::SeqCst);
    let started = std::time::Instant::now();
    let end = keys::change_key(target, u32::MAX);
    let mut from = keys::change_key(0, 0).to_vec();
    let mut include_from = true;
    let mut changes_total = 0usize;
    loop {
        let batch_started = std::time::Instant::now();
        let guard = inner
            .compaction_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let tree = inner.tree.read().unwrap_or_else(|e| e.into_inner()).clone();
        let lower = if include_from {
            std::ops::Bound::Included(from.clone())
        } else {
            std::ops::Bound::Excluded(from.clone())
        };
        let mut batch = super::engine::Batch::default();
        let mut seen = 0usize;
        for item in tree.range((lower, std::ops::Bound::Included(end.to_vec()))) {
            let (k, v) = item?;
            let (rev, _) = keys::split_change_key(&k)
                .ok_or_else(|| StoreError::Corrupt(format!("bad change key {k:?}")))?;
            let change = ChangeRecord::decode(&v)
                .ok_or_else(|| StoreError::Corrupt(format!("bad change at {k:?}")))?;
            if change.prev_revision > 0 {
                batch.remove(keys::kv_key(&change.key, change.prev_revision));
            }
            // A delete at the compacted revision itself stays until a later compaction,
            // as etcd keeps it: a watch from that revision still reports it.
            if change.tombstone && rev < target {
                // A txn may delete and then re-create a key at one revision: the stored
                // version at (key, rev) is then the put, which must survive.
                let at = keys::kv_key(&change.key, rev);
                let stored_is_tombstone = match tree.get(&at)? {
                    Some(raw) => keys::KvRecord::decode(&raw, false).is_some_and(|r| r.tombstone),
                    None => false,
                };
                if stored_is_tombstone {
                    batch.remove(at);
                }
            }
            if rev < target {
                batch.remove(k.clone());
            }
            from = k.to_vec();
            include_from = false;
            seen += 1;
            if seen >= inner.options.compaction_batch_revisions {
                break;
            }
        }
        if seen == 0 {
            tree.insert(keys::META_COMPACT_DONE, &target.to_be_bytes()[..])?;
            drop(guard);
            tracing::info!(
                compact_revision = target,
                changes = changes_total,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "mvcc: compaction finished"
            );
            return Ok(());
        }
        tree.apply_batch(batch)?;
        drop(guard);
        changes_total += seen;
        // Duty cycle: rest at least as long as the batch took, so compaction never holds
        // more than half of a core however large the backlog.
        let pause = batch_started
            .elapsed()
            .max(Duration::from_millis(inner.options.compaction_pause_ms))
            .max(crate::failpoint::compaction_pause());
        std::thread::sleep(pause);
    }
}
