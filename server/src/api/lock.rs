//! etcd's Lock service (v3lockpb), with the semantics of etcd's server-side lock: a
//! lock named N is the key `N/<lease in hex>` held by the caller's lease; the caller
//! holds it once every key created earlier under `N/` is gone. Unlock deletes the key.
//!
//! Built only from this member's writes, linearizable reads and a watch, as etcd builds
//! it from a client of its own. A caller that gives up while waiting (its request
//! cancelled) leaves no key behind: the key is deleted, as etcd's mutex does.

use std::sync::Arc;

use bytes::Bytes;
use raftkv_proto::v3lockpb as pb;
use raftkv_proto::v3lockpb::lock_server::Lock;
use raftkv_storage::mvcc::types::{
    Compare, CompareOperand, CompareResult, CompareTarget, DeleteRangeRequest, EventKind, KeyValue,
    PutRequest, RangeRequest, RequestOp, SortOrder, SortTarget, TxnRequest,
};
use raftkv_storage::mvcc::{Command, CommandResponse};
use tonic::{Request, Response, Status};

use crate::api::check_leader_metadata;
use crate::errors::ApiError;
use crate::member::node::Node;

/// What etcd's session gives a lock asked for without a lease: a lease of its own
/// that nobody keeps alive (concurrency.NewSession's default TTL).
const LOCK_SESSION_TTL_S: i64 = 60;

pub struct LockService {
    pub node: Arc<Node>,
}

/// The key after every key that starts with `prefix` (etcd's GetPrefixRangeEnd).
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end.into();
        }
    }
    Bytes::from_static(&[0])
}

/// The oldest key under `prefix` (or, with `below`, the newest created before it).
fn first_created(prefix: &[u8], below: Option<i64>) -> RangeRequest {
    RangeRequest {
        key: Bytes::copy_from_slice(prefix),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: if below.is_some() {
            SortOrder::Descend
        } else {
            SortOrder::Ascend
        },
        sort_target: SortTarget::Create,
        max_create_revision: below.unwrap_or(0),
        ..Default::default()
    }
}

/// Deletes the lock key if the caller gave up before it held it.
struct Abandoned {
    node: Arc<Node>,
    key: Option<Bytes>,
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let node = self.node.clone();
            tokio::spawn(async move {
                let _ = node.write(delete(key)).await;
            });
        }
    }
}

fn delete(key: Bytes) -> Command {
    Command::DeleteRange(DeleteRangeRequest {
        key,
        range_end: Bytes::new(),
        prev_kv: false,
    })
}

impl LockService {
    async fn txn(
        &self,
        txn: TxnRequest,
    ) -> Result<raftkv_storage::mvcc::types::TxnResponse, Status> {
        match self.node.write(Command::Txn(txn)).await? {
            CommandResponse::Txn(r) => Ok(r),
            other => Err(ApiError::Internal(format!("unexpected reply {other:?}")).status()),
        }
    }

    async fn read(&self, req: &RangeRequest) -> Result<Vec<KeyValue>, Status> {
        self.node.read_barrier().await?;
        Ok(self.node.store.range(req).map_err(ApiError::from)?.kvs)
    }

    /// A lease for a lock asked for without one.
    async fn session_lease(&self) -> Result<i64, Status> {
        let id = crate::api::lease::new_lease_id();
        let grant = Command::LeaseGrant {
            id,
            ttl_s: LOCK_SESSION_TTL_S,
        };
        match self.node.write(grant).await? {
            CommandResponse::LeaseGrant { id, .. } => Ok(id),
            other => Err(ApiError::Internal(format!("unexpected reply {other:?}")).status()),
        }
    }

