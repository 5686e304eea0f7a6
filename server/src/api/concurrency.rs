//! What etcd's lock and election servers get from its client's concurrency package,
//! built from this member's writes, linearizable reads and store watches: sessions
//! (a lease per caller), queueing a key under a prefix, and waiting for the keys
//! created before it to go.
//!
//! Owns no state of its own: every lock and campaign is a key in the key space, so a
//! member that restarts, or a caller that moves to another member, finds it there.

use std::sync::Arc;

use bytes::Bytes;
use raftkv_storage::auth::Caller;
use raftkv_storage::mvcc::types::{
    Compare, CompareOperand, CompareResult, CompareTarget, DeleteRangeRequest, EventKind, KeyValue,
    PutRequest, RangeRequest, RequestOp, ResponseOp, SortOrder, SortTarget, TxnRequest,
    TxnResponse,
};
use raftkv_storage::mvcc::{Command, CommandResponse};
use tonic::{Request, Status};

use crate::api::credentials::{self, on_behalf, ReadCheck};
use crate::errors::ApiError;
use crate::member::node::Node;

/// What etcd's session gives a caller without a lease: a lease of its own that nobody
/// keeps alive (concurrency.NewSession's default TTL).
const SESSION_TTL_S: i64 = 60;
/// Revisions a waiter reads from its watch at a time.
pub const WATCH_BATCH_REVISIONS: usize = 16;

/// etcd's lock and election servers hand their client's errors back as plain errors:
/// clients see etcd's message with code Unknown.
pub fn as_etcd_answers(status: Status) -> Status {
    Status::unknown(status.message())
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

/// The oldest key under `prefix` (etcd's WithFirstCreate), or with `below` the newest
/// created at or before that revision.
pub fn first_created(prefix: &[u8], below: Option<i64>) -> RangeRequest {
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

/// `name` + "/": the prefix a lock's or an election's keys live under.
pub fn prefix_of(name: &[u8]) -> Vec<u8> {
    [name, b"/"].concat()
}

/// The key a session holds under `prefix`: the lease in hex, as etcd writes it.
pub fn key_of(prefix: &[u8], lease: i64) -> Bytes {
    [prefix, format!("{lease:x}").as_bytes()].concat().into()
}

/// The deletion of one key, as a command or as a txn operation (`delete_op`).
pub fn delete(key: Bytes) -> Command {
    Command::DeleteRange(one_key(key))
}

pub fn delete_op(key: Bytes) -> RequestOp {
    RequestOp::DeleteRange(one_key(key))
}

fn one_key(key: Bytes) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key,
        range_end: Bytes::new(),
        prev_kv: false,
    }
}

/// A compare that `key` was created at `revision` (0: that it does not exist).
pub fn created_at(key: &Bytes, revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal,
        target: CompareTarget::Create,
        key: key.clone(),
        range_end: Bytes::new(),
        operand: Some(CompareOperand::CreateRevision(revision)),
    }
}

pub fn kvs_of(r: &TxnResponse, i: usize) -> Vec<KeyValue> {
    match r.responses.get(i) {
        Some(ResponseOp::Range(range)) => range.kvs.clone(),
        _ => Vec::new(),
    }
}

/// Deletes a queued key when its caller gave up before it was granted (the request's
/// future dropped), as etcd's mutex and election clean up on a cancelled context.
pub struct Withdraw {
    pub node: Arc<Node>,
    pub caller: Option<Caller>,
    pub key: Option<Bytes>,
}

impl Withdraw {
    pub fn new(r: &Recipes, key: &Bytes) -> Withdraw {
        Withdraw {
            node: r.node.clone(),
            caller: r.caller.clone(),
            key: Some(key.clone()),
        }
    }
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let node = self.node.clone();
            let command = on_behalf(self.caller.take(), delete(key));
            tokio::spawn(async move {
                let _ = node.write(command).await;
            });
        }
    }
}

/// The key-space steps of a lock or an election, taken for one caller: with
/// authentication on, each is checked against the caller's permissions, as etcd's
/// lock and election servers run them through a client carrying the caller's token.
pub struct Recipes {
    pub node: Arc<Node>,
    pub caller: Option<Caller>,
}

impl Recipes {
    /// The recipes for the caller a request names.
    pub async fn for_request<T>(node: &Arc<Node>, req: &Request<T>) -> Result<Recipes, Status> {
        Ok(Recipes {
            node: node.clone(),
            caller: credentials::caller(node, req).await?,
        })
    }

