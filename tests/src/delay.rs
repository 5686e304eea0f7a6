//! Delay and jitter between members, in user space: a TCP proxy in front of each
//! member's peer port, which the members are told to use (--advertise-peer-urls). Every
//! chunk of bytes, each way, is held for a delay with seeded jitter, in order (TCP keeps
//! order; a link that reorders packets shows a TCP peer only delay). It stands in for
//! `tc netem`, which the test machines' kernel does not have.
//!
//! Owns its threads; they stop when the proxy is dropped and its connections close.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes read at once per direction.
const CHUNK_BYTES: usize = 64 << 10;
/// Chunks in flight per direction before the reader waits (a bounded queue).
const MAX_CHUNKS_IN_FLIGHT: usize = 1024;

/// A delay with jitter: each chunk waits `delay_ms` ± `jitter_ms` (uniform).
#[derive(Debug, Clone, Copy)]
pub struct Delay {
    pub delay_ms: u64,
    pub jitter_ms: u64,
}

pub struct DelayProxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl DelayProxy {
    /// Listens on a free loopback port and forwards to `target_port` with `delay`.
    pub fn start(target_port: u16, delay: Delay, seed: u64) -> DelayProxy {
        let port = crate::free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("proxy binds");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            for (n, client) in listener.incoming().enumerate() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let seed = seed ^ ((n as u64 + 1) << 20);
                pipe(&client, &server, delay, seed);
                pipe(&server, &client, delay, seed ^ 1);
            }
        });
        DelayProxy { port, stop }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies `from` to `to`, each chunk released `delay` after it was read, never before
/// the chunk ahead of it.
fn pipe(from: &TcpStream, to: &TcpStream, delay: Delay, seed: u64) {
    let (Ok(mut reader), Ok(mut writer)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(MAX_CHUNKS_IN_FLIGHT);
    std::thread::spawn(move || {
        let mut rng = seed | 1;
        let mut last_due = Instant::now();
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // xorshift: a seeded jitter without a dependency.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let jitter = rng % (2 * delay.jitter_ms + 1);
            let wait_ms = (delay.delay_ms + jitter).saturating_sub(delay.jitter_ms);
            let due = (Instant::now() + Duration::from_millis(wait_ms)).max(last_due);
            last_due = due;
            if tx.send((due, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for (due, chunk) in rx {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if writer.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = writer.shutdown(Shutdown::Write);
    });
}
