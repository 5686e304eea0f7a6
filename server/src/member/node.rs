//! One raftkv member: the `Node` (its storage, its openraft instance, who leads) and
//! what it tells others about itself. Its jobs live beside it, one file each:
//! `startup.rs`, `join.rs`, `routing.rs` (writes, read indexes, what the leader serves),
//! `membership.rs`, `transfer.rs` and `quota.rs`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{Raft, ServerState};
use raftkv_proto::etcdserverpb::ResponseHeader;
use raftkv_storage::mvcc::MvccStore;
use raftkv_storage::raft_types::{Member, NodeId, TypeConfig};

use crate::config::ServerConfig;
use crate::limits::JOIN_TIMEOUT_MS;
use crate::member::lease_clocks::LeaseKeeper;
use crate::peer::pool::PeerClients;
use crate::peer::service::PeerHandler;
use crate::peer::{ForwardError, ForwardReply, ForwardRequest};
use crate::quorum::{fault_tolerance_of, voter_count};

pub struct Node {
    pub id: NodeId,
    pub name: String,
    pub(super) cluster_id: AtomicU64,
    pub raft: Raft<TypeConfig>,
    pub store: MvccStore,
    pub config: ServerConfig,
    pub peers: PeerClients,
    pub leases: LeaseKeeper,
    pub started: Instant,
    /// The cluster's join token; none for a cluster made before tokens existed.
    pub(super) join_token: std::sync::Mutex<Option<String>>,
    /// Held by a leader transfer (`move_leader`): one at a time.
    pub(super) transfer: tokio::sync::Mutex<()>,
    /// Nonces handed to joiners (join_token.rs).
    pub(super) challenges: crate::member::join_token::Challenges,
    pub(super) space: super::quota::SpaceCheck,
    /// The index of the last applied log entry (the state machine's).
    pub(super) applied_index: Arc<raftkv_storage::applied::AppliedIndex>,
    /// Who leads, and the way to it (leader_link.rs).
    pub(super) link: super::leader_link::LeaderLink,
    /// Read-index rounds and forwarded write batches (batching.rs).
    pub(super) coalescer: crate::member::batching::Coalescer,
    /// What this member knows each member durably held (rollback_guard.rs).
    pub floors: crate::member::rollback_guard::FloorTable,
    /// While set, the peer service refuses Raft RPCs and the member does not stand for
    /// election: a restarted member until peers confirm its data dir is current.
    pub(super) fenced: AtomicBool,
    /// This member's vote and log as they were when it restarted; none for a new one.
    pub restart_state: Option<crate::member::rollback_guard::LocalState>,
    /// The tokens Authenticate hands out (`--auth-token`).
    pub tokens: crate::auth::jwt::TokenKind,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the Raft log: {0}")]
    Wal(#[from] raftkv_storage::wal::WalError),
    #[error("the key space: {0}")]
    Store(#[from] raftkv_storage::StoreError),
    #[error("raft: {0}")]
    Raft(String),
    /// What the data dir holds contradicts itself: the disk lost data it had reported
    /// synced. Restarting cannot help; re-joining from the cluster does.
    #[error(
        "{detail}. This data dir lost data its disk had reported written, and it cannot be \
         trusted; the cluster still has everything. Remove this member (`etcdctl member \
         remove {member_id}`), empty {data_dir}, and start it again to re-join"
    )]
    Damaged {
        detail: String,
        member_id: String,
        data_dir: String,
    },
    #[error("{0}")]
    Config(String),
}

impl Node {
    /// Whether the peer service must refuse Raft RPCs (rollback_guard.rs).
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    /// Peers confirmed the data dir: take part in Raft fully (the election keeper,
    /// election.rs, waits for this too).
    pub fn lift_fence(&self) {
        self.fenced.store(false, Ordering::Release);
    }

    /// How many voters the cluster has and how many of them it can lose, and a warning
    /// when the count is even (an even count tolerates no more failures than one less).
    pub fn fault_tolerance(&self) -> (usize, usize, Option<String>) {
        let voters = voter_count(&self.raft.server_metrics().borrow().membership_config);
        fault_tolerance_of(voters)
    }

    pub fn self_member(&self) -> Member {
        Member {
            name: self.name.clone(),
            peer_urls: vec![self.config.peer_advertise_url()],
            client_urls: self.config.client_advertise_urls(),
            stay_learner: self.config.learner,
        }
    }

    pub fn cluster_id(&self) -> u64 {
        self.cluster_id.load(Ordering::SeqCst)
    }

    /// The leader this member follows, if any. A leader that has not heard from a
    /// quorum for two election timeouts counts as none (etcd's CheckQuorum): a
    /// partitioned leader must not make `hasleader` requests wait.
    pub fn leader(&self) -> Option<NodeId> {
        self.link.leader()
    }

    /// Resolves once this member has no leader (`leader` is None), checking every
    /// `LEADER_POLL_MS`. A `hasleader` read waiting on a read barrier races this.
    pub async fn leader_lost(&self) {
        while self.leader().is_some() {
            tokio::time::sleep(Duration::from_millis(super::leader_link::LEADER_POLL_MS)).await;
        }
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// The members as Raft knows them: (id, member, is_learner).
    pub fn members(&self) -> Vec<(NodeId, Member, bool)> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, m)| (*id, m.clone(), !voters.contains(id)))
            .collect()
    }

    pub fn member(&self, id: NodeId) -> Option<Member> {
        self.link.member(id)
    }

    /// The header every response carries.
    pub fn header(&self) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id(),
            member_id: self.id,
            revision: self.store.revision(),
            raft_term: self.term(),
        }
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        if let Err(e) = self.store.flush() {
            tracing::warn!(error = %e, "flushing the key space at shutdown");
        }
    }
}

impl PeerHandler for Node {
    fn id(&self) -> NodeId {
        self.id
    }

    fn is_fenced(&self) -> bool {
        Node::is_fenced(self)
    }

    fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    async fn serve_peer_request(&self, request: ForwardRequest) -> ForwardReply {
        match request {
            // A member may join through any member: a follower passes the challenge and
            // the join on to the leader, which issues the nonce and checks the proof.
            request @ (ForwardRequest::JoinChallenge
            | ForwardRequest::Join { .. }
            | ForwardRequest::PendingMember { .. })
                if !self.is_leader() =>
            {
                // As long as the joiner itself waits: adding a learner waits for it to
                // catch up.
                let timeout = Duration::from_millis(JOIN_TIMEOUT_MS);
                self.on_leader(request, timeout)
                    .await
                    .map_err(ForwardError::Api)
            }
            request => self.serve_forward(request).await,
        }
    }
}
