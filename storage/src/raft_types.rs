//! The Raft type configuration shared by the log, the state machine and the server.

use serde::{Deserialize, Serialize};

use crate::mvcc::{Command, CommandResult};

/// What Raft knows of a member: how to reach it and what to show for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Empty until the member has started (one added by MemberAdd, not yet joined).
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    /// Stays a learner until promoted by hand (MemberAdd with is_learner, or a member
    /// started with --learner); otherwise a joined learner is promoted once caught up.
    pub stay_learner: bool,
}

openraft::declare_raft_types!(
    /// raftkv's openraft types: commands in, command results out, snapshots as files.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::snapshot_data::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
