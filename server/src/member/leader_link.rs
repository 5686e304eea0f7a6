//! The way to the leader: who leads as this member sees it, the leader's read index when
//! this member leads, and a request sent to the leader when another member leads.
//!
//! It sits below the `Node`: the batching tasks (batching.rs) use it without holding
//! the Node. It never proposes a write and never serves a forwarded request; it must
//! never send a write again once it may have reached the leader (ARCHITECTURE.md,
//! invariant 8).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{Raft, ServerState};
use raftkv_storage::raft_types::{Member, NodeId, TypeConfig};

use crate::errors::ApiError;
use crate::ids::hex;
use crate::peer::pool::PeerClients;
use crate::peer::{ForwardError, ForwardReply, ForwardRequest, ForwardResponse};
use crate::quorum::voter_count;

/// Pause between attempts to find a leader.
pub const LEADER_POLL_MS: u64 = 20;

/// Where a request that only the leader serves must go, as this member sees it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// This member leads: serve it here.
    Here,
    /// Another member leads: forward it there.
    Remote(NodeId),
    /// No leader is known: wait and look again.
    Unknown,
}

#[derive(Clone)]
pub struct LeaderLink {
    pub id: NodeId,
    raft: Raft<TypeConfig>,
    peers: PeerClients,
    /// A leader that has not heard from a quorum for this long does not count as one.
    quorum_stale_ms: u64,
    /// Set by the election keeper (election.rs) while this member, not leading, has
    /// heard from no leader for its election timeout: the leader it last followed no
    /// longer counts (as etcd's pre-candidate has none).
    leaderless: Arc<AtomicBool>,
}

impl LeaderLink {
    pub fn new(
        id: NodeId,
        raft: Raft<TypeConfig>,
        peers: PeerClients,
        election_timeout_ms: u64,
    ) -> Self {
        LeaderLink {
            id,
            raft,
            peers,
            quorum_stale_ms: 2 * election_timeout_ms,
            leaderless: Arc::default(),
        }
    }

    /// The leader as this member knows it. A leader that has not heard from a quorum for
    /// two election timeouts reports none (it is likely partitioned away), and so does a
    /// follower that has not heard from its leader for its election timeout.
    pub fn leader(&self) -> Option<NodeId> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.state != ServerState::Leader && self.leaderless.load(Ordering::Acquire) {
            return None;
        }
        if m.state == ServerState::Leader {
            let voters = voter_count(&m.membership_config);
            if voters > 1
                && m.millis_since_quorum_ack
                    .is_none_or(|ms| ms > self.quorum_stale_ms)
            {
                return None;
            }
        }
        m.current_leader
    }

    /// Sets whether the leader last followed no longer counts; what it was before.
    pub fn set_leaderless(&self, leaderless: bool) -> bool {
        self.leaderless.swap(leaderless, Ordering::AcqRel)
    }

    pub fn route(&self) -> Route {
        match self.leader() {
            Some(leader) if leader == self.id => Route::Here,
            Some(leader) => Route::Remote(leader),
            None => Route::Unknown,
        }
    }

    /// A member of the current membership, learners included.
    pub fn member(&self, id: NodeId) -> Option<Member> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config.membership().get_node(&id).cloned()
    }

    /// The read index, asked of openraft on this member; `NotLeader` if it does not lead.
    pub async fn read_index_here(&self) -> ForwardReply {
        match self.raft.get_read_log_id().await {
            Ok((read, _)) => Ok(ForwardResponse::ReadIndex(read.map_or(0, |l| l.index))),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                Err(ForwardError::NotLeader)
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                Err(ForwardError::Api(ApiError::Timeout))
            }
            Err(RaftError::Fatal(_)) => Err(ForwardError::Api(ApiError::Stopped)),
        }
    }

    /// Sends `request` to `leader`, another member, within `remaining`. `NotLeader` means
    /// nothing was done there and the sender should look for the leader again: that
    /// member no longer leads, or the request never left this one. A write that may have
    /// reached the leader is never reported so: its outcome is unknown.
    pub async fn forward(
        &self,
        leader: NodeId,
        request: &ForwardRequest,
        remaining: Duration,
    ) -> ForwardReply {
        debug_assert_ne!(leader, self.id, "a request for this member is served here");
        let Some(url) = self
            .member(leader)
            .and_then(|m| m.peer_urls.first().cloned())
        else {
            return Err(ForwardError::Api(ApiError::NoLeader));
        };
        match self.peers.forward(&url, request, remaining).await {
            Ok(reply) => reply,
            Err(status) => {
                // A write that may have reached the leader must not be sent twice; one
                // that never left (no connection) may, and so may anything else.
                let never_sent = status.code() == tonic::Code::Unavailable
                    && status.message().contains("connect");
                let is_write = matches!(
                    request,
                    ForwardRequest::Write(_) | ForwardRequest::Writes(_)
                );
                if is_write && !never_sent {
                    tracing::warn!(leader = %hex(leader), error = %status.message(), "forwarded write: outcome unknown");
                    return Err(ForwardError::Api(ApiError::TimeoutDueToLeaderFail));
                }
                Err(ForwardError::NotLeader)
            }
        }
    }

    /// Why a request that needs the leader ran out of time.
    pub fn out_of_time(&self) -> ApiError {
        if self.leader().is_none() {
            ApiError::NoLeader
        } else {
            ApiError::Timeout
        }
    }

    /// Runs `attempt` with the route to the leader until it is answered, `deadline`
    /// passes, or it fails for a reason other than leadership: after each `NotLeader`
    /// (nothing was done) it looks for the leader again, at once if the route changed
    /// meanwhile (this member took over while its batch was on the way, say), else after
    /// `LEADER_POLL_MS`. `attempt` is never called without a leader.
    pub async fn until_served<T, F, Fut>(
        &self,
        deadline: Instant,
        mut attempt: F,
    ) -> Result<T, ApiError>
    where
        F: FnMut(Route, Duration) -> Fut,
        Fut: Future<Output = Result<T, ForwardError>>,
    {
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(self.out_of_time());
            }
            let route = self.route();
            let outcome = match route {
                Route::Unknown => Err(ForwardError::NotLeader),
                route => attempt(route, remaining).await,
            };
            match outcome {
                Ok(done) => return Ok(done),
                Err(ForwardError::Api(e)) => return Err(e),
                Err(ForwardError::NotLeader) => {}
            }
            if self.route() == route {
                tokio::time::sleep(Duration::from_millis(LEADER_POLL_MS).min(remaining)).await;
            }
        }
    }
}
