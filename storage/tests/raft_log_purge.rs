//! openraft purges the log behind a snapshot while it is still installing it, before
//! the state machine holds it (the purge guard then holds the purge back), and does
//! not ask again. Left undone, the gap between the old entries and those after the
//! snapshot made the next start fail ("try to get log at index ... but got None").

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, EntryPayload};
use raftkv_storage::raft_log::RaftLogStore;
use raftkv_storage::raft_types::{Entry, LogId};
use raftkv_storage::wal::WalOptions;

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn blanks(indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    indexes
        .map(|i| Entry {
            log_id: log_id(i),
            payload: EntryPayload::Blank,
        })
        .collect()
}

fn open(dir: &std::path::Path, guard: &Arc<AtomicU64>) -> RaftLogStore {
    RaftLogStore::open(dir, WalOptions::default(), guard.clone())
        .expect("log opens")
        .0
}

/// Entries 1..=10 with the state machine durable up to 3; a snapshot at 20 arrives:
/// openraft purges to 20 at once and appends 21..=25 after it.
async fn install_snapshot_at_20(log: &mut RaftLogStore) {
    log.blocking_append(blanks(1..=10)).await.expect("append");
    log.purge(log_id(20)).await.expect("purge");
    log.blocking_append(blanks(21..=25)).await.expect("append");
}

async fn indexes(log: &mut RaftLogStore) -> (Option<u64>, Vec<u64>) {
    let state = log.get_log_state().await.expect("state");
    let entries = log.try_get_log_entries(0..100).await.expect("read");
    (
        state.last_purged_log_id.map(|l| l.index),
        entries.iter().map(|e| e.log_id.index).collect(),
    )
}

#[tokio::test]
async fn a_purge_held_back_by_the_guard_is_done_once_the_state_machine_holds_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let guard = Arc::new(AtomicU64::new(3));
    let mut log = open(dir.path(), &guard);
    install_snapshot_at_20(&mut log).await;
    assert_eq!(
        indexes(&mut log).await,
        (Some(3), vec![4, 5, 6, 7, 8, 9, 10, 21, 22, 23, 24, 25]),
        "purged past the guard"
    );
    // The install has landed: the next append purges behind the snapshot.
    guard.store(20, Ordering::SeqCst);
    log.blocking_append(blanks(26..=26)).await.expect("append");
    let expected = (Some(20), vec![21, 22, 23, 24, 25, 26]);
    assert_eq!(indexes(&mut log).await, expected);
    drop(log);
    let mut reopened = open(dir.path(), &guard);
    assert_eq!(indexes(&mut reopened).await, expected, "after a restart");
}

#[tokio::test]
async fn a_gap_left_by_a_stop_is_purged_at_start_if_the_state_machine_covers_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let guard = Arc::new(AtomicU64::new(3));
    {
        let mut log = open(dir.path(), &guard);
        install_snapshot_at_20(&mut log).await;
        // Stopped before any further append.
    }
    let mut log = open(dir.path(), &guard);
    log.purge_gap_covered_by(Some(log_id(22)))
        .await
        .expect("purged");
    assert_eq!(indexes(&mut log).await, (Some(22), vec![23, 24, 25]));
    drop(log);
    let mut reopened = open(dir.path(), &guard);
    assert_eq!(indexes(&mut reopened).await, (Some(22), vec![23, 24, 25]));
}

#[tokio::test]
async fn a_gap_the_state_machine_does_not_cover_stops_the_start_with_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let guard = Arc::new(AtomicU64::new(3));
    {
        let mut log = open(dir.path(), &guard);
        install_snapshot_at_20(&mut log).await;
    }
    let mut log = open(dir.path(), &guard);
    let err = log
        .purge_gap_covered_by(Some(log_id(8)))
        .await
        .expect_err("refused");
    assert!(
        err.contains("gap up to entry 20") && err.contains("member remove"),
        "{err}"
    );
    // A log without a gap is left alone.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path(), &guard);
    log.blocking_append(blanks(1..=5)).await.expect("append");
    log.purge_gap_covered_by(Some(log_id(2)))
        .await
        .expect("no gap");
    assert_eq!(indexes(&mut log).await, (None, vec![1, 2, 3, 4, 5]));
}
