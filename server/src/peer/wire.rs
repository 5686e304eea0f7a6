//! The peer pipe's own wire: pipe frames (peer.proto `Frame`) straight on a TCP
//! connection to the peer port (TLS over it for https:// peer URLs), each a 4-byte
//! big-endian length and the encoded frame, instead of on an HTTP/2 stream.
//!
//! On a gRPC stream each frame went through HTTP/2's framing and flow control and two
//! extra tasks per side (hyper's connection task and the stream's body pipe); here a
//! frame goes from the sender's queue to the socket in one task and from the socket to
//! its waiter (or server) in one. At a k3s cluster's rest load that transport was about
//! a quarter of the leader's CPU (docs/decisions.md, "Peer pipes on TCP connections").
//!
//! A pipe connection opens with `PREFACE`, which no HTTP/2 or HTTP/1.1 client sends (it
//! starts with a zero byte); the peer listener answers it with the same bytes and
//! closes any connection that opens otherwise (a client pointed at a peer URL), and a
//! dialer that is not answered with it sends nothing more.
//!
//! Owns framing, the preface exchange, the connection's socket options, the listener's
//! accept loop and the writer task. It never interprets a frame (pipe.rs and service.rs
//! do).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use prost::Message;
use raftkv_proto::peer::Frame;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::limits::MAX_PEER_MESSAGE_SIZE_BYTES;

/// The first bytes a pipe connection sends, and the server's answer to them.
pub const PREFACE: &[u8; 16] = b"\0raftkv-pipe/1\r\n";
/// How long an accepted connection may take to send its preface.
const CLASSIFY_TIMEOUT_MS: u64 = 10_000;
/// How long a TCP connect to a peer may take.
const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Connections being told apart at once per listener.
const MAX_CONCURRENT_CLASSIFY: usize = 128;
/// Most bytes of frames one write carries (frames queued meanwhile go in one write).
const MAX_WRITE_BATCH_BYTES: usize = 1 << 20;
/// A write buffer grown past this by a large frame is given back after the write.
const KEEP_WRITE_BUFFER_BYTES: usize = 256 << 10;
/// Read buffer growth step.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// Sent data unacknowledged this long breaks the connection (TCP_USER_TIMEOUT), so
/// that a pipe across a partition is reopened rather than waiting on TCP's
/// retransmission back-off once the partition heals.
const UNACKED_TIMEOUT_MS: u32 = 10_000;
/// An idle connection is probed after this long (TCP keepalive), then every
/// `KEEPALIVE_INTERVAL_S`, and broken after `KEEPALIVE_PROBES` unanswered probes: a
/// server's end of a pipe whose client vanished does not wait forever.
const KEEPALIVE_IDLE_S: i32 = 30;
const KEEPALIVE_INTERVAL_S: i32 = 5;
const KEEPALIVE_PROBES: i32 = 3;

/// A pipe connection's byte stream: TCP, or TLS over TCP.
pub trait PipeIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> PipeIo for T {}

/// Nagle off, keepalive and the unacknowledged-data timeout on (see the constants).
pub fn tune_socket(stream: &TcpStream) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    stream.set_nodelay(true)?;
    let fd = stream.as_raw_fd();
    let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int| -> io::Result<()> {
        // SAFETY: fd is an open socket owned by `stream` for the duration of the call,
        // and the option value is a c_int of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, KEEPALIVE_IDLE_S)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, KEEPALIVE_PROBES)?;
    set(
        libc::IPPROTO_TCP,
        libc::TCP_USER_TIMEOUT,
        UNACKED_TIMEOUT_MS as libc::c_int,
    )?;
    Ok(())
}

/// Appends `frame`, length first, to `buf`.
fn encode_into(frame: &Frame, buf: &mut BytesMut) {
    let len = frame.encoded_len();
    buf.reserve(4 + len);
    buf.put_u32(len as u32);
    // Cannot fail: the room was reserved above.
    let _ = frame.encode(buf);
}

