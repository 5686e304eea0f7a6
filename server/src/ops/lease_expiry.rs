//! Lease expiry: on the leader, every `EXPIRY_CHECK_INTERVAL_MS`, the leases whose clocks
//! ran out (member/lease_clocks.rs) are revoked through Raft. Followers never revoke,
//! and a revoke is never forwarded: another member's clocks may say the lease is alive.

use std::sync::Arc;
use std::time::Duration;

use raftkv_storage::mvcc::Command;

/// How often the leader looks for expired leases: etcd's lessor looks every 500 ms too.
/// Every member's runtime wakes for it, and idle wake-ups are most of an idle member's
/// CPU, so it is no more often than etcd's.
const EXPIRY_CHECK_INTERVAL_MS: u64 = 500;

/// Runs for the life of the member: on the leader, revokes expired leases through Raft.
pub async fn run_expiry(node: Arc<crate::member::node::Node>) {
    let mut tick = tokio::time::interval(Duration::from_millis(EXPIRY_CHECK_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let leader_term = if node.is_leader() {
            Some(node.term())
        } else {
            None
        };
        let expired = node.leases.check(&node.store, leader_term);
        for id in expired {
            tracing::debug!(lease = id, "lease expired; revoking");
            // Revoked only here, on this leader: never forwarded to another member,
            // whose clocks may say the lease is alive.
            let revoke = Command::LeaseRevoke { id };
            let timeout = node.config.request_timeout();
            match tokio::time::timeout(timeout, node.propose_here(revoke)).await {
                Ok(Ok(_)) => {
                    node.leases.forget(id);
                }
                Ok(Err(e)) => {
                    tracing::warn!(lease = id, error = ?e, "revoking an expired lease failed; will retry");
                    break;
                }
                Err(_) => {
                    tracing::warn!(
                        lease = id,
                        "revoking an expired lease timed out; will retry"
                    );
                    break;
                }
            }
        }
    }
}
