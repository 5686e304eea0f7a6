//! One socket write per HTTP/2 flush: the write side of accepted client connections
//! (and of `raftkv-bench`'s own connections, so that the load generator writes as Go's
//! gRPC client does).
//!
//! Owns a bounded write buffer per connection. h2 (under tonic and hyper) encodes frames
//! into a 16 KiB buffer, but on a connection that says it can write vectored it keeps
//! every DATA frame of 256 bytes or more out of that buffer and flushes before the next
//! frame: a unary response (HEADERS, one DATA frame of a 256-byte value, trailers) costs
//! two `writev`s, and on loopback each one runs the receiver's TCP stack too (about a
//! fifth of a member's CPU under 64 readers: docs/decisions.md). Wrapped here,
//! the connection reports no vectored writes, so h2 copies DATA frames up to 1 KiB into
//! its buffer, and the bytes h2 writes between two flushes are gathered here and leave
//! in one `write` at the flush.
//!
//! A flush with bytes pending may first yield once (wake its own task and return
//! Pending, which puts the connection task at the back of the runtime's queue): the
//! request tasks already queued finish their responses first, and they leave in the
//! same write. Without it, each response wakes the connection task into tokio's LIFO
//! slot and is flushed alone, one `write` per response. A yield delays the write
//! behind every task queued (Raft's among them), so it is only kept up while yields
//! gather something: after one that gathered nothing, the next few flushes write at
//! once (`FLUSHES_BETWEEN_YIELD_TRIES`).
//!
//! It must never keep bytes past a `poll_flush` that returned Ready (h2 flushes
//! whenever it has nothing more to write at once, so a response never waits for
//! another), and never holds more than `WRITE_BUFFER_CAPACITY_BYTES`: a larger write
//! goes straight to the socket once the buffer is out.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most a connection holds before writing to its socket: h2's own buffer (16 KiB)
/// plus one DATA frame of the default maximum size (16 KiB).
pub const WRITE_BUFFER_CAPACITY_BYTES: usize = 32 * 1024;
/// After a yield that gathered nothing (one request at a time on this connection), this
/// many flushes write at once before the next try: a lone client pays a yield's delay
/// (tens of µs behind the runtime's other tasks) on one response in nine.
const FLUSHES_BETWEEN_YIELD_TRIES: u32 = 8;

/// An accepted connection whose small writes wait for the next flush.
pub struct Coalesced<T> {
    inner: T,
    /// Bytes accepted from `poll_write` and not yet on the socket.
    pending: Vec<u8>,
    /// How much of `pending` the socket has taken.
    written_bytes: usize,
    /// Set while a `poll_flush` has yielded instead of writing: how much was pending
    /// then. The next `poll_flush` writes.
    yielded_at_bytes: Option<usize>,
    /// Flushes to write at once before a yield is tried again, after one that
    /// gathered nothing.
    flushes_before_yield: u32,
}

