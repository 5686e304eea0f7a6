//! The workloads of `raftkv-bench`, run against any etcd v3 endpoints — raftkv or etcd —
//! with N clients over M connections.
//!
//! Owns the client connections and the request loops. It never starts, stops or
//! inspects servers (cluster.rs does), and it never panics on a failed request: errors
//! are counted and the first one is reported.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use rand::{Rng, SeedableRng};

use crate::stats::{Recorder, Summary};

pub const MAX_CLIENTS: usize = 4096;
pub const MAX_CONNECTIONS: usize = 512;
pub const MAX_WATCHERS: usize = 10_000;
/// A request taking longer than this counts as an error (a stall shows in max first).
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Clients that fill a key space before a run.
const POPULATE_CLIENTS: usize = 64;
/// The generator's runtime threads by default (`--client-threads` overrides).
pub const CLIENT_THREADS: usize = 2;
/// The most runtime threads `--client-threads` takes.
pub const MAX_CLIENT_THREADS: usize = 64;

/// The runtime the generator's clients run on: `threads` workers (1 to
/// `MAX_CLIENT_THREADS`; the command line refuses anything else).
pub fn runtime(threads: usize) -> tokio::runtime::Runtime {
    assert!(
        (1..=MAX_CLIENT_THREADS).contains(&threads),
        "client threads {threads} not in 1..={MAX_CLIENT_THREADS}"
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Put of `value_size_bytes` at sequential or random keys of the key space.
    Put,
    /// Get of one random key of a filled key space (linearizable unless --serializable).
    Range,
    /// Kubernetes-shaped optimistic update: Txn(mod_revision(key) = known → put, else get).
    Update,
    /// Watch delivery latency: W watchers on one prefix, writers putting timestamps.
    Watch,
    /// A paginated list of the whole key space at one revision (limit = page size).
    List,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Range => "range",
            Workload::Update => "update",
            Workload::Watch => "watch",
            Workload::List => "list",
        }
    }
}

#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub endpoints: Vec<String>,
    pub workload: Workload,
    pub clients: usize,
    pub connections: usize,
    pub duration: Duration,
    pub value_size_bytes: usize,
    pub key_space: u64,
    pub random_keys: bool,
    pub serializable: bool,
    pub watchers: usize,
    /// Total requests per second across clients (open loop: latency counts from the
    /// scheduled start, so a stall also charges the requests queued behind it).
    pub rate_per_s: Option<u64>,
    pub page_size: i64,
    /// Fill the key space before range, update and list runs.
    pub populate: bool,
    /// Print every request (or watch delivery) slower than this, with the UTC time it
    /// ended, to line a tail up against the members' logs.
    pub report_slow_ms: Option<u64>,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            endpoints: vec!["127.0.0.1:2379".into()],
            workload: Workload::Put,
            clients: 1,
            connections: 1,
            duration: Duration::from_secs(10),
            value_size_bytes: 256,
            key_space: 10_000,
            random_keys: false,
            serializable: false,
            watchers: 100,
            rate_per_s: None,
            page_size: 500,
            populate: true,
            report_slow_ms: None,
        }
    }
}

/// One run's result; printed as a line for people and as one JSON line.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub label: String,
    pub workload: Workload,
    pub clients: usize,
    pub connections: usize,
    pub watchers: usize,
    pub serializable: bool,
    pub value_size_bytes: usize,
    pub key_space: u64,
    pub rate_per_s: Option<u64>,
    pub elapsed_s: f64,
    /// Completed operations (for watch: events delivered to watchers).
    pub ops: u64,
    pub ops_per_s: f64,
    /// Failed requests (for watch: events never delivered).
    pub errors: u64,
    /// Updates whose compare failed (another client changed the key first).
    pub conflicts: u64,
    pub first_error: Option<String>,
    pub latency: Summary,
}

