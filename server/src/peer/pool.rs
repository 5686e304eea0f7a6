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
use raftkv_proto::peer::peer_client::PeerClient;
use raftkv_proto::peer::Blob;
use raftkv_storage::raft_types::NodeId;
use tonic::transport::{Channel, Endpoint};

use crate::errors::ApiError;
use crate::limits::MAX_PEER_MESSAGE_SIZE_BYTES;
use crate::peer::{decode, encode, ForwardReply, ForwardRequest, TARGET_MEMBER_METADATA};

/// How long a new connection to a peer may take.
const CONNECT_TIMEOUT_MS: u64 = 1_000;
use crate::peer::pipe::{Dialer, PipeKind, PipeOutcome, Pipes};

/// How often the peer TLS files' modification times are looked at.
const PEER_TLS_CHECK_MS: u64 = 1_000;

/// Peer TLS as a client: the files, and when they were last seen to change.
struct PeerTls {
    files: crate::net::tls::TlsFiles,
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
pub(super) enum PeerMethod {
    AppendEntries,
    Vote,
    InstallSnapshot,
    Forward,
}

impl PeerMethod {
    pub(super) fn name(self) -> &'static str {
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
    pub fn new(tls: Option<crate::net::tls::TlsFiles>) -> PeerClients {
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
    fn tls_files(&self) -> Result<crate::net::tls::TlsFiles, ApiError> {
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
        let config = crate::net::tls::client_config(&self.tls_files()?)
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
    pub(super) async fn request(
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
    pub(super) async fn notify(
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
