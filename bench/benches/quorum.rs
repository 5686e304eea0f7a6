//! Write latency at quorum 2 of 3: three real raftkv processes on loopback, one client,
//! 256-byte values, next to a bare fdatasync of the same size on the same file system
//! (the floor). A put is acknowledged after the leader and one follower have it on disk.

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use raftkv_bench::cluster::{ProcCluster, System};
use raftkv_bench::{build_raftkv, FsyncFloor};

/// Sequential puts of 256-byte values through one client connection to `endpoints`.
fn put_bench(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    rt: &tokio::runtime::Runtime,
    endpoints: Vec<String>,
) {
    let mut client = rt
        .block_on(etcd_client::Client::connect(endpoints, None))
        .expect("connect");
    let value = vec![0x5au8; 256];
    let mut i = 0u64;
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    client
                        .put(format!("bench/{}", i % 10_000), value.clone(), None)
                        .await
                        .expect("put");
                    i += 1;
                }
                start.elapsed()
            })
        })
    });
}

fn quorum(c: &mut Criterion) {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = build_raftkv(env!("CARGO"), &workspace);
    // Data on the same file system as the workspace's target dir.
    let parent = workspace.join("target");
    let floor_dir = tempfile::tempdir_in(&parent).expect("temp dir");
    let mut floor = FsyncFloor::new(floor_dir.path(), 256).expect("floor file");
    let mut group = c.benchmark_group("quorum");
    group.sample_size(50);
    group.bench_function("bare_fdatasync_256B", |b| {
        let mut offset = 0u64;
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += floor.once(offset).expect("fdatasync");
                offset += 4096;
            }
            total
        })
    });

    let cluster = ProcCluster::start(System::Raftkv, &bin, &parent, 3, &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let leader_ep = rt.block_on(async {
        // Talk to the leader directly: one client, no forwarding hop.
        for ep in cluster.endpoints() {
            let mut c = etcd_client::Client::connect([ep.clone()], None)
                .await
                .expect("connect");
            let s = c.status().await.expect("status");
            if s.leader() == s.header().expect("header").member_id() {
                return ep;
            }
        }
        cluster.endpoints()[0].clone()
    });
    put_bench(&mut group, "put_256B_quorum_2_of_3", &rt, vec![leader_ep]);
    drop(cluster);

    // The same against a single member: what replication adds is the difference.
    let single = ProcCluster::start(System::Raftkv, &bin, &parent, 1, &[]);
    put_bench(
        &mut group,
        "put_256B_single_member",
        &rt,
        single.endpoints(),
    );
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    targets = quorum
}
criterion_main!(benches);
