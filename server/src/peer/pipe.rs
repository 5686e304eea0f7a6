//! Long-lived peer pipes: AppendEntries, Vote, forwarded requests and snapshot chunks
//! to one member travel as frames on a TCP (or TLS) connection of its own to the peer
//! port (wire.rs), replies matched by id. The only peer transport: a member that does
//! not answer the pipe's preface is not a raftkv member of this version.
//!
//! A unary call costs each message a request's headers, a response's headers and
//! trailers, and a task on the receiver; at a k3s cluster's rest load (a few messages
//! per update, heartbeats in between) that is most of what a member does. etcd sends
//! Raft messages on long-lived streams for the same reason (docs/decisions.md, "Peer
//! pipes on TCP connections").
//!
//! A frame with id 0 wants no reply (`Pipes::notify`): the leader's commit notices, one
//! after each commit, which a follower acts on as on any AppendEntries but does not
//! answer.
//!
//! Owns the client side: opening a pipe per peer URL, sending frames, matching replies,
//! failing the waiters of a pipe that broke. It never interprets a payload (pool.rs,
//! network.rs and service.rs do), and it must never report a request as not sent once
//! its frame may have left: a forwarded write that might have reached the leader must
//! not be sent twice (member/leader_link.rs, `forward`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use raftkv_proto::peer::Frame;
use tokio::sync::{mpsc, oneshot};
use tonic::{Code, Status};

use crate::peer::wire::{self, Dialed};

/// Frames one pipe has in flight at most, each way: a full pipe makes senders wait,
/// and a receiver reads no more frames until it has answered some.
pub const MAX_PIPE_FRAMES_IN_FLIGHT: usize = 1024;
/// How a pipe to one member is opened.
pub trait Dialer {
    /// Client TLS for a pipe connection to an https:// peer URL; None for http://.
    fn tls(&self) -> Result<Option<Arc<rustls::ClientConfig>>, Status>;
}

/// What a request frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeKind {
    AppendEntries = 1,
    Vote = 2,
    Forward = 3,
    /// A chunk of a snapshot; sent on a pipe of its own (pool.rs), so that a large chunk
    /// never holds up the heartbeats and appends behind it.
    InstallSnapshot = 4,
}

impl PipeKind {
    pub fn name(self) -> &'static str {
        match self {
            PipeKind::AppendEntries => "append_entries",
            PipeKind::Vote => "vote",
            PipeKind::Forward => "forward",
            PipeKind::InstallSnapshot => "install_snapshot",
        }
    }

    pub fn from_wire(kind: u32) -> Option<PipeKind> {
        match kind {
            1 => Some(PipeKind::AppendEntries),
            2 => Some(PipeKind::Vote),
            3 => Some(PipeKind::Forward),
            4 => Some(PipeKind::InstallSnapshot),
            _ => None,
        }
    }
}

/// The id of a request frame that wants no reply.
pub const NO_REPLY_ID: u64 = 0;

/// A reply frame for request `id`: the payload, or the status the request failed with.
pub fn reply_frame(id: u64, result: Result<Bytes, Status>) -> Frame {
    match result {
        Ok(data) => Frame {
            id,
            data,
            ..Frame::default()
        },
        Err(status) => Frame {
            id,
            code: status.code() as u32,
            message: status.message().to_string(),
            ..Frame::default()
        },
    }
}

/// Requests sent on a pipe and not answered yet.
#[derive(Default)]
struct Waiting {
    next_id: u64,
    replies: HashMap<u64, oneshot::Sender<Frame>>,
    /// Set once the pipe's reply stream ended; no request may be added then.
    closed: bool,
}

/// One open pipe: the sending half and the waiters for replies.
struct Pipe {
    frames: mpsc::Sender<Frame>,
    waiting: Arc<Mutex<Waiting>>,
}

impl Pipe {
    fn is_open(&self) -> bool {
        !self.frames.is_closed() && !lock(&self.waiting).closed
    }
}

