//! Membership changes on the leader: joins, MemberAdd (an id reserved until the
//! member starts), update, remove and promote, each through openraft.

use std::collections::{BTreeMap, BTreeSet};

use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use raftkv_storage::raft_types::{Member, NodeId};

use super::node::Node;
use crate::errors::ApiError;
use crate::ids::hex;
use crate::member::identity::random_id;
use crate::peer::{ForwardError, ForwardReply, ForwardResponse};

/// How far behind the leader's log a learner may be and still be promoted (etcd:
/// 90% of the leader's progress; here a fixed number of entries).
pub(super) const LEARNER_READY_LAG_ENTRIES: u64 = 1_000;

impl Node {
    pub(super) async fn serve_join(&self, id: NodeId, member: Member) -> ForwardReply {
        let clash = self.members().into_iter().find(|(other, m, _)| {
            *other != id && m.peer_urls.iter().any(|u| member.peer_urls.contains(u))
        });
        if let Some((existing, m, _)) = clash {
            return Err(ForwardError::Api(ApiError::RejoinWithLostState {
                existing: hex(existing),
                url: m.peer_urls.join(","),
            }));
        }
        let existing = self.members().into_iter().find(|(m, _, _)| *m == id);
        let already_voter = existing.as_ref().is_some_and(|(_, _, learner)| !learner);
        if !already_voter {
            let mut member = member;
            if let Some((_, reserved, _)) = &existing {
                // Added by MemberAdd: it starts now, with its name and client URLs.
                member.stay_learner |= reserved.stay_learner;
                tracing::info!(member_id = %hex(id), name = %member.name, "a member added by MemberAdd has started");
                if let Err(e) = self
                    .raft
                    .change_membership(
                        ChangeMembers::SetNodes(BTreeMap::from([(id, member.clone())])),
                        true,
                    )
                    .await
                {
                    return Err(raft_write_error(e));
                }
            } else {
                tracing::info!(member_id = %hex(id), name = %member.name, peer = ?member.peer_urls, "adding a member as a learner");
            }
            let stay_learner = member.stay_learner;
            // Returns once the learner has caught up with the leader's log.
            if let Err(e) = self.raft.add_learner(id, member, true).await {
                return Err(raft_write_error(e));
            }
            if stay_learner {
                tracing::info!(member_id = %hex(id), "the learner caught up; it stays a learner until promoted");
                return Ok(ForwardResponse::Join {
                    cluster_id: self.cluster_id(),
                });
            }
            tracing::info!(member_id = %hex(id), "the learner caught up; promoting it to voter");
            match self
                .raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
            {
                Ok(_) => {}
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                    return Err(ForwardError::NotLeader)
                }
                Err(e) => return Err(ForwardError::Api(ApiError::Internal(e.to_string()))),
            }
        }
        Ok(ForwardResponse::Join {
            cluster_id: self.cluster_id(),
        })
    }

    /// etcd's MemberAdd: reserves an id for a member that will start with `--join` and
    /// these peer URLs. It is a learner until it has started and caught up.
    pub(super) async fn serve_add(&self, peer_urls: Vec<String>, learner: bool) -> ForwardReply {
        if peer_urls.is_empty() {
            return Err(ForwardError::Api(ApiError::InvalidArgument(
                "etcdserver: member peer URLs are missing".into(),
            )));
        }
        let clash = self
            .members()
            .into_iter()
            .any(|(_, m, _)| m.peer_urls.iter().any(|u| peer_urls.contains(u)));
        if clash {
            return Err(ForwardError::Api(ApiError::PeerUrlExists));
        }
        let id = random_id();
        let member = Member {
            name: String::new(),
            peer_urls,
            client_urls: Vec::new(),
            stay_learner: learner,
        };
        tracing::info!(member_id = %hex(id), peer = ?member.peer_urls, learner, "member added; waiting for it to start");
        if let Err(e) = self.raft.add_learner(id, member, false).await {
            return Err(raft_write_error(e));
        }
        Ok(ForwardResponse::MemberAdded {
            id,
            members: self.members(),
        })
    }

    /// etcd's MemberUpdate: new peer URLs for a member.
    pub(super) async fn serve_update(&self, id: NodeId, peer_urls: Vec<String>) -> ForwardReply {
        let members = self.members();
        let Some((_, current, _)) = members.iter().find(|(m, _, _)| *m == id) else {
            return Err(ForwardError::Api(ApiError::MemberNotFound));
        };
        let clash = members
            .iter()
            .any(|(other, m, _)| *other != id && m.peer_urls.iter().any(|u| peer_urls.contains(u)));
        if clash {
            return Err(ForwardError::Api(ApiError::PeerUrlExists));
        }
        let mut member = current.clone();
        member.peer_urls = peer_urls;
        tracing::info!(member_id = %hex(id), peer = ?member.peer_urls, "updating a member's peer URLs");
        self.change_membership(ChangeMembers::SetNodes(BTreeMap::from([(id, member)])))
            .await
    }

    /// The id MemberAdd reserved for a member with one of these peer URLs, while that
    /// member has not started (its name is still empty).
    pub(super) fn pending_member(&self, peer_urls: &[String]) -> Option<NodeId> {
        self.members().into_iter().find_map(|(id, m, _)| {
            (m.name.is_empty() && m.peer_urls.iter().any(|u| peer_urls.contains(u))).then_some(id)
        })
    }

    /// Removes a voter or a learner. Refuses to remove the last voter.
    pub(super) async fn serve_remove(&self, id: NodeId) -> ForwardReply {
        let members = self.members();
        let Some((_, _, learner)) = members.iter().find(|(m, _, _)| *m == id) else {
            return Err(ForwardError::Api(ApiError::MemberNotFound));
        };
        let voters = members.iter().filter(|(_, _, l)| !l).count();
        let change = if *learner {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            if voters <= 1 {
                return Err(ForwardError::Api(ApiError::LastVoter));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        };
        tracing::info!(member_id = %hex(id), learner, "removing a member");
        self.change_membership(change).await
    }

    /// Promotes a learner to voter, once it has caught up with the leader.
    pub(super) async fn serve_promote(&self, id: NodeId) -> ForwardReply {
        let members = self.members();
        let Some((_, _, learner)) = members.iter().find(|(m, _, _)| *m == id) else {
            return Err(ForwardError::Api(ApiError::MemberNotFound));
        };
        if !learner {
            return Err(ForwardError::Api(ApiError::MemberNotLearner));
        }
        let metrics = self.raft.metrics().borrow().clone();
        let caught_up = metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned())
            .flatten()
            .is_some_and(|matched| {
                metrics
                    .last_log_index
                    .unwrap_or(0)
                    .saturating_sub(matched.index)
                    <= LEARNER_READY_LAG_ENTRIES
            });
        if !caught_up {
            return Err(ForwardError::Api(ApiError::LearnerNotReady));
        }
        tracing::info!(member_id = %hex(id), "promoting a learner");
        self.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
            .await
    }

    pub(super) async fn change_membership(
        &self,
        change: ChangeMembers<NodeId, Member>,
    ) -> ForwardReply {
        match self.raft.change_membership(change, false).await {
            Ok(_) => Ok(ForwardResponse::MembershipChanged(self.members())),
            Err(e) => Err(raft_write_error(e)),
        }
    }
}

/// A failed membership write as a forward error: not the leader (look again), or why.
pub(super) fn raft_write_error(
    e: RaftError<NodeId, ClientWriteError<NodeId, Member>>,
) -> ForwardError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => ForwardError::NotLeader,
        e => ForwardError::Api(ApiError::Internal(e.to_string())),
    }
}
