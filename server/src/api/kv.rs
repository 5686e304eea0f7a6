//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.
//!
//! Reads: linearizable (the default) pass a read barrier first; serializable ones read
//! this member's applied state; with authentication on, both are checked against the
//! caller's permissions (credentials.rs). Writes are checked as etcd checks them, then
//! go through Raft (`Node::write`) on behalf of the caller, whose permissions are
//! checked when the entry applies. This module never touches storage except to read.

use std::sync::Arc;

use raftkv_proto::etcdserverpb as pb;
use raftkv_proto::etcdserverpb::kv_server::Kv;
use raftkv_storage::mvcc::{validate, Command, CommandResponse};
use tonic::{Request, Response, Status};

use crate::api::convert;
use crate::api::credentials::{self, on_behalf, ReadCheck};
use crate::api::{check_leader_metadata, request_size_ok, wants_leader};
use crate::errors::ApiError;
use crate::member::node::Node;
use prost::Message;
use tracing::Instrument;

pub struct KvService {
    pub node: Arc<Node>,
}

fn unexpected(r: CommandResponse) -> Status {
    ApiError::Internal(format!("unexpected apply result {r:?}")).status()
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        req: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        check_leader_metadata(&self.node, &req)?;
        let needs_leader = wants_leader(&req);
        // Who asks is decided after the read barrier, as etcd decides it: an auth
        // change acknowledged before this read (applied here only once the barrier
        // passes) applies to it.
        let (metadata, extensions, req) = req.into_parts();
        let asking = Request::from_parts(metadata, extensions, ());
        let serializable = req.serializable;
        let req_range = convert::range_from_pb(req);
        validate::range(&req_range).map_err(ApiError::from)?;
        let span = tracing::debug_span!("range", key = ?req_range.key, serializable);
        async {
            // A `hasleader` read that was let in just before its member lost the
            // leader fails as soon as that is known, not at the request timeout
            // (a read, unlike a write, has no outcome to leave unknown).
            if !serializable && needs_leader {
                tokio::select! {
                    r = self.node.read_barrier() => match r {
                        // The round gave up because the leader is gone: say so, as the
                        // race below would have a moment later.
                        Err(ApiError::Timeout) if self.node.leader().is_none() => {
                            return Err(ApiError::NoLeader.status())
                        }
                        r => r?,
                    },
                    () = self.node.leader_lost() => return Err(ApiError::NoLeader.status()),
                }
            } else if !serializable {
                self.node.read_barrier().await?;
            }
            let caller = credentials::caller(&self.node, &asking).await?;
            let check = ReadCheck::range(&self.node, caller, &req_range.key, &req_range.range_end)?;
            let r = self.node.store.range(&req_range).map_err(ApiError::from)?;
            check.still_valid(&self.node)?;
            Ok::<_, Status>(Response::new(convert::range_to_pb(r, self.node.header())))
        }
        .instrument(span)
        .await
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        check_leader_metadata(&self.node, &req)?;
        request_size_ok(req.get_ref().encoded_len())?;
        let caller = credentials::caller(&self.node, &req).await?;
        let req = convert::put_from_pb(req.into_inner());
        validate::put(&req).map_err(ApiError::from)?;
        match self
            .node
            .write(on_behalf(caller, Command::Put(req)))
            .await?
        {
            CommandResponse::Put(r) => Ok(Response::new(convert::put_to_pb(r, self.node.header()))),
            other => Err(unexpected(other)),
        }
    }

    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        check_leader_metadata(&self.node, &req)?;
        let caller = credentials::caller(&self.node, &req).await?;
        let req = convert::delete_from_pb(req.into_inner());
        validate::delete(&req).map_err(ApiError::from)?;
        match self
            .node
            .write(on_behalf(caller, Command::DeleteRange(req)))
            .await?
        {
            CommandResponse::DeleteRange(r) => {
                Ok(Response::new(convert::delete_to_pb(r, self.node.header())))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        check_leader_metadata(&self.node, &req)?;
        request_size_ok(req.get_ref().encoded_len())?;
        let caller = credentials::caller(&self.node, &req).await?;
        let req = convert::txn_from_pb(req.into_inner()).map_err(ApiError::from)?;
        validate::txn(&req, validate::MAX_TXN_OPS).map_err(ApiError::from)?;
        // Every Txn goes through Raft, read-only ones too (etcd serves those after a read
        // barrier instead): the answers are the same, and a Txn that changes nothing
        // does not advance the revision; permissions are checked when it applies.
        match self
            .node
            .write(on_behalf(caller, Command::Txn(req)))
            .await?
        {
            CommandResponse::Txn(r) => Ok(Response::new(convert::txn_to_pb(r, self.node.header()))),
            other => Err(unexpected(other)),
        }
    }

    async fn compact(
        &self,
        req: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        check_leader_metadata(&self.node, &req)?;
        let req = req.into_inner();
        let command = Command::Compact {
            revision: req.revision,
        };
        match self.node.write(command).await? {
            CommandResponse::Compact { revision } => {
                if req.physical {
                    let store = self.node.store.clone();
                    let _ = tokio::task::spawn_blocking(move || store.wait_for_compaction()).await;
                }
                let mut header = self.node.header();
                // etcd answers with the store's revision when the compaction applied.
                header.revision = revision;
                Ok(Response::new(pb::CompactionResponse {
                    header: Some(header),
                }))
            }
            other => Err(unexpected(other)),
        }
    }
}