/// Writes every frame queued on `frames` to `io`, those queued together in one write,
/// until the queue's senders are all gone (Ok) or a write fails.
pub async fn write_frames<W: AsyncWrite + Unpin>(
    mut io: W,
    mut frames: mpsc::Receiver<Frame>,
) -> io::Result<()> {
    let mut buf = BytesMut::new();
    while let Some(frame) = frames.recv().await {
        encode_into(&frame, &mut buf);
        while buf.len() < MAX_WRITE_BATCH_BYTES {
            match frames.try_recv() {
                Ok(frame) => encode_into(&frame, &mut buf),
                Err(_) => break,
            }
        }
        io.write_all(&buf).await?;
        io.flush().await?;
        if buf.capacity() > KEEP_WRITE_BUFFER_BYTES {
            buf = BytesMut::new();
        } else {
            buf.clear();
        }
    }
    let _ = io.shutdown().await;
    Ok(())
}

/// Frames read from a pipe connection; a frame's payload is a slice of the read
/// buffer, not a copy.
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R) -> FrameReader<R> {
        FrameReader {
            io,
            buf: BytesMut::new(),
        }
    }

    /// The next frame; None when the other side closed the connection between frames.
    /// Cancel-safe: bytes read stay in the buffer for the next call.
    pub async fn next(&mut self) -> io::Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK_BYTES {
                self.buf.reserve(READ_CHUNK_BYTES);
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "raftkv peer: pipe closed inside a frame",
                    ))
                };
            }
        }
    }

    fn parse(&mut self) -> io::Result<Option<Frame>> {
        let Some(head) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > MAX_PEER_MESSAGE_SIZE_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("raftkv peer: pipe frame of {len} bytes is over the limit of {MAX_PEER_MESSAGE_SIZE_BYTES}"),
            ));
        }
        if self.buf.len() < 4 + len {
            self.buf.reserve(4 + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(4);
        let body: Bytes = self.buf.split_to(len).freeze();
        Frame::decode(body).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("raftkv peer: bad pipe frame: {e}"),
            )
        })
    }

    /// The frames as a stream (ends at the first error, which it yields).
    pub fn into_stream(self) -> impl Stream<Item = io::Result<Frame>> + Send + Unpin
    where
        R: Send + 'static,
    {
        Box::pin(futures::stream::unfold(Some(self), |reader| async move {
            let mut reader = reader?;
            match reader.next().await {
                Ok(Some(frame)) => Some((Ok(frame), Some(reader))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        }))
    }
}

/// What opening a pipe connection came to.
pub enum Dialed {
    /// The connection, preface exchanged.
    Pipe(Box<dyn PipeIo>),
    /// Something answered, but not with the pipe's preface: not a raftkv member.
    /// Nothing was sent but the preface.
    NotSpoken(String),
}

/// Host and port of a peer URL (`http://host:port`, `https://host:port`).
fn host_port(url: &str) -> io::Result<(String, u16)> {
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("bad peer URL {url}"));
    let uri: http::Uri = url.parse().map_err(|_| bad())?;
    let host = uri.host().ok_or_else(bad)?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri
        .port_u16()
        .unwrap_or(if url.starts_with("https://") { 443 } else { 80 });
    Ok((host, port))
}