impl Report {
    pub fn human(&self) -> String {
        let l = &self.latency;
        format!(
            "{label} {workload}{ser} clients={c} conns={m}{w}: {ops} ops in {t:.1} s = {rate:.0} ops/s, \
             errors={e}{conf}; latency ms min {min} p50 {p50} p90 {p90} p99 {p99} p99.9 {p999} max {max}",
            label = self.label,
            workload = self.workload.name(),
            ser = if self.serializable { " (serializable)" } else { "" },
            c = self.clients,
            m = self.connections,
            w = if self.workload == Workload::Watch {
                format!(" watchers={}", self.watchers)
            } else {
                String::new()
            },
            ops = self.ops,
            t = self.elapsed_s,
            rate = self.ops_per_s,
            e = self.errors,
            conf = if self.workload == Workload::Update {
                format!(" conflicts={}", self.conflicts)
            } else {
                String::new()
            },
            min = crate::stats::ms(l.min_us),
            p50 = crate::stats::ms(l.p50_us),
            p90 = crate::stats::ms(l.p90_us),
            p99 = crate::stats::ms(l.p99_us),
            p999 = crate::stats::ms(l.p999_us),
            max = crate::stats::ms(l.max_us),
        )
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("bad configuration: {0}")]
    Config(String),
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: etcd_client::Error,
    },
    #[error("{what} failed: {source}")]
    Setup {
        what: &'static str,
        source: etcd_client::Error,
    },
}

/// What one client (or watcher) task saw.
#[derive(Default)]
struct Tally {
    ops: u64,
    errors: u64,
    conflicts: u64,
    first_error: Option<String>,
    latency: Recorder,
}

impl Tally {
    fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ops += other.ops;
        self.errors += other.errors;
        self.conflicts += other.conflicts;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latency.merge(other.latency);
    }
}

/// The key `index` of a workload's key space: fixed width, so every key is the same size.
pub fn key(workload: Workload, index: u64) -> String {
    format!("bench/{}/{index:010}", workload.name())
}

fn prefix(workload: Workload) -> String {
    format!("bench/{}/", workload.name())
}

fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// `connections` connections, the i-th to endpoint i mod n.
pub async fn connect(endpoints: &[String], connections: usize) -> Result<Vec<Client>, LoadError> {
    connect_with_timeout(endpoints, connections, REQUEST_TIMEOUT_MS).await
}

/// `connect` with another request timeout: for admin calls that last as long as the
/// work they ask for (a physical compaction, a defragmentation).
pub async fn connect_with_timeout(
    endpoints: &[String],
    connections: usize,
    timeout_ms: u64,
) -> Result<Vec<Client>, LoadError> {
    let mut clients = Vec::with_capacity(connections);
    for i in 0..connections {
        let endpoint = endpoints[i % endpoints.len()].clone();
        let client = connect_one(&endpoint, timeout_ms)
            .await
            .map_err(|source| LoadError::Connect { endpoint, source })?;
        clients.push(client);
    }
    Ok(clients)
}

/// One client on one connection to `endpoint` (`host:port` or `http://host:port`; a
/// port is required), connected before it returns.
///
/// The connection's writes are coalesced as the server's are
/// (`raftkv_server::net::coalesced_io`): the bytes h2 writes between two flushes leave in one
/// `write`, and a flush first lets the other clients' requests queued behind it join.
/// tonic's own connector writes each request in two `writev`s, which on loopback also
/// run the server's TCP receive path: about a third of the generator's CPU at 256
/// clients, taken from the two cores the servers share with it (docs/decisions.md).
/// Go's gRPC client, which the Kubernetes API server and etcd's own
/// benchmark use, writes once per batch of frames too. Both servers get the same client.
async fn connect_one(endpoint: &str, timeout_ms: u64) -> Result<Client, etcd_client::Error> {
    let uri = raftkv_server::cli::client::url_of(endpoint);
    if !uri.starts_with("http://") {
        return Err(etcd_client::Error::InvalidArgs(format!(
            "{endpoint}: raftkv-bench speaks plain http:// only"
        )));
    }
    let parsed: http::Uri = uri.parse()?;
    let (Some(host), Some(port)) = (parsed.host(), parsed.port_u16()) else {
        return Err(etcd_client::Error::InvalidArgs(format!(
            "{endpoint}: an endpoint is host:port"
        )));
    };
    // The address checked here is the one the connector dials (tonic passes it the same
    // URI); an IPv6 host comes bracketed.
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let channel = tonic::transport::Endpoint::from_shared(uri)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_millis(timeout_ms))
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let host = host.clone();
            async move {
                let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                stream.set_nodelay(true)?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    raftkv_server::net::coalesced_io::Coalesced::new(stream),
                ))
            }
        }))
        .await?;
    let options = ConnectOptions::new().with_timeout(Duration::from_millis(timeout_ms));
    Client::from_channel(etcd_client::Channel::Tonic(channel), Some(options)).await
}

