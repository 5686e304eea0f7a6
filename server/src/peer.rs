//! Member-to-member traffic: openraft's RPCs and the requests a follower forwards to the
//! leader, all over the `raftkv.peer.Peer` gRPC service (proto/proto/peer.proto): on
//! one long-lived stream per peer (peer_pipe.rs), snapshot chunks as unary calls.
//!
//! Payloads are postcard-encoded Rust values; gRPC only frames them. This module owns
//! the connection pool to other members and must never block the Raft core: every call
//! carries a timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use raftkv_proto::peer::peer_client::PeerClient;
use raftkv_proto::peer::Blob;
use raftkv_storage::mvcc::{Command, CommandResult, LeaseId};
use raftkv_storage::raft_types::{Member, NodeId, TypeConfig};
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};

use crate::errors::ApiError;
use crate::peer_pipe::{Dialer, PipeKind, PipeOutcome, Pipes};

/// Largest peer message: an AppendEntries batch or a snapshot chunk.
pub const MAX_PEER_MESSAGE_SIZE_BYTES: usize = 256 << 20;
/// gRPC metadata naming the member id a Raft message is addressed to.
pub const TARGET_MEMBER_METADATA: &str = "raftkv-target-member";
/// How long a new connection to a peer may take.
const CONNECT_TIMEOUT_MS: u64 = 1_000;

/// A request only the leader serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardRequest {
    Write(Command),
    /// Writes a follower batched (batching.rs); answered one result each, in order.
    Writes(Vec<Command>),
    /// The leader's read index: the log index a linearizable read must wait for.
    ReadIndex,
    LeaseKeepAlive {
        id: LeaseId,
    },
    LeaseTimeToLive {
        id: LeaseId,
        keys: bool,
    },
    /// A joining member asks for a nonce to prove it knows the join token.
    JoinChallenge,
    /// A new member asks to be added (as a learner, then promoted to voter).
    Join {
        id: NodeId,
        member: Member,
        /// HMAC of the token over the member and a nonce (join_token.rs); none when
        /// the joiner has no token.
        proof: Option<JoinProof>,
    },
    /// Remove a member (voter or learner).
    RemoveMember {
        id: NodeId,
    },
    /// Promote a learner to voter.
    PromoteMember {
        id: NodeId,
    },
    /// Add a member that has not started yet (etcd's MemberAdd): a learner, promoted
    /// once it has joined and caught up unless `learner` says it stays one.
    AddMember {
        peer_urls: Vec<String>,
        learner: bool,
    },
    /// Change a member's peer URLs (etcd's MemberUpdate).
    UpdateMember {
        id: NodeId,
        peer_urls: Vec<String>,
    },
    /// A starting member with an empty data dir asks whether MemberAdd reserved an id
    /// for its peer URL.
    PendingMember {
        peer_urls: Vec<String>,
    },
    /// Sent by the leader to the member it hands leadership to: stand for election now.
    /// (Served by that member, not forwarded to the leader.) From members before lease
    /// reads; a member now sends `ElectInTerm`.
    Elect,
    /// The leader's record of what members durably hold (rollback_guard.rs); served by
    /// the receiving member.
    Floors(crate::rollback_guard::Floors),
    /// A restarting member asks what the receiver knows it held (rollback_guard.rs).
    FloorOf {
        member: NodeId,
    },
    /// `Elect`, honoured only while the receiver's vote is still of `term`: a late one
    /// must not start a campaign against a later leader that counts on the receiver's
    /// acknowledgements for its read lease (node.rs, `move_leader`).
    ElectInTerm {
        term: u64,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardResponse {
    /// What applying the write answered, and the log index it was applied at.
    Write(CommandResult, u64),
    /// For `Writes`: each write's result and log index, or why the leader did not take it.
    Writes(Vec<Result<(CommandResult, u64), ForwardError>>),
    ReadIndex(u64),
    LeaseKeepAlive {
        ttl_s: i64,
    },
    LeaseTimeToLive {
        ttl_s: i64,
        granted_ttl_s: i64,
        keys: Vec<Bytes>,
    },
    JoinChallenge {
        nonce: Vec<u8>,
    },
    Join {
        cluster_id: u64,
    },
    /// A membership change was committed: the members as the leader then knows them
    /// (id, member, is_learner).
    MembershipChanged(Vec<(NodeId, Member, bool)>),
    /// An election was started.
    Electing,
    /// Floors were merged.
    FloorsTaken,
    /// What the receiver knows a member durably held, if anything.
    Floor(Option<crate::rollback_guard::Floor>),
    /// MemberAdd's new member id, and the members after the change.
    MemberAdded {
        id: NodeId,
        members: Vec<(NodeId, Member, bool)>,
    },
    /// The id MemberAdd reserved for these peer URLs, if any.
    PendingMember {
        id: Option<NodeId>,
    },
}

/// A joiner's answer to a join challenge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinProof {
    pub nonce: Vec<u8>,
    pub mac: Vec<u8>,
}

