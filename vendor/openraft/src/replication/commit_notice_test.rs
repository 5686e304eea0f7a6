//! raftkv patch: a commit notice (`RaftNetwork::send_commit`) waits for the tasks woken
//! with the commit, and goes only when nothing that carries the committed id is next.
//!
//! The commit that wakes a replication stream also hands the entries to the state
//! machine, whose apply answers the client; the stream must let that run before its
//! notice's frame and socket write. These tests drive one replication stream on a
//! single-threaded runtime with a network that records what it is asked to send.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::core::sm::handle::SnapshotReader;
use crate::engine::testing::UTConfig;
use crate::error::InstallSnapshotError;
use crate::error::RPCError;
use crate::error::RaftError;
use crate::network::RPCOption;
use crate::raft::AppendEntriesRequest;
use crate::raft::AppendEntriesResponse;
use crate::raft::InstallSnapshotRequest;
use crate::raft::InstallSnapshotResponse;
use crate::raft::VoteRequest;
use crate::raft::VoteResponse;
use crate::replication::request::Replicate;
use crate::replication::request_id::RequestId;
use crate::replication::ReplicationCore;
use crate::replication::ReplicationHandle;
use crate::replication::ReplicationSessionId;
use crate::storage::LogFlushed;
use crate::storage::RaftLogStorage;
use crate::testing::log_id;
use crate::Config;
use crate::Entry;
use crate::EntryPayload;
use crate::LogId;
use crate::log_id_range::LogIdRange;
use crate::LogState;
use crate::OptionalSend;
use crate::RaftLogReader;
use crate::RaftNetwork;
use crate::RaftNetworkFactory;
use crate::StorageError;
use crate::Vote;

type Sent = Arc<Mutex<Vec<String>>>;
type Tx = mpsc::UnboundedSender<Replicate<UTConfig>>;

/// Records each AppendEntries ("append <entries> committed <index>") and each notice
/// ("notice committed <index>"); every AppendEntries succeeds.
struct RecordingNetwork {
    sent: Sent,
}

fn committed_index(rpc: &AppendEntriesRequest<UTConfig>) -> String {
    rpc.leader_commit.map_or("none".to_string(), |c| c.index.to_string())
}

impl RaftNetwork<UTConfig> for RecordingNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<UTConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, (), RaftError<u64>>> {
        let line = format!("append {} committed {}", rpc.entries.len(), committed_index(&rpc));
        self.sent.lock().unwrap().push(line);
        Ok(AppendEntriesResponse::Success)
    }

    async fn send_commit(
        &mut self,
        rpc: AppendEntriesRequest<UTConfig>,
        _option: RPCOption,
    ) -> Result<(), RPCError<u64, (), RaftError<u64>>> {
        self.sent.lock().unwrap().push(format!("notice committed {}", committed_index(&rpc)));
        Ok(())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<UTConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, (), RaftError<u64, InstallSnapshotError>>> {
        unreachable!("these tests send no snapshot")
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, (), RaftError<u64>>> {
        unreachable!("a replication stream does not vote")
    }
}

struct RecordingNetworkFactory;

impl RaftNetworkFactory<UTConfig> for RecordingNetworkFactory {
    type Network = RecordingNetwork;

    async fn new_client(&mut self, _target: u64, _node: &()) -> RecordingNetwork {
        unreachable!("the tests hand the stream its network")
    }
}

/// A log of blank entries of term 1, as long as asked; nothing is ever written to it.
#[derive(Clone)]
struct BlankLog;

impl RaftLogReader<UTConfig> for BlankLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<UTConfig>>, StorageError<u64>> {
        let start = match range.start_bound() {
            std::ops::Bound::Included(i) => *i,
            std::ops::Bound::Excluded(i) => i + 1,
            std::ops::Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            std::ops::Bound::Included(i) => i + 1,
            std::ops::Bound::Excluded(i) => *i,
            std::ops::Bound::Unbounded => unreachable!("replication reads bounded ranges"),
        };
        Ok((start..end)
            .map(|index| Entry {
                log_id: log_id(1, 0, index),
                payload: EntryPayload::Blank,
            })
            .collect())
    }
}

impl RaftLogStorage<UTConfig> for BlankLog {
    type LogReader = BlankLog;