/// What the pool knows of one peer URL.
#[derive(Default)]
struct Slot {
    current: Mutex<Option<Arc<Pipe>>>,
    /// Held while a pipe is being opened, so that callers arriving meanwhile wait for
    /// it rather than open pipes of their own.
    opening: tokio::sync::Mutex<()>,
}

impl Slot {
    fn open_pipe(&self) -> Option<Arc<Pipe>> {
        lock(&self.current)
            .as_ref()
            .filter(|p| p.is_open())
            .cloned()
    }
}

/// The pipes to other members, one per peer URL, opened on first use and again after
/// one breaks.
#[derive(Clone, Default)]
pub struct Pipes {
    slots: Arc<Mutex<HashMap<String, Arc<Slot>>>>,
}

impl Pipes {
    /// Forgets every pipe (new peer TLS files: new connections must use them). Calls
    /// in flight finish on the pipes they hold.
    pub fn clear(&self) {
        lock(&self.slots).clear();
    }

    fn slot(&self, url: &str) -> Arc<Slot> {
        let mut slots = lock(&self.slots);
        // Looked up before inserting: the URL is copied once per peer, not per message.
        if let Some(slot) = slots.get(url) {
            return slot.clone();
        }
        slots.entry(url.to_string()).or_default().clone()
    }

    /// Sends one request to the member at `url` and waits for its reply, at most
    /// `timeout`: the reply's payload, or the status the peer failed the request with
    /// (or the transport's: a timeout, a broken or unopenable pipe).
    pub async fn call(
        &self,
        url: &str,
        dialer: &impl Dialer,
        kind: PipeKind,
        target: u64,
        data: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, Status> {
        let deadline = tokio::time::Instant::now() + timeout;
        let pipe = self.pipe(url, dialer, deadline).await?;
        send(url, &pipe, kind, target, data, deadline).await
    }

    /// Sends one request to the member at `url` that wants no reply: `Ok` once its frame
    /// is queued on the pipe (not that it arrived), at most `timeout`.
    pub async fn notify(
        &self,
        url: &str,
        dialer: &impl Dialer,
        kind: PipeKind,
        target: u64,
        data: Bytes,
        timeout: Duration,
    ) -> Result<(), Status> {
        let deadline = tokio::time::Instant::now() + timeout;
        let pipe = self.pipe(url, dialer, deadline).await?;
        let frame = request_frame(NO_REPLY_ID, kind, target, data);
        queue(url, &pipe, frame, deadline).await
    }

    /// The open pipe to `url`, opened now if there is none.
    async fn pipe(
        &self,
        url: &str,
        dialer: &impl Dialer,
        deadline: tokio::time::Instant,
    ) -> Result<Arc<Pipe>, Status> {
        let slot = self.slot(url);
        match slot.open_pipe() {
            Some(pipe) => Ok(pipe),
            None => open(url, &slot, dialer, deadline).await,
        }
    }
}

/// Opens a pipe to `url` (or takes the one another caller opened meanwhile). An error
/// means nothing was sent; its message says "connect".
async fn open(
    url: &str,
    slot: &Slot,
    dialer: &impl Dialer,
    deadline: tokio::time::Instant,
) -> Result<Arc<Pipe>, Status> {
    let _opening = tokio::time::timeout_at(deadline, slot.opening.lock())
        .await
        .map_err(|_| {
            Status::unavailable(format!(
                "raftkv peer: could not connect a pipe to {url} in time"
            ))
        })?;
    if let Some(pipe) = slot.open_pipe() {
        return Ok(pipe);
    }
    let cannot = |why: String| format!("raftkv peer: could not connect to {url}: {why}");
    match wire::dial(url, dialer.tls()?, deadline).await {
        Ok(Dialed::Pipe(io)) => {
            let pipe = connection_pipe(url, io);
            *lock(&slot.current) = Some(pipe.clone());
            tracing::info!(%url, "peer pipe connection open");
            Ok(pipe)
        }
        // Unimplemented: nothing there will ever take the request (a client URL given
        // as a peer URL); a joiner stops at once on it (member/join.rs).
        Ok(Dialed::NotSpoken(why)) => Err(Status::unimplemented(cannot(why))),
        Err(e) => Err(Status::unavailable(cannot(e.to_string()))),
    }
}

/// A pipe over a pipe connection: one task writes the queued frames, one hands the
/// replies to their waiters. Either ending closes the pipe.
fn connection_pipe(url: &str, io: Box<dyn wire::PipeIo>) -> Arc<Pipe> {
    let (read, write) = tokio::io::split(io);
    let (frames, outgoing) = mpsc::channel(MAX_PIPE_FRAMES_IN_FLIGHT);
    let waiting = Arc::new(Mutex::new(Waiting::default()));
    let replies = wire::FrameReader::new(read).into_stream();
    tokio::spawn(read_replies(url.to_string(), replies, waiting.clone()));
    let (url, writer_waiting) = (url.to_string(), waiting.clone());
    tokio::spawn(async move {
        if let Err(e) = wire::write_frames(write, outgoing).await {
            tracing::debug!(%url, error = %e, "peer pipe connection broke while writing");
            close(&writer_waiting);
        }
    });
    Arc::new(Pipe { frames, waiting })
}

fn request_frame(id: u64, kind: PipeKind, target: u64, data: Bytes) -> Frame {
    Frame {
        id,
        kind: kind as u32,
        target,
        data,
        ..Frame::default()
    }
}

/// "connect" in the message: the request never left (leader_link.rs may send it again).
fn not_sent(url: &str) -> Status {
    Status::unavailable(format!("raftkv peer: stream to {url} not connected"))
}

/// Queues `frame` on `pipe`, waiting for room until `deadline`.
async fn queue(
    url: &str,
    pipe: &Pipe,
    frame: Frame,
    deadline: tokio::time::Instant,
) -> Result<(), Status> {
    match tokio::time::timeout_at(deadline, pipe.frames.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(not_sent(url)),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "raftkv peer: stream to {url} full until the deadline"
        ))),
    }
}