/// What the leader answers a forwarded request with. `NotLeader` tells the sender to
/// look for the leader again: the request was not executed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardError {
    NotLeader,
    Api(ApiError),
}

pub type ForwardReply = Result<ForwardResponse, ForwardError>;

pub fn encode<T: Serialize>(value: &T) -> Blob {
    Blob {
        data: Bytes::from(postcard::to_allocvec(value).unwrap_or_default()),
    }
}

pub fn decode<T: for<'de> Deserialize<'de>>(blob: &Blob) -> Result<T, tonic::Status> {
    postcard::from_bytes(&blob.data)
        .map_err(|e| tonic::Status::invalid_argument(format!("raftkv peer: bad payload: {e}")))
}

/// How often the peer TLS files' modification times are looked at.
const PEER_TLS_CHECK_MS: u64 = 1_000;

/// Peer TLS as a client: the files, and when they were last seen to change.
struct PeerTls {
    files: crate::tls::TlsFiles,
    checked_at: std::time::Instant,
    stamps: Vec<Option<std::time::SystemTime>>,
}

/// Connections to other members, one lazily connected channel per peer URL. With peer
/// TLS, channels present this member's certificate and check the other's against the
/// CA; when the files change, the pool is emptied so new channels use the new files.
#[derive(Clone, Default)]
pub struct PeerClients {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Long-lived streams over those channels (peer_pipe.rs).
    pipes: Pipes,
    tls: Option<Arc<Mutex<PeerTls>>>,
}

/// What a call to a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerMethod {
    AppendEntries,
    Vote,
    InstallSnapshot,
    Forward,
}

impl PeerMethod {
    fn name(self) -> &'static str {
        match self {
            PeerMethod::AppendEntries => "append_entries",
            PeerMethod::Vote => "vote",
            PeerMethod::InstallSnapshot => "install_snapshot",
            PeerMethod::Forward => "forward",
        }
    }

    /// Snapshot chunks are large and rare: they keep unary calls, so they never hold
    /// up the heartbeats and appends behind them on a pipe.
    fn pipe_kind(self) -> Option<PipeKind> {
        match self {
            PeerMethod::AppendEntries => Some(PipeKind::AppendEntries),
            PeerMethod::Vote => Some(PipeKind::Vote),
            PeerMethod::InstallSnapshot => None,
            PeerMethod::Forward => Some(PipeKind::Forward),
        }
    }
}

impl PeerClients {
    pub fn new(tls: Option<crate::tls::TlsFiles>) -> PeerClients {
        PeerClients {
            channels: Arc::default(),
            pipes: Pipes::default(),
            tls: tls.map(|files| {
                Arc::new(Mutex::new(PeerTls {
                    stamps: files.stamps(),
                    files,
                    checked_at: std::time::Instant::now(),
                }))
            }),
        }
    }

