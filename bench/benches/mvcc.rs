//! MVCC benchmarks: put, point get, a 10k-key prefix range, compaction throughput, and
//! the worst put latency while a large compaction runs (compaction must not stall
//! writes). RAFTKV_BENCH_COMPACT_REVISIONS sets the compaction size (default 100000;
//! bench/RESULTS.md records 1000000).

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use raftkv_bench::put;
use raftkv_storage::mvcc::{AppliedMeta, Command, MvccOptions, MvccStore, RangeRequest};

fn bench_dir() -> tempfile::TempDir {
    match std::env::var("RAFTKV_BENCH_DIR") {
        Ok(dir) => tempfile::tempdir_in(dir).expect("bench dir"),
        Err(_) => tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("bench dir"),
    }
}

fn operations(c: &mut Criterion) {
    let dir = bench_dir();
    let store = MvccStore::open(dir.path(), MvccOptions::default()).expect("store");
    let value = Bytes::from(vec![7u8; 256]);
    for i in 0..10_000 {
        put(&store, format!("/registry/pods/default/pod-{i:05}"), &value);
    }
    let mut group = c.benchmark_group("mvcc");
    let mut i = 0u64;
    group.throughput(Throughput::Elements(1));
    group.bench_function("put_256B", |b| {
        b.iter(|| {
            i += 1;
            put(&store, format!("/registry/leases/l-{}", i % 50_000), &value)
        })
    });
    group.bench_function("get_point", |b| {
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            store
                .range(&RangeRequest {
                    key: Bytes::from(format!("/registry/pods/default/pod-{:05}", n % 10_000)),
                    ..Default::default()
                })
                .expect("get")
        })
    });
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("range_prefix_10k_keys", |b| {
        b.iter(|| {
            let r = store
                .range(&RangeRequest {
                    key: Bytes::from_static(b"/registry/pods/"),
                    range_end: Bytes::from_static(b"/registry/pods0"),
                    ..Default::default()
                })
                .expect("range");
            assert_eq!(r.kvs.len(), 10_000);
            r
        })
    });
    group.finish();
}

/// Puts for `duration`; returns (max, p99.9, count) of put latency.
fn timed_writer(store: &MvccStore, duration: Duration) -> (Duration, Duration, u64) {
    let mut latencies = Vec::new();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        let t = Instant::now();
        put(store, format!("w{}", n % 1000), &Bytes::from_static(b"v"));
        latencies.push(t.elapsed());
        n += 1;
    }
    latencies.sort();
    let p999 = latencies
        .get(latencies.len() * 999 / 1000)
        .copied()
        .unwrap_or_default();
    (latencies.last().copied().unwrap_or_default(), p999, n)
}

/// Compacts `revisions` revisions of 1000 hot keys while a writer keeps putting, and
/// reports compaction throughput and the writer's worst latency.
fn compaction(c: &mut Criterion) {
    let revisions: u64 = std::env::var("RAFTKV_BENCH_COMPACT_REVISIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let mut group = c.benchmark_group("compaction");
    group.sample_size(10);
    group.throughput(Throughput::Elements(revisions));
    group.bench_function("compact_revisions_with_writer", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = bench_dir();
                let store = MvccStore::open(dir.path(), MvccOptions::default()).expect("store");
                let value = Bytes::from(vec![1u8; 256]);
                for i in 0..revisions {
                    put(&store, format!("k{}", i % 1000), &value);
                }
                let target = store.revision();
                // The same writer without compaction, for comparison.
                let (base_worst, base_p999, base_puts) = timed_writer(&store, Duration::from_secs(2));
                eprintln!("no compaction, 2 s: puts {base_puts}, p99.9 {base_p999:.2?}, max {base_worst:.2?}");
                let start = Instant::now();
                store
                    .apply(&Command::Compact { revision: target }, &AppliedMeta::default())
                    .expect("apply")
                    .expect("compact");
                // A writer runs until the compaction is done; its worst latency is the stall.
                let writer_store = store.clone();
                let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let stop_writer = stop.clone();
                let writer = std::thread::spawn(move || {
                    let mut worst = Duration::ZERO;
                    let mut n = 0u64;
                    let mut latencies = Vec::new();
                    while !stop_writer.load(std::sync::atomic::Ordering::Relaxed) {
                        let t = Instant::now();
                        put(&writer_store, format!("w{}", n % 1000), &Bytes::from_static(b"v"));
                        let d = t.elapsed();
                        worst = worst.max(d);
                        latencies.push(d);
                        n += 1;
                    }
                    latencies.sort();
                    let p999 = latencies.get(latencies.len() * 999 / 1000).copied().unwrap_or_default();
                    (worst, p999, n)
                });
                store.wait_for_compaction();
                total += start.elapsed();
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                let (worst, p999, puts) = writer.join().expect("writer");
                eprintln!(
                    "compaction of {revisions} revisions: {:.2?}; concurrent puts: {puts}, p99.9 {:.2?}, max {:.2?}",
                    start.elapsed(),
                    p999,
                    worst
                );
            }
            total
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = operations, compaction
}
criterion_main!(benches);
