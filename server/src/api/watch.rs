//! etcd's Watch service: one bidirectional stream carries many watchers.
//!
//! Each watcher is a task reading the store's change feed (`storage::mvcc::watch`) and
//! queueing responses on the stream's bounded outgoing queue, so a slow client slows
//! only its own watchers (which then fall back to history), never writers. Ordering
//! rule: a progress response is queued only after every watcher on the stream has
//! queued all events up to the revision it reports.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use raftkv_proto::etcdserverpb as pb;
use raftkv_proto::etcdserverpb::watch_server::Watch;
use raftkv_storage::mvcc::watch::{WatchError, Watcher};
use raftkv_storage::mvcc::{Event, EventKind};
use raftkv_storage::MvccError;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

use crate::api::convert;
use crate::api::credentials::{self, Credentials};
use crate::api::{check_leader_metadata, wants_leader, LeaderLossCheck};
use crate::errors::ApiError;
use crate::member::node::Node;

/// Responses queued per stream before its watchers wait for the client.
const OUT_QUEUE_RESPONSES: usize = 128;
/// Watchers one stream may hold.
const MAX_WATCHERS_PER_STREAM: usize = 10_000;
/// Revisions of events packed into one response at most.
const MAX_REVISIONS_PER_RESPONSE: usize = 64;
/// etcd's watch id for stream-wide progress responses.
const PROGRESS_ALL_WATCH_ID: i64 = -1;

pub struct WatchService {
    pub node: Arc<Node>,
}

type Out = mpsc::Sender<Result<pb::WatchResponse, Status>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

    async fn watch(
        &self,
        req: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        check_leader_metadata(&self.node, &req)?;
        let leader_check = LeaderLossCheck::new(wants_leader(&req));
        // The stream's credentials: each create is checked with them, as etcd does.
        let credentials = Credentials::of(&req);
        let inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(OUT_QUEUE_RESPONSES);
        let stream = WatchStream {
            node: self.node.clone(),
            out: tx,
            credentials,
            watchers: HashMap::new(),
            next_id: 0,
        };
        tokio::spawn(run_stream(stream, inbound, leader_check));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

enum Control {
    /// Answer with the last revision whose events are all queued.
    Position(oneshot::Sender<i64>),
    /// Stop; acknowledged once nothing more will be queued.
    Stop(oneshot::Sender<()>),
}

struct WatcherHandle {
    control: mpsc::Sender<Control>,
}

/// Serves one Watch stream. Opened with `hasleader` metadata (the Kubernetes API
/// server's), it ends with "etcdserver: no leader" once `leader_check` says the member
/// lost its leader.
async fn run_stream(
    mut stream: WatchStream,
    mut inbound: Streaming<pb::WatchRequest>,
    mut leader_check: LeaderLossCheck,
) {
    use pb::watch_request::RequestUnion;
    // A client that closes its side of the stream keeps its watchers until it goes
    // away, as etcd's do (a JSON gateway client sends its requests in one body).
    let mut half_closed = false;
    loop {
        let message = tokio::select! {
            m = inbound.message(), if !half_closed => m,
            _ = stream.out.closed() => break,
            () = leader_check.lost(&stream.node) => {
                tracing::info!(
                    watchers = stream.watchers.len(),
                    "watch: no leader; ending a stream that asked for one (hasleader)"
                );
                let _ = stream.out.send(Err(ApiError::NoLeader.status())).await;
                break;
            }
        };
        let request = match message {
            Ok(Some(r)) => r,
            Ok(None) => {
                half_closed = true;
                continue;
            }
            Err(_) => break,
        };
        let sent = match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => stream.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => stream.cancel(cancel.watch_id).await,
            Some(RequestUnion::ProgressRequest(_)) => stream.progress().await,
            None => Ok(()),
        };
        if sent.is_err() {
            break;
        }
    }
    // Dropping the handles ends every watcher task.
}

/// The client went away: nothing more can be sent on its stream.
struct Closed;

/// One Watch stream's watchers, by id.
struct WatchStream {
    node: Arc<Node>,
    out: Out,
    /// The credentials the stream was opened with.
    credentials: Credentials,
    watchers: HashMap<i64, WatcherHandle>,
    /// The next id to try for a watch created without one.
    next_id: i64,
}

