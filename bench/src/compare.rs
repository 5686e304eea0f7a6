//! `raftkv-bench compare`: raftkv and etcd side by side on this machine, in one run.
//!
//! Starts a three-member cluster of each (one system at a time, data under the same
//! parent directory), measures the floor (a bare 256-byte fdatasync there plus a
//! loopback round trip), runs the same workloads against both and writes a table of
//! raftkv/etcd ratios against the performance targets. Owns the order of the phases
//! and the table; the workloads are load.rs's and the processes cluster.rs's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cluster::{leader_index, ProcCluster, ProcStats, System};
use crate::load::{self, LoadConfig, Report, Workload};
use crate::stats::{ms, Recorder, Summary};

/// How long and how large each phase is.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    pub raftkv_bin: PathBuf,
    pub etcd_bin: PathBuf,
    /// Data dirs and the floor file go under here (one file system for all).
    pub parent: PathBuf,
    /// Each throughput or latency run.
    pub run: Duration,
    /// The k3s-at-rest load.
    pub rest: Duration,
    pub failover_trials: usize,
    /// Keys held for the memory and compaction phase.
    pub big_keys: u64,
    /// The write window around compaction and space reclaim (and the baseline's).
    pub compaction_window: Duration,
    /// Which phases run (all for a measurement; fewer for an experiment).
    pub phases: Vec<Phase>,
    /// The load generator's runtime threads (`load::CLIENT_THREADS` unless overridden).
    pub client_threads: usize,
    /// Rounds of the put throughput runs (64 and 256 clients) per system, the table
    /// taking the median: the first in the throughput phase, the others alternating
    /// between the systems at the end (`put_rounds`), each on a fresh cluster.
    pub put_rounds: usize,
}

/// The parts of a run, each on a fresh three-member cluster of its own but the first two,
/// which share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Put latency and throughput, gets, updates, watch delivery, lists.
    Throughput,
    /// Leader SIGKILL and the time until writes resume.
    Failover,
    /// The k3s-at-rest load: bytes written and CPU seconds.
    Rest,
    /// A million keys: memory, then latency while compaction and space reclaim run.
    Big,
}

impl Phase {
    pub const ALL: [Phase; 4] = [Phase::Throughput, Phase::Failover, Phase::Rest, Phase::Big];
}

impl CompareConfig {
    /// The full run the targets are judged on (about 45 minutes on two cores).
    pub fn full(raftkv_bin: PathBuf, etcd_bin: PathBuf, parent: PathBuf) -> Self {
        CompareConfig {
            raftkv_bin,
            etcd_bin,
            parent,
            run: Duration::from_secs(10),
            rest: Duration::from_secs(600),
            failover_trials: 20,
            big_keys: 1_000_000,
            compaction_window: Duration::from_secs(60),
            phases: Phase::ALL.to_vec(),
            client_threads: load::CLIENT_THREADS,
            put_rounds: PUT_ROUNDS,
        }
    }

    /// A smoke run for CI: every phase, tiny, nothing asserted about speed.
    pub fn quick(raftkv_bin: PathBuf, etcd_bin: PathBuf, parent: PathBuf) -> Self {
        CompareConfig {
            run: Duration::from_secs(1),
            rest: Duration::from_secs(5),
            failover_trials: 2,
            big_keys: 5_000,
            compaction_window: Duration::from_secs(3),
            // Two, so that the smoke run takes the alternating rounds' path too.
            put_rounds: 2,
            ..CompareConfig::full(raftkv_bin, etcd_bin, parent)
        }
    }
}

/// Rounds of the put throughput runs in a full run. One 10 s sample per system could
/// not decide a 1.5x threshold: etcd's put rate at 256 clients moved between 13048 and
/// 17239 a second from one run to the next on the same machine (docs/decisions.md).
pub const PUT_ROUNDS: usize = 3;
/// Rounds at most (`--put-rounds`).
pub const MAX_PUT_ROUNDS: usize = 15;

