//! WAL benchmarks: one durable 256-byte append against a bare fdatasync of the same
//! size on the same file system (the floor), and durable-append throughput with 1, 8,
//! 64 and 512 concurrent appenders (group commit at work).
//!
//! Data goes under $RAFTKV_BENCH_DIR (default: the target directory), so that the
//! floor and the log share a file system.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raftkv_bench::FsyncFloor;
use raftkv_storage::wal::{RecordKind, Request, Wal, WalOptions};

const ENTRY_SIZE_BYTES: usize = 256;

fn bench_dir() -> tempfile::TempDir {
    match std::env::var("RAFTKV_BENCH_DIR") {
        Ok(dir) => tempfile::tempdir_in(dir).expect("bench dir"),
        Err(_) => tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("bench dir"),
    }
}

fn record(index: u64) -> Vec<u8> {
    let mut out = index.to_le_bytes().to_vec();
    out.resize(ENTRY_SIZE_BYTES, 0xab);
    out
}

async fn durable_append(wal: &Wal, index: u64) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    wal.submit(Request {
        records: vec![(RecordKind::Entry, record(index))],
        sync: true,
        done: Box::new(move |r| {
            let _ = tx.send(r);
        }),
    })
    .await
    .expect("submit");
    rx.await.expect("completion").expect("durable");
}

fn latency(c: &mut Criterion) {
    let dir = bench_dir();
    let mut group = c.benchmark_group("durable_write_256B");
    let mut floor = FsyncFloor::new(dir.path(), ENTRY_SIZE_BYTES).expect("floor file");
    let mut offset = 0u64;
    group.bench_function("bare_fdatasync_floor", |b| {
        b.iter(|| {
            offset += 4096;
            floor.once(offset).expect("fdatasync")
        })
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (wal, _) = Wal::open(
        &dir.path().join("wal"),
        WalOptions::default(),
        |_, _| Ok(()),
    )
    .expect("wal");
    let mut index = 0u64;
    group.bench_function("wal_append_1_entry", |b| {
        b.iter(|| {
            index += 1;
            rt.block_on(durable_append(&wal, index))
        })
    });
    group.finish();
}

fn throughput(c: &mut Criterion) {
    let dir = bench_dir();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (wal, _) = Wal::open(
        &dir.path().join("wal"),
        WalOptions::default(),
        |_, _| Ok(()),
    )
    .expect("wal");
    let wal = Arc::new(wal);
    let mut group = c.benchmark_group("durable_append_throughput_256B");
    group.measurement_time(Duration::from_secs(5));
    for appenders in [1u64, 8, 64, 512] {
        // Each iteration: every appender makes one durable append, concurrently.
        group.throughput(Throughput::Elements(appenders));
        group.bench_with_input(
            BenchmarkId::from_parameter(appenders),
            &appenders,
            |b, &appenders| {
                b.iter_custom(|iters| {
                    let wal = wal.clone();
                    rt.block_on(async move {
                        let start = Instant::now();
                        let tasks: Vec<_> = (0..appenders)
                            .map(|task| {
                                let wal = wal.clone();
                                tokio::spawn(async move {
                                    for i in 0..iters {
                                        durable_append(&wal, i * appenders + task).await;
                                    }
                                })
                            })
                            .collect();
                        for t in tasks {
                            t.await.expect("appender");
                        }
                        start.elapsed()
                    })
                })
            },
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(Duration::from_secs(1));
    targets = latency, throughput
}
criterion_main!(benches);
