//! TLS on the client and peer listeners (rustls): the server certificate, optional client
//! certificate authentication against a trusted CA, and files that change on disk
//! picked up without a restart.
//!
//! The acceptor re-reads the certificate, key and CA files when their modification
//! times change (looked at most once per `RELOAD_CHECK_MS`); a file that fails to load
//! keeps the previous configuration in force and is logged, so a half-written renewal
//! never takes the member off the air. Handshakes run concurrently (bounded) and time
//! out, so a slow or silent client never holds up the others. This module never
//! accepts a connection whose certificate the configured CA did not sign, or which has
//! expired.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use futures::{Stream, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::TcpListenerStream;

/// How often the files' modification times are looked at.
const RELOAD_CHECK_MS: u64 = 1_000;
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Handshakes in progress at once per listener.
const MAX_CONCURRENT_HANDSHAKES: usize = 128;

/// Where a listener's certificate material lives, and whether clients must present a
/// certificate signed by `trusted_ca`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub trusted_ca: Option<PathBuf>,
    pub client_cert_auth: bool,
}

impl TlsFiles {
    fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![self.cert.as_path(), self.key.as_path()];
        if let Some(ca) = &self.trusted_ca {
            paths.push(ca.as_path());
        }
        paths
    }

    pub fn stamps(&self) -> Vec<Option<SystemTime>> {
        self.paths()
            .iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate found in {}", path.display()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read a private key from {}: {e}", path.display()))
}

/// The certificates of a CA file, as trust roots.
fn load_roots(ca: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| format!("bad CA certificate in {}: {e}", ca.display()))?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls configuration from the files as they are now.
pub fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, String> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = match &files.trusted_ca {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(load_roots(ca)?),
                provider(),
            );
            let verifier = if files.client_cert_auth {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| format!("client certificate verifier: {e}"))?,
            )
        }
        None if files.client_cert_auth => {
            return Err("--client-cert-auth needs --trusted-ca-file".to_string())
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "certificate {} and key {}: {e}",
            files.cert.display(),
            files.key.display()
        )
    })?;
    // gRPC speaks HTTP/2; /metrics and /health may come over HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The rustls client configuration a member uses on its pipe connections to https://
/// peers (peer/wire.rs): its certificate, and the peers' checked against the CA. No CA
/// file: no server is trusted (as the gRPC channels do without one).
pub fn client_config(files: &TlsFiles) -> Result<rustls::ClientConfig, String> {
    let roots = match &files.trusted_ca {
        Some(ca) => load_roots(ca)?,
        None => rustls::RootCertStore::empty(),
    };
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .map_err(|e| {
            format!(
                "certificate {} and key {}: {e}",
                files.cert.display(),
                files.key.display()
            )
        })
}

struct State {
    checked_at: Instant,
    stamps: Vec<Option<SystemTime>>,
    acceptor: TlsAcceptor,
}

/// A TLS acceptor that follows its files on disk.
pub struct ReloadingAcceptor {
    files: TlsFiles,
    state: Mutex<State>,
}

impl ReloadingAcceptor {
    /// Loads the files once; an error here is a start-up error with the file named.
    pub fn new(files: TlsFiles) -> Result<ReloadingAcceptor, String> {
        let stamps = files.stamps();
        let config = server_config(&files)?;
        Ok(ReloadingAcceptor {
            files,
            state: Mutex::new(State {
                checked_at: Instant::now(),
                stamps,
                acceptor: TlsAcceptor::from(Arc::new(config)),
            }),
        })
    }

    /// The acceptor to use now, reloaded first if a file changed.
    pub fn current(&self) -> TlsAcceptor {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked_at.elapsed() >= Duration::from_millis(RELOAD_CHECK_MS) {
            state.checked_at = Instant::now();
            let stamps = self.files.stamps();
            if stamps != state.stamps {
                match server_config(&self.files) {
                    Ok(config) => {
                        state.acceptor = TlsAcceptor::from(Arc::new(config));
                        state.stamps = stamps;
                        tracing::info!(cert = %self.files.cert.display(), "tls: certificate files changed; reloaded");
                    }
                    Err(e) => {
                        // Keep serving with what worked; try again at the next change
                        // (or the next check, if the files are still being written).
                        tracing::warn!(error = %e, "tls: certificate files changed but do not load; keeping the previous ones");
                    }
                }
            }
        }
        state.acceptor.clone()
    }
}

/// A client connection after its TLS handshake.
pub struct TlsConn(TlsStream<TcpStream>);

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// What a TLS client connection proved, in each of its requests' extensions.
#[derive(Debug, Clone)]
pub struct ClientTlsInfo {
    pub tcp: tonic::transport::server::TcpConnectInfo,
    /// The Common Name of the certificate the client presented. Only a verified one
    /// is ever presented: certificates are asked for with `--client-cert-auth` only,
    /// and the handshake fails on one the CA did not sign.
    pub common_name: Option<String>,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = ClientTlsInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        let (io, session) = self.0.get_ref();
        let common_name = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| common_name(leaf.as_ref()));
        ClientTlsInfo {
            tcp: io.connect_info(),
            common_name,
        }
    }
}

/// The subject's Common Name of a DER certificate.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// Accepted connections, TLS handshakes done (up to `MAX_CONCURRENT_HANDSHAKES` at
/// once), each socket set up by `tune` first (Nagle off at least). A failed or
/// timed-out handshake drops that connection only.
pub fn incoming(
    listener: TcpListener,
    acceptor: Arc<ReloadingAcceptor>,
    tune: fn(&TcpStream) -> io::Result<()>,
) -> impl Stream<Item = io::Result<TlsConn>> {
    TcpListenerStream::new(listener)
        .filter_map(move |accepted| async move {
            match accepted.and_then(|s| tune(&s).map(|()| s)) {
                Ok(stream) => Some(stream),
                Err(e) => {
                    tracing::debug!(error = %e, "tls: accept failed");
                    None
                }
            }
        })
        .map(move |stream| {
            let acceptor = acceptor.current();
            async move {
                let peer = stream.peer_addr().ok();
                match tokio::time::timeout(
                    Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
                    acceptor.accept(stream),
                )
                .await
                {
                    Ok(Ok(tls)) => Some(Ok(TlsConn(tls))),
                    Ok(Err(e)) => {
                        tracing::info!(peer = ?peer, error = %e, "tls: handshake refused");
                        None
                    }
                    Err(_) => {
                        tracing::info!(peer = ?peer, "tls: handshake timed out");
                        None
                    }
                }
            }
        })
        .buffer_unordered(MAX_CONCURRENT_HANDSHAKES)
        .filter_map(|conn| async move { conn })
}

/// How a command talks TLS to an https:// endpoint (etcdctl's --cacert, --cert, --key).
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}
