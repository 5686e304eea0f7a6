//! etcd's Election service (v3electionpb), with the semantics of etcd's election
//! server: a candidate for election N is the key `N/<lease in hex>` holding its value;
//! the leader is the oldest key under `N/`. Campaign waits until the caller leads,
//! Proclaim changes the leader's value while it still leads, Resign gives it up,
//! Leader answers who leads, Observe streams each leader and value in turn.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use raftkv_proto::v3electionpb as pb;
use raftkv_proto::v3electionpb::election_server::Election;
use raftkv_storage::mvcc::types::{EventKind, KeyValue, PutRequest, RequestOp, TxnRequest};
use tonic::{Request, Response, Status};

use crate::api::check_leader_metadata;
use crate::api::concurrency::kvs_of;
use crate::api::concurrency::{
    as_etcd_answers, created_at, delete_op, first_created, key_of, prefix_end, prefix_of, Recipes,
    Withdraw, WATCH_BATCH_REVISIONS,
};
use crate::api::convert::kv_to_pb;
use crate::member::node::Node;

/// etcd's election errors (plain errors there: code Unknown).
const NOT_LEADER: &str = "election: not leader";
const NO_LEADER: &str = "election: no leader";
const MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";
/// Leader changes an Observe stream holds for a slow reader before it waits.
const OBSERVE_QUEUE_RESPONSES: usize = 16;

pub struct ElectionService {
    pub node: Arc<Node>,
}

impl ElectionService {
    pub fn new(node: Arc<Node>) -> ElectionService {
        ElectionService { node }
    }

    async fn recipes<T>(&self, req: &Request<T>) -> Result<Recipes, Status> {
        check_leader_metadata(&self.node, req)?;
        Recipes::for_request(&self.node, req).await
    }
}

/// Campaigns for the caller: waits until its key is the oldest under the name.
async fn campaign(r: &Recipes, req: pb::CampaignRequest) -> Result<pb::CampaignResponse, Status> {
    let lease = r.session_lease(req.lease).await?;
    let prefix = prefix_of(&req.name);
    let key = key_of(&prefix, lease);
    let value = Bytes::from(req.value.to_vec());
    let (txn, place, _) = r.enqueue(&prefix, &key, value.clone(), lease).await?;
    let mut withdraw = Withdraw::new(r, &key);
    // A campaign again with the same lease keeps its place and proclaims its value.
    let existing = if txn.succeeded {
        None
    } else {
        kvs_of(&txn, 0).into_iter().next()
    };
    if existing.is_some_and(|kv| kv.value != value) {
        proclaim_at(r, &key, place, lease, value).await?;
    }
    r.wait_deletes(&prefix, place - 1).await?;
    withdraw.key = None;
    Ok(pb::CampaignResponse {
        header: Some(r.node.header()),
        leader: Some(pb::LeaderKey {
            name: req.name,
            key: key.to_vec().into(),
            rev: place,
            lease,
        }),
    })
}

/// Puts `value` on `key` if it is still the one created at `rev`.
async fn proclaim_at(
    recipes: &Recipes,
    key: &Bytes,
    rev: i64,
    lease: i64,
    value: Bytes,
) -> Result<(), Status> {
    let put = RequestOp::Put(PutRequest {
        key: key.clone(),
        value,
        lease,
        ..Default::default()
    });
    let r = recipes
        .txn(TxnRequest {
            compare: vec![created_at(key, rev)],
            success: vec![put],
            failure: vec![],
        })
        .await?;
    if r.succeeded {
        Ok(())
    } else {
        Err(Status::unknown(NOT_LEADER))
    }
}

async fn leader(recipes: &Recipes, name: &[u8]) -> Result<KeyValue, Status> {
    let oldest = recipes.read(&first_created(&prefix_of(name), None)).await?;
    oldest
        .into_iter()
        .next()
        .ok_or_else(|| Status::unknown(NO_LEADER))
}

fn leader_key(key: Option<pb::LeaderKey>) -> Result<pb::LeaderKey, Status> {
    key.ok_or_else(|| Status::unknown(MISSING_LEADER_KEY))
}