/// Sends one request frame on `pipe` and waits for its reply until `deadline`.
async fn send(
    url: &str,
    pipe: &Pipe,
    kind: PipeKind,
    target: u64,
    data: Bytes,
    deadline: tokio::time::Instant,
) -> Result<Bytes, Status> {
    let (reply_tx, reply_rx) = oneshot::channel();
    let id = {
        let mut waiting = lock(&pipe.waiting);
        if waiting.closed {
            return Err(not_sent(url));
        }
        waiting.next_id += 1;
        let id = waiting.next_id;
        waiting.replies.insert(id, reply_tx);
        id
    };
    if let Err(status) = queue(url, pipe, request_frame(id, kind, target, data), deadline).await {
        lock(&pipe.waiting).replies.remove(&id);
        return Err(status);
    }
    let reply = match tokio::time::timeout_at(deadline, reply_rx).await {
        Ok(Ok(reply)) => reply,
        // The pipe broke after the frame was queued: it may have been delivered. The
        // message must not say "connect" (see the module comment).
        Ok(Err(_)) => {
            return Err(Status::unavailable(format!(
                "raftkv peer: stream to {url} broke; the request's outcome is unknown"
            )))
        }
        Err(_) => {
            lock(&pipe.waiting).replies.remove(&id);
            return Err(Status::deadline_exceeded(format!(
                "raftkv peer: no reply from {url} in time"
            )));
        }
    };
    if reply.code != 0 {
        return Err(Status::new(Code::from(reply.code as i32), reply.message));
    }
    Ok(reply.data)
}

