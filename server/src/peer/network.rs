//! openraft's `RaftNetwork` over the peer pool: one `PeerConnection` per target member,
//! each call with a timeout, so the Raft core is never blocked by a peer.

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use raftkv_storage::raft_types::{Member, NodeId, TypeConfig};
use serde::{Deserialize, Serialize};

use crate::peer::encode;
use crate::peer::pipe::PipeKind;
use crate::peer::pool::PeerClients;

/// openraft's network: one `PeerConnection` per target member.
#[derive(Clone)]
pub struct RaftNetworkImpl {
    pub clients: PeerClients,
}

pub struct PeerConnection {
    target: NodeId,
    url: String,
    clients: PeerClients,
}

impl RaftNetworkFactory<TypeConfig> for RaftNetworkImpl {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerConnection {
        PeerConnection {
            target,
            url: node.peer_urls.first().cloned().unwrap_or_default(),
            clients: self.clients.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &self,
        method: PipeKind,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Member, E>>
    where
        Req: Serialize,
        Resp: for<'de> Deserialize<'de>,
        E: std::error::Error + for<'de> Deserialize<'de>,
    {
        let data = encode(request).data;
        crate::peer::traffic::sent(self.target, data.len());
        let reply = self
            .clients
            .request(&self.url, method, self.target, data, option.hard_ttl())
            .await
            .map_err(|status| self.transport_error(method, status))?;
        crate::peer::traffic::received(self.target, reply.len());
        let result: Result<Resp, E> = postcard::from_bytes(&reply).map_err(|e| {
            RPCError::Network(NetworkError::new(&TransportError(format!(
                "bad reply: {e}"
            ))))
        })?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// What openraft is told of a request that did not get a reply.
    fn transport_error<E: std::error::Error>(
        &self,
        method: PipeKind,
        status: tonic::Status,
    ) -> RPCError<NodeId, Member, E> {
        crate::peer::traffic::send_failed(self.target);
        let err = TransportError(format!(
            "{} to {}: {}",
            method.name(),
            self.url,
            status.message()
        ));
        match status.code() {
            // No connection, or nothing there speaks raftkv's pipe (a wrong peer URL):
            // openraft backs off (500 ms) before trying again.
            tonic::Code::Unavailable | tonic::Code::Unimplemented => {
                RPCError::Unreachable(Unreachable::new(&err))
            }
            // A slow answer is not a dead member: no back-off, so that
            // heartbeats keep reaching a member that is only busy.
            _ => RPCError::Network(NetworkError::new(&err)),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let started = std::time::Instant::now();
        let result = self.call(PipeKind::AppendEntries, &rpc, &option).await;
        if result.is_ok() {
            crate::peer::rtt::observe_peer_rtt(self.target, started.elapsed());
        }
        result
    }

    /// A commit notice (openraft patch): one frame, no reply awaited.
    async fn send_commit(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<(), RPCError<NodeId, Member, RaftError<NodeId>>> {
        let data = encode(&rpc).data;
        crate::peer::traffic::sent(self.target, data.len());
        self.clients
            .notify(
                &self.url,
                PipeKind::AppendEntries,
                self.target,
                data,
                option.hard_ttl(),
            )
            .await
            .map_err(|status| self.transport_error(PipeKind::AppendEntries, status))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(PipeKind::InstallSnapshot, &rpc, &option).await
    }

    /// Sends a snapshot in chunks (openraft's `Chunked`), once the export writing it has
    /// ended. An export that failed (a full disk) is reported as this peer being
    /// unreachable, not as a storage failure, which would stop the Raft core: openraft
    /// backs off and asks the state machine for a snapshot again.
    async fn full_snapshot(
        &mut self,
        vote: openraft::Vote<NodeId>,
        mut snapshot: openraft::Snapshot<TypeConfig>,
        cancel: impl std::future::Future<Output = openraft::error::ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<
        openraft::raft::SnapshotResponse<NodeId>,
        openraft::error::StreamingError<TypeConfig, openraft::error::Fatal<NodeId>>,
    > {
        use openraft::network::snapshot_transport::{Chunked, SnapshotTransport};
        if let Err(e) = snapshot.snapshot.ready().await {
            tracing::warn!(target = self.target, error = %e, "no snapshot to send");
            return Err(Unreachable::new(&e).into());
        }
        Chunked::send_snapshot(self, vote, snapshot, cancel, option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(PipeKind::Vote, &rpc, &option).await
    }
}