    async fn get_log_state(&mut self) -> Result<LogState<UTConfig>, StorageError<u64>> {
        unreachable!()
    }

    async fn get_log_reader(&mut self) -> BlankLog {
        BlankLog
    }

    async fn save_vote(&mut self, _vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        unreachable!()
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        unreachable!()
    }

    async fn append<I>(&mut self, _entries: I, _callback: LogFlushed<UTConfig>) -> Result<(), StorageError<u64>>
    where I: IntoIterator<Item = Entry<UTConfig>> + OptionalSend {
        unreachable!()
    }

    async fn truncate(&mut self, _log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        unreachable!()
    }

    async fn purge(&mut self, _log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        unreachable!()
    }
}

/// A stream from leader 0 (term 1) to node 1, and what its network sent. The first
/// entries (0 and 1) are sent and answered, so no heartbeat is wanted any more.
async fn stream_past_its_first_entry() -> (ReplicationHandle<UTConfig>, Sent, mpsc::UnboundedReceiver<crate::core::notify::Notify<UTConfig>>) {
    let sent: Sent = Arc::default();
    let (tx_raft_core, rx_raft_core) = mpsc::unbounded_channel();
    let handle = ReplicationCore::<UTConfig, RecordingNetworkFactory, BlankLog>::spawn(
        1,
        ReplicationSessionId::new(Vote::new_committed(1, 0), None),
        Arc::new(Config::default().validate().unwrap()),
        None,
        None,
        RecordingNetwork { sent: sent.clone() },
        RecordingNetwork { sent: sent.clone() },
        BlankLog,
        SnapshotReader::closed(),
        tx_raft_core,
        tracing::Span::none(),
    );
    send_entries(&handle.tx_repl, None, 1);
    wait_for(&sent, 1).await;
    assert_eq!(take(&sent), vec!["append 2 committed none"]);
    (handle, sent, rx_raft_core)
}

/// Tells the stream to send the entries after `after` (all from index 0 if none) up to
/// `last`.
fn send_entries(tx: &Tx, after: Option<u64>, last: u64) {
    let prev = after.map(|index| log_id(1, 0, index));
    let range = LogIdRange::new(prev, Some(log_id(1, 0, last)));
    let data = Replicate::logs(RequestId::new_append_entries(last), range);
    tx.send(data).unwrap();
}

fn commit(tx: &Tx, index: u64) {
    tx.send(Replicate::Committed(Some(log_id(1, 0, index)))).unwrap();
}

async fn wait_for(sent: &Sent, n: usize) {
    for _ in 0..1000 {
        if sent.lock().unwrap().len() >= n {
            // Anything sent right after it would be sent by now as well.
            tokio::time::sleep(Duration::from_millis(20)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("sent only {:?}", sent.lock().unwrap());
}

fn take(sent: &Sent) -> Vec<String> {
    std::mem::take(&mut *sent.lock().unwrap())
}

fn single_threaded() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// The apply woken with the commit hands the stream the next entries before the stream
/// runs again: they carry the committed id, so no notice goes.
#[test]
fn no_notice_when_entries_woken_with_the_commit_are_next() {
    single_threaded().block_on(async {
        let (handle, sent, _rx) = stream_past_its_first_entry().await;
        commit(&handle.tx_repl, 1);
        let apply = handle.tx_repl.clone();
        tokio::spawn(async move { send_entries(&apply, Some(1), 2) });
        wait_for(&sent, 1).await;
        assert_eq!(take(&sent), vec!["append 1 committed 1"]);
    });
}

/// Commits that arrive while the tasks woken with the first one run go in one notice,
/// with the newest committed id.
#[test]
fn one_notice_for_the_commits_that_arrive_together() {
    single_threaded().block_on(async {
        let (handle, sent, _rx) = stream_past_its_first_entry().await;
        send_entries(&handle.tx_repl, Some(1), 3);
        wait_for(&sent, 1).await;
        assert_eq!(take(&sent), vec!["append 2 committed none"]);

        commit(&handle.tx_repl, 2);
        let apply = handle.tx_repl.clone();
        tokio::spawn(async move { commit(&apply, 3) });
        wait_for(&sent, 1).await;
        assert_eq!(take(&sent), vec!["notice committed 3"]);
    });
}
