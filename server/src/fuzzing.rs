//! Entry point for the gRPC request fuzz target (fuzz/, cargo fuzz) and its smoke test:
//! arbitrary bytes are decoded as one of etcd's requests, or as a peer message, and
//! taken through what the handler does with it — decoding, conversion, validation,
//! and applying the resulting command to a store (or serving the range, creating the
//! watch and reading its history, hashing at a revision, checking a new member's peer
//! URLs, raising or disarming an alarm, a lease's time to live and keys). Nothing may
//! panic; bad input gets an error.
//!
//! Not for production use: the store lives in a temporary directory.

use prost::Message;
use raftkv_proto::etcdserverpb as pb;
use raftkv_storage::fuzzing::TempDir;
use raftkv_storage::mvcc::{validate, AppliedMeta, Command, MvccOptions, MvccStore};

use crate::api::convert;

/// Commands applied to one store before it is replaced by an empty one (bounds the
/// disk a long fuzzing run uses).
const COMMANDS_PER_STORE: u64 = 10_000;

thread_local! {
    static STORE: std::cell::RefCell<Option<(TempDir, MvccStore, u64)>> =
        const { std::cell::RefCell::new(None) };
}

fn with_store<T>(f: impl FnOnce(&MvccStore) -> T) -> T {
    STORE.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot
            .as_ref()
            .is_none_or(|(_, _, n)| *n >= COMMANDS_PER_STORE)
        {
            *slot = None;
            let dir = TempDir::new("grpc");
            let store = MvccStore::open(&dir.0, MvccOptions::default()).expect("store");
            *slot = Some((dir, store, 0));
        }
        let (_, store, n) = slot.as_mut().expect("just set");
        *n += 1;
        f(store)
    })
}

/// What became of one input: not decodable, refused (validation or apply error), or
/// served.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Undecodable,
    Refused,
    Served,
}

