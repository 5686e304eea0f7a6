//! etcd's Lease service. Grants and revokes are Raft writes; keep-alives and
//! time-to-live questions go to the leader, which holds the expiry clocks (member/lease_clocks.rs).
//! With authentication on, every call but a keep-alive needs credentials; a revoke
//! needs write permission on the lease's keys, and listing keys read permission.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use raftkv_proto::etcdserverpb as pb;
use raftkv_proto::etcdserverpb::lease_server::Lease;
use raftkv_storage::auth::AuthError;
use raftkv_storage::mvcc::{Command, CommandResponse, MAX_LEASE_TTL_S};
use raftkv_storage::MvccError;
use tonic::{Request, Response, Status, Streaming};

use crate::api::credentials::{self, on_behalf};
use crate::api::{check_leader_metadata, wants_leader, LeaderLossCheck};
use crate::errors::ApiError;
use crate::member::lease_clocks::MIN_LEASE_TTL_S;
use crate::member::node::Node;
use crate::peer::{ForwardRequest, ForwardResponse};

/// Keep-alive answers queued per stream before the client must read them.
const KEEPALIVE_QUEUE_RESPONSES: usize = 16;

pub struct LeaseService {
    pub node: Arc<Node>,
}

/// A random positive lease id, as etcd's id generator gives.
pub(crate) fn new_lease_id() -> i64 {
    loop {
        let id = rand::random::<i64>() & i64::MAX;
        if id != 0 {
            return id;
        }
    }
}

pub async fn keep_alive_once(node: &Node, id: i64) -> Result<pb::LeaseKeepAliveResponse, Status> {
    let timeout = node.config.request_timeout();
    match node
        .on_leader(ForwardRequest::LeaseKeepAlive { id }, timeout)
        .await?
    {
        ForwardResponse::LeaseKeepAlive { ttl_s } => Ok(pb::LeaseKeepAliveResponse {
            header: Some(node.header()),
            id,
            ttl: ttl_s,
        }),
        other => Err(ApiError::Internal(format!("unexpected reply {other:?}")).status()),
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        check_leader_metadata(&self.node, &req)?;
        let caller = credentials::caller(&self.node, &req).await?;
        credentials::require_someone(&caller)?;
        let req = req.into_inner();
        if req.ttl > MAX_LEASE_TTL_S {
            return Err(ApiError::Mvcc(MvccError::LeaseTtlTooLarge).status());
        }
        let ttl_s = req.ttl.max(MIN_LEASE_TTL_S);
        let id = if req.id == 0 { new_lease_id() } else { req.id };
        match self.node.write(Command::LeaseGrant { id, ttl_s }).await? {
            CommandResponse::LeaseGrant { id, ttl_s, .. } => {
                Ok(Response::new(pb::LeaseGrantResponse {
                    header: Some(self.node.header()),
                    id,
                    ttl: ttl_s,
                    error: String::new(),
                }))
            }
            other => Err(ApiError::Internal(format!("unexpected apply result {other:?}")).status()),
        }
    }

    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        check_leader_metadata(&self.node, &req)?;
        let caller = credentials::caller(&self.node, &req).await?;
        credentials::require_someone(&caller)?;
        let id = req.into_inner().id;
        self.node
            .write(on_behalf(caller, Command::LeaseRevoke { id }))
            .await?;
        Ok(Response::new(pb::LeaseRevokeResponse {
            header: Some(self.node.header()),
        }))
    }

    type LeaseKeepAliveStream =
        Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        check_leader_metadata(&self.node, &req)?;
        // etcd ends a keep-alive stream opened with `hasleader` once its member has
        // lost the leader, as it does a watch stream: the client then keeps its leases
        // alive through another member.
        let mut leader_check = LeaderLossCheck::new(wants_leader(&req));
        let mut inbound = req.into_inner();
        let node = self.node.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(KEEPALIVE_QUEUE_RESPONSES);
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    m = inbound.message() => m,
                    _ = tx.closed() => return,
                    () = leader_check.lost(&node) => {
                        let _ = tx.send(Err(ApiError::NoLeader.status())).await;
                        return;
                    }
                };
                let id = match message {
                    Ok(Some(r)) => r.id,
                    Ok(None) | Err(_) => return,
                };
                let reply = keep_alive_once(&node, id).await;
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        check_leader_metadata(&self.node, &req)?;
        let caller = credentials::caller(&self.node, &req).await?;
        credentials::require_someone(&caller)?;
        let req = req.into_inner();
        // etcd checks the keys this member knows the lease to hold, then answers with
        // the leader's; users or roles changed meanwhile fail the call.
        let auth = self.node.store.auth();
        if req.keys {
            let keys = || self.node.store.lease_keys(req.id).unwrap_or_default();
            credentials::check_lease_keys(&auth, &caller, keys)?;
        }
        let timeout = self.node.config.request_timeout();
        let request = ForwardRequest::LeaseTimeToLive {
            id: req.id,
            keys: req.keys,
        };
        let answer = self.node.on_leader(request, timeout).await?;
        if req.keys && caller.is_some() && self.node.store.auth().revision != auth.revision {
            return Err(ApiError::Mvcc(MvccError::Auth(AuthError::AuthOldRevision)).status());
        }
        match answer {
            ForwardResponse::LeaseTimeToLive {
                ttl_s,
                granted_ttl_s,
                keys,
            } => Ok(Response::new(pb::LeaseTimeToLiveResponse {
                header: Some(self.node.header()),
                id: req.id,
                ttl: ttl_s,
                granted_ttl: granted_ttl_s,
                keys,
            })),
            other => Err(ApiError::Internal(format!("unexpected reply {other:?}")).status()),
        }
    }

    async fn lease_leases(
        &self,
        req: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        check_leader_metadata(&self.node, &req)?;
        let caller = credentials::caller(&self.node, &req).await?;
        let leases = self.node.store.leases();
        let keys = || {
            leases
                .iter()
                .flat_map(|l| self.node.store.lease_keys(l.id).unwrap_or_default())
                .collect()
        };
        credentials::require_someone(&caller)?;
        credentials::check_lease_keys(&self.node.store.auth(), &caller, keys)?;
        let leases = leases
            .into_iter()
            .map(|l| pb::LeaseStatus { id: l.id })
            .collect();
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(self.node.header()),
            leases,
        }))
    }
}