impl<T> Coalesced<T> {
    pub fn new(inner: T) -> Coalesced<T> {
        Coalesced {
            inner,
            pending: Vec::new(),
            written_bytes: 0,
            yielded_at_bytes: None,
            flushes_before_yield: 0,
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalesced<T> {
    /// Writes out everything pending; Ready(Ok) means the buffer is empty.
    fn poll_write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written_bytes < self.pending.len() {
            let n = ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written_bytes..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written_bytes += n;
        }
        self.pending.clear();
        self.written_bytes = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.len() + buf.len() > WRITE_BUFFER_CAPACITY_BYTES {
            ready!(this.poll_write_pending(cx))?;
            if buf.len() >= WRITE_BUFFER_CAPACITY_BYTES {
                return Pin::new(&mut this.inner).poll_write(cx, buf);
            }
        }
        this.pending.extend_from_slice(buf);
        debug_assert!(this.pending.len() <= WRITE_BUFFER_CAPACITY_BYTES);
        Poll::Ready(Ok(buf.len()))
    }

    /// May yield once before writing (see the module comment), then writes everything.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.pending.is_empty() {
            match this.yielded_at_bytes.take() {
                Some(before_bytes) if this.pending.len() == before_bytes => {
                    // Nothing joined during the yield: write at once for a while.
                    this.flushes_before_yield = FLUSHES_BETWEEN_YIELD_TRIES;
                }
                Some(_) => {}
                None if this.flushes_before_yield > 0 => this.flushes_before_yield -= 1,
                None => {
                    this.yielded_at_bytes = Some(this.pending.len());
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
        }
        ready!(this.poll_write_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    /// False on purpose: it is what makes h2 copy small DATA frames into its buffer
    /// (see the module comment); the copies are gathered here instead.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Coalesced<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Counts the writes that reach it.
    struct Counting {
        writes: usize,
        bytes: Vec<u8>,
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes += 1;
            // Takes at most 1000 bytes a call, as a full socket buffer would.
            let n = buf.len().min(1000);
            self.bytes.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn small_writes_leave_together_at_the_flush_and_in_order() {
        let mut c = Coalesced::new(Counting {
            writes: 0,
            bytes: Vec::new(),
        });
        for i in 0..10u8 {
            c.write_all(&[i; 90]).await.unwrap();
        }
        assert_eq!(c.inner.writes, 0, "nothing is written before the flush");
        c.flush().await.unwrap();
        assert_eq!(c.inner.writes, 1);
        let expected: Vec<u8> = (0..10u8).flat_map(|i| [i; 90]).collect();
        assert_eq!(c.inner.bytes, expected);
        assert!(c.pending.is_empty());
    }

    #[tokio::test]
    async fn a_full_buffer_is_written_out_first_and_a_big_write_goes_straight_through() {
        let mut c = Coalesced::new(Counting {
            writes: 0,
            bytes: Vec::new(),
        });
        c.write_all(&[1; 100]).await.unwrap();
        let big = vec![2u8; WRITE_BUFFER_CAPACITY_BYTES + 5];
        c.write_all(&big).await.unwrap();
        // The 100 pending bytes went first, then the big write's first part (the
        // socket took 1000 bytes) straight through; its rest fits and waits.
        assert_eq!(c.inner.writes, 2);
        assert_eq!(c.pending.len(), big.len() - 1000);
        c.write_all(&[3; 10]).await.unwrap();
        c.flush().await.unwrap();
        let bytes = &c.inner.bytes;
        assert_eq!(bytes.len(), 100 + big.len() + 10);
        assert!(bytes[..100].iter().all(|b| *b == 1));
        assert!(bytes[100..100 + big.len()].iter().all(|b| *b == 2));
        assert!(bytes[100 + big.len()..].iter().all(|b| *b == 3));
    }

    /// Counts its wakes.
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn a_flush_yields_while_yields_gather_writes_and_writes_at_once_after_one_that_did_not() {
        let wakes = std::sync::Arc::new(Wakes(std::sync::atomic::AtomicUsize::new(0)));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut c = Coalesced::new(Counting {
            writes: 0,
            bytes: Vec::new(),
        });
        let mut c = Pin::new(&mut c);
        let mut write = |c: &mut Pin<&mut Coalesced<Counting>>, byte: u8| {
            let r = c.as_mut().poll_write(&mut cx, &[byte; 10]);
            assert!(matches!(r, Poll::Ready(Ok(10))));
        };
        let flush = |c: &mut Pin<&mut Coalesced<Counting>>| {
            c.as_mut()
                .poll_flush(&mut Context::from_waker(&waker))
                .is_ready()
        };

        // A flush with nothing pending has nothing to wait for.
        assert!(flush(&mut c));
        // The first flush with bytes pending yields, having woken its task.
        write(&mut c, 1);
        assert!(!flush(&mut c));
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(c.inner.writes, 0);
        // Another response joined meanwhile: both leave in one write, and the next
        // flush yields again.
        write(&mut c, 2);
        assert!(flush(&mut c));
        assert_eq!(c.inner.writes, 1);
        write(&mut c, 3);
        assert!(!flush(&mut c));
        // Nothing joined this time: written now, and the next
        // FLUSHES_BETWEEN_YIELD_TRIES flushes write at once.
        assert!(flush(&mut c));
        assert_eq!(c.inner.writes, 2);
        for i in 0..FLUSHES_BETWEEN_YIELD_TRIES {
            write(&mut c, 4);
            assert!(
                flush(&mut c),
                "flush {i} after a useless yield wrote at once"
            );
        }
        assert_eq!(c.inner.writes, 2 + FLUSHES_BETWEEN_YIELD_TRIES as usize);
        write(&mut c, 5);
        assert!(!flush(&mut c), "then a yield is tried again");
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn reads_pass_through_and_shutdown_writes_what_is_pending() {
        let (a, mut b) = tokio::io::duplex(4096);
        let mut c = Coalesced::new(a);
        c.write_all(b"hello").await.unwrap();
        c.shutdown().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        b.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
    }
}