/// Hands each reply to its waiter until the stream ends, then fails those left.
async fn read_replies<S, E>(url: String, mut replies: S, waiting: Arc<Mutex<Waiting>>)
where
    S: Stream<Item = Result<Frame, E>> + Unpin,
    E: std::fmt::Display,
{
    let reason = loop {
        match replies.next().await {
            Some(Ok(frame)) => {
                let waiter = lock(&waiting).replies.remove(&frame.id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(frame);
                }
            }
            None => break "closed by the peer".to_string(),
            Some(Err(e)) => break e.to_string(),
        }
    };
    tracing::debug!(%url, %reason, "peer stream ended");
    close(&waiting);
}

/// Marks a pipe broken: no request is added to it, and those waiting fail ("broke;
/// outcome unknown") as their reply senders are dropped.
fn close(waiting: &Mutex<Waiting>) {
    let mut waiting = lock(waiting);
    waiting.closed = true;
    waiting.replies.clear();
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use std::time::Instant;

    use tokio::io::AsyncWriteExt;

    use super::*;

    /// A test peer that answers each frame with its payload, after as many
    /// milliseconds as the payload's first byte says (255: it breaks the pipe instead).
    #[derive(Clone)]
    struct EchoPeer {
        url: String,
        /// Pipe connections opened.
        connections: Arc<AtomicUsize>,
        /// Frames received on its pipes.
        frames: Arc<AtomicUsize>,
    }

    /// The echo's answer to one frame, or None to break the pipe.
    async fn echo(frame: Frame) -> Option<Frame> {
        let delay_ms = frame.data.first().copied().unwrap_or(0);
        if delay_ms == 255 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(u64::from(delay_ms))).await;
        Some(reply_frame(frame.id, Ok(frame.data)))
    }

    /// Serves one pipe connection as the echo; a frame asking to break it closes the
    /// connection (both halves).
    fn serve_echo_connection<T: wire::PipeIo>(peer: EchoPeer, conn: T) {
        peer.connections.fetch_add(1, Ordering::SeqCst);
        let (read, write) = tokio::io::split(conn);
        let (replies, outgoing) = mpsc::channel(64);
        let writer = tokio::spawn(wire::write_frames(write, outgoing));
        tokio::spawn(async move {
            let mut reader = wire::FrameReader::new(read);
            let (broken_tx, mut broken) = mpsc::channel::<()>(1);
            loop {
                tokio::select! {
                    frame = reader.next() => {
                        let Ok(Some(frame)) = frame else { break };
                        peer.frames.fetch_add(1, Ordering::SeqCst);
                        let (replies, broken_tx) = (replies.clone(), broken_tx.clone());
                        tokio::spawn(async move {
                            match echo(frame).await {
                                Some(reply) => { let _ = replies.send(reply).await; }
                                None => { let _ = broken_tx.send(()).await; }
                            }
                        });
                    }
                    _ = broken.recv() => break,
                }
            }
            writer.abort();
        });
    }

    /// Serves an echo peer on a loopback port, as the peer listener does.
    async fn echo_peer() -> EchoPeer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let peer = EchoPeer {
            url: format!("http://{}", listener.local_addr().expect("addr")),
            connections: Arc::default(),
            frames: Arc::default(),
        };
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let serving = peer.clone();
        let serve = move |conn| serve_echo_connection(serving.clone(), conn);
        tokio::spawn(wire::accept_pipes(incoming, serve, std::future::pending()));
        peer
    }

    struct TestDial;

    impl Dialer for TestDial {
        fn tls(&self) -> Result<Option<Arc<rustls::ClientConfig>>, Status> {
            Ok(None)
        }
    }

    async fn call(pipes: &Pipes, url: &str, payload: Vec<u8>) -> Result<Bytes, Status> {
        pipes
            .call(
                url,
                &TestDial,
                PipeKind::Forward,
                0,
                Bytes::from(payload),
                Duration::from_secs(5),
            )
            .await
    }

    #[tokio::test]
    async fn replies_answered_out_of_order_reach_their_own_callers_on_one_pipe() {
        let peer = echo_peer().await;
        let pipes = Pipes::default();
        let calls = (0..20u8).map(|i| {
            let pipes = pipes.clone();
            let url = peer.url.clone();
            // The first sent is answered last.
            async move { (i, call(&pipes, &url, vec![60 - 3 * i, i]).await) }
        });
        for (i, result) in futures::future::join_all(calls).await {
            assert_eq!(result.expect("reply").as_ref(), &[60 - 3 * i, i]);
        }
        assert_eq!(
            peer.connections.load(Ordering::SeqCst),
            1,
            "one pipe for all calls"
        );
    }

    #[tokio::test]
    async fn a_peer_that_is_not_there_gets_nothing_and_the_caller_knows_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        drop(listener);
        let status = call(&Pipes::default(), &url, vec![0])
            .await
            .expect_err("no peer");
        assert_eq!(status.code(), Code::Unavailable);
        // leader_link.rs sends a forwarded write again only when the error says "connect".
        assert!(status.message().contains("connect"), "{status:?}");
    }

    #[tokio::test]
    async fn a_server_that_does_not_answer_the_preface_gets_no_request() {
        // An HTTP server where a peer was expected (a client URL given as a peer URL).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let received = Arc::new(AtomicUsize::new(0));
        let counted = received.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = tokio::io::AsyncReadExt::read(&mut conn, &mut buf)
                        .await
                        .unwrap_or(0);
                    counted.fetch_add(n, Ordering::SeqCst);
                    let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                });
            }
        });
        let status = call(&Pipes::default(), &url, vec![0, 1, 2])
            .await
            .expect_err("not a pipe");
        assert_eq!(status.code(), Code::Unimplemented);
        assert!(
            status.message().contains("not a raftkv peer URL"),
            "{status:?}"
        );
        assert_eq!(
            received.load(Ordering::SeqCst),
            wire::PREFACE.len(),
            "only the preface left"
        );
    }

    #[tokio::test]
    async fn a_broken_pipe_fails_its_waiters_as_unknown_and_the_next_call_reopens() {
        let peer = echo_peer().await;
        let pipes = Pipes::default();
        let slow = {
            let pipes = pipes.clone();
            let url = peer.url.clone();
            tokio::spawn(async move { call(&pipes, &url, vec![200]).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let breaker = call(&pipes, &peer.url, vec![255])
            .await
            .expect_err("broken");
        let waiter = slow.await.expect("task").expect_err("broken");
        for status in [&breaker, &waiter] {
            assert_eq!(status.code(), Code::Unavailable);
            assert!(!status.message().contains("connect"), "{status:?}");
        }
        let again = call(&pipes, &peer.url, vec![0, 7]).await.expect("reopened");
        assert_eq!(again.as_ref(), &[0, 7]);
        assert_eq!(peer.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_notice_is_sent_without_waiting_and_an_answer_to_it_reaches_nobody() {
        let peer = echo_peer().await;
        let pipes = Pipes::default();
        // The echo answers after 200 ms, with the notice's id, which no waiter has.
        let started = Instant::now();
        pipes
            .notify(
                &peer.url,
                &TestDial,
                PipeKind::AppendEntries,
                0,
                Bytes::from(vec![200, 1]),
                Duration::from_secs(5),
            )
            .await
            .expect("queued");
        assert!(
            started.elapsed() < Duration::from_millis(150),
            "notify waited {:?}, as for an answer",
            started.elapsed()
        );
        let during = call(&pipes, &peer.url, vec![0, 2]).await.expect("reply");
        assert_eq!(during.as_ref(), &[0, 2]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = call(&pipes, &peer.url, vec![0, 3]).await.expect("reply");
        assert_eq!(after.as_ref(), &[0, 3]);
        assert_eq!(peer.frames.load(Ordering::SeqCst), 3, "the notice arrived");
        assert_eq!(
            peer.connections.load(Ordering::SeqCst),
            1,
            "one pipe throughout"
        );
    }
}