/// Opens a pipe connection to the member at `url`. `Err`: no connection was made
/// (nothing sent). `tls` must be given for an https:// URL.
pub async fn dial(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    deadline: tokio::time::Instant,
) -> io::Result<Dialed> {
    let (host, port) = host_port(url)?;
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
    let connect_by =
        deadline.min(tokio::time::Instant::now() + Duration::from_millis(CONNECT_TIMEOUT_MS));
    let tcp = tokio::time::timeout_at(connect_by, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| timed_out())??;
    tune_socket(&tcp)?;
    let mut io: Box<dyn PipeIo> = match (url.starts_with("https://"), tls) {
        (false, _) => Box::new(tcp),
        (true, None) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no client TLS configuration for an https:// peer",
            ))
        }
        (true, Some(config)) => {
            let Ok(name) = rustls::pki_types::ServerName::try_from(host.clone()) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{host} is not a TLS server name"),
                ));
            };
            let connector = tokio_rustls::TlsConnector::from(config);
            match tokio::time::timeout_at(deadline, connector.connect(name, tcp)).await {
                Ok(Ok(tls)) => Box::new(tls),
                Ok(Err(e)) => return Err(io::Error::other(format!("TLS handshake: {e}"))),
                Err(_) => return Err(timed_out()),
            }
        }
    };
    let exchange = async {
        io.write_all(PREFACE).await?;
        io.flush().await?;
        read_preface_answer(&mut io).await
    };
    match tokio::time::timeout_at(deadline, exchange).await {
        Ok(Ok(true)) => Ok(Dialed::Pipe(io)),
        Ok(Ok(false)) => Ok(Dialed::NotSpoken(
            "it answered the pipe preface as something else: not a raftkv peer URL".into(),
        )),
        Ok(Err(e)) => Err(io::Error::new(e.kind(), format!("pipe preface: {e}"))),
        Err(_) => Err(timed_out()),
    }
}

/// Reads the answer to the preface: true when it is the preface, false as soon as a
/// byte differs from it (an HTTP/2 server answers with its SETTINGS, say, then closes).
/// A connection closed with every byte read so far matching (none, say) is an error:
/// a member refusing a TLS client certificate, or stopping, closes it so too.
async fn read_preface_answer<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<bool> {
    let mut answer = [0u8; PREFACE.len()];
    let mut read = 0;
    while read < answer.len() {
        let n = io.read(&mut answer[read..]).await?;
        if answer[read..read + n] != PREFACE[read..read + n] {
            return Ok(false);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed before the preface's answer",
            ));
        }
        read += n;
    }
    Ok(true)
}

