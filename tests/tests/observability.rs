//! What an operator's Prometheus and health checks see: /metrics with etcd's metric
//! names on the client URL and on --listen-metrics-urls, /health answering as etcd's
//! does (compared with a real etcd 3.5), /livez and /readyz, and all of them turning
//! unhealthy when the member loses its quorum.

use std::time::{Duration, Instant};

use raftkv_tests::*;

fn member_id_hex(port: u16) -> String {
    let metrics = metrics_of(port);
    let line = metrics
        .lines()
        .find(|l| l.starts_with("etcd_server_id{"))
        .expect("etcd_server_id is exported");
    line.split('"').nth(1).expect("server_id label").to_string()
}

#[test]
fn metrics_and_health_on_a_three_member_cluster() {
    let mut cluster = Cluster::start(3, &[]);
    let eps = vec![cluster.members[0].endpoint()];
    for i in 0..3 {
        etcdctl_ok(&etcdctl35(), &eps, &["put", &format!("k{i}"), "v"]);
    }
    // A read of a future revision fails with OutOfRange: counted under its code.
    let failed = etcdctl(&etcdctl35(), &eps, &["get", "k0", "--rev", "999"], None);
    assert!(!failed.status.success());

    let ports: Vec<u16> = cluster.members.iter().map(|m| m.client_port).collect();
    let m0 = metrics_of(ports[0]);
    assert!(
        metric_value(
            &m0,
            "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}"
        )
        .is_some_and(|n| n >= 3.0),
        "three Puts counted as OK:\n{m0}"
    );
    assert_eq!(
        metric_value(
            &m0,
            "grpc_server_handled_total{grpc_code=\"OutOfRange\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}"
        ),
        Some(1.0),
        "the failed Range counted under its code:\n{m0}"
    );
    assert!(
        metric_value(&m0, "grpc_server_started_total{grpc_method=\"Put\"")
            .is_some_and(|n| n >= 3.0),
        "{m0}"
    );
    // How long unary calls took, by method: etcd's "gRPC requests slow" alert reads it.
    assert!(
        metric_value(
            &m0,
            "grpc_server_handling_seconds_count{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}"
        )
        .is_some_and(|n| n >= 3.0),
        "{m0}"
    );
    assert_eq!(
        metric_value(&m0, "etcd_server_proposals_pending "),
        Some(0.0),
        "{m0}"
    );
    assert_eq!(
        metric_value(&m0, "etcd_server_proposals_failed_total "),
        Some(0.0),
        "{m0}"
    );

    let mut leaders = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let m = metrics_of(*port);
        assert_eq!(
            metric_value(&m, "etcd_server_has_leader "),
            Some(1.0),
            "member {i}"
        );
        assert!(
            metric_value(&m, "etcd_server_leader_changes_seen_total ").is_some_and(|n| n >= 1.0),
            "member {i} saw its first leader:\n{m}"
        );
        assert!(
            metric_value(&m, "etcd_disk_wal_fsync_duration_seconds_count ")
                .is_some_and(|n| n > 0.0),
            "member {i} fsynced its log"
        );
        assert!(
            metric_value(&m, "etcd_disk_backend_commit_duration_seconds_count ")
                .is_some_and(|n| n >= 3.0),
            "member {i} applied the puts"
        );
        assert!(metric_value(&m, "etcd_debugging_mvcc_current_revision ").is_some_and(|r| r >= 4.0));
        assert!(metric_value(&m, "process_resident_memory_bytes ").is_some_and(|b| b > 0.0));
        if metric_value(&m, "etcd_server_is_leader ") == Some(1.0) {
            leaders.push(i);
        }
    }
    assert_eq!(leaders.len(), 1, "exactly one member says it leads");
    // The leader measures its round trips to each follower, labelled by member id.
    let leader_metrics = metrics_of(ports[leaders[0]]);
    for (i, port) in ports.iter().enumerate() {
        if i == leaders[0] {
            continue;
        }
        let series = format!(
            "etcd_network_peer_round_trip_time_seconds_count{{To=\"{}\"}}",
            member_id_hex(*port)
        );
        assert!(
            metric_value(&leader_metrics, &series).is_some_and(|n| n > 0.0),
            "{series} missing:\n{leader_metrics}"
        );
        // Raft traffic each way, by peer: etcd's dashboard plots it.
        let id = member_id_hex(*port);
        for series in [
            format!("etcd_network_peer_sent_bytes_total{{To=\"{id}\"}}"),
            format!("etcd_network_peer_received_bytes_total{{From=\"{id}\"}}"),
        ] {
            assert!(
                metric_value(&leader_metrics, &series).is_some_and(|n| n > 0.0),
                "{series} missing:\n{leader_metrics}"
            );
        }
    }

    // /health as etcd answers it, byte for byte.
    let etcd = Etcd::start();
    let (etcd_status, etcd_body) = http_get(etcd.client_port, "/health");
    for port in &ports {
        assert_eq!(http_get(*port, "/health"), (etcd_status, etcd_body.clone()));
        assert_eq!(http_get(*port, "/livez"), (200, "ok".to_string()));
        assert_eq!(http_get(*port, "/readyz"), (200, "ok".to_string()));
    }

    // A follower gone: the leader's sends to it fail, counted by peer (etcd's
    // "members down" alert reads the rate).
    let leader = leaders[0];
    let (first, second) = ((leader + 1) % 3, (leader + 2) % 3);
    let failures = format!(
        "etcd_network_peer_sent_failures_total{{To=\"{}\"}}",
        member_id_hex(ports[first])
    );
    cluster.members[first].kill9();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !metric_value(&metrics_of(ports[leader]), &failures).is_some_and(|n| n > 0.0) {
        assert!(Instant::now() < deadline, "{failures} stayed 0");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Without a quorum, the last member says so everywhere an operator looks.
    cluster.members[second].kill9();
    let lone = [cluster.members[leader].endpoint()];
    let put = etcdctl(
        &etcdctl35(),
        &lone,
        &["put", "--command-timeout=3s", "lost", "v"],
        None,
    );
    assert!(!put.status.success(), "a put without a quorum succeeded");
    // Counted when the member gives up on it, at its own request timeout.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !metric_value(
        &metrics_of(ports[leader]),
        "etcd_server_proposals_failed_total ",
    )
    .is_some_and(|n| n >= 1.0)
    {
        assert!(Instant::now() < deadline, "the failed put was not counted");
        std::thread::sleep(Duration::from_millis(200));
    }
    let ports = [ports[leader]];
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = http_get(ports[0], "/health");
        if status == 503 {
            let health = json(&body);
            assert_eq!(health["health"], "false", "{body}");
            assert!(
                ["RAFT NO LEADER", "QGET ERROR"].contains(&health["reason"].as_str().unwrap_or("")),
                "{body}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "/health stayed {status}: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric_value(&metrics_of(ports[0]), "etcd_server_has_leader ") != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "has_leader stayed 1 without a quorum"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(http_get(ports[0], "/readyz").0, 503);
    assert_eq!(http_get(ports[0], "/livez"), (200, "ok".to_string()));
    assert!(
        metric_value(&metrics_of(ports[0]), "etcd_server_health_failures ")
            .is_some_and(|n| n >= 1.0)
    );
}

#[test]
fn a_separate_metrics_url_serves_metrics_and_health() {
    let root = tempfile::tempdir().expect("temp dir");
    let metrics_port = free_port();
    let mut member = Member::new(root.path(), "m0");
    member.start(&[
        "--listen-metrics-urls".to_string(),
        format!("http://127.0.0.1:{metrics_port}"),
    ]);
    let metrics = metrics_of(metrics_port);
    assert_eq!(metric_value(&metrics, "etcd_server_has_leader "), Some(1.0));
    assert!(metrics.contains("# TYPE etcd_disk_wal_fsync_duration_seconds histogram"));
    assert!(metrics.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"}"));
    assert!(metrics.contains("etcd_server_version{server_version=\"3.5.16\"} 1"));
    assert_eq!(http_get(metrics_port, "/health").0, 200);
    // The metrics URL is plain HTTP only: no gRPC there.
    let out = etcdctl(
        &etcdctl35(),
        &[format!("127.0.0.1:{metrics_port}")],
        &["get", "x", "--command-timeout=2s"],
        None,
    );
    assert!(
        !out.status.success(),
        "gRPC must not be served on the metrics URL"
    );
    member.stop();
}

