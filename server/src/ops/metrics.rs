//! What a member tells Prometheus and health checkers: /metrics in Prometheus's text
//! format with etcd's metric names (so etcd dashboards and alerts work unchanged),
//! /health as etcd answers it, /livez and /readyz; and the gRPC layer that counts
//! started and handled calls and warns about slow ones.
//!
//! Counters are process-wide atomics (one process is one member). This module never
//! blocks a request: the gRPC layer does two map updates under a short lock, and the
//! rendering happens only when /metrics is scraped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use raftkv_storage::stats::{DurationHistogram, HistogramSnapshot};

use crate::member::node::Node;

/// Leader changes this member has seen since it started.
pub static LEADER_CHANGES: AtomicU64 = AtomicU64::new(0);
/// /health checks answered, by outcome.
static HEALTH_SUCCESS: AtomicU64 = AtomicU64::new(0);
static HEALTH_FAILURE: AtomicU64 = AtomicU64::new(0);

/// Calls of one gRPC method (keyed by its path, "/etcdserverpb.KV/Range").
#[derive(Default)]
struct CallCounts {
    started: u64,
    /// By gRPC code name.
    handled: BTreeMap<&'static str, u64>,
    /// How long unary calls took, from the request to the response's headers.
    handling: DurationHistogram,
}
/// Looked up by the request's path without allocating; a path is copied once, when
/// first seen. Service, method and type labels are derived from it when rendering.
static GRPC_CALLS: Mutex<BTreeMap<Arc<str>, CallCounts>> = Mutex::new(BTreeMap::new());
/// Distinct methods kept at most: a bound against clients calling made-up methods.
const MAX_GRPC_METHODS: usize = 1_000;

/// A unary call slower than this is logged as a warning.
const SLOW_REQUEST_WARN: Duration = Duration::from_secs(1);

/// One line per change of who leads as this member sees it, and when it stands for
/// election itself.
fn log_leadership(
    before: Option<u64>,
    now: Option<u64>,
    state_before: openraft::ServerState,
    state_now: openraft::ServerState,
    term: u64,
) {
    use crate::ids::hex;
    if state_now == openraft::ServerState::Candidate && state_before != state_now {
        tracing::info!(term, "became candidate");
    }
    match (before, now) {
        (b, Some(n)) if b != Some(n) => tracing::info!(leader = %hex(n), term, "elected leader"),
        (Some(b), None) => tracing::info!(leader = %hex(b), term, "lost leader"),
        _ => {}
    }
}

