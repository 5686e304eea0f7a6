//! The forwarded-request protocol: what a member asks the leader (or a peer) to do, and
//! the answers, as postcard-encoded values carried in peer frames. Plain data: it
//! must never reach into the member that serves it.

use std::collections::BTreeMap;

use bytes::Bytes;
use raftkv_proto::peer::Blob;
use raftkv_storage::mvcc::{Command, CommandResult, LeaseId};
use raftkv_storage::raft_types::{Member, NodeId};
use serde::{Deserialize, Serialize};

use crate::errors::ApiError;

/// A request only the leader serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardRequest {
    Write(Command),
    /// Writes a follower batched (member/batching.rs); answered one result each, in order.
    Writes(Vec<Command>),
    /// The leader's read index: the log index a linearizable read must wait for.
    ReadIndex,
    LeaseKeepAlive {
        id: LeaseId,
    },
    LeaseTimeToLive {
        id: LeaseId,
        keys: bool,
    },
    /// A joining member asks for a nonce to prove it knows the join token.
    JoinChallenge,
    /// A new member asks to be added (as a learner, then promoted to voter).
    Join {
        id: NodeId,
        member: Member,
        /// HMAC of the token over the member and a nonce (member/join_token.rs); none when
        /// the joiner has no token.
        proof: Option<JoinProof>,
    },
    /// Remove a member (voter or learner).
    RemoveMember {
        id: NodeId,
    },
    /// Promote a learner to voter.
    PromoteMember {
        id: NodeId,
    },
    /// Add a member that has not started yet (etcd's MemberAdd): a learner, promoted
    /// once it has joined and caught up unless `learner` says it stays one.
    AddMember {
        peer_urls: Vec<String>,
        learner: bool,
    },
    /// Change a member's peer URLs (etcd's MemberUpdate).
    UpdateMember {
        id: NodeId,
        peer_urls: Vec<String>,
    },
    /// A starting member with an empty data dir asks whether MemberAdd reserved an id
    /// for its peer URL.
    PendingMember {
        peer_urls: Vec<String>,
    },
    /// The leader's record of what members durably hold (member/rollback_guard.rs); served by
    /// the receiving member.
    Floors(Floors),
    /// A restarting member asks what the receiver knows it held (member/rollback_guard.rs).
    FloorOf {
        member: NodeId,
    },
    /// Sent by the leader to the member it hands leadership to: stand for election now
    /// (served by that member, not forwarded to the leader), honoured only while the
    /// receiver's vote is still of `term`: a late one must not start a campaign against
    /// a later leader that counts on the receiver's acknowledgements for its read lease
    /// (member/transfer.rs, `move_leader`).
    ElectInTerm {
        term: u64,
    },
    /// A voter that heard from no leader asks whether the receiver would vote for it now
    /// (member/election.rs); answered by the receiver, changing nothing there.
    PreVote {
        candidate: NodeId,
        last_log: Option<(u64, u64)>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardResponse {
    /// What applying the write answered, and the log index it was applied at.
    Write(CommandResult, u64),
    /// For `Writes`: each write's result and log index, or why the leader did not take it.
    Writes(Vec<Result<(CommandResult, u64), ForwardError>>),
    ReadIndex(u64),
    LeaseKeepAlive {
        ttl_s: i64,
    },
    LeaseTimeToLive {
        ttl_s: i64,
        granted_ttl_s: i64,
        keys: Vec<Bytes>,
    },
    JoinChallenge {
        nonce: Vec<u8>,
    },
    Join {
        cluster_id: u64,
    },
    /// A membership change was committed: the members as the leader then knows them
    /// (id, member, is_learner).
    MembershipChanged(Vec<(NodeId, Member, bool)>),
    /// An election was started.
    Electing,
    /// Floors were merged.
    FloorsTaken,
    /// What the receiver knows a member durably held, if anything.
    Floor(Option<Floor>),
    /// MemberAdd's new member id, and the members after the change.
    MemberAdded {
        id: NodeId,
        members: Vec<(NodeId, Member, bool)>,
    },
    /// The id MemberAdd reserved for these peer URLs, if any.
    PendingMember {
        id: Option<NodeId>,
    },
    /// The answer to a `PreVote`.
    PreVote {
        granted: bool,
    },
}

/// A joiner's answer to a join challenge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinProof {
    pub nonce: Vec<u8>,
    pub mac: Vec<u8>,
}

/// What the leader answers a forwarded request with. `NotLeader` tells the sender to
/// look for the leader again: the request was not executed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardError {
    NotLeader,
    Api(ApiError),
}

pub type ForwardReply = Result<ForwardResponse, ForwardError>;

pub fn encode<T: Serialize>(value: &T) -> Blob {
    Blob {
        data: Bytes::from(postcard::to_allocvec(value).unwrap_or_default()),
    }
}

pub fn decode<T: for<'de> Deserialize<'de>>(blob: &Blob) -> Result<T, tonic::Status> {
    postcard::from_bytes(&blob.data)
        .map_err(|e| tonic::Status::invalid_argument(format!("raftkv peer: bad payload: {e}")))
}

/// What is known to have been durable on one member: a lower bound of its state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Floor {
    /// Its vote was at least this term.
    pub term: u64,
    /// It durably held the log up to this log id, (term, index), in Raft's order.
    pub matched: Option<(u64, u64)>,
}

impl Floor {
    pub fn merge(&mut self, other: &Floor) -> bool {
        let before = *self;
        self.term = self.term.max(other.term);
        self.matched = self.matched.max(other.matched);
        *self != before
    }
}

/// Every member's floor, as this member knows them.
pub type Floors = BTreeMap<NodeId, Floor>;