/// The leader's AppendEntries to each follower, as its round-trip histogram counts
/// them (every answered AppendEntries: entries, commits and heartbeats alike).
fn appends_to_followers(ports: &[u16], leader: usize) -> Vec<f64> {
    let metrics = metrics_of(ports[leader]);
    (0..ports.len())
        .filter(|i| *i != leader)
        .map(|i| {
            let series = format!(
                "etcd_network_peer_round_trip_time_seconds_count{{To=\"{}\"}}",
                member_id_hex(ports[i])
            );
            metric_value(&metrics, &series).unwrap_or(0.0)
        })
        .collect()
}

/// A k3s cluster at rest writes a few times a second. Each write reaches every
/// follower twice: its entries, answered, then its commit, a notice nobody answers.
/// The commit does what a heartbeat does, so while writes flow the leader sends no
/// heartbeats of its own (CPU and wake-ups on small machines); once they stop,
/// heartbeats keep the followers from standing for election. And the notice is what
/// lets a follower serve a write it did not receive: it must arrive at once, not with
/// the next heartbeat.
#[test]
fn a_trickle_of_writes_replaces_the_heartbeats() {
    const WRITES: usize = 100;
    const WRITE_GAP_MS: u64 = 40;
    const HEARTBEAT_INTERVAL_MS: u64 = 100;
    let cluster = Cluster::start(3, &[]);
    let ports: Vec<u16> = cluster.members.iter().map(|m| m.client_port).collect();
    let leader = (0..ports.len())
        .find(|i| metric_value(&metrics_of(ports[*i]), "etcd_server_is_leader ") == Some(1.0))
        .expect("a leader");
    let endpoints = cluster.endpoints();
    let term = || {
        let status = etcdctl_ok(
            &etcdctl35(),
            &endpoints,
            &["endpoint", "status", "-w", "json"],
        );
        json(&status)[0]["Status"]["raftTerm"]
            .as_u64()
            .expect("raftTerm")
    };
    let term_before = term();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let before = appends_to_followers(&ports, leader);
    let started = Instant::now();
    rt.block_on(async {
        let mut client = etcd_client::Client::connect([cluster.members[leader].endpoint()], None)
            .await
            .expect("connects");
        let mut tick = tokio::time::interval(Duration::from_millis(WRITE_GAP_MS));
        for i in 0..WRITES {
            tick.tick().await;
            client
                .put(format!("trickle/{i}"), "v", None)
                .await
                .expect("put");
        }
    });
    let elapsed_ms = started.elapsed().as_millis() as f64;
    let during = appends_to_followers(&ports, leader);
    for (b, d) in before.iter().zip(&during) {
        let appends = d - b;
        // One answered AppendEntries per write (its entries; the commit notice is not
        // answered), a few heartbeats if a write took longer than an interval;
        // answered commits would add one per write, heartbeats sent regardless one
        // per interval (40 here). Fewer when the follower that did not make the quorum
        // is still answering the last write, or lagged and got two writes at once.
        let heartbeats_if_sent = elapsed_ms / HEARTBEAT_INTERVAL_MS as f64;
        assert!(
            appends >= WRITES as f64 * 0.8 && appends <= WRITES as f64 + 12.0,
            "{appends} answered AppendEntries for {WRITES} writes in {elapsed_ms} ms \
             (heartbeats would have added about {heartbeats_if_sent:.0})"
        );
    }

    // A write on the leader is readable on each follower (a serializable read, from
    // its own state) as soon as the commit notice arrives: well before the next
    // heartbeat, which is an interval after the commit.
    const FRESHNESS_WRITES: usize = 10;
    let followers: Vec<usize> = (0..ports.len()).filter(|i| *i != leader).collect();
    let mut delays_ms: Vec<Vec<u128>> = vec![Vec::new(); followers.len()];
    rt.block_on(async {
        let mut writer = etcd_client::Client::connect([cluster.members[leader].endpoint()], None)
            .await
            .expect("connects");
        let mut readers = Vec::new();
        for f in &followers {
            let reader = etcd_client::Client::connect([cluster.members[*f].endpoint()], None)
                .await
                .expect("connects");
            readers.push(reader);
        }
        for i in 0..FRESHNESS_WRITES {
            // Past the heartbeat the previous write put off.
            tokio::time::sleep(Duration::from_millis(2 * HEARTBEAT_INTERVAL_MS)).await;
            let key = format!("fresh/{i}");
            writer.put(key.clone(), "v", None).await.expect("put");
            let written = Instant::now();
            for (reader, delays) in readers.iter_mut().zip(&mut delays_ms) {
                loop {
                    let options = etcd_client::GetOptions::new().with_serializable();
                    let got = reader.get(key.clone(), Some(options)).await.expect("get");
                    if got.count() == 1 {
                        delays.push(written.elapsed().as_millis());
                        break;
                    }
                    assert!(
                        written.elapsed() < Duration::from_secs(5),
                        "{key} never reached a follower"
                    );
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    });
    for delays in &mut delays_ms {
        delays.sort_unstable();
        let median_ms = delays[delays.len() / 2];
        assert!(
            median_ms < (HEARTBEAT_INTERVAL_MS / 2) as u128,
            "writes reached a follower after {delays:?} ms: with the heartbeat, not at once"
        );
    }

    // Idle: heartbeats again, about one per interval.
    std::thread::sleep(Duration::from_millis(2000));
    let idle = appends_to_followers(&ports, leader);
    for (d, i) in during.iter().zip(&idle) {
        assert!(i - d >= 10.0, "{} AppendEntries in 2 s idle", i - d);
    }
    assert_eq!(term(), term_before, "no election happened");
}

/// A follower forwards its clients' writes to the leader in batches, which arrive there
/// as dozens of writes at once. The leader appends the writes queued together as one
/// append to its log, one flush to wait for (vendor/openraft/PATCH.md): the metrics show
/// several entries per append, where one each would cost a log request and a waiting
/// task per write.
#[test]
fn the_leader_appends_the_writes_queued_together_as_one() {
    const CLIENTS: usize = 64;
    const PUTS_PER_CLIENT: usize = 30;
    let cluster = Cluster::start(3, &[]);
    let ports: Vec<u16> = cluster.members.iter().map(|m| m.client_port).collect();
    let leader = (0..ports.len())
        .find(|i| metric_value(&metrics_of(ports[*i]), "etcd_server_is_leader ") == Some(1.0))
        .expect("a leader");
    let follower = (leader + 1) % ports.len();
    let appends = |port| {
        let metrics = metrics_of(port);
        let of =
            |name| metric_value(&metrics, name).unwrap_or_else(|| panic!("{name} is exported"));
        (
            of("raftkv_raft_log_appends_total "),
            of("raftkv_raft_log_appended_entries_total "),
        )
    };
    let (appends_before, entries_before) = appends(ports[leader]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = etcd_client::Client::connect([cluster.members[follower].endpoint()], None)
            .await
            .expect("connects");
        let mut writers = tokio::task::JoinSet::new();
        for c in 0..CLIENTS {
            let mut client = client.clone();
            writers.spawn(async move {
                for i in 0..PUTS_PER_CLIENT {
                    client
                        .put(format!("batch/{c}/{i}"), "v", None)
                        .await
                        .expect("put");
                }
            });
        }
        while let Some(done) = writers.join_next().await {
            done.expect("writer");
        }
    });
    let (appends_after, entries_after) = appends(ports[leader]);
    let appends = appends_after - appends_before;
    let entries = entries_after - entries_before;
    assert!(
        entries >= (CLIENTS * PUTS_PER_CLIENT) as f64,
        "{entries} entries appended for {} puts",
        CLIENTS * PUTS_PER_CLIENT
    );
    assert!(
        appends * 2.0 <= entries,
        "the leader made {appends} appends for {entries} entries: fewer than two per append"
    );
}

/// What an operator reads: joins, elections and restarts are told in raftkv's own words;
/// openraft's notes about ignoring stale messages, routine after every election and
/// membership change, stay below the default log level (vendor/openraft/PATCH.md).
#[test]
fn joins_and_elections_leave_no_internal_notes_in_the_default_log() {
    let mut cluster = Cluster::start(3, &[]);
    let ports: Vec<u16> = cluster.members.iter().map(|m| m.client_port).collect();
    let leader = (0..ports.len())
        .find(|i| metric_value(&metrics_of(ports[*i]), "etcd_server_is_leader ") == Some(1.0))
        .expect("a leader");
    cluster.members[leader].kill9();
    let others: Vec<usize> = (0..ports.len()).filter(|i| *i != leader).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !others
        .iter()
        .any(|i| metric_value(&metrics_of(ports[*i]), "etcd_server_is_leader ") == Some(1.0))
    {
        assert!(
            Instant::now() < deadline,
            "no new leader; logs:\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let args = cluster.restart_args(leader);
    cluster.members[leader].start(&args);
    etcdctl_ok(&etcdctl35(), &cluster.endpoints(), &["put", "k", "v"]);
    let logs = cluster.logs();
    for note in [
        "will be ignored because vote changed",
        "membership_log_id changed",
    ] {
        assert!(!logs.contains(note), "{note:?} in the default log:\n{logs}");
    }
}

/// `GET /version` and paths a client URL does not serve, as etcd answers them: the
/// versions (raftkv's API level), and 404s with etcd's bodies — a JSON client on an
/// unknown gateway path is told at once, not given an empty gRPC answer.
#[test]
fn version_and_unknown_paths_answer_as_etcd() {
    let etcd = Etcd::start_newest();
    let root = tempfile::tempdir().expect("temp dir");
    let mut member = Member::new(root.path(), "m0");
    member.start(&[]);
    let (status, body) = http_get(member.client_port, "/version");
    assert_eq!(status, 200);
    assert_eq!(body, r#"{"etcdserver":"3.5.16","etcdcluster":"3.5.0"}"#);
    let (_, theirs) = http_get(etcd.client_port, "/version");
    assert_eq!(json(&theirs)["etcdcluster"], json(&body)["etcdcluster"]);
    for (method, path) in [
        ("GET", "/nope"),
        ("POST", "/nope"),
        ("POST", "/v3/nope"),
        ("GET", "/v3/kv/nope"),
    ] {
        let answer = |port| {
            let (status, head, body) = http_request(port, method, path);
            let content_type = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type: ")
                    .map(str::to_string)
            });
            (
                status,
                content_type,
                String::from_utf8_lossy(&body).into_owned(),
            )
        };
        let want = answer(etcd.client_port);
        assert_eq!(want.0, 404, "{method} {path}: {want:?}");
        assert_eq!(answer(member.client_port), want, "{method} {path}");
    }
}
