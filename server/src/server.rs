//! Starting and stopping a member: binds every listener first (so a port in use fails
//! fast with a clear message), starts the peer service, joins or initializes the
//! cluster, then serves clients until SIGTERM or SIGINT.

use std::sync::Arc;
use std::time::Duration;

use raftkv_proto::etcdserverpb::auth_server::AuthServer;
use raftkv_proto::etcdserverpb::cluster_server::ClusterServer;
use raftkv_proto::etcdserverpb::kv_server::KvServer;
use raftkv_proto::etcdserverpb::lease_server::LeaseServer;
use raftkv_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use raftkv_proto::etcdserverpb::watch_server::WatchServer;
use raftkv_proto::v3electionpb::election_server::ElectionServer;
use raftkv_proto::v3lockpb::lock_server::LockServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::api;
use crate::config::{socket_addr_of, ServerConfig};
use crate::member::node::{Node, StartError};
use crate::net::coalesced_io::Coalesced;
use crate::peer::service::PeerService;

/// etcd's server limits: requests up to --max-request-bytes plus gRPC overhead.
const MAX_RECV_BYTES: usize =
    raftkv_proto::MAX_REQUEST_SIZE_BYTES + raftkv_proto::GRPC_OVERHEAD_BYTES;
/// How long start-up waits for a leader before serving regardless.
const READY_LEADER_WAIT_MS: u64 = 3_000;
/// How long SIGTERM waits for client requests in flight before closing the listeners'
/// connections (open watch streams included).
const SHUTDOWN_GRACE_MS: u64 = 1_000;
/// Concurrent streams per client connection (etcd's default is grpc-go's: unlimited;
/// this bounds memory per connection).
const MAX_CONCURRENT_STREAMS: u32 = 1_000;

async fn bind(url: &str, what: &str) -> Result<TcpListener, StartError> {
    let addr = socket_addr_of(url).map_err(StartError::Config)?;
    TcpListener::bind(addr).await.map_err(|e| {
        StartError::Config(if e.kind() == std::io::ErrorKind::AddrInUse {
            format!("cannot listen for {what} on {addr}: the port is in use (is another raftkv or etcd running?)")
        } else {
            format!("cannot listen for {what} on {addr}: {e}")
        })
    })
}

/// Accepted connections with Nagle's algorithm off. tonic applies its own tcp_nodelay
/// only to listeners it binds itself; without this, a small response waits for the
/// client's delayed ACK (40 ms on Linux) about one time in ten.
fn incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    incoming_tuned(listener, nodelay)
}

fn nodelay(stream: &tokio::net::TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)
}

/// Accepted connections, each socket set up by `tune`.
fn incoming_tuned(
    listener: TcpListener,
    tune: fn(&tokio::net::TcpStream) -> std::io::Result<()>,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    TcpListenerStream::new(listener).map(move |accepted| {
        let stream = accepted?;
        tune(&stream)?;
        Ok(stream)
    })
}

/// Client connections write once per HTTP/2 flush (coalesced_io.rs). Peer connections
/// do not: their messages are batched already (peer/wire.rs, member/batching.rs), and
/// there a yield before the write would hold up Raft's acknowledgements.
fn coalesced<S, T>(incoming: S) -> impl futures::Stream<Item = std::io::Result<Coalesced<T>>>
where
    S: futures::Stream<Item = std::io::Result<T>>,
{
    use futures::StreamExt;
    incoming.map(|accepted| accepted.map(Coalesced::new))
}

