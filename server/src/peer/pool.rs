//! The client side of member-to-member traffic: openraft's RPCs and the requests a
//! follower forwards to the leader, as frames on one long-lived pipe per peer
//! (pipe.rs), and snapshot chunks on a second pipe of their own, so that a large chunk
//! never holds up the heartbeats and appends behind it.
//!
//! Payloads are postcard-encoded Rust values; the pipe only frames them. This module
//! owns the pipes to other members and their TLS, and must never block the Raft core:
//! every call carries a timeout.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use raftkv_proto::peer::Blob;
use raftkv_storage::raft_types::NodeId;

use crate::errors::ApiError;
use crate::peer::pipe::{Dialer, PipeKind, Pipes};
use crate::peer::{decode, encode, ForwardReply, ForwardRequest};

/// How often the peer TLS files' modification times are looked at.
const PEER_TLS_CHECK_MS: u64 = 1_000;

/// Peer TLS as a client: the files, and when they were last seen to change.
struct PeerTls {
    files: crate::net::tls::TlsFiles,
    checked_at: std::time::Instant,
    stamps: Vec<Option<std::time::SystemTime>>,
}

/// The pipes to other members, opened on first use. With peer TLS, connections present
/// this member's certificate and check the other's against the CA; when the files
/// change, the pipes are forgotten so that new connections use the new files.
#[derive(Clone, Default)]
pub struct PeerClients {
    /// Raft messages and forwarded requests.
    pipes: Pipes,
    /// Snapshot chunks.
    snapshot_pipes: Pipes,
    tls: Option<Arc<Mutex<PeerTls>>>,
}

impl PeerClients {
    pub fn new(tls: Option<crate::net::tls::TlsFiles>) -> PeerClients {
        PeerClients {
            pipes: Pipes::default(),
            snapshot_pipes: Pipes::default(),
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

    /// Sends a forwarded request to the member at `url`.
    pub async fn forward(
        &self,
        url: &str,
        request: &ForwardRequest,
        timeout: Duration,
    ) -> Result<ForwardReply, tonic::Status> {
        let data = encode(request).data;
        let reply = self
            .request(url, PipeKind::Forward, 0, data, timeout)
            .await?;
        decode(&Blob { data: reply })
    }

    /// One request to the member at `url` (`target`: the member id a Raft message is
    /// for, 0 for any), on the pipe to it. A status whose message says "connect" means
    /// the request was never sent.
    pub(super) async fn request(
        &self,
        url: &str,
        kind: PipeKind,
        target: NodeId,
        data: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, tonic::Status> {
        let dialer = PeerDial { clients: self, url };
        self.pipes_for(kind)
            .call(url, &dialer, kind, target, data, timeout)
            .await
    }

    /// One request to the member at `url` that wants no reply: queued on the pipe to it
    /// (`Ok` is not that it arrived).
    pub(super) async fn notify(
        &self,
        url: &str,
        kind: PipeKind,
        target: NodeId,
        data: Bytes,
        timeout: Duration,
    ) -> Result<(), tonic::Status> {
        let dialer = PeerDial { clients: self, url };
        self.pipes_for(kind)
            .notify(url, &dialer, kind, target, data, timeout)
            .await
    }

    /// The pipes a request of `kind` travels on; first, new connections if the peer TLS
    /// files changed.
    fn pipes_for(&self, kind: PipeKind) -> &Pipes {
        if self.tls_files_changed() {
            tracing::info!("peer TLS files changed; reconnecting to peers with them");
            self.pipes.clear();
            self.snapshot_pipes.clear();
        }
        match kind {
            PipeKind::InstallSnapshot => &self.snapshot_pipes,
            PipeKind::AppendEntries | PipeKind::Vote | PipeKind::Forward => &self.pipes,
        }
    }
}

/// How a pipe to the member at `url` is opened (pipe.rs).
struct PeerDial<'a> {
    clients: &'a PeerClients,
    url: &'a str,
}

impl Dialer for PeerDial<'_> {
    fn tls(&self) -> Result<Option<Arc<rustls::ClientConfig>>, tonic::Status> {
        self.clients.pipe_tls(self.url).map_err(|e| e.status())
    }
}
