//! Raft snapshots are points recorded every --snapshot-count entries and exported only
//! when a follower needs one (state_machine.rs): what a member writes, hands out and
//! keeps, and that an export installs whole on another member.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload};
use raftkv_storage::mvcc::snapshot::SnapshotError;
use raftkv_storage::mvcc::{Command, MvccOptions, MvccStore, PutRequest, RangeRequest};
use raftkv_storage::raft_types::{Entry, LogId};
use raftkv_storage::state_machine::StateMachine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn put(index: u64) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Command::Put(PutRequest {
            key: Bytes::from(format!("key/{index:05}")),
            value: Bytes::from(vec![(index % 251) as u8; 100]),
            ..Default::default()
        })),
    }
}

struct Member {
    sm: StateMachine,
    guard: Arc<AtomicU64>,
    dir: tempfile::TempDir,
}

fn member() -> Member {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = MvccStore::open(&dir.path().join("kv"), MvccOptions::default()).expect("store");
    let guard = Arc::new(AtomicU64::new(0));
    let sm = StateMachine::open(store, &dir.path().join("snapshots"), guard.clone()).expect("sm");
    Member { sm, guard, dir }
}

async fn apply(m: &mut Member, indexes: std::ops::RangeInclusive<u64>) {
    m.sm.apply(indexes.map(put).collect::<Vec<_>>())
        .await
        .expect("apply");
}

fn snapshot_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("snapshots"))
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

async fn record_point(m: &mut Member) -> u64 {
    let meta =
        m.sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build")
            .meta;
    meta.last_log_id.expect("a point").index
}

fn key_count(store: &MvccStore) -> usize {
    store
        .range(&RangeRequest {
            key: Bytes::from_static(b"key/"),
            range_end: Bytes::from_static(b"key0"),
            count_only: true,
            ..Default::default()
        })
        .expect("range")
        .count as usize
}

#[tokio::test]
async fn recording_a_point_writes_no_snapshot_but_lets_the_log_go() {
    let mut m = member();
    assert!(
        m.sm.get_current_snapshot().await.expect("get").is_none(),
        "a snapshot before any point was recorded"
    );
    apply(&mut m, 1..=50).await;
    assert_eq!(record_point(&mut m).await, 50);
    assert_eq!(m.guard.load(Ordering::SeqCst), 50, "purge guard");
    assert!(
        snapshot_files(m.dir.path()).is_empty(),
        "a point wrote files: {:?}",
        snapshot_files(m.dir.path())
    );
}

#[tokio::test]
async fn a_follower_gets_the_present_exported_and_it_installs_whole_elsewhere() {
    let mut leader = member();
    apply(&mut leader, 1..=50).await;
    record_point(&mut leader).await;
    apply(&mut leader, 51..=80).await;

    let mut snapshot = leader
        .sm
        .get_current_snapshot()
        .await
        .expect("get")
        .expect("a snapshot");
    let index = snapshot.meta.last_log_id.expect("log id").index;
    assert_eq!(
        index, 80,
        "exported at the present, not at the recorded point"
    );
    let mut bytes = Vec::new();
    snapshot
        .snapshot
        .read_to_end(&mut bytes)
        .await
        .expect("read");
    assert_eq!(
        snapshot_files(leader.dir.path()),
        vec!["snapshot-1-80.snap".to_string()]
    );

    // Asked again with nothing new recorded: the same file, no second export.
    let again = leader
        .sm
        .get_current_snapshot()
        .await
        .expect("get")
        .expect("a snapshot");
    assert_eq!(again.meta, snapshot.meta);

    let mut follower = member();
    let mut incoming = follower.sm.begin_receiving_snapshot().await.expect("begin");
    incoming.write_all(&bytes).await.expect("write");
    incoming.flush().await.expect("flush");
    follower
        .sm
        .install_snapshot(&snapshot.meta, incoming)
        .await
        .expect("install");
    assert_eq!(key_count(follower.sm.store()), 80);
    assert_eq!(follower.sm.store().revision(), leader.sm.store().revision());
    assert_eq!(follower.guard.load(Ordering::SeqCst), 80, "purge guard");
    assert!(
        snapshot_files(follower.dir.path()).is_empty(),
        "the installed file was kept: {:?}",
        snapshot_files(follower.dir.path())
    );
    // What the follower hands out in turn is its own export, at the installed point.
    let handed = follower
        .sm
        .get_current_snapshot()
        .await
        .expect("get")
        .expect("a snapshot");
    assert_eq!(handed.meta, snapshot.meta);
}

#[tokio::test]
async fn a_newer_point_retires_the_older_file_and_the_next_export_is_not_below_it() {
    let mut m = member();
    apply(&mut m, 1..=20).await;
    record_point(&mut m).await;
    let mut first =
        m.sm.get_current_snapshot()
            .await
            .expect("get")
            .expect("snap");
    first.snapshot.ready().await.expect("export");
    assert_eq!(
        snapshot_files(m.dir.path()),
        vec!["snapshot-1-20.snap".to_string()]
    );
    apply(&mut m, 21..=30).await;
    assert_eq!(record_point(&mut m).await, 30);
    assert!(
        snapshot_files(m.dir.path()).is_empty(),
        "the file older than the point stayed: {:?}",
        snapshot_files(m.dir.path())
    );
    let next =
        m.sm.get_current_snapshot()
            .await
            .expect("get")
            .expect("snap");
    assert_eq!(next.meta.last_log_id.expect("log id").index, 30);
}

#[tokio::test]
async fn snapshot_files_left_from_before_a_restart_are_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snapshots = dir.path().join("snapshots");
    std::fs::create_dir_all(&snapshots).expect("mkdir");
    for name in [
        "snapshot-1-20.snap",
        "snapshot-1-30.snap.tmp",
        "incoming.snap.tmp",
    ] {
        std::fs::write(snapshots.join(name), b"old").expect("write");
    }
    let store = MvccStore::open(&dir.path().join("kv"), MvccOptions::default()).expect("store");
    let mut sm = StateMachine::open(store, &snapshots, Arc::new(AtomicU64::new(0))).expect("open");
    assert_eq!(std::fs::read_dir(&snapshots).expect("dir").count(), 0);
    assert!(sm.get_current_snapshot().await.expect("get").is_none());
}

#[test]
fn an_export_stops_soon_after_it_is_cancelled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = MvccStore::open(dir.path(), MvccOptions::default()).expect("store");
    for i in 0..10_000u32 {
        store
            .apply(
                &Command::Put(PutRequest {
                    key: Bytes::from(format!("k/{i:05}")),
                    value: Bytes::from_static(b"v"),
                    ..Default::default()
                }),
                &raftkv_storage::mvcc::AppliedMeta::default(),
            )
            .expect("apply")
            .expect("put");
    }
    let pin = store.pin_for_export();
    let point = pin.point().expect("point");
    let mut out = Vec::new();
    let cancelled = pin.export(&point, &mut out, &AtomicBool::new(true));
    assert!(
        matches!(cancelled, Err(SnapshotError::Cancelled)),
        "{cancelled:?}"
    );
    let mut whole = Vec::new();
    pin.export(&point, &mut whole, &AtomicBool::new(false))
        .expect("export");
    assert!(
        out.len() < whole.len() / 2,
        "a cancelled export wrote {} of {} bytes",
        out.len(),
        whole.len()
    );
}