fn check(config: &LoadConfig) -> Result<(), LoadError> {
    let bad = |s: &str| Err(LoadError::Config(s.to_string()));
    if config.endpoints.is_empty() {
        return bad("no endpoints");
    }
    if config.clients == 0 || config.clients > MAX_CLIENTS {
        return bad("clients must be 1..=4096");
    }
    if config.connections == 0 || config.connections > MAX_CONNECTIONS {
        return bad("connections must be 1..=512");
    }
    if config.watchers > MAX_WATCHERS {
        return bad("watchers must be at most 10000");
    }
    if config.key_space == 0 {
        return bad("the key space must hold at least one key");
    }
    if config.page_size <= 0 {
        return bad("the page size must be positive");
    }
    if config.rate_per_s == Some(0) {
        return bad("a rate must be positive");
    }
    Ok(())
}

/// Puts keys 0..key_space of `workload`'s key space (values of `value_size_bytes`).
pub async fn populate(
    conns: &[Client],
    workload: Workload,
    key_space: u64,
    value_size_bytes: usize,
) -> Result<(), LoadError> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..POPULATE_CLIENTS {
        let mut client = conns[c % conns.len()].clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let value = vec![b'v'; value_size_bytes];
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= key_space {
                    return Ok(());
                }
                client.put(key(workload, i), value.clone(), None).await?;
            }
        }));
    }
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                return Err(LoadError::Setup {
                    what: "filling the key space",
                    source,
                })
            }
            Err(e) => return Err(LoadError::Config(format!("a populate task died: {e}"))),
        }
    }
    Ok(())
}

/// When the k-th request of client `c` is due, if the run is paced.
struct Pace {
    start: Instant,
    interval: Duration,
    offset: Duration,
}

impl Pace {
    fn new(config: &LoadConfig, c: usize, start: Instant) -> Option<Pace> {
        let rate = config.rate_per_s?;
        let interval = Duration::from_secs_f64(config.clients as f64 / rate as f64);
        let offset = interval.mul_f64(c as f64 / config.clients as f64);
        Some(Pace {
            start,
            interval,
            offset,
        })
    }

    fn due(&self, k: u64) -> Instant {
        self.start + self.offset + self.interval.mul_f64(k as f64)
    }
}

/// Runs one workload and reports on it. `label` names the target (raftkv, etcd).
pub async fn run(config: &LoadConfig, label: &str) -> Result<Report, LoadError> {
    check(config)?;
    let conns = connect(&config.endpoints, config.connections).await?;
    let workload = config.workload;
    if config.populate
        && matches!(
            workload,
            Workload::Range | Workload::Update | Workload::List
        )
    {
        populate(&conns, workload, config.key_space, config.value_size_bytes).await?;
    }
    let (tally, elapsed) = if workload == Workload::Watch {
        run_watch(config, &conns).await?
    } else {
        run_clients(config, &conns).await
    };
    let elapsed_s = elapsed.as_secs_f64();
    Ok(Report {
        label: label.to_string(),
        workload,
        clients: config.clients,
        connections: config.connections,
        watchers: if workload == Workload::Watch {
            config.watchers
        } else {
            0
        },
        serializable: config.serializable,
        value_size_bytes: config.value_size_bytes,
        key_space: config.key_space,
        rate_per_s: config.rate_per_s,
        elapsed_s,
        ops: tally.ops,
        ops_per_s: if elapsed_s > 0.0 {
            tally.ops as f64 / elapsed_s
        } else {
            0.0
        },
        errors: tally.errors,
        conflicts: tally.conflicts,
        first_error: tally.first_error,
        latency: tally.latency.summary(),
    })
}

/// The request loops of put, range, update and list: `clients` tasks until the deadline.
async fn run_clients(config: &LoadConfig, conns: &[Client]) -> (Tally, Duration) {
    let start = Instant::now();
    let deadline = start + config.duration;
    let sequence = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(config.clients);
    for c in 0..config.clients {
        let client = conns[c % conns.len()].clone();
        let config = config.clone();
        let sequence = sequence.clone();
        let pace = Pace::new(&config, c, start);
        tasks.push(tokio::spawn(async move {
            client_loop(client, config, sequence, pace, deadline).await
        }));
    }
    let mut tally = Tally::default();
    for t in tasks {
        match t.await {
            Ok(t) => tally.merge(t),
            Err(e) => tally.error(format!("a client task died: {e}")),
        }
    }
    (tally, start.elapsed())
}

