//! etcd's Cluster service: MemberList, MemberRemove and MemberPromote over Raft's
//! membership. New members join with `raftkv --join` (which adds them as learners and
//! promotes them once caught up); MemberAdd and MemberUpdate are not implemented yet.

use std::sync::Arc;

use raftkv_proto::etcdserverpb as pb;
use raftkv_proto::etcdserverpb::cluster_server::Cluster;
use tonic::{Request, Response, Status};

use crate::api::check_leader_metadata;
use crate::errors::ApiError;
use crate::node::Node;
use crate::peer::{ForwardRequest, ForwardResponse};

pub struct ClusterService {
    pub node: Arc<Node>,
}

impl ClusterService {
    fn members(&self) -> Vec<pb::Member> {
        to_pb(self.node.members())
    }
}

fn to_pb(members: Vec<(u64, raftkv_storage::raft_types::Member, bool)>) -> Vec<pb::Member> {
    members
        .into_iter()
        .map(|(id, m, learner)| pb::Member {
            id,
            name: m.name,
            peer_ur_ls: m.peer_urls,
            client_ur_ls: m.client_urls,
            is_learner: learner,
        })
        .collect()
}

impl ClusterService {
    /// Runs a membership change on the leader; returns the members as the leader knows
    /// them afterwards (this member may be the one removed: it would never catch up).
    async fn change(&self, request: ForwardRequest) -> Result<Vec<pb::Member>, Status> {
        let timeout = std::time::Duration::from_millis(crate::node::JOIN_TIMEOUT_MS);
        match self.node.on_leader(request, timeout).await? {
            ForwardResponse::MembershipChanged(members) => Ok(to_pb(members)),
            other => Err(ApiError::Internal(format!("unexpected reply {other:?}")).status()),
        }
    }
}

fn not_yet(what: &str) -> Status {
    ApiError::Unsupported(format!(
        "{what} is not implemented by raftkv yet; use raftkv --join"
    ))
    .status()
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _r: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        Err(not_yet("MemberAdd"))
    }

    async fn member_remove(
        &self,
        req: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        check_leader_metadata(&self.node, &req)?;
        let id = req.get_ref().id;
        let members = self.change(ForwardRequest::RemoveMember { id }).await?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: Some(self.node.header()),
            members,
        }))
    }

    async fn member_update(
        &self,
        _r: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        Err(not_yet("MemberUpdate"))
    }

    async fn member_list(
        &self,
        req: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        check_leader_metadata(&self.node, &req)?;
        if req.get_ref().linearizable {
            self.node.read_barrier().await?;
        }
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.node.header()),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        check_leader_metadata(&self.node, &req)?;
        let id = req.get_ref().id;
        let members = self.change(ForwardRequest::PromoteMember { id }).await?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: Some(self.node.header()),
            members,
        }))
    }
}
