//! Leader transfer (MoveLeader): one at a time, the target asked to campaign in the
//! leader's term.

use std::sync::Arc;
use std::time::Duration;

use raftkv_storage::raft_types::NodeId;

use super::node::Node;
use crate::errors::ApiError;
use crate::ids::hex;
use crate::peer::{ForwardError, ForwardReply, ForwardRequest, ForwardResponse};

impl Node {
    /// Hands leadership to `target` (etcd's MoveLeader). openraft 0.9 has no transfer:
    /// the leader stops its heartbeats until the followers' leader lease has run out,
    /// then asks the target to stand for election, which it wins before any other
    /// follower's own (longer) election timeout fires. Heartbeats are always restored.
    ///
    /// The transfer runs in a task of its own: a caller that gives up must not leave
    /// heartbeats and lease reads off.
    pub async fn move_leader(self: &Arc<Self>, target: NodeId) -> Result<(), ApiError> {
        let node = self.clone();
        tokio::spawn(async move { node.transfer_leadership(target).await })
            .await
            .unwrap_or_else(|e| Err(ApiError::Internal(format!("leader transfer: {e}"))))
    }

    pub(super) async fn transfer_leadership(&self, target: NodeId) -> Result<(), ApiError> {
        // One transfer at a time: each turns lease reads off and back on. Taken first,
        // so that a transfer queued behind another sees who leads once it is over.
        let _one_at_a_time = self.transfer.lock().await;
        if !self.is_leader() {
            return Err(ApiError::NotLeader);
        }
        if target == self.id {
            return Ok(());
        }
        let members = self.members();
        let Some((_, member, false)) = members.iter().find(|(id, _, _)| *id == target) else {
            return Err(ApiError::BadLeaderTransferee);
        };
        let url = member
            .peer_urls
            .first()
            .cloned()
            .ok_or(ApiError::BadLeaderTransferee)?;
        // The target will campaign without waiting out the lease its acknowledgements
        // promised this leader: no lease reads from now on in this term (openraft
        // patch, PATCH.md "Lease reads"); reads meanwhile take a heartbeat round.
        self.raft
            .runtime_config()
            .no_lease_read_through_term(u64::MAX);
        // The followers' lease runs out 2× the election timeout after the last
        // heartbeat; their own timers fire 1× to 2× after that. The target stands for
        // election a third of the way into that window.
        let lease = Duration::from_millis(self.config.election_timeout_ms * 2);
        let margin = Duration::from_millis(self.config.election_timeout_ms / 3);
        self.raft.runtime_config().heartbeat(false);
        tokio::time::sleep(lease + margin).await;
        // The target campaigns only if its vote is still of this term.
        let term = self.term();
        let asked = self
            .peers
            .forward(&url, &ForwardRequest::ElectInTerm { term }, lease)
            .await;
        let moved = match asked {
            Ok(Ok(_)) => self
                .raft
                .wait(Some(lease * 3))
                .metrics(|m| m.current_leader == Some(target), "leader transfer")
                .await
                .is_ok(),
            _ => false,
        };
        self.raft.runtime_config().heartbeat(true);
        // Lease reads again from the next term on: in this one, a transfer that failed
        // may still have the target campaign.
        self.raft.runtime_config().no_lease_read_through_term(term);
        if moved {
            tracing::info!(to = %hex(target), "leadership moved");
            Ok(())
        } else {
            Err(ApiError::LeaderTransferTimeout)
        }
    }
}

/// What a member asked to stand for election answers.
pub(super) fn electing(asked: Result<(), openraft::error::Fatal<NodeId>>) -> ForwardReply {
    match asked {
        Ok(()) => Ok(ForwardResponse::Electing),
        Err(_) => Err(ForwardError::Api(ApiError::Stopped)),
    }
}