async fn client_loop(
    mut client: Client,
    config: LoadConfig,
    sequence: Arc<AtomicU64>,
    pace: Option<Pace>,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let value = vec![b'v'; config.value_size_bytes];
    // What this client last saw of each key it updated (the informer cache's role).
    let mut known_revision = std::collections::HashMap::<u64, i64>::new();
    let mut k = 0u64;
    loop {
        let begin = match &pace {
            Some(p) => {
                let due = p.due(k);
                tokio::time::sleep_until(due.into()).await;
                due
            }
            None => Instant::now(),
        };
        if begin >= deadline {
            break;
        }
        k += 1;
        let index = if config.random_keys || config.workload != Workload::Put {
            rng.random_range(0..config.key_space)
        } else {
            sequence.fetch_add(1, Ordering::Relaxed) % config.key_space
        };
        let result: Result<(), etcd_client::Error> = match config.workload {
            Workload::Put => client
                .put(key(Workload::Put, index), value.clone(), None)
                .await
                .map(|_| ()),
            Workload::Range => {
                let mut options = GetOptions::new();
                if config.serializable {
                    options = options.with_serializable();
                }
                client
                    .get(key(Workload::Range, index), Some(options))
                    .await
                    .map(|_| ())
            }
            Workload::Update => {
                update(
                    &mut client,
                    index,
                    &value,
                    &mut known_revision,
                    &mut tally.conflicts,
                )
                .await
            }
            Workload::List => list(&mut client, config.page_size, config.serializable).await,
            Workload::Watch => Ok(()),
        };
        match result {
            Ok(()) => {
                tally.ops += 1;
                let latency = begin.elapsed();
                report_if_slow(config.report_slow_ms, config.workload.name(), latency);
                tally.latency.record(latency);
            }
            Err(e) => tally.error(e),
        }
    }
    tally
}

/// Prints a request (or delivery) slower than `--report-slow-ms` with the UTC time it
/// ended, in the members' log format, so a tail can be lined up against their logs.
fn report_if_slow(report_slow_ms: Option<u64>, what: &str, latency: Duration) {
    let Some(slow_ms) = report_slow_ms else {
        return;
    };
    if latency >= Duration::from_millis(slow_ms) {
        eprintln!(
            "{} slow {what}: {:.1} ms",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ"),
            latency.as_secs_f64() * 1e3
        );
    }
}

/// One Kubernetes-shaped update, as kube-apiserver's GuaranteedUpdate does it: a Txn
/// comparing the key's mod_revision with the last one seen, putting on success and
/// reading the key on failure (the read refreshes what is known; no retry counts here).
async fn update(
    client: &mut Client,
    index: u64,
    value: &[u8],
    known_revision: &mut std::collections::HashMap<u64, i64>,
    conflicts: &mut u64,
) -> Result<(), etcd_client::Error> {
    let key = key(Workload::Update, index);
    let known = match known_revision.get(&index) {
        Some(r) => *r,
        None => {
            let got = client.get(key.as_str(), None).await?;
            got.kvs().first().map(|kv| kv.mod_revision()).unwrap_or(0)
        }
    };
    let txn = Txn::new()
        .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, known)])
        .and_then([TxnOp::put(key.as_str(), value, Some(PutOptions::new()))])
        .or_else([TxnOp::get(key.as_str(), None)]);
    let response = client.txn(txn).await?;
    if response.succeeded() {
        let revision = response.header().map(|h| h.revision()).unwrap_or(0);
        known_revision.insert(index, revision);
    } else {
        *conflicts += 1;
        for op in response.op_responses() {
            if let TxnOpResponse::Get(get) = op {
                let revision = get.kvs().first().map(|kv| kv.mod_revision()).unwrap_or(0);
                known_revision.insert(index, revision);
            }
        }
    }
    Ok(())
}

/// A whole paginated list of the list key space at the revision of its first page.
async fn list(
    client: &mut Client,
    page_size: i64,
    serializable: bool,
) -> Result<(), etcd_client::Error> {
    let prefix = prefix(Workload::List);
    let end = prefix_end(&prefix);
    let mut from = prefix.into_bytes();
    let mut revision = 0;
    // Bounded: at most this many pages (a key space larger than this is cut short).
    for _ in 0..100_000 {
        let mut options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(page_size);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        if serializable {
            options = options.with_serializable();
        }
        let page = client.get(from.clone(), Some(options)).await?;
        if revision == 0 {
            revision = page.header().map(|h| h.revision()).unwrap_or(0);
        }
        match page.kvs().last() {
            Some(last) if page.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok(()),
        }
    }
    Ok(())
}