/// Counts and logs leader changes until the member stops, from openraft's server
/// metrics: they change only with the leader, the vote, the state or the membership,
/// where the full metrics change with every loop of RaftCore (several times per write,
/// and at every tick). The log lines are etcd's "elected leader", "lost leader" and
/// "became candidate": what an operator looks for when requests stalled for a moment.
pub async fn watch_leader_changes(node: Arc<Node>) {
    let mut rx = node.raft.server_metrics();
    // The first leader this member learns of counts, as in etcd.
    let mut leader = None;
    let mut state = openraft::ServerState::Learner;
    let mut voters = 0usize;
    loop {
        let (now, now_state, term, now_voters) = {
            let m = rx.borrow_and_update();
            (
                m.current_leader,
                m.state,
                m.vote.leader_id().term,
                crate::quorum::voter_count(&m.membership_config),
            )
        };
        log_leadership(leader, now, state, now_state, term);
        if now != leader && now.is_some() {
            LEADER_CHANGES.fetch_add(1, Ordering::Relaxed);
        }
        leader = now;
        state = now_state;
        let (count, tolerated, warning) = crate::quorum::fault_tolerance_of(now_voters);
        if count != voters {
            voters = count;
            match warning {
                Some(w) => tracing::warn!(voters, "{w}"),
                None => tracing::info!(
                    voters,
                    tolerated,
                    "the cluster can lose {tolerated} of {voters} voters"
                ),
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn grpc_type(service: &str, method: &str) -> &'static str {
    match (service, method) {
        ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => "bidi_stream",
        ("etcdserverpb.Maintenance", "Snapshot") => "server_stream",
        _ => "unary",
    }
}

fn grpc_code_name(code: &str) -> &'static str {
    match code {
        "0" => "OK",
        "1" => "Canceled",
        "2" => "Unknown",
        "3" => "InvalidArgument",
        "4" => "DeadlineExceeded",
        "5" => "NotFound",
        "6" => "AlreadyExists",
        "7" => "PermissionDenied",
        "8" => "ResourceExhausted",
        "9" => "FailedPrecondition",
        "10" => "Aborted",
        "11" => "OutOfRange",
        "12" => "Unimplemented",
        "13" => "Internal",
        "14" => "Unavailable",
        "15" => "DataLoss",
        "16" => "Unauthenticated",
        _ => "Unknown",
    }
}

/// "/service/method" split into (service, method); None for anything else.
fn service_and_method(path: &str) -> Option<(&str, &str)> {
    match path.strip_prefix('/')?.split_once('/') {
        Some((s, m)) if !s.is_empty() && !m.is_empty() => Some((s, m)),
        _ => None,
    }
}

/// Counts a started call; the shared path to count its end with, if it is tracked.
fn count_started(path: &str) -> Option<Arc<str>> {
    let mut calls = GRPC_CALLS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(key) = calls.get_key_value(path).map(|(key, _)| key.clone()) {
        if let Some(counts) = calls.get_mut(path) {
            counts.started += 1;
        }
        return Some(key);
    }
    if calls.len() >= MAX_GRPC_METHODS {
        return None;
    }
    let key: Arc<str> = Arc::from(path);
    calls.insert(
        key.clone(),
        CallCounts {
            started: 1,
            handled: BTreeMap::new(),
            handling: DurationHistogram::default(),
        },
    );
    Some(key)
}

/// Counts a call's end; `unary_elapsed` is how long it took, for a unary call.
fn count_handled(path: &str, code: &'static str, unary_elapsed: Option<Duration>) {
    let mut calls = GRPC_CALLS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(counts) = calls.get_mut(path) {
        *counts.handled.entry(code).or_insert(0) += 1;
        if let Some(elapsed) = unary_elapsed {
            counts.handling.observe(elapsed);
        }
    }
}

/// Tower layer around the client gRPC services: counts calls as etcd's go-grpc-prometheus
/// does and warns about slow unary calls.
#[derive(Clone, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, B, ResB> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResB>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        // Not gRPC (an HTTP endpoint such as /metrics), or past the bound: not counted.
        let tracked = service_and_method(path).and_then(|_| count_started(path));
        let Some(path) = tracked else {
            return Box::pin(self.inner.call(req));
        };
        let started = Instant::now();
        let future = self.inner.call(req);
        Box::pin(async move {
            let result = future.await;
            // A failed call answers "trailers only": grpc-status in the headers. A
            // successful unary call sends it in the trailers, after the body.
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map(grpc_code_name)
                    .unwrap_or("OK"),
                Err(_) => "Unknown",
            };
            let elapsed = started.elapsed();
            let unary = service_and_method(&path)
                .is_some_and(|(service, method)| grpc_type(service, method) == "unary");
            if unary && elapsed > SLOW_REQUEST_WARN {
                if let Some((service, method)) = service_and_method(&path) {
                    tracing::warn!(
                        service,
                        method,
                        code,
                        took_ms = elapsed.as_millis() as u64,
                        "grpc: slow request"
                    );
                }
            }
            count_handled(&path, code, unary.then_some(elapsed));
            result
        })
    }
}

fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, text: &str, value: f64) {
    help(out, name, "gauge", text);
    let _ = writeln!(out, "{name} {value}");
}

fn counter(out: &mut String, name: &str, text: &str, value: u64) {
    help(out, name, "counter", text);
    let _ = writeln!(out, "{name} {value}");
}

fn format_bound(bound: f64) -> String {
    if bound.is_infinite() {
        "+Inf".to_string()
    } else {
        format!("{bound}")
    }
}

fn histogram_series(out: &mut String, name: &str, labels: &str, snapshot: &HistogramSnapshot) {
    let sep = if labels.is_empty() { "" } else { "," };
    for (bound, count) in &snapshot.buckets {
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{}\"}} {count}",
            format_bound(*bound)
        );
    }
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {}", snapshot.sum_seconds);
    let _ = writeln!(out, "{name}_count{braces} {}", snapshot.count);
}

