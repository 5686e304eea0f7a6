//! Finds put stalls in the MVCC store without compaction: N puts over 1000 keys,
//! printing every put slower than THRESHOLD_MS (default 50) with when it happened. Used to tell the engine's
//! own pauses from the compactor's (docs/decisions.md); RUST_LOG=raftkv_storage=debug,lsm_tree=debug shows
//! the engine's flushes and journal rotations beside them.
//!
//! `cargo run --release -p raftkv-bench --example put_stalls -- 3000000 [threshold_ms]`

use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv_storage::mvcc::{MvccOptions, MvccStore};

fn main() {
    // RUST_LOG=debug shows the engine's own events (memtable flushes, merges) next to
    // the slow puts, with timestamps to line them up.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stdout)
        .init();
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3_000_000);
    let threshold = Duration::from_millis(
        std::env::args()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or(50),
    );
    let dir = tempfile::tempdir_in(".").expect("temp dir");
    let store = MvccStore::open(dir.path(), MvccOptions::default()).expect("store");
    let value = Bytes::from(vec![1u8; 256]);
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    for i in 0..n {
        let t = Instant::now();
        raftkv_bench::put(&store, format!("k{}", i % 1000), &value);
        let d = t.elapsed();
        worst = worst.max(d);
        if d > threshold {
            tracing::warn!("put {i}: {d:?} at {:?}", started.elapsed());
        }
    }
    println!("{n} puts in {:?}, worst {worst:?}", started.elapsed());
}