/// What serves a pipe connection accepted on the peer port.
fn pipe_server<T: crate::peer::wire::PipeIo>(node: &Arc<Node>) -> impl Fn(T) {
    let service = PeerService {
        handler: node.clone(),
    };
    move |conn| crate::peer::service::serve_pipe_connection(service.clone(), conn)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Every listener a member serves on, bound before anything else starts.
struct Listeners {
    peer: TcpListener,
    peer_tls: Option<Arc<crate::net::tls::ReloadingAcceptor>>,
    clients: ClientListeners,
}

/// The client and metrics listeners.
struct ClientListeners {
    /// Each client listener, and whether it serves TLS.
    clients: Vec<(TcpListener, bool)>,
    client_tls: Option<Arc<crate::net::tls::ReloadingAcceptor>>,
    metrics: Vec<TcpListener>,
}

/// Binds every listener (a port in use fails start-up at once, with a clear message)
/// and loads the TLS files.
async fn bind_all(config: &ServerConfig) -> Result<Listeners, StartError> {
    let acceptor = |files| {
        crate::net::tls::ReloadingAcceptor::new(files)
            .map(Arc::new)
            .map_err(StartError::Config)
    };
    let peer = bind(&config.listen_peer_urls, "peers").await?;
    let peer_tls = match config.peer_tls().map_err(StartError::Config)? {
        Some(files) if config.listen_peer_urls.starts_with("https://") => Some(acceptor(files)?),
        _ => None,
    };
    let client_tls = match config.client_tls().map_err(StartError::Config)? {
        Some(files) => Some(acceptor(files)?),
        None => None,
    };
    let mut clients = Vec::new();
    for url in config.client_listen_urls() {
        let tls = url.starts_with("https://");
        clients.push((bind(&url, "clients").await?, tls));
    }
    let mut metrics = Vec::new();
    for url in config.metrics_listen_urls() {
        metrics.push(bind(&url, "metrics").await?);
    }
    Ok(Listeners {
        peer,
        peer_tls,
        clients: ClientListeners {
            clients,
            client_tls,
            metrics,
        },
    })
}

/// Resolves once `stop` says so.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves pipe connections on the peer port until `stop`. Every connection there is a
/// pipe (peer/wire.rs); its socket gets the pipe's keepalive and unacknowledged-data
/// timeout.
fn serve_peers(
    listener: TcpListener,
    tls: Option<Arc<crate::net::tls::ReloadingAcceptor>>,
    node: &Arc<Node>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let tune = crate::peer::wire::tune_socket;
    match tls {
        Some(acceptor) => tokio::spawn(crate::peer::wire::accept_pipes(
            crate::net::tls::incoming(listener, acceptor, tune),
            pipe_server(node),
            stopped(stop),
        )),
        None => tokio::spawn(crate::peer::wire::accept_pipes(
            incoming_tuned(listener, tune),
            pipe_server(node),
            stopped(stop),
        )),
    }
}

/// A restarted member stays fenced until peers confirm its data dir is current; if they
/// know of a newer state, it must stop: the receiver then gets why (rollback_guard.rs).
/// The check starts before the wait for a leader: fenced, the member refuses the
/// leader's messages and would never learn of one, and a fence held through that wait
/// leaves the cluster one failure from losing its quorum.
fn check_restart(node: &Arc<Node>) -> tokio::sync::oneshot::Receiver<String> {
    let (guard_tx, guard_failed) = tokio::sync::oneshot::channel::<String>();
    if let Some(local) = node.restart_state {
        let node = node.clone();
        tokio::spawn(async move {
            match crate::member::rollback_guard::check_at_restart(node.clone(), local).await {
                Ok(()) => node.lift_fence(),
                Err(why) => {
                    let _ = guard_tx.send(why);
                }
            }
        });
    }
    guard_failed
}

/// Starts the work beside the request path (ops/, the rollback guard's keeper); the
/// tasks to stop at shutdown.
fn start_background(
    node: &Arc<Node>,
    auto_compaction: Option<crate::ops::auto_compaction::Policy>,
    backups: Option<crate::config::backup::BackupConfig>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, StartError> {
    let mut tasks = vec![
        tokio::spawn(crate::member::rollback_guard::run_keeper(node.clone())),
        tokio::spawn(crate::member::election::run_keeper(node.clone())),
        tokio::spawn(crate::ops::lease_expiry::run_expiry(node.clone())),
        tokio::spawn(crate::ops::metrics::watch_leader_changes(node.clone())),
    ];
    if let Some(policy) = auto_compaction {
        tasks.push(tokio::spawn(crate::ops::auto_compaction::run(
            node.clone(),
            policy,
        )));
    }
    if let Some(backups) = backups {
        crate::ops::backups::start(node.clone(), backups).map_err(StartError::Config)?;
    }
    Ok(tasks)
}

/// Serves etcd's API on every client listener and /metrics and health on the metrics
/// listeners, until `stop`.
fn serve_clients(
    listeners: ClientListeners,
    node: &Arc<Node>,
    stop: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>> {
    let mut servers = Vec::new();
    for (listener, tls) in listeners.clients {
        let addr = listener.local_addr().ok();
        let router = client_router(node);
        let done = stopped(stop.clone());
        match (tls, &listeners.client_tls) {
            (true, Some(acceptor)) => {
                let incoming = coalesced(crate::net::tls::incoming(
                    listener,
                    acceptor.clone(),
                    nodelay,
                ));
                servers.push(tokio::spawn(
                    router.serve_with_incoming_shutdown(incoming, done),
                ));
            }
            _ => servers.push(tokio::spawn(
                router.serve_with_incoming_shutdown(coalesced(incoming(listener)), done),
            )),
        }
        tracing::info!(addr = ?addr, tls, "serving clients");
    }
    for listener in listeners.metrics {
        let addr = listener.local_addr().ok();
        let routes = tonic::service::Routes::from(crate::ops::metrics::http_routes(node.clone()));
        servers.push(tokio::spawn(
            Server::builder()
                .accept_http1(true)
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming(listener), stopped(stop.clone())),
        ));
        tracing::info!(addr = ?addr, "serving metrics and health");
    }
    servers
}

pub async fn run(config: ServerConfig) -> Result<(), StartError> {
    let Listeners {
        peer,
        peer_tls,
        clients,
    } = bind_all(&config).await?;
    let auto_compaction = crate::ops::auto_compaction::parse(
        &config.auto_compaction_mode,
        &config.auto_compaction_retention,
    )
    .map_err(StartError::Config)?;
    let backups = config.backups().map_err(StartError::Config)?;
    let (node, existing) = Node::open(config.clone()).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let peer_server = serve_peers(peer, peer_tls, &node, stop_rx.clone());
    let bootstrap = tokio::select! {
        r = node.bootstrap(existing) => r,
        _ = shutdown_signal() => Err(StartError::Config("stopped before joining a cluster".into())),
    };
    if let Err(e) = bootstrap {
        let _ = stop_tx.send(true);
        node.shutdown().await;
        return Err(e);
    }
    let mut guard_failed = check_restart(&node);
    // Give the cluster a moment to settle on a leader, so that "ready" usually means
    // "serving with a leader"; a member that cannot reach a quorum serves anyway (reads
    // that allow it, and etcd's errors for the rest), as etcd does.
    let _ = node
        .raft
        .wait(Some(Duration::from_millis(READY_LEADER_WAIT_MS)))
        .metrics(|m| m.current_leader.is_some(), "a leader is known")
        .await;
    let background = start_background(&node, auto_compaction, backups)?;
    let client_servers = serve_clients(clients, &node, &stop_rx);
    tracing::info!(
        name = %node.name,
        member_id = %crate::ids::hex(node.id),
        peer_url = %config.peer_advertise_url(),
        "raftkv is ready"
    );

    let refused = tokio::select! {
        _ = shutdown_signal() => None,
        Ok(why) = &mut guard_failed => Some(why),
    };
    match &refused {
        Some(why) => tracing::error!("{why}"),
        None => tracing::info!("shutting down"),
    }
    let _ = stop_tx.send(true);
    for task in background {
        task.abort();
    }
    // In-flight unary requests get a moment to finish; streams (watches, keep-alives)
    // never end by themselves, so the wait is bounded and shared by every listener.
    let grace_ends = tokio::time::Instant::now() + Duration::from_millis(SHUTDOWN_GRACE_MS);
    for mut s in client_servers {
        if tokio::time::timeout_at(grace_ends, &mut s).await.is_err() {
            s.abort();
        }
    }
    node.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), peer_server).await;
    tracing::info!("stopped");
    match refused {
        Some(why) => Err(StartError::Config(why)),
        None => Ok(()),
    }
}

