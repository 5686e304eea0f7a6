//! The peer gRPC service: hands Raft RPCs to openraft and forwarded requests to
//! `Node::serve_forward`. Decoding failures are answered as errors, never panics.

use std::sync::Arc;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use raftkv_proto::peer::peer_server::Peer;
use raftkv_proto::peer::Blob;
use raftkv_storage::raft_types::{NodeId, TypeConfig};
use tonic::{Request, Response, Status};

use crate::node::Node;
use crate::peer::{decode, encode, ForwardError, ForwardRequest, TARGET_MEMBER_METADATA};

pub struct PeerService {
    pub node: Arc<Node>,
}

impl PeerService {
    /// Refuses a Raft message addressed to another member id (see peer.rs), and every
    /// Raft message while this member is fenced (rollback_guard.rs).
    fn check_target<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if self.node.is_fenced() {
            // Aborted, not Unavailable: the sender retries at once rather than backing
            // off as from a dead member (peer.rs); the fence lasts milliseconds.
            return Err(Status::aborted(
                "raftkv peer: this member restarted and is checking with its peers that its data dir is current",
            ));
        }
        let Some(target) = req.metadata().get(TARGET_MEMBER_METADATA) else {
            return Ok(());
        };
        let target: u64 = target
            .to_str()
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| Status::invalid_argument("raftkv peer: bad target member id"))?;
        if target != self.node.id {
            tracing::warn!(
                addressed_to = %crate::node::hex(target),
                "refusing Raft messages for another member: this data dir holds a different member (was it wiped?)"
            );
            return Err(Status::failed_precondition(format!(
                "raftkv peer: this is member {}, not {}",
                crate::node::hex(self.node.id),
                crate::node::hex(target)
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        self.check_target(&req)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref())?;
        let result = self.node.raft.append_entries(rpc).await;
        Ok(Response::new(encode(&result)))
    }

    async fn vote(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        self.check_target(&req)?;
        let rpc: VoteRequest<NodeId> = decode(req.get_ref())?;
        let result = self.node.raft.vote(rpc).await;
        Ok(Response::new(encode(&result)))
    }

    async fn install_snapshot(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        self.check_target(&req)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(req.get_ref())?;
        let result = self.node.raft.install_snapshot(rpc).await;
        Ok(Response::new(encode(&result)))
    }

    async fn forward(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let request: ForwardRequest = decode(req.get_ref())?;
        let reply = match request {
            // A member may join through any member: a follower passes the challenge and
            // the join on to the leader, which issues the nonce and checks the proof.
            request @ (ForwardRequest::JoinChallenge
            | ForwardRequest::Join { .. }
            | ForwardRequest::PendingMember { .. })
                if !self.node.is_leader() =>
            {
                // As long as the joiner itself waits: adding a learner waits for it to
                // catch up.
                let timeout = std::time::Duration::from_millis(crate::node::JOIN_TIMEOUT_MS);
                self.node
                    .on_leader(request, timeout)
                    .await
                    .map_err(ForwardError::Api)
            }
            request => self.node.serve_forward(request).await,
        };
        Ok(Response::new(encode(&reply)))
    }
}
