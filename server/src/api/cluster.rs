//! etcd's Cluster service. MemberList is served from Raft's membership; changing the
//! membership through this API comes with the cluster-operations work (joins go
//! through `raftkv --join` meanwhile).

use std::sync::Arc;

use raftkv_proto::etcdserverpb as pb;
use raftkv_proto::etcdserverpb::cluster_server::Cluster;
use tonic::{Request, Response, Status};

use crate::api::check_leader_metadata;
use crate::errors::ApiError;
use crate::node::Node;

pub struct ClusterService {
    pub node: Arc<Node>,
}

impl ClusterService {
    fn members(&self) -> Vec<pb::Member> {
        self.node
            .members()
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
        _r: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        Err(not_yet("MemberRemove"))
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
        _r: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        Err(not_yet("MemberPromote"))
    }
}