fn client_router(
    node: &Arc<Node>,
) -> tonic::transport::server::Router<
    tower::layer::util::Stack<crate::ops::metrics::GrpcMetricsLayer, tower::layer::util::Identity>,
> {
    macro_rules! limits {
        ($svc:expr) => {
            $svc.max_decoding_message_size(MAX_RECV_BYTES)
                .max_encoding_message_size(usize::MAX)
        };
    }
    let mut routes = tonic::service::RoutesBuilder::default();
    routes
        .add_service(limits!(KvServer::new(api::kv::KvService {
            node: node.clone()
        })))
        .add_service(limits!(WatchServer::new(api::watch::WatchService {
            node: node.clone()
        })))
        .add_service(limits!(LeaseServer::new(api::lease::LeaseService {
            node: node.clone()
        })))
        .add_service(limits!(ClusterServer::new(api::cluster::ClusterService {
            node: node.clone()
        })))
        .add_service(limits!(MaintenanceServer::new(
            api::maintenance::MaintenanceService::new(node.clone())
        )))
        .add_service(limits!(AuthServer::new(api::auth::AuthService {
            node: node.clone()
        })))
        .add_service(limits!(LockServer::new(api::lock::LockService::new(
            node.clone()
        ))))
        .add_service(limits!(ElectionServer::new(
            api::election::ElectionService::new(node.clone())
        )));
    // etcd's JSON gateway under /v3/, calling these same services in process; /metrics,
    // /health, /livez, /readyz and /version; anything else a 404. All of it on HTTP/1.1
    // as well as HTTP/2, as etcd serves it.
    let grpc = routes.routes();
    let router = grpc
        .clone()
        .into_axum_router()
        .merge(crate::gateway::router(&grpc))
        .merge(crate::ops::metrics::http_routes(node.clone()))
        .route("/version", axum::routing::get(crate::ops::metrics::version))
        .fallback(crate::ops::metrics::not_found);
    Server::builder()
        .tcp_nodelay(true)
        .accept_http1(true)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_keepalive_interval(Some(Duration::from_secs(2 * 60 * 60)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .layer(crate::ops::metrics::GrpcMetricsLayer)
        .add_routes(tonic::service::Routes::from(router))
}