    /// True when the peer TLS files changed since the pooled channels were made (looked
    /// at most once per `PEER_TLS_CHECK_MS`; a stat, never a read).
    fn tls_files_changed(&self) -> bool {
        let Some(tls) = &self.tls else {
            return false;
        };
        let mut tls = tls.lock().unwrap_or_else(|e| e.into_inner());
        if tls.checked_at.elapsed() < Duration::from_millis(PEER_TLS_CHECK_MS) {
            return false;
        }
        tls.checked_at = std::time::Instant::now();
        let stamps = tls.files.stamps();
        let changed = stamps != tls.stamps;
        tls.stamps = stamps;
        changed
    }

    /// The peer TLS files, which an https:// peer URL needs.
    fn tls_files(&self) -> Result<crate::tls::TlsFiles, ApiError> {
        let Some(tls) = &self.tls else {
            return Err(ApiError::InvalidArgument(
                "an https:// peer URL needs --peer-cert-file, --peer-key-file and --peer-trusted-ca-file".into(),
            ));
        };
        Ok(tls.lock().unwrap_or_else(|e| e.into_inner()).files.clone())
    }

    /// The client TLS configuration for a new channel to an https:// peer URL, read from
    /// the files as they are now.
    fn client_tls(&self) -> Result<tonic::transport::ClientTlsConfig, ApiError> {
        let files = self.tls_files()?;
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| {
                ApiError::Internal(format!("peer TLS: cannot read {}: {e}", p.display()))
            })
        };
        let mut config = tonic::transport::ClientTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(read(&files.cert)?, read(&files.key)?),
        );
        if let Some(ca) = &files.trusted_ca {
            config = config.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        Ok(config)
    }

    /// The client TLS configuration for a pipe connection to an https:// peer URL (None
    /// for http://), read from the files as they are now.
    fn pipe_tls(&self, url: &str) -> Result<Option<Arc<rustls::ClientConfig>>, ApiError> {
        if !url.starts_with("https://") {
            return Ok(None);
        }
        let config = crate::tls::client_config(&self.tls_files()?)
            .map_err(|e| ApiError::Internal(format!("peer TLS: {e}")))?;
        Ok(Some(Arc::new(config)))
    }

    /// A client for the member at `url`, over the pooled channel (made on first use).
    pub fn client(&self, url: &str) -> Result<PeerClient<Channel>, ApiError> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let channel = match channels.get(url) {
            Some(c) => c.clone(),
            None => {
                let mut endpoint = Endpoint::from_shared(url.to_string())
                    .map_err(|e| ApiError::InvalidArgument(format!("bad peer URL {url}: {e}")))?
                    .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_while_idle(true);
                if url.starts_with("https://") {
                    endpoint = endpoint.tls_config(self.client_tls()?).map_err(|e| {
                        ApiError::InvalidArgument(format!("peer TLS for {url}: {e}"))
                    })?;
                }
                let channel = endpoint.connect_lazy();
                channels.insert(url.to_string(), channel.clone());
                channel
            }
        };
        Ok(PeerClient::new(channel)
            .max_decoding_message_size(MAX_PEER_MESSAGE_SIZE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_SIZE_BYTES))
    }

    /// Sends a forwarded request to the member at `url`.
    pub async fn forward(
        &self,
        url: &str,
        request: &ForwardRequest,
        timeout: Duration,
    ) -> Result<ForwardReply, tonic::Status> {
        let data = encode(request).data;
        let reply = self
            .request(url, PeerMethod::Forward, 0, data, timeout)
            .await?;
        decode(&Blob { data: reply })
    }

    /// One request to the member at `url` (`target`: the member id a Raft message is
    /// for, 0 for any): on the pipe to it, or as a unary call to a member without
    /// pipes and for snapshot chunks. A status whose message says "connect" means the
    /// request was never sent.
    async fn request(
        &self,
        url: &str,
        method: PeerMethod,
        target: NodeId,
        data: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, tonic::Status> {
        self.exchange(url, method, target, data, timeout, true)
            .await
    }

    /// One request to the member at `url` that wants no reply: queued on the pipe to it
    /// (`Ok` is not that it arrived), or sent as a unary call whose reply is dropped to
    /// a member without pipes.
    async fn notify(
        &self,
        url: &str,
        method: PeerMethod,
        target: NodeId,
        data: Bytes,
        timeout: Duration,
    ) -> Result<(), tonic::Status> {
        self.exchange(url, method, target, data, timeout, false)
            .await
            .map(|_| ())
    }

    /// `request` (`wants_reply`), or `notify`.
    async fn exchange(
        &self,
        url: &str,
        method: PeerMethod,
        target: NodeId,
        data: Bytes,
        timeout: Duration,
        wants_reply: bool,
    ) -> Result<Bytes, tonic::Status> {
        if self.tls_files_changed() {
            tracing::info!("peer TLS files changed; reconnecting to peers with them");
            self.channels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            self.pipes.clear();
        }
        if let Some(kind) = method.pipe_kind() {
            let dialer = PeerDial { clients: self, url };
            let (pipes, data) = (&self.pipes, data.clone());
            let outcome = if wants_reply {
                pipes.call(url, &dialer, kind, target, data, timeout).await
            } else {
                pipes
                    .notify(url, &dialer, kind, target, data, timeout)
                    .await
            };
            if let PipeOutcome::Done(result) = outcome {
                return result;
            }
        }
        let mut client = self.client(url).map_err(|e| e.status())?;
        let mut req = tonic::Request::new(Blob { data });
        req.set_timeout(timeout);
        // The receiver refuses a Raft message meant for another member id: a member
        // restarted with a wiped data dir (a new id at the old URL) must never answer
        // for the member it was.
        if target != 0 {
            if let Ok(v) = target.to_string().parse() {
                req.metadata_mut().insert(TARGET_MEMBER_METADATA, v);
            }
        }
        let reply = match method {
            PeerMethod::AppendEntries => client.append_entries(req).await,
            PeerMethod::Vote => client.vote(req).await,
            PeerMethod::InstallSnapshot => client.install_snapshot(req).await,
            PeerMethod::Forward => client.forward(req).await,
        }?;
        Ok(reply.into_inner().data)
    }
}