/// Sends each leader of the election under `prefix`, and each value it proclaims, until
/// the receiver goes (etcd's Election.Observe).
async fn observe(
    recipes: Arc<Recipes>,
    prefix: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<Result<pb::LeaderResponse, Status>>,
) {
    let node = recipes.node.clone();
    let send = |kv: KeyValue| {
        let response = pb::LeaderResponse {
            header: Some(node.header()),
            kv: Some(kv_to_pb(kv)),
        };
        let tx = tx.clone();
        async move { tx.send(Ok(response)).await.is_ok() }
    };
    loop {
        let oldest = match recipes.read(&first_created(&prefix, None)).await {
            Ok(kvs) => kvs.into_iter().next(),
            Err(e) => {
                let _ = tx.send(Err(as_etcd_answers(e))).await;
                return;
            }
        };
        let leader = match oldest {
            Some(kv) => kv,
            // No leader yet: the first key put under the prefix is the next.
            None => match first_put(&recipes, &prefix).await {
                Some(kv) => kv,
                None => return,
            },
        };
        let key = leader.key.clone();
        let from = leader.mod_revision + 1;
        if !send(leader).await {
            return;
        }
        let mut watcher = node.store.watch(key, Bytes::new(), from);
        'leads: loop {
            let Ok(events) = watcher.next(WATCH_BATCH_REVISIONS).await else {
                return;
            };
            for event in events {
                if event.kind == EventKind::Delete {
                    break 'leads;
                }
                if !send(event.kv).await {
                    return;
                }
            }
        }
    }
}

/// The first key put under `prefix` from now on (None if the store closed).
async fn first_put(recipes: &Recipes, prefix: &[u8]) -> Option<KeyValue> {
    let from = recipes.node.store.revision() + 1;
    let mut watcher =
        recipes
            .node
            .store
            .watch(Bytes::copy_from_slice(prefix), prefix_end(prefix), from);
    // One may have come between the read and the watch.
    if let Ok(kvs) = recipes.read(&first_created(prefix, None)).await {
        if let Some(kv) = kvs.into_iter().next() {
            return Some(kv);
        }
    }
    loop {
        let events = watcher.next(WATCH_BATCH_REVISIONS).await.ok()?;
        if let Some(put) = events.into_iter().find(|e| e.kind == EventKind::Put) {
            return Some(put.kv);
        }
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<pb::LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        req: Request<pb::CampaignRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        let r = self.recipes(&req).await?;
        campaign(&r, req.into_inner())
            .await
            .map(Response::new)
            .map_err(as_etcd_answers)
    }

    async fn proclaim(
        &self,
        req: Request<pb::ProclaimRequest>,
    ) -> Result<Response<pb::ProclaimResponse>, Status> {
        let r = self.recipes(&req).await?;
        let req = req.into_inner();
        let leader = leader_key(req.leader)?;
        let key = Bytes::from(leader.key.to_vec());
        proclaim_at(
            &r,
            &key,
            leader.rev,
            leader.lease,
            Bytes::from(req.value.to_vec()),
        )
        .await
        .map_err(as_etcd_answers)?;
        Ok(Response::new(pb::ProclaimResponse {
            header: Some(self.node.header()),
        }))
    }

    async fn leader(
        &self,
        req: Request<pb::LeaderRequest>,
    ) -> Result<Response<pb::LeaderResponse>, Status> {
        let r = self.recipes(&req).await?;
        let kv = leader(&r, &req.get_ref().name)
            .await
            .map_err(as_etcd_answers)?;
        Ok(Response::new(pb::LeaderResponse {
            header: Some(self.node.header()),
            kv: Some(kv_to_pb(kv)),
        }))
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        req: Request<pb::LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let recipes = Arc::new(self.recipes(&req).await?);
        let prefix = prefix_of(&req.get_ref().name);
        let (tx, rx) = tokio::sync::mpsc::channel(OBSERVE_QUEUE_RESPONSES);
        // The observer waits on watches that may stay quiet for ever: it must end when
        // the client goes, not at its next send.
        let client_gone = tx.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = client_gone.closed() => {}
                () = observe(recipes, prefix, tx) => {}
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn resign(
        &self,
        req: Request<pb::ResignRequest>,
    ) -> Result<Response<pb::ResignResponse>, Status> {
        let r = self.recipes(&req).await?;
        let leader = leader_key(req.into_inner().leader)?;
        let key = Bytes::from(leader.key.to_vec());
        // As etcd: deleted only if it is still the key created at that revision, and
        // no error when it is not.
        r.txn(TxnRequest {
            compare: vec![created_at(&key, leader.rev)],
            success: vec![delete_op(key)],
            failure: vec![],
        })
        .await
        .map_err(as_etcd_answers)?;
        Ok(Response::new(pb::ResignResponse {
            header: Some(self.node.header()),
        }))
    }
}