/// Reads this process's resident set size and open descriptors from /proc.
fn process_facts() -> (Option<u64>, Option<u64>) {
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4096);
    let fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64);
    (rss, fds)
}

/// The whole /metrics page.
pub fn render(node: &Node) -> String {
    let mut out = String::with_capacity(16 * 1024);
    render_server(&mut out, node);
    render_disk(&mut out);
    render_mvcc(&mut out, node);
    render_peers(&mut out);
    render_grpc(&mut out);
    render_process(&mut out);
    out
}

/// etcd_server_*: leadership, proposals, term, identity, health checks.
fn render_server(out: &mut String, node: &Node) {
    let metrics = node.raft.metrics().borrow().clone();
    let has_leader = node.leader().is_some();
    gauge(
        out,
        "etcd_server_has_leader",
        "Whether or not a leader exists. 1 is existence, 0 is not.",
        f64::from(u8::from(has_leader)),
    );
    gauge(
        out,
        "etcd_server_is_leader",
        "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        f64::from(u8::from(node.is_leader())),
    );
    counter(
        out,
        "etcd_server_leader_changes_seen_total",
        "The number of leader changes seen.",
        LEADER_CHANGES.load(Ordering::Relaxed),
    );
    let applied = metrics.last_applied.map(|l| l.index).unwrap_or(0);
    gauge(
        out,
        "etcd_server_proposals_committed_total",
        "The total number of consensus proposals committed.",
        applied as f64,
    );
    gauge(
        out,
        "etcd_server_proposals_applied_total",
        "The total number of consensus proposals applied.",
        applied as f64,
    );
    counter(
        out,
        "etcd_server_proposals_failed_total",
        "The total number of failed proposals seen.",
        crate::member::PROPOSALS_FAILED.load(Ordering::Relaxed),
    );
    gauge(
        out,
        "etcd_server_proposals_pending",
        "The current number of pending proposals to commit.",
        crate::member::PROPOSALS_PENDING.load(Ordering::Relaxed) as f64,
    );
    gauge(
        out,
        "etcd_server_term",
        "The current Raft term of this member.",
        metrics.current_term as f64,
    );
    gauge(
        out,
        "raftkv_raft_log_purged_index",
        "The index up to which this member's Raft log was purged: a follower behind it catches up by snapshot.",
        metrics.purged.map_or(0, |l| l.index) as f64,
    );
    help(
        out,
        "etcd_server_id",
        "gauge",
        "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
    );
    let _ = writeln!(
        out,
        "etcd_server_id{{server_id=\"{}\"}} 1",
        crate::ids::hex(node.id)
    );
    help(
        out,
        "etcd_server_version",
        "gauge",
        "Which version is running. 1 for 'server_version' label with current version.",
    );
    let _ = writeln!(
        out,
        "etcd_server_version{{server_version=\"{}\"}} 1",
        crate::version::ETCD_API_VERSION
    );
    counter(
        out,
        "etcd_server_health_success",
        "The total number of successful health checks",
        HEALTH_SUCCESS.load(Ordering::Relaxed),
    );
    counter(
        out,
        "etcd_server_health_failures",
        "The total number of failed health checks",
        HEALTH_FAILURE.load(Ordering::Relaxed),
    );
}

/// etcd_disk_*: the log's fsync and the engine's commit latencies; the log's appends.
fn render_disk(out: &mut String) {
    help(
        out,
        "etcd_disk_wal_fsync_duration_seconds",
        "histogram",
        "The latency distributions of fsync called by WAL.",
    );
    histogram_series(
        out,
        "etcd_disk_wal_fsync_duration_seconds",
        "",
        &raftkv_storage::stats::WAL_FSYNC.snapshot(),
    );
    help(
        out,
        "etcd_disk_backend_commit_duration_seconds",
        "histogram",
        "The latency distributions of commit called by backend.",
    );
    histogram_series(
        out,
        "etcd_disk_backend_commit_duration_seconds",
        "",
        &raftkv_storage::stats::BACKEND_COMMIT.snapshot(),
    );
    counter(
        out,
        "raftkv_raft_log_appends_total",
        "Appends to the Raft log; a leader gathers the client writes queued together into one.",
        raftkv_storage::stats::LOG_APPENDS.load(Ordering::Relaxed),
    );
    counter(
        out,
        "raftkv_raft_log_appended_entries_total",
        "Entries appended to the Raft log.",
        raftkv_storage::stats::LOG_APPENDED_ENTRIES.load(Ordering::Relaxed),
    );
}