/// An accepted connection with the bytes read to classify it handed back first.
pub struct Rewind<T> {
    head: Bytes,
    inner: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.head.is_empty() {
            let n = self.head.len().min(buf.remaining());
            buf.put_slice(&self.head[..n]);
            self.head.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Reads until the first bytes of `conn` either are `PREFACE` (true) or differ from it
/// (false); returns them too.
async fn classify<T: AsyncRead + Unpin>(conn: &mut T) -> io::Result<(bool, Bytes)> {
    let mut head = BytesMut::with_capacity(64);
    loop {
        let n = head.len().min(PREFACE.len());
        if head[..n] != PREFACE[..n] {
            return Ok((false, head.freeze()));
        }
        if n == PREFACE.len() {
            return Ok((true, head.freeze()));
        }
        if conn.read_buf(&mut head).await? == 0 {
            return Ok((false, head.freeze()));
        }
    }
}

/// Accepts the peer listener's connections until `stop` resolves: each that opens with
/// `PREFACE` is answered with it and handed to `serve_pipe` (with any bytes read past
/// the preface); any other is closed. At most `MAX_CONCURRENT_CLASSIFY` connections are
/// waited on for their preface at once, each for at most `CLASSIFY_TIMEOUT_MS`.
pub async fn accept_pipes<S, T, F>(incoming: S, serve_pipe: F, stop: impl Future<Output = ()>)
where
    S: Stream<Item = io::Result<T>>,
    T: PipeIo,
    F: Fn(Rewind<T>),
{
    let pipes = incoming
        .filter_map(|accepted| async move {
            match accepted {
                Ok(conn) => Some(conn),
                Err(e) => {
                    tracing::debug!(error = %e, "peer: accept failed");
                    None
                }
            }
        })
        .map(answer_preface)
        .buffer_unordered(MAX_CONCURRENT_CLASSIFY)
        .filter_map(|conn| async move { conn });
    tokio::pin!(pipes, stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            conn = pipes.next() => match conn {
                Some(conn) => serve_pipe(conn),
                None => return,
            },
        }
    }
}

/// An accepted connection as a pipe, its preface answered; None (closed) when it does
/// not open with the preface in time.
async fn answer_preface<T: PipeIo>(mut conn: T) -> Option<Rewind<T>> {
    let read = tokio::time::timeout(
        Duration::from_millis(CLASSIFY_TIMEOUT_MS),
        classify(&mut conn),
    )
    .await;
    match read {
        Ok(Ok((true, head))) => {
            // Flushed: over TLS the answer must leave rustls's buffer now.
            let answered = async {
                conn.write_all(PREFACE).await?;
                conn.flush().await
            };
            if let Err(e) = answered.await {
                tracing::debug!(error = %e, "peer: pipe preface answer failed");
                return None;
            }
            let head = head.slice(PREFACE.len()..);
            Some(Rewind { head, inner: conn })
        }
        Ok(Ok((false, _))) => {
            tracing::debug!("peer: closed a connection that is not a raftkv peer pipe (a client using a peer URL?)");
            None
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "peer: connection failed before its first bytes");
            None
        }
        Err(_) => {
            tracing::debug!("peer: connection sent nothing in time; closed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: u64, data: &[u8]) -> Frame {
        Frame {
            id,
            kind: 1,
            target: 7,
            data: Bytes::copy_from_slice(data),
            ..Frame::default()
        }
    }

    #[tokio::test]
    async fn frames_cross_a_connection_in_order_whatever_the_read_sizes() {
        let (a, b) = tokio::io::duplex(7);
        let (tx, rx) = mpsc::channel(16);
        let writer = tokio::spawn(write_frames(a, rx));
        let big = vec![9u8; 100_000];
        for i in 1..=5u64 {
            tx.send(frame(i, if i == 3 { &big } else { b"abc" }))
                .await
                .expect("queued");
        }
        drop(tx);
        let mut reader = FrameReader::new(b);
        for i in 1..=5u64 {
            let got = reader.next().await.expect("read").expect("a frame");
            assert_eq!(got.id, i);
            assert_eq!(got.target, 7);
            assert_eq!(got.data.len(), if i == 3 { big.len() } else { 3 });
        }
        assert!(reader.next().await.expect("clean end").is_none());
        writer.await.expect("task").expect("writes");
    }

    #[tokio::test]
    async fn a_torn_or_oversized_frame_is_an_error_not_a_frame() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 10, 1, 2]).await.expect("write");
        drop(a);
        let err = FrameReader::new(b).next().await.expect_err("torn");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);

        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
        let err = FrameReader::new(b).next().await.expect_err("oversized");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn classify_tells_a_pipe_from_http2_and_keeps_the_bytes_read() {
        let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(h2).await.expect("write");
        let (pipe, head) = classify(&mut b).await.expect("read");
        assert!(!pipe);
        let mut rewound = Rewind { head, inner: b };
        let mut got = vec![0u8; h2.len()];
        rewound.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, h2);

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(PREFACE).await.expect("write");
        a.write_all(b"after").await.expect("write");
        tokio::task::yield_now().await;
        let (pipe, head) = classify(&mut b).await.expect("read");
        assert!(pipe);
        assert!(head.starts_with(PREFACE));
    }

    #[tokio::test]
    async fn the_listener_serves_pipes_and_closes_anything_else() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = served.clone();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let serve = move |_conn: Rewind<TcpStream>| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        };
        tokio::spawn(accept_pipes(incoming, serve, std::future::pending()));

        // An HTTP/2 client (a client URL's user at the peer port): closed, not served.
        let mut h2 = TcpStream::connect(addr).await.expect("connect");
        h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("write");
        let mut rest = Vec::new();
        h2.read_to_end(&mut rest).await.expect("closed");
        assert!(rest.is_empty(), "answered {rest:?}");

        let url = format!("http://{addr}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let dialed = dial(&url, None, deadline).await.expect("dial");
        assert!(matches!(dialed, Dialed::Pipe(_)));
        // Handed to the server right after its preface was answered.
        while served.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the pipe was not served"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