/// How a pipe to the member at `url` is opened (peer_pipe.rs).
struct PeerDial<'a> {
    clients: &'a PeerClients,
    url: &'a str,
}

impl Dialer for PeerDial<'_> {
    fn grpc(&self) -> Result<PeerClient<Channel>, tonic::Status> {
        self.clients.client(self.url).map_err(|e| e.status())
    }

    fn tls(&self) -> Result<Option<Arc<rustls::ClientConfig>>, tonic::Status> {
        self.clients.pipe_tls(self.url).map_err(|e| e.status())
    }
}

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
        method: PeerMethod,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Member, E>>
    where
        Req: Serialize,
        Resp: for<'de> Deserialize<'de>,
        E: std::error::Error + for<'de> Deserialize<'de>,
    {
        let data = encode(request).data;
        let reply = self
            .clients
            .request(&self.url, method, self.target, data, option.hard_ttl())
            .await
            .map_err(|status| self.transport_error(method, status))?;
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
        method: PeerMethod,
        status: tonic::Status,
    ) -> RPCError<NodeId, Member, E> {
        let err = TransportError(format!(
            "{} to {}: {}",
            method.name(),
            self.url,
            status.message()
        ));
        match status.code() {
            // No connection: openraft backs off (500 ms) before trying again.
            tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&err)),
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
        let result = self.call(PeerMethod::AppendEntries, &rpc, &option).await;
        if result.is_ok() {
            crate::metrics::observe_peer_rtt(self.target, started.elapsed());
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
        self.clients
            .notify(
                &self.url,
                PeerMethod::AppendEntries,
                self.target,
                data,
                option.hard_ttl(),
            )
            .await
            .map_err(|status| self.transport_error(PeerMethod::AppendEntries, status))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(PeerMethod::InstallSnapshot, &rpc, &option).await
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
        self.call(PeerMethod::Vote, &rpc, &option).await
    }
}