impl WatchStream {
    async fn send(&self, response: pb::WatchResponse) -> Result<(), Closed> {
        self.out.send(Ok(response)).await.map_err(|_| Closed)
    }

    /// A create request: refused (duplicate id, too many watchers) or answered
    /// "created", then its watcher task started.
    async fn create(&mut self, create: pb::WatchCreateRequest) -> Result<(), Closed> {
        self.watchers.retain(|_, w| !w.control.is_closed());
        let header_rev = self.node.store.revision();
        let requested = create.watch_id;
        let refusal = if let Some(reason) = self.permission_refusal(&create).await {
            Some(reason)
        } else if requested != 0 && self.watchers.contains_key(&requested) {
            Some("mvcc: duplicate watch ID provided on the WatchStream".to_string())
        } else if self.watchers.len() >= MAX_WATCHERS_PER_STREAM {
            Some("etcdserver: too many watchers on this stream".to_string())
        } else {
            None
        };
        let mut header = self.node.header();
        header.revision = header_rev;
        if let Some(reason) = refusal {
            return self
                .send(pb::WatchResponse {
                    header: Some(header),
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: reason,
                    ..Default::default()
                })
                .await;
        }
        let id = if requested != 0 {
            requested
        } else {
            self.free_id()
        };
        self.send(pb::WatchResponse {
            header: Some(header),
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await?;
        self.start_watcher(id, &create, header_rev);
        Ok(())
    }

    /// Why the caller may not watch what `create` asks for, as etcd's
    /// isWatchPermitted says it: the text of the gRPC error the same refusal gets
    /// elsewhere, code included. None when it may (or authentication is off).
    async fn permission_refusal(&self, create: &pb::WatchCreateRequest) -> Option<String> {
        let refused = match credentials::caller_with(&self.node, &self.credentials).await {
            Ok(caller) => {
                let caller = caller?;
                // etcd checks a watch of every key from `key` on (range end "\0") as a
                // watch of `key` alone: the same answers, so the same check.
                let key: &[u8] = if create.key.is_empty() {
                    &[0]
                } else {
                    &create.key
                };
                let range_end: &[u8] = if create.range_end[..] == [0] {
                    &[]
                } else {
                    &create.range_end
                };
                let auth = self.node.store.auth();
                let e = auth.check_op(&caller, key, range_end, false).err()?;
                ApiError::Mvcc(MvccError::Auth(e))
            }
            Err(e) => e,
        };
        let status = refused.status();
        Some(format!(
            "rpc error: code = {:?} desc = {}",
            status.code(),
            status.message()
        ))
    }

    /// The lowest id from `next_id` on that no watcher of this stream has.
    fn free_id(&mut self) -> i64 {
        while self.watchers.contains_key(&self.next_id) {
            self.next_id += 1;
        }
        self.next_id += 1;
        self.next_id - 1
    }

    /// Starts the task that sends watch `id`'s events.
    fn start_watcher(&mut self, id: i64, create: &pb::WatchCreateRequest, header_rev: i64) {
        // Copied: a watch lives long, and the request's bytes are a slice of the
        // connection's receive buffer.
        let key = if create.key.is_empty() {
            bytes::Bytes::from_static(&[0])
        } else {
            bytes::Bytes::copy_from_slice(&create.key)
        };
        let start = if create.start_revision == 0 {
            header_rev + 1
        } else {
            create.start_revision
        };
        let range_end = bytes::Bytes::copy_from_slice(&create.range_end);
        let watcher = self.node.store.watch(key, range_end, start);
        let (control_tx, control_rx) = mpsc::channel(4);
        let has_filter =
            |f: pb::watch_create_request::FilterType| create.filters.contains(&(f as i32));
        let spec = Spec {
            id,
            no_put: has_filter(pb::watch_create_request::FilterType::Noput),
            no_delete: has_filter(pb::watch_create_request::FilterType::Nodelete),
            prev_kv: create.prev_kv,
            progress_notify: create.progress_notify,
        };
        tracing::debug!(watch_id = id, key = ?create.key, start_revision = start, "watch created");
        tokio::spawn(run_watcher(
            self.node.clone(),
            spec,
            watcher,
            self.out.clone(),
            control_rx,
        ));
        let handle = WatcherHandle {
            control: control_tx,
        };
        self.watchers.insert(id, handle);
    }

    /// A cancel request: the watcher stops (and says so) before the answer is sent.
    async fn cancel(&mut self, watch_id: i64) -> Result<(), Closed> {
        let Some(w) = self.watchers.remove(&watch_id) else {
            return Ok(());
        };
        let (ack_tx, ack_rx) = oneshot::channel();
        if w.control.send(Control::Stop(ack_tx)).await.is_ok() {
            let _ = ack_rx.await;
        }
        self.send(pb::WatchResponse {
            header: Some(self.node.header()),
            watch_id,
            canceled: true,
            ..Default::default()
        })
        .await
    }

    /// A progress request: the revision every watcher of the stream has sent all of.
    async fn progress(&self) -> Result<(), Closed> {
        let mut revision = self.node.store.revision();
        for w in self.watchers.values() {
            let (tx, rx) = oneshot::channel();
            if w.control.send(Control::Position(tx)).await.is_ok() {
                if let Ok(position) = rx.await {
                    revision = revision.min(position);
                }
            }
        }
        let mut header = self.node.header();
        header.revision = revision;
        self.send(pb::WatchResponse {
            header: Some(header),
            watch_id: PROGRESS_ALL_WATCH_ID,
            ..Default::default()
        })
        .await
    }
}

struct Spec {
    id: i64,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    progress_notify: bool,
}

fn keep(spec: &Spec, events: Vec<Event>) -> Vec<raftkv_proto::mvccpb::Event> {
    events
        .into_iter()
        .filter(|e| match e.kind {
            EventKind::Put => !spec.no_put,
            EventKind::Delete => !spec.no_delete,
        })
        .map(|mut e| {
            if !spec.prev_kv {
                e.prev_kv = None;
            }
            convert::event_to_pb(e)
        })
        .collect()
}

async fn run_watcher(
    node: Arc<Node>,
    spec: Spec,
    mut watcher: Watcher,
    out: Out,
    mut control: mpsc::Receiver<Control>,
) {
    let interval_ms = node.config.watch_progress_notify_interval_ms.max(100);
    let mut notify = tokio::time::interval(Duration::from_millis(interval_ms));
    notify.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    notify.tick().await;
    let mut sent_since_notify = false;
    loop {
        let step = tokio::select! {
            biased;
            c = control.recv() => Step::Control(c),
            r = watcher.next(MAX_REVISIONS_PER_RESPONSE) => Step::Events(r),
            _ = notify.tick(), if spec.progress_notify => Step::Notify,
        };
        match step {
            Step::Control(Some(Control::Position(reply))) => {
                let _ = reply.send(watcher.next_revision() - 1);
            }
            Step::Control(Some(Control::Stop(ack))) => {
                let _ = ack.send(());
                return;
            }
            Step::Control(None) => return,
            Step::Events(Ok(events)) => {
                let events = keep(&spec, events);
                if events.is_empty() {
                    continue;
                }
                let mut header = node.header();
                header.revision = watcher.next_revision() - 1;
                let response = pb::WatchResponse {
                    header: Some(header),
                    watch_id: spec.id,
                    events,
                    ..Default::default()
                };
                sent_since_notify = true;
                if out.send(Ok(response)).await.is_err() {
                    return;
                }
            }
            Step::Events(Err(WatchError::Compacted { compact_revision })) => {
                let response = pb::WatchResponse {
                    header: Some(node.header()),
                    watch_id: spec.id,
                    canceled: true,
                    compact_revision,
                    ..Default::default()
                };
                let _ = out.send(Ok(response)).await;
                return;
            }
            Step::Events(Err(e)) => {
                tracing::warn!(watch_id = spec.id, error = %e, "watch ended");
                let response = pb::WatchResponse {
                    header: Some(node.header()),
                    watch_id: spec.id,
                    canceled: true,
                    cancel_reason: e.to_string(),
                    ..Default::default()
                };
                let _ = out.send(Ok(response)).await;
                return;
            }
            Step::Notify => {
                if !sent_since_notify && watcher.caught_up() {
                    let mut header = node.header();
                    header.revision = watcher.next_revision() - 1;
                    let response = pb::WatchResponse {
                        header: Some(header),
                        watch_id: spec.id,
                        ..Default::default()
                    };
                    if out.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
                sent_since_notify = false;
            }
        }
    }
}

enum Step {
    Control(Option<Control>),
    Events(Result<Vec<Event>, WatchError>),
    Notify,
}
