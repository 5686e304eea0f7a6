//! etcd's Cluster service over Raft's membership: MemberList, MemberAdd, MemberUpdate,
//! MemberRemove and MemberPromote. Members usually join with `raftkv --join` (added as
//! learners, promoted once caught up); MemberAdd reserves an id for a member that has
//! not started, which it takes when it starts with `--join` and the same peer URL.

use std::sync::Arc;

use raftkv_proto::etcdserverpb as pb;
use raftkv_proto::etcdserverpb::cluster_server::Cluster;
use tonic::{Request, Response, Status};

use crate::api::check_leader_metadata;
use crate::api::credentials;
use crate::errors::ApiError;
use crate::member::node::Node;
use crate::peer::{ForwardRequest, ForwardResponse};

pub struct ClusterService {
    pub node: Arc<Node>,
}

impl ClusterService {
    /// etcd's Cluster answers carry no revision (its cluster server fills in the IDs
    /// and the term only).
    fn header(&self) -> pb::ResponseHeader {
        pb::ResponseHeader {
            revision: 0,
            ..self.node.header()
        }
    }
}

impl ClusterService {
    /// etcd's checkMembershipOperationPermission: membership changes are a root
    /// user's once authentication is on (listing members is anyone's).
    async fn admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let caller = credentials::caller(&self.node, req).await?;
        Ok(credentials::require_admin(&self.node, &caller)?)
    }

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
        let timeout = std::time::Duration::from_millis(crate::limits::JOIN_TIMEOUT_MS);
        match self.node.on_leader(request, timeout).await? {
            ForwardResponse::MembershipChanged(members) => Ok(to_pb(members)),
            other => Err(ApiError::Internal(format!("unexpected reply {other:?}")).status()),
        }
    }
}

/// A peer URL must be http(s)://host:port, as members dial it.
pub(crate) fn check_url(url: &str) -> Result<(), Status> {
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && url
            .parse::<tonic::transport::Uri>()
            .is_ok_and(|u| u.port_u16().is_some());
    if ok {
        Ok(())
    } else {
        Err(
            ApiError::InvalidArgument(format!("peer URL {url:?} is not http(s)://host:port"))
                .status(),
        )
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        check_leader_metadata(&self.node, &req)?;
        self.admin(&req).await?;
        let pb::MemberAddRequest {
            peer_ur_ls,
            is_learner,
        } = req.into_inner();
        for url in &peer_ur_ls {
            check_url(url)?;
        }
        let request = ForwardRequest::AddMember {
            peer_urls: peer_ur_ls,
            learner: is_learner,
        };
        let timeout = std::time::Duration::from_millis(crate::limits::JOIN_TIMEOUT_MS);
        let (id, members) = match self.node.on_leader(request, timeout).await? {
            ForwardResponse::MemberAdded { id, members } => (id, to_pb(members)),
            other => return Err(ApiError::Internal(format!("unexpected reply {other:?}")).status()),
        };
        let member = members.iter().find(|m| m.id == id).cloned();
        Ok(Response::new(pb::MemberAddResponse {
            header: Some(self.header()),
            member,
            members,
        }))
    }

    async fn member_remove(
        &self,
        req: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        check_leader_metadata(&self.node, &req)?;
        self.admin(&req).await?;
        let id = req.get_ref().id;
        let members = self.change(ForwardRequest::RemoveMember { id }).await?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: Some(self.header()),
            members,
        }))
    }

    async fn member_update(
        &self,
        req: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        check_leader_metadata(&self.node, &req)?;
        self.admin(&req).await?;
        let pb::MemberUpdateRequest { id, peer_ur_ls } = req.into_inner();
        if peer_ur_ls.is_empty() {
            return Err(ApiError::InvalidArgument("member peer URLs are missing".into()).status());
        }
        for url in &peer_ur_ls {
            check_url(url)?;
        }
        let members = self
            .change(ForwardRequest::UpdateMember {
                id,
                peer_urls: peer_ur_ls,
            })
            .await?;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: Some(self.header()),
            members,
        }))
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
            header: Some(self.header()),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        check_leader_metadata(&self.node, &req)?;
        self.admin(&req).await?;
        let id = req.get_ref().id;
        let members = self.change(ForwardRequest::PromoteMember { id }).await?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: Some(self.header()),
            members,
        }))
    }
}