/// The first byte picks the message; the rest is its encoding.
pub fn grpc_request(data: &[u8]) -> Outcome {
    let Some((&which, body)) = data.split_first() else {
        return Outcome::Undecodable;
    };
    let command = match which % 13 {
        0 => {
            let Ok(req) = pb::PutRequest::decode(body) else {
                return Outcome::Undecodable;
            };
            let req = convert::put_from_pb(req);
            if validate::put(&req).is_err() {
                return Outcome::Refused;
            }
            Command::Put(req)
        }
        1 => {
            let Ok(req) = pb::RangeRequest::decode(body) else {
                return Outcome::Undecodable;
            };
            let req = convert::range_from_pb(req);
            if validate::range(&req).is_err() {
                return Outcome::Refused;
            }
            return match with_store(|s| s.range(&req)) {
                Ok(r) => {
                    let _ = convert::range_to_pb(r, pb::ResponseHeader::default());
                    Outcome::Served
                }
                Err(_) => Outcome::Refused,
            };
        }
        2 => {
            let Ok(req) = pb::DeleteRangeRequest::decode(body) else {
                return Outcome::Undecodable;
            };
            let req = convert::delete_from_pb(req);
            if validate::delete(&req).is_err() {
                return Outcome::Refused;
            }
            Command::DeleteRange(req)
        }
        3 => {
            let Ok(req) = pb::TxnRequest::decode(body) else {
                return Outcome::Undecodable;
            };
            let Ok(req) = convert::txn_from_pb(req) else {
                return Outcome::Refused;
            };
            if validate::txn(&req, validate::MAX_TXN_OPS).is_err() {
                return Outcome::Refused;
            }
            Command::Txn(req)
        }
        4 => {
            let Ok(req) = pb::CompactionRequest::decode(body) else {
                return Outcome::Undecodable;
            };
            Command::Compact {
                revision: req.revision,
            }
        }
        5 => {
            let Ok(req) = pb::LeaseGrantRequest::decode(body) else {
                return Outcome::Undecodable;
            };
            if req.ttl > raftkv_storage::mvcc::MAX_LEASE_TTL_S {
                return Outcome::Refused;
            }
            Command::LeaseGrant {
                id: req.id.max(1),
                ttl_s: req.ttl.max(crate::member::lease_clocks::MIN_LEASE_TTL_S),
            }
        }
        6 => {
            let Ok(req) = pb::LeaseRevokeRequest::decode(body) else {
                return Outcome::Undecodable;
            };
            Command::LeaseRevoke { id: req.id }
        }
        7 => {
            let Ok(req) = pb::WatchRequest::decode(body) else {
                return Outcome::Undecodable;
            };
            let Some(pb::watch_request::RequestUnion::CreateRequest(create)) = req.request_union
            else {
                return Outcome::Refused;
            };
            // As api/watch.rs creates a watcher, then one read of its history.
            return with_store(|store| {
                let key = if create.key.is_empty() {
                    bytes::Bytes::from_static(&[0])
                } else {
                    create.key.clone()
                };
                let mut watcher = store.watch(key, create.range_end.clone(), create.start_revision);
                if watcher.caught_up() {
                    return Outcome::Served;
                }
                // One poll: history is read at once; waiting for new events would not
                // end (nothing else writes), so that counts as served.
                use futures::FutureExt;
                match watcher.next(16).now_or_never() {
                    Some(Ok(_)) | None => Outcome::Served,
                    Some(Err(_)) => Outcome::Refused,
                }
            });
        }
        8 => {
            let Ok(req) = pb::MemberAddRequest::decode(body) else {
                return Outcome::Undecodable;
            };
            return match req
                .peer_ur_ls
                .iter()
                .try_for_each(|u| crate::api::cluster::check_url(u))
            {
                Ok(()) => Outcome::Served,
                Err(_) => Outcome::Refused,
            };
        }
        9 => {
            let Ok(req) = pb::HashKvRequest::decode(body) else {
                return Outcome::Undecodable;
            };
            return match with_store(|s| s.hash_kv(req.revision)) {
                Ok(Ok(_)) => Outcome::Served,
                Ok(Err(_)) => Outcome::Refused,
                Err(e) => panic!("hashing at {} failed in the store: {e}", req.revision),
            };
        }
        10 => {
            let Ok(req) = pb::AlarmRequest::decode(body) else {
                return Outcome::Undecodable;
            };
            let Some(alarm) = crate::api::maintenance::alarm_type(req.alarm()) else {
                return Outcome::Refused;
            };
            Command::Alarm {
                activate: req.action() == pb::alarm_request::AlarmAction::Activate,
                alarm: raftkv_storage::mvcc::AlarmMember {
                    member_id: req.member_id,
                    alarm,
                },
            }
        }
        11 => {
            let Ok(req) = pb::LeaseTimeToLiveRequest::decode(body) else {
                return Outcome::Undecodable;
            };
            return with_store(|s| match (s.lease(req.id), s.lease_keys(req.id)) {
                (Some(_), Ok(_)) => Outcome::Served,
                (None, Ok(_)) => Outcome::Refused,
                (_, Err(e)) => panic!("lease keys of {} failed in the store: {e}", req.id),
            });
        }
        _ => {
            // A peer's forwarded request (postcard), as the peer service decodes it.
            return match postcard::from_bytes::<crate::peer::ForwardRequest>(body) {
                Ok(_) => Outcome::Served,
                Err(_) => Outcome::Undecodable,
            };
        }
    };
    match with_store(|s| s.apply(&command, &AppliedMeta::default())) {
        Ok(result) if result.is_ok() => Outcome::Served,
        Ok(_) => Outcome::Refused,
        Err(e) => panic!("applying {command:?} failed in the store: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeds: one valid request of each kind, as the fuzz target's corpus starts.
    fn seeds() -> Vec<Vec<u8>> {
        let put = pb::PutRequest {
            key: bytes::Bytes::from_static(b"k"),
            value: bytes::Bytes::from_static(b"v"),
            prev_kv: true,
            ..Default::default()
        };
        let range = pb::RangeRequest {
            key: bytes::Bytes::from_static(b"a"),
            range_end: bytes::Bytes::from_static(b"z"),
            limit: 10,
            ..Default::default()
        };
        let delete = pb::DeleteRangeRequest {
            key: bytes::Bytes::from_static(b"k"),
            ..Default::default()
        };
        let txn = pb::TxnRequest {
            compare: vec![pb::Compare {
                key: bytes::Bytes::from_static(b"k"),
                target: pb::compare::CompareTarget::Version as i32,
                result: pb::compare::CompareResult::Greater as i32,
                target_union: Some(pb::compare::TargetUnion::Version(0)),
                ..Default::default()
            }],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(put.clone())),
            }],
            failure: vec![],
        };
        let grant = pb::LeaseGrantRequest { ttl: 10, id: 7 };
        let watch = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: bytes::Bytes::from_static(b"k"),
                    start_revision: 1,
                    prev_kv: true,
                    ..Default::default()
                },
            )),
        };
        let mut out = Vec::new();
        for (which, body) in [
            (0u8, put.encode_to_vec()),
            (1, range.encode_to_vec()),
            (2, delete.encode_to_vec()),
            (3, txn.encode_to_vec()),
            (
                4,
                pb::CompactionRequest {
                    revision: 1,
                    physical: false,
                }
                .encode_to_vec(),
            ),
            (5, grant.encode_to_vec()),
            (
                11,
                pb::LeaseTimeToLiveRequest { id: 7, keys: true }.encode_to_vec(),
            ),
            (6, pb::LeaseRevokeRequest { id: 7 }.encode_to_vec()),
            (7, watch.encode_to_vec()),
            (
                8,
                pb::MemberAddRequest {
                    peer_ur_ls: vec!["http://10.0.0.4:2380".to_string()],
                    is_learner: false,
                }
                .encode_to_vec(),
            ),
            (9, pb::HashKvRequest { revision: 0 }.encode_to_vec()),
            (
                10,
                pb::AlarmRequest {
                    action: pb::alarm_request::AlarmAction::Deactivate as i32,
                    member_id: 1,
                    alarm: pb::AlarmType::Nospace as i32,
                }
                .encode_to_vec(),
            ),
        ] {
            let mut input = vec![which];
            input.extend(body);
            out.push(input);
        }
        out
    }

    #[test]
    fn the_seeds_reach_the_store_and_mutations_never_panic() {
        for seed in seeds() {
            assert_eq!(grpc_request(&seed), Outcome::Served, "seed {seed:?}");
        }
        // Bytes flipped, cut and inserted: never a panic, and some refused or
        // undecodable (the mutations reach the error paths too).
        let mut m = raftkv_storage::fuzzing::Mutator(0x9e37_79b9_7f4a_7c15);
        let seeds = seeds();
        let mut outcomes = std::collections::BTreeMap::new();
        for _ in 0..5_000 {
            let seed = &seeds[(m.next_u64() % seeds.len() as u64) as usize];
            let input = m.mutate(seed);
            *outcomes
                .entry(format!("{:?}", grpc_request(&input)))
                .or_insert(0u32) += 1;
        }
        eprintln!("{outcomes:?}");
        assert!(outcomes.len() >= 2, "{outcomes:?}");
    }

    /// The committed seeds in fuzz/seeds/grpc_requests (where the fuzz target starts)
    /// are the ones above; `RAFTKV_WRITE_SEEDS=1 cargo test -p raftkv-server --lib`
    /// rewrites them after a change.
    #[test]
    fn the_committed_seeds_are_current() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/grpc_requests");
        for (i, seed) in seeds().into_iter().enumerate() {
            raftkv_storage::fuzzing::check_seed(&dir.join(format!("seed-{i}")), &seed);
        }
    }
}