/// Everything measured on one system.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Measured {
    pub put_1_client: Summary,
    /// Each round's puts a second, in the order they ran (the table takes the median).
    pub put_64_rounds: Vec<f64>,
    pub put_256_rounds: Vec<f64>,
    pub range_linearizable_ops_per_s: f64,
    pub range_serializable_ops_per_s: f64,
    pub update_ops_per_s: f64,
    pub watch: Summary,
    pub list_10k: Summary,
    pub failover_ms: Summary,
    pub rest_write_bytes: u64,
    /// What the data dir's block device wrote meanwhile (None if it is not listed).
    pub rest_device_write_bytes: Option<u64>,
    pub rest_cpu_ms: u64,
    pub rest_data_bytes: u64,
    pub load_ops_per_s: f64,
    pub rss_loaded_bytes: u64,
    pub rss_peak_bytes: u64,
    pub put_before_compaction: Summary,
    pub put_during_compaction: Summary,
    pub compaction_and_reclaim_ms: u64,
    /// Errors any run counted (a healthy run has none).
    pub errors: u64,
}

/// The floor a durable, replicated write can approach on this machine.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Floor {
    pub fdatasync_256_p50_us: u32,
    pub loopback_rtt_p50_us: u32,
}

impl Floor {
    pub fn total_us(&self) -> u32 {
        self.fdatasync_256_p50_us + self.loopback_rtt_p50_us
    }
}

/// Prints a run's result for people and as one JSON line, and keeps it.
fn emit(report: Result<Report, load::LoadError>, errors: &mut u64) -> Report {
    match report {
        Ok(r) => {
            println!("{}", r.human());
            println!("{}", r.json());
            *errors += r.errors;
            r
        }
        Err(e) => panic!("a benchmark run could not start: {e}"),
    }
}

/// The floor: p50 of 1000 bare 256-byte fdatasyncs in `dir` and of 1000 loopback round
/// trips of 64 bytes.
pub fn floor(dir: &Path) -> Floor {
    use std::io::{Read, Write};
    // The build just before leaves dirty pages; the floor is a quiet disk's.
    crate::cluster::sync_disks();
    let mut fsync = crate::FsyncFloor::new(dir, 256).expect("floor file");
    let mut rec = Recorder::default();
    for i in 0..1000u64 {
        rec.record(fsync.once(i * 4096).expect("fdatasync"));
    }
    let fdatasync_256_p50_us = rec.summary().p50_us;

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let echo = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.set_nodelay(true);
            let mut buf = [0u8; 64];
            while s.read_exact(&mut buf).is_ok() {
                if s.write_all(&buf).is_err() {
                    break;
                }
            }
        }
    });
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut rec = Recorder::default();
    let mut buf = [7u8; 64];
    for _ in 0..1000 {
        let start = Instant::now();
        s.write_all(&buf).expect("write");
        s.read_exact(&mut buf).expect("read");
        rec.record(start.elapsed());
    }
    drop(s);
    let _ = echo.join();
    Floor {
        fdatasync_256_p50_us,
        loopback_rtt_p50_us: rec.summary().p50_us,
    }
}

fn sum_stats(cluster: &ProcCluster) -> ProcStats {
    let mut total = ProcStats::default();
    for i in 0..cluster.len() {
        let s = cluster.stats(i);
        total.peak_rss_bytes = total.peak_rss_bytes.max(s.peak_rss_bytes);
        total.rss_bytes = total.rss_bytes.max(s.rss_bytes);
        total.write_bytes += s.write_bytes;
        total.cpu_ms += s.cpu_ms;
    }
    total
}