/// The key space: its size, the quota, the current and compacted revisions.
fn render_mvcc(out: &mut String, node: &Node) {
    let db_size_bytes = node.store.size_on_disk_bytes().unwrap_or(0) as f64;
    gauge(
        out,
        "etcd_mvcc_db_total_size_in_bytes",
        "Total size of the underlying database physically allocated in bytes.",
        db_size_bytes,
    );
    gauge(
        out,
        "etcd_server_quota_backend_bytes",
        "Current backend storage quota size in bytes.",
        node.config.quota_bytes().map_or(0.0, |q| q as f64),
    );
    gauge(
        out,
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "Total size of the underlying database logically in use in bytes.",
        db_size_bytes,
    );
    gauge(
        out,
        "etcd_debugging_mvcc_current_revision",
        "The current revision of store.",
        node.store.revision() as f64,
    );
    gauge(
        out,
        "etcd_debugging_mvcc_compact_revision",
        "The revision of the last compaction in store.",
        node.store.compact_revision().max(0) as f64,
    );
}

/// A per-peer series: name, the peer's label, help text, and its value.
type PeerSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&crate::peer::traffic::Traffic) -> u64,
);

/// Round trips of Raft messages to each peer, their bytes each way and the sends that
/// failed (peer/traffic.rs).
fn render_peers(out: &mut String) {
    let traffic = crate::peer::traffic::snapshot();
    let series: [PeerSeries; 3] = [
        (
            "etcd_network_peer_sent_bytes_total",
            "To",
            "The total number of bytes sent to peers.",
            |t| t.sent_bytes,
        ),
        (
            "etcd_network_peer_received_bytes_total",
            "From",
            "The total number of bytes received from peers.",
            |t| t.received_bytes,
        ),
        (
            "etcd_network_peer_sent_failures_total",
            "To",
            "The total number of send failures from peers.",
            |t| t.sent_failures,
        ),
    ];
    for (name, label, text, value) in series {
        help(out, name, "counter", text);
        for (peer, t) in &traffic {
            let _ = writeln!(
                out,
                "{name}{{{label}=\"{}\"}} {}",
                crate::ids::hex(*peer),
                value(t)
            );
        }
    }
    let rtts: Vec<(u64, Arc<DurationHistogram>)> = crate::peer::rtt::PEER_RTT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(id, h)| (*id, h.clone()))
        .collect();
    help(
        out,
        "etcd_network_peer_round_trip_time_seconds",
        "histogram",
        "Round-Trip-Time histogram between peers",
    );
    for (peer, histogram) in rtts {
        let labels = format!("To=\"{}\"", crate::ids::hex(peer));
        histogram_series(
            out,
            "etcd_network_peer_round_trip_time_seconds",
            &labels,
            &histogram.snapshot(),
        );
    }
}

/// gRPC calls started and handled, by service, method and code, and how long unary
/// calls took (etcd exports that with `--metrics extensive`; its alerts use it).
fn render_grpc(out: &mut String) {
    let mut started = String::new();
    let mut handled = String::new();
    let mut handling = String::new();
    for (path, counts) in GRPC_CALLS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let Some((service, method)) = service_and_method(path) else {
            continue;
        };
        let labels = format!(
            "grpc_method=\"{method}\",grpc_service=\"{service}\",grpc_type=\"{}\"",
            grpc_type(service, method)
        );
        let _ = writeln!(
            started,
            "grpc_server_started_total{{{labels}}} {}",
            counts.started
        );
        for (code, n) in &counts.handled {
            let _ = writeln!(
                handled,
                "grpc_server_handled_total{{grpc_code=\"{code}\",{labels}}} {n}"
            );
        }
        if grpc_type(service, method) == "unary" {
            let snapshot = counts.handling.snapshot();
            histogram_series(
                &mut handling,
                "grpc_server_handling_seconds",
                &labels,
                &snapshot,
            );
        }
    }
    help(
        out,
        "grpc_server_started_total",
        "counter",
        "Total number of RPCs started on the server.",
    );
    out.push_str(&started);
    help(
        out,
        "grpc_server_handled_total",
        "counter",
        "Total number of RPCs completed on the server, regardless of success or failure.",
    );
    out.push_str(&handled);
    help(
        out,
        "grpc_server_handling_seconds",
        "histogram",
        "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
    );
    out.push_str(&handling);
}

