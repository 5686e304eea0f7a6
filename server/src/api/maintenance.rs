//! etcd's Maintenance service: Status, Snapshot, Hash/HashKV, MoveLeader, Alarm, Defragment; the rest answer
//! that raftkv does not implement them (yet), never silently. With authentication
//! on, all of it is a root user's, but reading the alarms, which anyone may.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use raftkv_proto::etcdserverpb as pb;
use raftkv_proto::etcdserverpb::maintenance_server::Maintenance;
use tokio::io::AsyncReadExt;
use tonic::{Request, Response, Status};

use crate::api::check_leader_metadata;
use crate::api::credentials;
use crate::errors::ApiError;
use crate::member::node::Node;
use crate::snapshot_file::snapshot_padding_bytes;
use crate::version::ETCD_API_VERSION;
use raftkv_storage::mvcc::engine::ReclaimOutcome;
use raftkv_storage::mvcc::{AlarmMember, AlarmType, Command, CommandResponse};

/// A Defragment answers once the space reclaim it started has finished, or after this
/// long of waiting for it (it then goes on in the background). A compaction still
/// deleting is waited for before, without this bound: it always ends (done or failed).
const DEFRAGMENT_WAIT_MAX_MS: u64 = 300_000;
/// Snapshot bytes per stream message (etcd sends 32 KiB).
const SNAPSHOT_CHUNK_BYTES: usize = 32 * 1024;
pub struct MaintenanceService {
    pub node: Arc<Node>,
    /// One Defragment at a time on this member, as in etcd (whose defrag holds its
    /// backend's lock): a second one waits here without holding a thread, then runs.
    /// The blocking wait holds the guard, not the handler: a client that gives up
    /// leaves its wait running, and the next call still waits for it.
    defragment_lock: Arc<tokio::sync::Mutex<()>>,
}

pub(crate) fn alarm_type(t: pb::AlarmType) -> Option<AlarmType> {
    match t {
        pb::AlarmType::None => None,
        pb::AlarmType::Nospace => Some(AlarmType::NoSpace),
        pb::AlarmType::Corrupt => Some(AlarmType::Corrupt),
    }
}

