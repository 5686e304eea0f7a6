//! openraft's own conformance suite for log storage and state machines, run against
//! raftkv's WAL-backed log and engine-backed state machine.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use raftkv_storage::mvcc::{MvccOptions, MvccStore};
use raftkv_storage::raft_log::RaftLogStore;
use raftkv_storage::raft_types::{StorageError, TypeConfig};
use raftkv_storage::state_machine::StateMachine;
use raftkv_storage::wal::WalOptions;

struct Builder;

impl StoreBuilder<TypeConfig, RaftLogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, RaftLogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        // The suite purges without snapshots: no guard.
        let guard = Arc::new(AtomicU64::new(u64::MAX));
        let options = WalOptions {
            segment_size_bytes: 1 << 20,
            max_record_size_bytes: 256 << 10,
            ..WalOptions::default()
        };
        let (log, _) =
            RaftLogStore::open(&dir.path().join("log"), options, guard.clone()).expect("log opens");
        let store =
            MvccStore::open(&dir.path().join("kv"), MvccOptions::default()).expect("store opens");
        let sm = StateMachine::open(store, &dir.path().join("snap"), guard.clone())
            .expect("state machine opens");
        // open() sets the guard to what the engine holds; the suite purges freely.
        guard.store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
    Suite::test_all(Builder).expect("openraft's storage suite passes");
}
