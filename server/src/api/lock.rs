//! etcd's Lock service (v3lockpb), with the semantics of etcd's server-side lock: a
//! lock named N is the key `N/<lease in hex>` held by the caller's lease; the caller
//! holds it once every key created earlier under `N/` is gone. Unlock deletes the key.
//!
//! A caller that gives up while waiting leaves no key behind (`Withdraw`), as etcd's
//! mutex does; one whose lease ran out while it waited is told "session expired".

use std::sync::Arc;

use bytes::Bytes;
use raftkv_proto::v3lockpb as pb;
use raftkv_proto::v3lockpb::lock_server::Lock;
use tonic::{Request, Response, Status};

use crate::api::check_leader_metadata;
use crate::api::concurrency::{as_etcd_answers, delete, key_of, prefix_of, Recipes, Withdraw};
use crate::member::node::Node;

pub struct LockService {
    pub node: Arc<Node>,
}

impl LockService {
    pub fn new(node: Arc<Node>) -> LockService {
        LockService { node }
    }

    async fn acquire(r: &Recipes, req: pb::LockRequest) -> Result<pb::LockResponse, Status> {
        let lease = r.session_lease(req.lease).await?;
        let prefix = prefix_of(&req.name);
        let key = key_of(&prefix, lease);
        let (_, place, owner) = r.enqueue(&prefix, &key, Bytes::new(), lease).await?;
        let mut withdraw = Withdraw::new(r, &key);
        if owner.is_some_and(|o| o.create_revision != place) {
            r.wait_deletes(&prefix, place - 1).await?;
            if r.get(&key).await?.is_none() {
                // The lease ran out while waiting: nothing is left to withdraw.
                withdraw.key = None;
                return Err(Status::unknown("session expired"));
            }
        }
        withdraw.key = None;
        Ok(pb::LockResponse {
            header: Some(r.node.header()),
            key: key.to_vec().into(),
        })
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(
        &self,
        req: Request<pb::LockRequest>,
    ) -> Result<Response<pb::LockResponse>, Status> {
        check_leader_metadata(&self.node, &req)?;
        let r = Recipes::for_request(&self.node, &req).await?;
        Self::acquire(&r, req.into_inner())
            .await
            .map(Response::new)
            .map_err(as_etcd_answers)
    }

    async fn unlock(
        &self,
        req: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        check_leader_metadata(&self.node, &req)?;
        let r = Recipes::for_request(&self.node, &req).await?;
        let key = Bytes::copy_from_slice(&req.get_ref().key);
        r.write(delete(key)).await.map_err(as_etcd_answers)?;
        Ok(Response::new(pb::UnlockResponse {
            header: Some(self.node.header()),
        }))
    }
}