    /// Puts `key` with `lease` unless it exists; answers the key's create revision and
    /// the oldest key under `prefix`.
    async fn enqueue(
        &self,
        prefix: &[u8],
        key: &Bytes,
        lease: i64,
    ) -> Result<(i64, Option<KeyValue>), Status> {
        let put = RequestOp::Put(PutRequest {
            key: key.clone(),
            value: Bytes::new(),
            lease,
            ..Default::default()
        });
        let get_mine = RequestOp::Range(RangeRequest {
            key: key.clone(),
            ..Default::default()
        });
        let owner = RequestOp::Range(first_created(prefix, None));
        let r = self
            .txn(TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal,
                    target: CompareTarget::Create,
                    key: key.clone(),
                    range_end: Bytes::new(),
                    operand: Some(CompareOperand::CreateRevision(0)),
                }],
                success: vec![put, owner.clone()],
                failure: vec![get_mine, owner],
            })
            .await?;
        let kvs_of = |i: usize| match r.responses.get(i) {
            Some(raftkv_storage::mvcc::types::ResponseOp::Range(range)) => range.kvs.clone(),
            _ => Vec::new(),
        };
        let mine = if r.succeeded {
            r.revision
        } else {
            kvs_of(0)
                .first()
                .map(|kv| kv.create_revision)
                .unwrap_or(r.revision)
        };
        Ok((mine, kvs_of(1).into_iter().next()))
    }

    /// Waits until no key under `prefix` was created at or before `max_create`.
    async fn wait_deletes(&self, prefix: &[u8], max_create: i64) -> Result<(), Status> {
        loop {
            let older = self.read(&first_created(prefix, Some(max_create))).await?;
            let Some(last) = older.into_iter().next() else {
                return Ok(());
            };
            let from = self.node.store.revision() + 1;
            let mut watcher = self.node.store.watch(last.key.clone(), Bytes::new(), from);
            // The key may have gone between the read and the watch.
            if self
                .read(&RangeRequest {
                    key: last.key.clone(),
                    ..Default::default()
                })
                .await?
                .is_empty()
            {
                continue;
            }
            'deleted: loop {
                let events = watcher
                    .next(16)
                    .await
                    .map_err(|e| ApiError::Internal(e.to_string()).status())?;
                if events.iter().any(|e| e.kind == EventKind::Delete) {
                    break 'deleted;
                }
            }
        }
    }
}

/// etcd's lock server works through a client of its own and hands that client's
/// errors back as plain errors: clients see etcd's message with code Unknown.
fn as_etcd_answers(status: Status) -> Status {
    Status::unknown(status.message())
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(
        &self,
        req: Request<pb::LockRequest>,
    ) -> Result<Response<pb::LockResponse>, Status> {
        check_leader_metadata(&self.node, &req)?;
        self.acquire(req.into_inner())
            .await
            .map(Response::new)
            .map_err(as_etcd_answers)
    }

    async fn unlock(
        &self,
        req: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        check_leader_metadata(&self.node, &req)?;
        let key = Bytes::copy_from_slice(&req.get_ref().key);
        self.node
            .write(delete(key))
            .await
            .map_err(|e| as_etcd_answers(e.status()))?;
        Ok(Response::new(pb::UnlockResponse {
            header: Some(self.node.header()),
        }))
    }
}

impl LockService {
    async fn acquire(&self, req: pb::LockRequest) -> Result<pb::LockResponse, Status> {
        let lease = match req.lease {
            0 => self.session_lease().await?,
            lease => lease,
        };
        let mut prefix = req.name.to_vec();
        prefix.push(b'/');
        let key: Bytes = [prefix.as_slice(), format!("{lease:x}").as_bytes()]
            .concat()
            .into();
        let (mine, owner) = self.enqueue(&prefix, &key, lease).await?;
        let mut abandoned = Abandoned {
            node: self.node.clone(),
            key: Some(key.clone()),
        };
        if owner.is_some_and(|o| o.create_revision != mine) {
            self.wait_deletes(&prefix, mine - 1).await?;
            let held = self
                .read(&RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                })
                .await?;
            if held.is_empty() {
                // The lease ran out while waiting: nothing to leave behind.
                abandoned.key = None;
                return Err(Status::unknown("session expired"));
            }
        }
        abandoned.key = None;
        Ok(pb::LockResponse {
            header: Some(self.node.header()),
            key: key.to_vec().into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_where_etcd_ends_it() {
        assert_eq!(prefix_end(b"lock/"), Bytes::from_static(b"lock0"));
        assert_eq!(prefix_end(b"a\xff"), Bytes::from_static(b"b"));
        assert_eq!(prefix_end(b"\xff\xff"), Bytes::from_static(&[0]));
    }
}