/// The process's memory and open descriptors.
fn render_process(out: &mut String) {
    let (rss, fds) = process_facts();
    if let Some(rss) = rss {
        gauge(
            out,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            rss as f64,
        );
    }
    if let Some(fds) = fds {
        gauge(
            out,
            "process_open_fds",
            "Number of open file descriptors.",
            fds as f64,
        );
    }
}

/// etcd's /health answer: healthy when there is a leader and a linearizable read
/// completes within the timeout.
pub async fn health(node: &Node) -> (bool, &'static str) {
    const HEALTH_READ_TIMEOUT_MS: u64 = 2_000;
    let outcome = if node.leader().is_none() {
        (false, "RAFT NO LEADER")
    } else {
        match tokio::time::timeout(
            Duration::from_millis(HEALTH_READ_TIMEOUT_MS),
            node.read_barrier(),
        )
        .await
        {
            Ok(Ok(())) => (true, ""),
            _ => (false, "QGET ERROR"),
        }
    };
    if outcome.0 {
        HEALTH_SUCCESS.fetch_add(1, Ordering::Relaxed);
    } else {
        HEALTH_FAILURE.fetch_add(1, Ordering::Relaxed);
    }
    outcome
}

/// The HTTP endpoints: /metrics, /health, /livez, /readyz.
/// `GET /version` on a client URL, as etcd answers it: the server's version and the
/// cluster's (major.minor.0).
pub async fn version() -> impl axum::response::IntoResponse {
    let cluster = crate::version::ETCD_API_VERSION
        .rsplit_once('.')
        .map_or("3.5", |(major_minor, _)| major_minor);
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        format!(
            "{{\"etcdserver\":\"{}\",\"etcdcluster\":\"{cluster}.0\"}}",
            crate::version::ETCD_API_VERSION
        ),
    )
}

/// What a client URL answers for a path it does not serve, as etcd does: a gRPC call
/// gets "unimplemented" (tonic's answer), a JSON gateway path under /v3/ the gateway's
/// 404 body, anything else Go's "404 page not found". A gateway client waiting on an
/// unknown path is told at once instead of reading an empty gRPC answer.
pub async fn not_found(request: axum::extract::Request) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/grpc"));
    if grpc {
        return tonic::Status::unimplemented("").into_http::<axum::body::Body>();
    }
    if request.uri().path().starts_with("/v3/") {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"code\":5, \"message\":\"Not Found\"}",
        )
            .into_response();
    }
    (
        StatusCode::NOT_FOUND,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        "404 page not found\n",
    )
        .into_response()
}

pub fn http_routes(node: Arc<Node>) -> axum::Router {
    use axum::http::{header, StatusCode};
    use axum::routing::get;

    let metrics_node = node.clone();
    let health_node = node.clone();
    let ready_node = node;
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let node = metrics_node.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        render(&node),
                    )
                }
            }),
        )
        .route(
            "/health",
            get(move || {
                let node = health_node.clone();
                async move {
                    let (healthy, reason) = health(&node).await;
                    let status = if healthy {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (
                        status,
                        [(header::CONTENT_TYPE, "application/json")],
                        format!("{{\"health\":\"{healthy}\",\"reason\":\"{reason}\"}}"),
                    )
                }
            }),
        )
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let node = ready_node.clone();
                async move {
                    if node.leader().is_some() {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "no leader")
                    }
                }
            }),
        )
}
