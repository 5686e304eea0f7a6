//! The leader's lease clocks: when each lease expires, keep-alives, and revoking expired
//! leases through Raft.
//!
//! Expiry is decided by the leader alone and applied through Raft (a LeaseRevoke entry),
//! so every member deletes a lease's keys at the same revision. Clocks live in memory
//! only: a new leader restarts every lease's clock from its (checkpointed or granted)
//! TTL, which extends leases across a leader change as etcd does. Followers hold no
//! clocks and never revoke.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use raftkv_storage::mvcc::{Command, CommandResponse, CommandResult, LeaseId, MvccStore};

/// etcd's minimum TTL with its default timing: ceil(1.5 × election timeout) = 2 s.
pub const MIN_LEASE_TTL_S: i64 = 2;
/// Leases revoked per check at most: etcd's 1000 per second.
const MAX_REVOKES_PER_CHECK: usize = 500;

#[derive(Default)]
pub struct LeaseKeeper {
    inner: Mutex<Clocks>,
}

#[derive(Default)]
struct Clocks {
    /// The term these clocks were started in; 0 when this member is not the leader.
    term: u64,
    expiry: HashMap<LeaseId, Instant>,
}

fn ttl_of(lease: &raftkv_storage::mvcc::Lease) -> i64 {
    if lease.remaining_ttl_s > 0 {
        lease.remaining_ttl_s
    } else {
        lease.ttl_s
    }
}

/// What a write does to the leader's lease clocks: only grants and revokes move them.
#[derive(Debug, Clone, Copy)]
pub enum ClockChange {
    Grant { id: LeaseId, ttl_s: i64 },
    Revoke { id: LeaseId },
}

impl ClockChange {
    /// None for every write that leaves the clocks alone (all but grants and revokes).
    pub fn of(command: &Command) -> Option<ClockChange> {
        match *command {
            Command::LeaseGrant { id, ttl_s } => Some(ClockChange::Grant { id, ttl_s }),
            Command::LeaseRevoke { id } => Some(ClockChange::Revoke { id }),
            // On a user's behalf: what applying it answers says whether it ran.
            Command::As { ref command, .. } => ClockChange::of(command),
            _ => None,
        }
    }
}

impl LeaseKeeper {
    /// Drops the clock of a lease this leader revoked.
    pub fn forget(&self, id: LeaseId) {
        self.clocks().expiry.remove(&id);
    }

    fn clocks(&self) -> std::sync::MutexGuard<'_, Clocks> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called on the leader after a write it proposed was applied, with what the write
    /// does to the clocks (`ClockChange::of` the command, taken before proposing it).
    pub fn after_write(&self, change: ClockChange, result: &CommandResult) {
        let mut clocks = self.clocks();
        match change {
            ClockChange::Grant { id, ttl_s } => {
                if let Ok(CommandResponse::LeaseGrant { .. }) = result {
                    clocks
                        .expiry
                        .insert(id, Instant::now() + Duration::from_secs(ttl_s as u64));
                }
            }
            ClockChange::Revoke { id } => {
                clocks.expiry.remove(&id);
            }
        }
    }

    /// Resets a lease's clock to its full TTL; returns the TTL, or 0 if the lease is gone
    /// (etcd answers a keep-alive of an unknown lease with TTL 0).
    pub fn keep_alive(&self, store: &MvccStore, id: LeaseId) -> i64 {
        let Some(lease) = store.lease(id) else {
            self.clocks().expiry.remove(&id);
            return 0;
        };
        self.clocks()
            .expiry
            .insert(id, Instant::now() + Duration::from_secs(lease.ttl_s as u64));
        lease.ttl_s
    }

    /// (remaining TTL in seconds, granted TTL); remaining is -1 for an unknown lease.
    pub fn time_to_live(&self, store: &MvccStore, id: LeaseId) -> (i64, i64) {
        let Some(lease) = store.lease(id) else {
            return (-1, 0);
        };
        let mut clocks = self.clocks();
        let expiry = *clocks
            .expiry
            .entry(id)
            .or_insert_with(|| Instant::now() + Duration::from_secs(ttl_of(&lease) as u64));
        let remaining = expiry.saturating_duration_since(Instant::now()).as_secs() as i64;
        (remaining, lease.ttl_s)
    }

    /// Leader work for one check: starts clocks for leases this leader has not seen (a
    /// new term restarts them all) and returns the expired ones, at most
    /// MAX_REVOKES_PER_CHECK. A follower's clocks are cleared.
    pub fn check(&self, store: &MvccStore, leader_term: Option<u64>) -> Vec<LeaseId> {
        let mut clocks = self.clocks();
        let Some(term) = leader_term else {
            clocks.term = 0;
            clocks.expiry.clear();
            return Vec::new();
        };
        let now = Instant::now();
        if clocks.term != term {
            clocks.term = term;
            clocks.expiry.clear();
        }
        let leases = store.leases();
        let live: std::collections::HashSet<LeaseId> = leases.iter().map(|l| l.id).collect();
        clocks.expiry.retain(|id, _| live.contains(id));
        for lease in &leases {
            clocks
                .expiry
                .entry(lease.id)
                .or_insert_with(|| now + Duration::from_secs(ttl_of(lease) as u64));
        }
        let mut expired: Vec<(Instant, LeaseId)> = clocks
            .expiry
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, at)| (*at, *id))
            .collect();
        expired.sort();
        expired.truncate(MAX_REVOKES_PER_CHECK);
        expired.into_iter().map(|(_, id)| id).collect()
    }
}