    /// Writes `command` on behalf of the caller.
    pub async fn write(&self, command: Command) -> Result<CommandResponse, Status> {
        Ok(self
            .node
            .write(on_behalf(self.caller.clone(), command))
            .await?)
    }

    pub async fn txn(&self, txn: TxnRequest) -> Result<TxnResponse, Status> {
        match self.write(Command::Txn(txn)).await? {
            CommandResponse::Txn(r) => Ok(r),
            other => Err(ApiError::Internal(format!("unexpected reply {other:?}")).status()),
        }
    }

    pub async fn read(&self, req: &RangeRequest) -> Result<Vec<KeyValue>, Status> {
        self.node.read_barrier().await?;
        let check = ReadCheck::range(&self.node, self.caller.clone(), &req.key, &req.range_end)?;
        let kvs = self.node.store.range(req).map_err(ApiError::from)?.kvs;
        check.still_valid(&self.node)?;
        Ok(kvs)
    }

    pub async fn get(&self, key: &Bytes) -> Result<Option<KeyValue>, Status> {
        let req = RangeRequest {
            key: key.clone(),
            ..Default::default()
        };
        Ok(self.read(&req).await?.into_iter().next())
    }

    /// The caller's lease, or (0) a session lease of its own.
    pub async fn session_lease(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        credentials::require_someone(&self.caller)?;
        let grant = Command::LeaseGrant {
            id: crate::api::lease::new_lease_id(),
            ttl_s: SESSION_TTL_S,
        };
        match self.node.write(grant).await? {
            CommandResponse::LeaseGrant { id, .. } => Ok(id),
            other => Err(ApiError::Internal(format!("unexpected reply {other:?}")).status()),
        }
    }

    /// Puts `key` (`value`, `lease`) unless it exists. Answers whether it put it, the
    /// key as it now is (its create revision is the caller's place in the queue) and
    /// the oldest key under `prefix`.
    pub async fn enqueue(
        &self,
        prefix: &[u8],
        key: &Bytes,
        value: Bytes,
        lease: i64,
    ) -> Result<(TxnResponse, i64, Option<KeyValue>), Status> {
        let put = RequestOp::Put(PutRequest {
            key: key.clone(),
            value,
            lease,
            ..Default::default()
        });
        let mine = RequestOp::Range(RangeRequest {
            key: key.clone(),
            ..Default::default()
        });
        let owner = RequestOp::Range(first_created(prefix, None));
        let r = self
            .txn(TxnRequest {
                compare: vec![created_at(key, 0)],
                success: vec![put, owner.clone()],
                failure: vec![mine, owner],
            })
            .await?;
        let place = if r.succeeded {
            r.revision
        } else {
            kvs_of(&r, 0)
                .first()
                .map(|kv| kv.create_revision)
                .unwrap_or(r.revision)
        };
        let owner = kvs_of(&r, 1).into_iter().next();
        Ok((r, place, owner))
    }

    /// Waits until no key under `prefix` was created at or before `max_create`
    /// (etcd's waitDeletes): the newest such key, watched until deleted, in turn.
    pub async fn wait_deletes(&self, prefix: &[u8], max_create: i64) -> Result<(), Status> {
        loop {
            let older = self.read(&first_created(prefix, Some(max_create))).await?;
            let Some(last) = older.into_iter().next() else {
                return Ok(());
            };
            self.wait_deleted(&last.key).await?;
        }
    }

    /// Waits until `key` is deleted (at once if it is gone already).
    pub async fn wait_deleted(&self, key: &Bytes) -> Result<(), Status> {
        let from = self.node.store.revision() + 1;
        let mut watcher = self.node.store.watch(key.clone(), Bytes::new(), from);
        // It may have gone between the caller's read and the watch.
        if self.get(key).await?.is_none() {
            return Ok(());
        }
        loop {
            let events = watcher
                .next(WATCH_BATCH_REVISIONS)
                .await
                .map_err(|e| ApiError::Internal(e.to_string()).status())?;
            if events.iter().any(|e| e.kind == EventKind::Delete) {
                return Ok(());
            }
        }
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
        assert_eq!(key_of(b"job/", 0x1f), Bytes::from_static(b"job/1f"));
    }
}
