//! Finds put stalls while the compactor runs: preloads N revisions over 1000 keys,
//! compacts them all, and prints every concurrent put slower than 8 ms with when it
//! happened (bench/RESULTS.md). `cargo run --release -p raftkv-bench --example
//! compaction_stalls -- 1000000 [cache_mib] [puts_per_s] [memtable_mib]`
//! (puts_per_s 0 or absent: as fast as one thread can)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv_bench::put;
use raftkv_storage::mvcc::{AppliedMeta, Command, MvccOptions, MvccStore};

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir_in(".").expect("temp dir");
    let mut options = MvccOptions::default();
    if let Some(mib) = std::env::args().nth(2).and_then(|s| s.parse::<u64>().ok()) {
        options.cache_capacity_bytes = mib << 20;
    }
    let puts_per_s: u64 = std::env::args()
        .nth(3)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if let Some(mib) = std::env::args().nth(4).and_then(|s| s.parse::<u64>().ok()) {
        options.memtable_size_bytes = mib << 20;
    }
    let store = MvccStore::open(dir.path(), options).expect("store");
    let value = Bytes::from(vec![1u8; 256]);
    for i in 0..n {
        put(&store, format!("k{}", i % 1000), &value);
    }
    let target = store.revision();
    let started = Instant::now();
    store
        .apply(
            &Command::Compact { revision: target },
            &AppliedMeta::default(),
        )
        .expect("apply")
        .expect("compact");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let store = store.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut worst = Duration::ZERO;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                put(&store, format!("w{}", i % 1000), &Bytes::from_static(b"v"));
                let d = t.elapsed();
                worst = worst.max(d);
                if d > Duration::from_millis(8) {
                    println!("put {i}: {d:?} at {:?}", started.elapsed());
                }
                i += 1;
                // Paced: put i + 1 is due at (i + 1) / rate after the start.
                if let Some(due_us) = (i * 1_000_000).checked_div(puts_per_s) {
                    let due = started + Duration::from_micros(due_us);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
            }
            (i, worst)
        })
    };
    store.wait_for_compaction();
    stop.store(true, Ordering::Relaxed);
    let (puts, worst) = writer.join().expect("writer");
    println!(
        "compacted {n} revisions in {:?}; {puts} concurrent puts, worst {worst:?}",
        started.elapsed()
    );
}