fn alarm_to_pb(a: AlarmMember) -> pb::AlarmMember {
    pb::AlarmMember {
        member_id: a.member_id,
        alarm: match a.alarm {
            AlarmType::NoSpace => pb::AlarmType::Nospace,
            AlarmType::Corrupt => pb::AlarmType::Corrupt,
        } as i32,
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        req: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        check_leader_metadata(&self.node, &req)?;
        let caller = credentials::caller(&self.node, &req).await?;
        if req.get_ref().action() == pb::alarm_request::AlarmAction::Get {
            credentials::require_someone(&caller)?;
        } else {
            credentials::require_admin(&self.node, &caller)?;
        }
        let r = req.into_inner();
        let alarms = match (r.action(), alarm_type(r.alarm())) {
            // etcd's GET: every raised alarm, or those of one type.
            (pb::alarm_request::AlarmAction::Get, wanted) => {
                self.node.read_barrier().await?;
                self.node
                    .store
                    .alarms()
                    .into_iter()
                    .filter(|a| wanted.is_none_or(|t| a.alarm == t))
                    .collect()
            }
            (_, None) => Vec::new(),
            (action, Some(alarm)) => {
                let command = Command::Alarm {
                    activate: action == pb::alarm_request::AlarmAction::Activate,
                    alarm: AlarmMember {
                        member_id: r.member_id,
                        alarm,
                    },
                };
                match self.node.write(command).await? {
                    CommandResponse::Alarm { alarms } => alarms,
                    other => {
                        return Err(
                            ApiError::Internal(format!("unexpected reply {other:?}")).status()
                        )
                    }
                }
            }
        };
        Ok(Response::new(pb::AlarmResponse {
            header: Some(self.node.header()),
            alarms: alarms.into_iter().map(alarm_to_pb).collect(),
        }))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        check_leader_metadata(&self.node, &req)?;
        self.admin(&req).await?;
        let metrics = self.node.raft.metrics().borrow().clone();
        let db_size = self
            .node
            .store
            .size_on_disk_bytes()
            .map_err(ApiError::from)? as i64;
        let is_learner = !metrics
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == self.node.id);
        Ok(Response::new(pb::StatusResponse {
            header: Some(self.node.header()),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader: metrics.current_leader.unwrap_or(0),
            raft_index: metrics.last_log_index.unwrap_or(0),
            raft_term: metrics.current_term,
            raft_applied_index: metrics.last_applied.map_or(0, |l| l.index),
            // etcd lists alarms here; raftkv adds the even-voter warning.
            errors: self
                .node
                .store
                .alarms()
                .into_iter()
                .map(|a| {
                    let name = alarm_to_pb(a).alarm().as_str_name();
                    format!("memberID:{} alarm:{name} ", a.member_id)
                })
                .chain(self.node.fault_tolerance().2)
                .collect(),
            db_size_in_use: db_size,
            is_learner,
        }))
    }

    async fn defragment(
        &self,
        req: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        check_leader_metadata(&self.node, &req)?;
        self.admin(&req).await?;
        // etcd rewrites its database file and stops the member meanwhile; here the
        // engine merges all its files in the background while everything goes on. As
        // in etcd, the answer comes when it is done: `etcdctl defrag --cluster` then
        // reclaims one member after another, never all at once. A compaction still
        // deleting old revisions finishes first, so that their space comes back with
        // this reclaim (compact, then defrag).
        let one_at_a_time = self.defragment_lock.clone().lock_owned().await;
        let store = self.node.store.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let _one_at_a_time = one_at_a_time;
            store.wait_for_compaction();
            let reclaim = store.reclaim_space();
            reclaim.wait(std::time::Duration::from_millis(DEFRAGMENT_WAIT_MAX_MS))
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
        match outcome {
            ReclaimOutcome::Done => {}
            ReclaimOutcome::Failed => {
                return Err(ApiError::Internal(
                    "reclaiming space failed (the member's log says why)".into(),
                )
                .into())
            }
            ReclaimOutcome::StillRunning => tracing::warn!(
                waited_ms = DEFRAGMENT_WAIT_MAX_MS,
                "defragment: answered before the space reclaim finished; it goes on"
            ),
        }
        // etcd 3.5 answers both without a header.
        Ok(Response::new(pb::DefragmentResponse { header: None }))
    }

    async fn hash(
        &self,
        req: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        check_leader_metadata(&self.node, &req)?;
        self.admin(&req).await?;
        let h = self.kv_hash(0).await?;
        Ok(Response::new(pb::HashResponse {
            header: Some(self.node.header()),
            hash: h.hash,
        }))
    }

    async fn hash_kv(
        &self,
        req: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        check_leader_metadata(&self.node, &req)?;
        self.admin(&req).await?;
        let h = self.kv_hash(req.get_ref().revision).await?;
        Ok(Response::new(pb::HashKvResponse {
            header: Some(self.node.header()),
            hash: h.hash,
            compact_revision: h.compact_revision,
            hash_revision: h.revision,
        }))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

    async fn snapshot(
        &self,
        req: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        check_leader_metadata(&self.node, &req)?;
        self.admin(&req).await?;
        let store = self.node.store.clone();
        let path = self.node.config.data_dir.join(format!(
            "maintenance-snapshot-{:x}.tmp",
            rand::random::<u64>()
        ));
        let export_path = path.clone();
        // etcd's format (a bbolt database), so that etcdutl reads what etcdctl saves and
        // the file is a way back to etcd; raftkv's restore reads it as well.
        let size_bytes = tokio::task::spawn_blocking(move || -> Result<u64, String> {
            let pin = store.pin_for_export();
            let point = pin.point().map_err(|e| e.to_string())?;
            crate::etcd_db::export::write_etcd_db(&pin, &point, &export_path)
                .map(|(db_bytes, _)| db_bytes)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()).status())?
        .map_err(|e| {
            let _ = std::fs::remove_file(&path);
            ApiError::Internal(format!("snapshot: {e}")).status()
        })?;
        let header = self.node.header();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let result = stream_file(&path, size_bytes, header, &tx).await;
            let _ = tokio::fs::remove_file(&path).await;
            if let Err(e) = result {
                let _ = tx
                    .send(Err(ApiError::Internal(format!("snapshot: {e}")).status()))
                    .await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn move_leader(
        &self,
        req: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        check_leader_metadata(&self.node, &req)?;
        self.admin(&req).await?;
        self.node.move_leader(req.get_ref().target_id).await?;
        Ok(Response::new(pb::MoveLeaderResponse { header: None }))
    }

    async fn downgrade(
        &self,
        req: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        self.admin(&req).await?;
        Err(ApiError::Unsupported("Downgrade is not implemented by raftkv".into()).status())
    }
}

/// Streams the snapshot file as etcd does: the image, zero padding to a multiple of
/// 512 bytes, then the SHA-256 of everything before it (etcdctl refuses a stream whose
/// length is not 32 more than a multiple of 512). `raftkv snapshot restore` strips both.
impl MaintenanceService {
    pub fn new(node: Arc<Node>) -> MaintenanceService {
        MaintenanceService {
            node,
            defragment_lock: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// etcd's authMaintenanceServer: a root user, once authentication is on.
    async fn admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let caller = credentials::caller(&self.node, req).await?;
        Ok(credentials::require_admin(&self.node, &caller)?)
    }

    /// The key space's checksum at `revision`, computed off the async threads.
    async fn kv_hash(&self, revision: i64) -> Result<raftkv_storage::mvcc::hash::KvHash, Status> {
        let store = self.node.store.clone();
        tokio::task::spawn_blocking(move || store.hash_kv(revision))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()).status())?
            .map_err(ApiError::from)?
            .map_err(|e| ApiError::Mvcc(e).status())
    }
}

async fn stream_file(
    path: &std::path::Path,
    size_bytes: u64,
    header: pb::ResponseHeader,
    tx: &tokio::sync::mpsc::Sender<Result<pb::SnapshotResponse, Status>>,
) -> std::io::Result<()> {
    use sha2::Digest;
    let padding_bytes = snapshot_padding_bytes(size_bytes);
    let total_bytes = size_bytes + padding_bytes + 32;
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = sha2::Sha256::new();
    let mut sent_bytes = 0u64;
    let mut first = true;
    let mut trailer_sent = false;
    while !trailer_sent {
        let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
        let n = file.read(&mut buf).await?;
        buf.truncate(n);
        if n == 0 {
            buf = vec![0u8; padding_bytes as usize];
            hasher.update(&buf);
            let digest = std::mem::take(&mut hasher).finalize();
            buf.extend_from_slice(&digest);
            trailer_sent = true;
        } else {
            hasher.update(&buf);
        }
        sent_bytes += buf.len() as u64;
        let response = pb::SnapshotResponse {
            header: if first { Some(header) } else { None },
            remaining_bytes: total_bytes.saturating_sub(sent_bytes),
            blob: bytes::Bytes::from(buf),
            version: if first {
                ETCD_API_VERSION.to_string()
            } else {
                String::new()
            },
        };
        first = false;
        if tx.send(Ok(response)).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}
