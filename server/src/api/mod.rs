//! etcd's v3 gRPC services, one file each. Handlers convert wire messages
//! (`convert.rs`), check them as etcd does, and hand them to the `Node`.

pub mod auth;
pub mod cluster;
pub mod concurrency;
pub mod convert;
pub mod credentials;
pub mod election;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod watch;

use raftkv_storage::MvccError;
use tonic::{Request, Status};

use crate::errors::ApiError;
use crate::member::node::Node;

/// etcd's --max-request-bytes default: a larger Put or Txn is refused.
pub const MAX_REQUEST_BYTES: usize = raftkv_proto::MAX_REQUEST_SIZE_BYTES;

/// Requests carrying `hasleader: true` metadata fail at once when there is no leader,
/// as etcd's interceptor does (the Kubernetes API server sets it on watches).
pub fn check_leader_metadata<T>(node: &Node, req: &Request<T>) -> Result<(), Status> {
    if wants_leader(req) && node.leader().is_none() {
        return Err(ApiError::NoLeader.status());
    }
    Ok(())
}

/// How often a `hasleader` stream checks that its member still has a leader.
const LEADER_CHECK_INTERVAL_MS: u64 = 500;
/// Checks in a row without a leader before a `hasleader` stream ends with "etcdserver:
/// no leader" (etcd: 3 election timeouts). 1 – 1.5 s: longer than an election after a
/// leader dies (about 0.5 s with the defaults), so a failover does not end the streams.
const LEADER_CHECKS_WITHOUT_LEADER: u32 = 3;

/// For a stream opened with `hasleader` metadata (the Kubernetes API server's watches,
/// etcd clients' keep-alives): `lost` resolves once the member has been without a leader
/// for `LEADER_CHECKS_WITHOUT_LEADER` checks in a row, and the stream then ends with
/// "etcdserver: no leader", as etcd's interceptor ends such streams, so that a client of
/// a member cut off from the cluster reconnects elsewhere instead of waiting on a silent
/// stream. For other streams it never resolves. One timer per such stream. (A single
/// `hasleader` read waits on `Node::leader_lost` instead: it fails at the first check
/// without a leader, where a long-lived stream tolerates an election.)
pub struct LeaderLossCheck {
    interval: Option<tokio::time::Interval>,
    checks_without_leader: u32,
}

impl LeaderLossCheck {
    pub fn new(needs_leader: bool) -> LeaderLossCheck {
        LeaderLossCheck {
            interval: needs_leader.then(|| {
                let mut t = tokio::time::interval(std::time::Duration::from_millis(
                    LEADER_CHECK_INTERVAL_MS,
                ));
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            }),
            checks_without_leader: 0,
        }
    }

    /// Resolves when the leader counts as lost. Cancel-safe (select! on it).
    pub async fn lost(&mut self, node: &Node) {
        let Some(interval) = self.interval.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            interval.tick().await;
            if node.leader().is_some() {
                self.checks_without_leader = 0;
                continue;
            }
            self.checks_without_leader += 1;
            if self.checks_without_leader >= LEADER_CHECKS_WITHOUT_LEADER {
                return;
            }
        }
    }
}

/// Whether the request carries `hasleader: true` metadata.
pub fn wants_leader<T>(req: &Request<T>) -> bool {
    req.metadata()
        .get("hasleader")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "true")
}

/// etcd measures the encoded request (inside its Raft envelope, a few bytes more).
pub fn request_size_ok(encoded_len_bytes: usize) -> Result<(), Status> {
    if encoded_len_bytes > MAX_REQUEST_BYTES {
        return Err(ApiError::Mvcc(MvccError::RequestTooLarge).status());
    }
    Ok(())
}
