//! etcd's MVCC key space on an ordered key-value engine (lsm-tree): revisions, versions, tombstones, Range and Txn,
//! leases, compaction, the watch feed and snapshots.
//!
//! One job per file, as in etcd's mvcc package:
//! - `types.rs`: the plain data (requests, responses, key-values, events)
//! - `engine.rs`: the ordered key-value engine (lsm-tree) and the few calls the store makes
//! - `keys.rs`: how that data is laid out in the engine
//! - `state.rs`: what a store holds in memory (counters, caches, feed, locks)
//! - `reader.rs`: single-record reads everything shares (a counter, a key's version)
//! - `kvstore.rs`: the store: opening it, its counters and read entry points
//! - `latest.rs`: each recently used key's newest version, in memory
//! - `range.rs`: which versions a read sees, and etcd's Range semantics
//! - `kvstore_txn.rs`: the write path (Put, DeleteRange, Txn, leases, Compact), which
//!   commits a transaction's batch to the engine
//! - `publish.rs`: then makes it visible: caches, the watch feed, the revision
//! - `validate.rs`: request checks etcd makes before proposing
//! - `compactor.rs`: the handle to the compaction thread (wake, wait, stop)
//! - `compaction.rs`: dropping history below the compacted revision, in small batches
//! - `hash.rs`: a checksum of the key space at a revision (HashKV)
//! - `watch.rs`: the change feed watchers read, from history and then live
//! - `snapshot.rs`: a consistent, checksummed image of the store, out and back in
//!
//! The store is derived state: it never fsyncs on a request path and can be rebuilt
//! from the Raft log.

pub mod compaction;
mod compactor;
pub mod engine;
pub mod hash;
pub mod import;
pub mod keys;
pub mod kvstore;
mod kvstore_txn;
pub mod latest;
mod publish;
pub mod range;
mod reader;
pub mod snapshot;
mod state;
pub mod types;
pub mod validate;
pub mod watch;

use serde::{Deserialize, Serialize};

use crate::error::MvccError;
pub use kvstore::{AppliedMeta, MvccStore};
pub use kvstore_txn::MAX_LEASE_TTL_S;
pub use state::MvccOptions;
pub use types::*;

/// A state machine command: what one Raft entry asks the store to do. Everything that
/// depends on time or chance (lease ids, expiry) is decided before proposing, so that
/// applying a command is deterministic on every member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact {
        revision: Revision,
    },
    LeaseGrant {
        id: LeaseId,
        ttl_s: i64,
    },
    LeaseRevoke {
        id: LeaseId,
    },
    LeaseCheckpoint {
        id: LeaseId,
        remaining_ttl_s: i64,
    },
    /// Raise (`activate`) or disarm an alarm.
    Alarm {
        activate: bool,
        alarm: AlarmMember,
    },
    /// A change of users, roles or whether authentication is on (auth.rs). Last, so
    /// that the entries of every other kind decode as before.
    Auth(crate::auth::AuthCommand),
    /// `command` on behalf of a user, checked against its permissions when applied
    /// (auth/guard.rs), as etcd's auth applier does.
    As {
        caller: crate::auth::Caller,
        command: Box<Command>,
    },
}

impl Command {
    /// Whether applying this may grow the database: refused while NOSPACE is raised
    /// (etcd's capped applier: puts, txns with a put in either branch, lease grants).
    pub fn needs_space(&self) -> bool {
        match self {
            Command::Put(_) | Command::LeaseGrant { .. } => true,
            Command::Txn(txn) => txn_puts(txn),
            Command::As { command, .. } => command.needs_space(),
            _ => false,
        }
    }
}

impl Command {
    /// About how many bytes the command carries (keys, values, a fixed overhead): for
    /// limits on batches, not an exact encoded size.
    pub fn size_bytes(&self) -> usize {
        const OVERHEAD_BYTES: usize = 32;
        match self {
            Command::Put(p) => OVERHEAD_BYTES + p.key.len() + p.value.len(),
            Command::DeleteRange(d) => OVERHEAD_BYTES + d.key.len() + d.range_end.len(),
            Command::Txn(t) => txn_size_bytes(t),
            Command::As { caller, command } => caller.user.len() + command.size_bytes(),
            _ => OVERHEAD_BYTES,
        }
    }
}

fn txn_size_bytes(txn: &TxnRequest) -> usize {
    const OVERHEAD_BYTES: usize = 32;
    let compares: usize = txn
        .compare
        .iter()
        .map(|c| {
            let value = match &c.operand {
                Some(CompareOperand::Value(v)) => v.len(),
                _ => 8,
            };
            OVERHEAD_BYTES + c.key.len() + c.range_end.len() + value
        })
        .sum();
    let ops: usize = txn
        .success
        .iter()
        .chain(&txn.failure)
        .map(|op| match op {
            RequestOp::Range(r) => OVERHEAD_BYTES + r.key.len() + r.range_end.len(),
            RequestOp::Put(p) => OVERHEAD_BYTES + p.key.len() + p.value.len(),
            RequestOp::DeleteRange(d) => OVERHEAD_BYTES + d.key.len() + d.range_end.len(),
            RequestOp::Txn(inner) => txn_size_bytes(inner),
        })
        .sum();
    OVERHEAD_BYTES + compares + ops
}

fn txn_puts(txn: &TxnRequest) -> bool {
    txn.success.iter().chain(&txn.failure).any(|op| match op {
        RequestOp::Put(_) => true,
        RequestOp::Txn(inner) => txn_puts(inner),
        _ => false,
    })
}

/// What applying a command answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    /// A blank or membership entry: nothing to answer.
    Applied,
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact {
        revision: Revision,
    },
    LeaseGrant {
        revision: Revision,
        id: LeaseId,
        ttl_s: i64,
    },
    LeaseRevoke {
        revision: Revision,
    },
    LeaseCheckpoint {
        revision: Revision,
    },
    /// The alarms raised (activate) or disarmed (deactivate) by the command.
    Alarm {
        alarms: Vec<AlarmMember>,
    },
    /// An auth change applied: the key space's revision (unchanged) and the auth
    /// revision after it.
    Auth {
        revision: Revision,
        auth_revision: u64,
    },
    /// `AuthCommand::Authenticate` applied: the simple token it handed out (empty
    /// when none was asked for) and the auth revision it was applied at. Last, so
    /// that answers of every other kind decode as before.
    Authenticated {
        token: String,
        auth_revision: u64,
    },
}

pub type CommandResult = Result<CommandResponse, MvccError>;

/// The events of one changing revision, as published to live watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventBatch {
    pub revision: Revision,
    /// Empty only in the batch an installed snapshot sends: the store moved to
    /// `revision` without live events (its events are in history).
    pub events: Vec<Event>,
}