fn leader(rt: &tokio::runtime::Runtime, cluster: &ProcCluster) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(i) = rt.block_on(leader_index(&cluster.endpoints())) {
            return i;
        }
        assert!(Instant::now() < deadline, "no leader for 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The unrecorded put load before the first measurement.
const WARMUP_MS: u64 = 3_000;

/// Measures one system: every phase chosen, in the same order for both.
pub fn measure(config: &CompareConfig, system: System) -> Measured {
    let rt = load::runtime(config.client_threads);
    let mut m = Measured::default();
    let runs = |phase: Phase| config.phases.contains(&phase);
    // Whatever ran before (the build, the other system's last phase) leaves dirty pages
    // behind; written out now, they do not land on this system's first measurements.
    crate::cluster::sync_disks();
    if runs(Phase::Throughput) || runs(Phase::Failover) {
        let mut cluster =
            ProcCluster::start(system, bin_of(config, system), &config.parent, 3, &[]);
        if runs(Phase::Throughput) {
            throughput(&rt, config, &cluster, system, &mut m);
        }
        if runs(Phase::Failover) {
            eprintln!(
                "== {}: leader SIGKILL, {} trials",
                system.name(),
                config.failover_trials
            );
            m.failover_ms = failover(&rt, &mut cluster, config.failover_trials);
        }
    }
    if runs(Phase::Rest) {
        rest(&rt, config, system, &mut m);
    }
    if runs(Phase::Big) {
        eprintln!(
            "== {}: {} keys, compaction and space reclaim",
            system.name(),
            config.big_keys
        );
        let cluster = ProcCluster::start(system, bin_of(config, system), &config.parent, 3, &[]);
        big(&rt, &cluster, config, &mut m);
    }
    m
}

fn bin_of(config: &CompareConfig, system: System) -> &Path {
    match system {
        System::Raftkv => &config.raftkv_bin,
        System::Etcd => &config.etcd_bin,
    }
}

/// Latency and throughput of every workload, on a fresh cluster.
fn throughput(
    rt: &tokio::runtime::Runtime,
    config: &CompareConfig,
    cluster: &ProcCluster,
    system: System,
    m: &mut Measured,
) {
    let label = system.name();
    let base = |workload, clients, connections| load_config(config, workload, clients, connections);

    eprintln!("== {label}: throughput and latency");
    let all = cluster.endpoints();
    let leader_ep = vec![cluster.endpoint(leader(rt, cluster))];
    // A fresh cluster is still settling (learners being promoted, first segment and
    // table files created): a short unrecorded put load first, the same for both systems.
    warm_up(rt, config, &leader_ep);

    let r = emit(
        rt.block_on(load::run(
            &LoadConfig {
                endpoints: leader_ep.clone(),
                ..base(Workload::Put, 1, 1)
            },
            label,
        )),
        &mut m.errors,
    );
    m.put_1_client = r.latency;
    put_round(rt, config, cluster, system, m);
    for serializable in [false, true] {
        let r = emit(
            rt.block_on(load::run(
                &LoadConfig {
                    endpoints: all.clone(),
                    serializable,
                    // Filled once, by the first of the two runs.
                    populate: !serializable,
                    ..base(Workload::Range, 64, 8)
                },
                label,
            )),
            &mut m.errors,
        );
        if serializable {
            m.range_serializable_ops_per_s = r.ops_per_s;
        } else {
            m.range_linearizable_ops_per_s = r.ops_per_s;
        }
    }
    let r = emit(
        rt.block_on(load::run(
            &LoadConfig {
                endpoints: all.clone(),
                key_space: 1000,
                value_size_bytes: 1024,
                ..base(Workload::Update, 64, 8)
            },
            label,
        )),
        &mut m.errors,
    );
    m.update_ops_per_s = r.ops_per_s;
    let r = emit(
        rt.block_on(load::run(
            &LoadConfig {
                endpoints: all.clone(),
                watchers: 100,
                key_space: 100,
                rate_per_s: Some(100),
                ..base(Workload::Watch, 4, 8)
            },
            label,
        )),
        &mut m.errors,
    );
    m.watch = r.latency;
    let r = emit(
        rt.block_on(load::run(
            &LoadConfig {
                endpoints: all.clone(),
                key_space: 10_000,
                page_size: 500,
                ..base(Workload::List, 4, 4)
            },
            label,
        )),
        &mut m.errors,
    );
    m.list_10k = r.latency;
}

/// One round of puts of random keys over all members, 64 clients on 8 connections
/// and 256 on 16; each rate is added to the system's rounds.
fn put_round(
    rt: &tokio::runtime::Runtime,
    config: &CompareConfig,
    cluster: &ProcCluster,
    system: System,
    m: &mut Measured,
) {
    for (clients, connections) in [(64, 8), (256, 16)] {
        let r = emit(
            rt.block_on(load::run(
                &LoadConfig {
                    endpoints: cluster.endpoints(),
                    random_keys: true,
                    ..load_config(config, Workload::Put, clients, connections)
                },
                system.name(),
            )),
            &mut m.errors,
        );
        if clients == 64 {
            m.put_64_rounds.push(r.ops_per_s);
        } else {
            m.put_256_rounds.push(r.ops_per_s);
        }
    }
}

/// The middle value (the mean of the two middle ones for an even count); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The put throughput rounds after the first (which ran in each system's throughput
/// phase): alternating between the systems, each on a fresh cluster warmed up as the
/// throughput phase's is, so that a slow or fast spell of the machine falls on both.
/// Nothing runs unless the throughput phase did.
pub fn put_rounds(config: &CompareConfig, systems: &mut [(System, &mut Measured)]) {
    if !config.phases.contains(&Phase::Throughput) {
        return;
    }
    let rt = load::runtime(config.client_threads);
    for round in 2..=config.put_rounds {
        for (system, m) in systems.iter_mut() {
            eprintln!(
                "== {}: put throughput, round {round} of {}",
                system.name(),
                config.put_rounds
            );
            crate::cluster::sync_disks();
            let cluster =
                ProcCluster::start(*system, bin_of(config, *system), &config.parent, 3, &[]);
            warm_up(&rt, config, &[cluster.endpoint(leader(&rt, &cluster))]);
            put_round(&rt, config, &cluster, *system, m);
        }
    }
}

/// A run of `config.run` with `clients` over `connections`; the caller adds the rest.
fn load_config(
    config: &CompareConfig,
    workload: Workload,
    clients: usize,
    connections: usize,
) -> LoadConfig {
    LoadConfig {
        workload,
        clients,
        connections,
        duration: config.run,
        ..LoadConfig::default()
    }
}

/// The unrecorded put load a fresh cluster gets before its first measurement: one
/// client on the leader (`leader_ep`).
fn warm_up(rt: &tokio::runtime::Runtime, config: &CompareConfig, leader_ep: &[String]) {
    let _ = rt.block_on(load::run(
        &LoadConfig {
            endpoints: leader_ep.to_vec(),
            duration: config.run.min(Duration::from_millis(WARMUP_MS)),
            ..load_config(config, Workload::Put, 1, 1)
        },
        "warm-up",
    ));
}

/// The k3s-at-rest load on a fresh cluster: bytes written and CPU seconds.
fn rest(rt: &tokio::runtime::Runtime, config: &CompareConfig, system: System, m: &mut Measured) {
    let label = system.name();
    eprintln!("== {label}: k3s at rest for {:?}", config.rest);
    let cluster = ProcCluster::start(system, bin_of(config, system), &config.parent, 3, &[]);
    crate::cluster::sync_disks();
    let before = sum_stats(&cluster);
    let device_before = crate::cluster::device_written_bytes(&config.parent);
    rt.block_on(at_rest(&cluster.endpoints(), config.rest));
    let after = sum_stats(&cluster);
    crate::cluster::sync_disks();
    let device_after = crate::cluster::device_written_bytes(&config.parent);
    m.rest_write_bytes = after.write_bytes.saturating_sub(before.write_bytes);
    m.rest_device_write_bytes = device_before
        .zip(device_after)
        .map(|(b, a)| a.saturating_sub(b));
    m.rest_cpu_ms = after.cpu_ms.saturating_sub(before.cpu_ms);
    m.rest_data_bytes = cluster.data_bytes();
    println!(
        "{label} at rest {:?}: {} bytes written, {} ms CPU, data dirs {} bytes (all members); \
         the device wrote {}",
        config.rest,
        m.rest_write_bytes,
        m.rest_cpu_ms,
        m.rest_data_bytes,
        m.rest_device_write_bytes
            .map_or("(unreadable)".to_string(), |b| format!("{b} bytes"))
    );
}

/// Kills the leader `trials` times; how long until a write through a survivor succeeds.
fn failover(rt: &tokio::runtime::Runtime, cluster: &mut ProcCluster, trials: usize) -> Summary {
    let mut rec = Recorder::default();
    for trial in 0..trials {
        let leader = leader(rt, cluster);
        let survivor = cluster.endpoint((leader + 1) % cluster.len());
        let mut client = rt
            .block_on(load::connect(&[survivor], 1))
            .expect("connect to a survivor")
            .remove(0);
        // Warm the connection: the first request after kill must not pay for it.
        rt.block_on(client.put("bench/failover", "warm", None))
            .expect("a put before the kill");
        cluster.kill9(leader);
        let killed = Instant::now();
        // A new attempt every 50 ms, each allowed to wait: a member may hold a request
        // until there is a leader (etcd does) or fail it at once (raftkv forwarding to
        // a dead leader does). Writes have resumed when any attempt succeeds.
        rt.block_on(async {
            let mut attempts = tokio::task::JoinSet::new();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let mut c = client.clone();
                        let value = format!("{trial}");
                        attempts.spawn(async move { c.put("bench/failover", value, None).await.is_ok() });
                    }
                    Some(done) = attempts.join_next() => {
                        if matches!(done, Ok(true)) {
                            break;
                        }
                    }
                }
                assert!(
                    killed.elapsed() < Duration::from_secs(30),
                    "no write for 30 s after the leader was killed"
                );
            }
            attempts.abort_all();
        });
        let took = killed.elapsed();
        println!("failover trial {trial}: {} ms", took.as_millis());
        // Kept in the recorder's microsecond field as milliseconds: the summary reads in ms.
        rec.record(Duration::from_micros(took.as_millis() as u64));
        cluster.restart(leader);
        // Let the restarted member catch up and the cluster settle.
        std::thread::sleep(Duration::from_secs(2));
    }
    rec.summary()
}