/// Watch delivery: `watchers` watches on the watch prefix, `clients` writers putting
/// their send time; a delivery's latency is its arrival time minus that send time.
async fn run_watch(config: &LoadConfig, conns: &[Client]) -> Result<(Tally, Duration), LoadError> {
    let base = Instant::now();
    let prefix = prefix(Workload::Watch);
    let mut watcher_tasks = Vec::with_capacity(config.watchers);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    for w in 0..config.watchers {
        let mut client = conns[w % conns.len()].clone();
        let mut stream = client
            .watch(prefix.as_str(), Some(WatchOptions::new().with_prefix()))
            .await
            .map_err(|source| LoadError::Setup {
                what: "creating a watch",
                source,
            })?;
        let mut stop = stop_rx.clone();
        let report_slow_ms = config.report_slow_ms;
        watcher_tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let message = tokio::select! {
                    m = stream.message() => m,
                    _ = stop.changed() => break,
                };
                match message {
                    Ok(Some(response)) => {
                        if response.canceled() {
                            break;
                        }
                        let now_ns = base.elapsed().as_nanos() as u64;
                        for event in response.events() {
                            let Some(kv) = event.kv() else { continue };
                            let Some(sent) = kv.value().get(..8) else {
                                continue;
                            };
                            let mut b = [0u8; 8];
                            b.copy_from_slice(sent);
                            let sent_ns = u64::from_be_bytes(b);
                            tally.ops += 1;
                            let latency = Duration::from_nanos(now_ns.saturating_sub(sent_ns));
                            report_if_slow(report_slow_ms, "watch delivery", latency);
                            tally.latency.record(latency);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tally.error(e);
                        break;
                    }
                }
            }
            tally
        }));
    }
    // Writers: paced (100 puts/s in all unless told), so this measures delivery, not
    // saturation.
    let mut writer_config = config.clone();
    writer_config.rate_per_s = Some(config.rate_per_s.unwrap_or(100));
    let start = Instant::now();
    let deadline = start + config.duration;
    let mut writers = Vec::with_capacity(config.clients);
    for c in 0..config.clients {
        let mut client = conns[c % conns.len()].clone();
        let pace = Pace::new(&writer_config, c, start);
        let size = config.value_size_bytes.max(8);
        let key_space = config.key_space;
        writers.push(tokio::spawn(async move {
            let mut puts = 0u64;
            let mut tally = Tally::default();
            let mut rng = rand::rngs::StdRng::from_os_rng();
            for k in 0.. {
                if let Some(p) = &pace {
                    tokio::time::sleep_until(p.due(k).into()).await;
                }
                if Instant::now() >= deadline {
                    break;
                }
                let mut value = vec![b'v'; size];
                let sent_ns = base.elapsed().as_nanos() as u64;
                value[..8].copy_from_slice(&sent_ns.to_be_bytes());
                let index = rng.random_range(0..key_space);
                match client.put(key(Workload::Watch, index), value, None).await {
                    Ok(_) => puts += 1,
                    Err(e) => tally.error(e),
                }
            }
            (puts, tally)
        }));
    }
    let mut writes = 0u64;
    let mut tally = Tally::default();
    for w in writers {
        match w.await {
            Ok((puts, t)) => {
                writes += puts;
                tally.merge(t);
            }
            Err(e) => tally.error(format!("a writer died: {e}")),
        }
    }
    let elapsed = start.elapsed();
    // Let the last events arrive, then end the watches.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop_tx.send(true);
    let mut delivered = Tally::default();
    for t in watcher_tasks {
        match tokio::time::timeout(Duration::from_secs(10), t).await {
            Ok(Ok(t)) => delivered.merge(t),
            Ok(Err(e)) => delivered.error(format!("a watcher died: {e}")),
            Err(_) => delivered.error("a watcher did not end"),
        }
    }
    let expected = writes * config.watchers as u64;
    let missing = expected.saturating_sub(delivered.ops);
    delivered.errors += missing;
    if missing > 0 && delivered.first_error.is_none() {
        delivered.first_error = Some(format!("{missing} of {expected} events not delivered"));
    }
    delivered.merge(tally);
    Ok((delivered, elapsed))
}