/// A k3s cluster at rest: about 30 Kubernetes-shaped updates per second (node and
/// controller leases, status updates; values of 1 KiB on 500 objects), an event with
/// a 60 s lease every 10 s, and the API server's compaction every 5 minutes (every
/// `duration`/4 in short runs) to the revision seen at the one before.
async fn at_rest(endpoints: &[String], duration: Duration) {
    let updates = LoadConfig {
        endpoints: endpoints.to_vec(),
        workload: Workload::Update,
        clients: 6,
        connections: 3,
        duration,
        value_size_bytes: 1024,
        key_space: 500,
        rate_per_s: Some(30),
        ..LoadConfig::default()
    };
    let mut client = load::connect(endpoints, 1)
        .await
        .expect("connect")
        .remove(0);
    let background = tokio::spawn(async move {
        let compact_every = Duration::from_secs(300).min(duration / 4);
        let start = Instant::now();
        let mut next_event = start;
        let mut next_compaction = start + compact_every;
        let mut seen_revision = 0i64;
        let mut n = 0u64;
        while start.elapsed() < duration {
            if Instant::now() >= next_event {
                next_event += Duration::from_secs(10);
                if let Ok(lease) = client.lease_grant(60, None).await {
                    let options = etcd_client::PutOptions::new().with_lease(lease.id());
                    let _ = client
                        .put(
                            format!("bench/events/{n:010}"),
                            vec![b'e'; 512],
                            Some(options),
                        )
                        .await;
                    n += 1;
                }
            }
            if Instant::now() >= next_compaction {
                next_compaction += compact_every;
                if seen_revision > 0 {
                    let _ = client.compact(seen_revision, None).await;
                }
                if let Ok(r) = client.get("compact_rev_key", None).await {
                    seen_revision = r.header().map(|h| h.revision()).unwrap_or(0);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut errors = 0;
    emit(load::run(&updates, "at-rest").await, &mut errors);
    let _ = background.await;
}

/// How long the compaction and each defragmentation of the big phase may take.
const ADMIN_TIMEOUT_MS: u64 = 300_000;

/// A client for admin calls on `endpoint`: both systems answer a physical compaction and
/// a defragmentation when they are done, and with the load's 10 s timeout the calls gave
/// up while the work went on (the next member's defragmentation then overlapped).
async fn admin_client(endpoint: &str) -> Result<etcd_client::Client, load::LoadError> {
    let mut clients =
        load::connect_with_timeout(&[endpoint.to_string()], 1, ADMIN_TIMEOUT_MS).await?;
    Ok(clients.remove(0))
}

/// Fills `big_keys` keys (and writes them all once more, leaving as many revisions of
/// history), then measures paced puts without and with compaction + space reclaim.
fn big(
    rt: &tokio::runtime::Runtime,
    cluster: &ProcCluster,
    config: &CompareConfig,
    m: &mut Measured,
) {
    let label = cluster.system.name();
    let endpoints = cluster.endpoints();
    let conns = rt.block_on(load::connect(&endpoints, 16)).expect("connect");
    let start = Instant::now();
    rt.block_on(load::populate(&conns, Workload::Put, config.big_keys, 256))
        .expect("fill the key space");
    m.load_ops_per_s = config.big_keys as f64 / start.elapsed().as_secs_f64();
    m.rss_loaded_bytes = sum_stats(cluster).peak_rss_bytes;
    println!(
        "{label}: {} keys loaded at {:.0} puts/s, peak RSS {} MiB",
        config.big_keys,
        m.load_ops_per_s,
        m.rss_loaded_bytes >> 20
    );
    rt.block_on(load::populate(&conns, Workload::Put, config.big_keys, 256))
        .expect("write the key space again");

    let paced = LoadConfig {
        endpoints: endpoints.clone(),
        workload: Workload::Put,
        clients: 16,
        connections: 4,
        duration: config.compaction_window,
        random_keys: true,
        key_space: config.big_keys,
        rate_per_s: Some(1000),
        ..LoadConfig::default()
    };
    let before = emit(rt.block_on(load::run(&paced, label)), &mut m.errors);
    m.put_before_compaction = before.latency;

    let mut admin = rt.block_on(admin_client(&endpoints[0])).expect("connect");
    let reclaim = {
        let endpoints = endpoints.clone();
        rt.spawn(async move {
            let start = Instant::now();
            let revision = admin
                .get("bench/", None)
                .await
                .ok()
                .and_then(|r| r.header().map(|h| h.revision()))
                .unwrap_or(0);
            let options = etcd_client::CompactionOptions::new().with_physical();
            if let Err(e) = admin.compact(revision, Some(options)).await {
                eprintln!("compaction failed: {e}");
            }
            // Space reclaim on every member, one after another (etcdctl defrag --cluster).
            for endpoint in &endpoints {
                if let Ok(mut c) = admin_client(endpoint).await {
                    if let Err(e) = c.defragment().await {
                        eprintln!("defragment {endpoint} failed: {e}");
                    }
                }
            }
            start.elapsed()
        })
    };
    let during = emit(rt.block_on(load::run(&paced, label)), &mut m.errors);
    m.put_during_compaction = during.latency;
    let took = rt.block_on(reclaim).unwrap_or_default();
    m.compaction_and_reclaim_ms = took.as_millis() as u64;
    m.rss_peak_bytes = sum_stats(cluster).peak_rss_bytes;
    println!(
        "{label}: compaction of {} revisions and defragment took {} ms; peak RSS {} MiB",
        config.big_keys,
        m.compaction_and_reclaim_ms,
        m.rss_peak_bytes >> 20
    );
}

/// One row of the table.
struct Row {
    measure: &'static str,
    raftkv: String,
    etcd: String,
    ratio: f64,
    target: &'static str,
    /// None: reported for information, no target.
    met: Option<bool>,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        f64::NAN
    } else {
        a / b
    }
}

/// The table of ratios against the targets, in Markdown.
pub fn table(floor: &Floor, r: &Measured, e: &Measured) -> String {
    let mib = |b: u64| format!("{:.0} MiB", b as f64 / f64::from(1 << 20));
    let ops = |x: f64| format!("{x:.0}/s");
    let mut rows = Vec::new();
    let put_ratio = ratio(r.put_1_client.p50_us.into(), e.put_1_client.p50_us.into());
    rows.push(Row {
        measure: "put p50, 1 client (ms)",
        raftkv: ms(r.put_1_client.p50_us),
        etcd: ms(e.put_1_client.p50_us),
        ratio: put_ratio,
        target: "≤ 0.7",
        met: Some(put_ratio <= 0.7),
    });
    let floor_ratio = ratio(r.put_1_client.p50_us.into(), floor.total_us().into());
    rows.push(Row {
        measure: "put p50, 1 client ÷ (fdatasync + loopback RTT)",
        raftkv: ms(r.put_1_client.p50_us),
        etcd: format!("floor {}", ms(floor.total_us())),
        ratio: floor_ratio,
        target: "≤ 1.5",
        met: Some(floor_ratio <= 1.5),
    });
    // The median of the rounds, each round's rate after it.
    let rounds = |all: &[f64]| {
        let each: Vec<String> = all.iter().map(|x| format!("{x:.0}")).collect();
        format!("{:.0}/s ({})", median(all), each.join(", "))
    };
    for (measure, a_rounds, b_rounds) in [
        (
            "put throughput, 64 clients (median of rounds)",
            &r.put_64_rounds,
            &e.put_64_rounds,
        ),
        (
            "put throughput, 256 clients (median of rounds)",
            &r.put_256_rounds,
            &e.put_256_rounds,
        ),
    ] {
        let x = ratio(median(a_rounds), median(b_rounds));
        rows.push(Row {
            measure,
            raftkv: rounds(a_rounds),
            etcd: rounds(b_rounds),
            ratio: x,
            target: "≥ 1.5",
            met: Some(x >= 1.5),
        });
    }
    for (measure, a, b, goal, target) in [
        (
            "linearizable range throughput, 64 clients",
            r.range_linearizable_ops_per_s,
            e.range_linearizable_ops_per_s,
            1.5,
            "≥ 1.5",
        ),
        (
            "serializable range throughput, 64 clients",
            r.range_serializable_ops_per_s,
            e.range_serializable_ops_per_s,
            2.0,
            "≥ 2",
        ),
        (
            "Kubernetes-shaped update throughput, 64 clients",
            r.update_ops_per_s,
            e.update_ops_per_s,
            1.5,
            "≥ 1.5",
        ),
    ] {
        let x = ratio(a, b);
        rows.push(Row {
            measure,
            raftkv: ops(a),
            etcd: ops(b),
            ratio: x,
            target,
            met: Some(x >= goal),
        });
    }
    let watch = ratio(r.watch.p99_us.into(), e.watch.p99_us.into());
    rows.push(Row {
        measure: "watch delivery p99, 100 watchers (ms)",
        raftkv: ms(r.watch.p99_us),
        etcd: ms(e.watch.p99_us),
        ratio: watch,
        target: "≤ 1",
        met: Some(watch <= 1.0),
    });
    let rss = ratio(r.rss_loaded_bytes as f64, e.rss_loaded_bytes as f64);
    rows.push(Row {
        measure: "peak RSS per member holding the keys",
        raftkv: mib(r.rss_loaded_bytes),
        etcd: mib(e.rss_loaded_bytes),
        ratio: rss,
        target: "≤ 0.5",
        met: Some(rss <= 0.5),
    });
    let rss_peak = ratio(r.rss_peak_bytes as f64, e.rss_peak_bytes as f64);
    rows.push(Row {
        measure: "peak RSS per member, after compaction + space reclaim",
        raftkv: mib(r.rss_peak_bytes),
        etcd: mib(e.rss_peak_bytes),
        ratio: rss_peak,
        target: "≤ 0.5",
        met: Some(rss_peak <= 0.5),
    });
    let slow = |m: &Measured, f: fn(&Summary) -> u32| {
        ratio(
            f(&m.put_during_compaction).into(),
            f(&m.put_before_compaction).into(),
        )
    };
    let (p999, max) = (slow(r, |s| s.p999_us), slow(r, |s| s.max_us));
    let (ep999, emax) = (slow(e, |s| s.p999_us), slow(e, |s| s.max_us));
    rows.push(Row {
        measure: "put p99.9 during ÷ before compaction + reclaim",
        raftkv: format!(
            "{} → {} ms",
            ms(r.put_before_compaction.p999_us),
            ms(r.put_during_compaction.p999_us)
        ),
        etcd: format!(
            "{} → {} ms ({ep999:.1}×)",
            ms(e.put_before_compaction.p999_us),
            ms(e.put_during_compaction.p999_us)
        ),
        ratio: p999,
        target: "≤ 2 (raftkv's own)",
        met: Some(p999 <= 2.0),
    });
    rows.push(Row {
        measure: "put max during ÷ before compaction + reclaim",
        raftkv: format!(
            "{} → {} ms",
            ms(r.put_before_compaction.max_us),
            ms(r.put_during_compaction.max_us)
        ),
        etcd: format!(
            "{} → {} ms ({emax:.1}×)",
            ms(e.put_before_compaction.max_us),
            ms(e.put_during_compaction.max_us)
        ),
        ratio: max,
        target: "≤ 2 (raftkv's own)",
        met: Some(max <= 2.0),
    });
    // The target row is what the data dirs' block device wrote, where it can be read:
    // flash wear is what reaches the device. The processes' write_bytes counter is kept
    // beside it, report only: on this kernel it is charged per dirtied page-cache folio,
    // so identical at-rest runs gave 70 to 234 MiB while the device wrote 32 MiB in each
    // (docs/decisions.md, "counted at the block device").
    let device = r.rest_device_write_bytes.zip(e.rest_device_write_bytes);
    let bytes = ratio(r.rest_write_bytes as f64, e.rest_write_bytes as f64);
    rows.push(Row {
        measure: "k3s at rest: bytes written, all members (processes' write_bytes)",
        raftkv: mib(r.rest_write_bytes),
        etcd: mib(e.rest_write_bytes),
        ratio: bytes,
        target: if device.is_some() {
            "report only"
        } else {
            "≤ 0.5"
        },
        met: device.is_none().then_some(bytes <= 0.5),
    });
    if let Some((rd, ed)) = device {
        let device_ratio = ratio(rd as f64, ed as f64);
        rows.push(Row {
            measure: "k3s at rest: bytes the data dirs' disk wrote, all members",
            raftkv: mib(rd),
            etcd: mib(ed),
            ratio: device_ratio,
            target: "≤ 0.5",
            met: Some(device_ratio <= 0.5),
        });
    }
    let cpu = ratio(r.rest_cpu_ms as f64, e.rest_cpu_ms as f64);
    rows.push(Row {
        measure: "k3s at rest: CPU seconds, all members",
        raftkv: format!("{:.1} s", r.rest_cpu_ms as f64 / 1000.0),
        etcd: format!("{:.1} s", e.rest_cpu_ms as f64 / 1000.0),
        ratio: cpu,
        target: "≤ 0.5",
        met: Some(cpu <= 0.5),
    });
    let fail = ratio(r.failover_ms.p99_us.into(), e.failover_ms.p99_us.into());
    rows.push(Row {
        measure: "leader SIGKILL → writes resume, p99 (ms)",
        raftkv: format!("{} (p50 {})", r.failover_ms.p99_us, r.failover_ms.p50_us),
        etcd: format!("{} (p50 {})", e.failover_ms.p99_us, e.failover_ms.p50_us),
        ratio: fail,
        target: "≤ 0.5",
        met: Some(fail <= 0.5),
    });

    let mut out = String::from(
        "| measure | raftkv | etcd | raftkv/etcd | target | met |\n|---|---|---|---|---|---|\n",
    );
    for row in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {:.2} | {} | {} |\n",
            row.measure,
            row.raftkv,
            row.etcd,
            row.ratio,
            row.target,
            match row.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_the_middle_round() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[7.0]), 7.0);
        assert_eq!(median(&[30.0, 10.0, 20.0]), 20.0, "sorted first");
        assert_eq!(median(&[40.0, 10.0, 30.0, 20.0]), 25.0);
    }

    #[test]
    fn the_put_rows_show_the_median_and_every_round() {
        let raftkv = Measured {
            put_64_rounds: vec![15000.0, 16000.0, 14000.0],
            ..Measured::default()
        };
        let etcd = Measured {
            put_64_rounds: vec![9000.0, 11000.0, 10000.0],
            ..Measured::default()
        };
        let table = table(&Floor::default(), &raftkv, &etcd);
        let row = table
            .lines()
            .find(|l| l.contains("put throughput, 64 clients"))
            .expect("the row");
        assert!(
            row.contains("| 15000/s (15000, 16000, 14000) | 10000/s (9000, 11000, 10000) | 1.50 | ≥ 1.5 | yes |"),
            "{row}"
        );
    }
}
