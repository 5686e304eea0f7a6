//! The Kubernetes API server's and k3s's access pattern (docs/compatibility.md), run
//! step by step against real etcd 3.5 and against raftkv, every response compared:
//! k3s's bootstrap, the create/update/delete Txn shapes, paginated lists at a fixed
//! revision, count-only and keys-only lists, the compactor's CAS loop and Compact,
//! leases holding objects, the health probe, and watches from RV+1 with prev_kv,
//! progress_notify and progress requests.

use std::time::Duration;

use raftkv_proto::etcdserverpb as pb;
use raftkv_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use raftkv_proto::etcdserverpb::kv_client::KvClient;
use raftkv_proto::etcdserverpb::lease_client::LeaseClient;
use raftkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use raftkv_proto::etcdserverpb::request_op::Request as Op;
use raftkv_proto::etcdserverpb::watch_client::WatchClient;
use raftkv_tests::*;
use tonic::transport::Channel;

struct Api {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    watch: WatchClient<Channel>,
    maintenance: MaintenanceClient<Channel>,
}

impl Api {
    async fn connect(url: String) -> Api {
        let ch = Channel::from_shared(url)
            .expect("url")
            .connect()
            .await
            .expect("connect");
        Api {
            kv: KvClient::new(ch.clone()),
            lease: LeaseClient::new(ch.clone()),
            watch: WatchClient::new(ch.clone()),
            maintenance: MaintenanceClient::new(ch),
        }
    }
}

fn b(s: &str) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(s.as_bytes())
}

fn mod_equals(key: &str, rev: i64) -> pb::Compare {
    pb::Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: b(key),
        range_end: Default::default(),
        target_union: Some(TargetUnion::ModRevision(rev)),
    }
}

fn put(key: &str, value: &str, lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Op::RequestPut(pb::PutRequest {
            key: b(key),
            value: b(value),
            lease,
            ..Default::default()
        })),
    }
}

fn get(key: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Op::RequestRange(pb::RangeRequest {
            key: b(key),
            ..Default::default()
        })),
    }
}

fn delete(key: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Op::RequestDeleteRange(pb::DeleteRangeRequest {
            key: b(key),
            ..Default::default()
        })),
    }
}

/// kube-apiserver's create: [MOD(k) = 0] → [Put(k, v, lease)].
fn create(key: &str, value: &str, lease: i64) -> pb::TxnRequest {
    pb::TxnRequest {
        compare: vec![mod_equals(key, 0)],
        success: vec![put(key, value, lease)],
        failure: vec![],
    }
}

/// kube-apiserver's update: [MOD(k) = rev] → [Put] else [Range(k)].
fn update(key: &str, rev: i64, value: &str) -> pb::TxnRequest {
    pb::TxnRequest {
        compare: vec![mod_equals(key, rev)],
        success: vec![put(key, value, 0)],
        failure: vec![get(key)],
    }
}

/// kube-apiserver's delete: [MOD(k) = rev] → [DeleteRange(k)] else [Range(k)].
fn remove(key: &str, rev: i64) -> pb::TxnRequest {
    pb::TxnRequest {
        compare: vec![mod_equals(key, rev)],
        success: vec![delete(key)],
        failure: vec![get(key)],
    }
}

/// The compactor's CAS: [VERSION(compact_rev_key) = n] → [Put] else [Range].
fn compactor_cas(version: i64, rev: i64) -> pb::TxnRequest {
    pb::TxnRequest {
        compare: vec![pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Version as i32,
            key: b("compact_rev_key"),
            range_end: Default::default(),
            target_union: Some(TargetUnion::Version(version)),
        }],
        success: vec![put("compact_rev_key", &rev.to_string(), 0)],
        failure: vec![get("compact_rev_key")],
    }
}

fn prefix_end(prefix: &str) -> bytes::Bytes {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("non-empty") += 1;
    end.into()
}

/// Runs the whole pattern against one server; returns every observable, normalized.
async fn pattern(url: String) -> Vec<String> {
    let mut api = Api::connect(url).await;
    let mut seen: Vec<String> = Vec::new();
    macro_rules! txn {
        ($req:expr) => {{
            let mut r = api.kv.txn($req).await.expect("txn").into_inner();
            normalize::txn(&mut r);
            seen.push(format!("{r:?}"));
            r
        }};
    }
    macro_rules! range {
        ($req:expr) => {{
            let mut r = api.kv.range($req).await.expect("range").into_inner();
            normalize::header(&mut r.header);
            seen.push(format!("{r:?}"));
            r
        }};
    }

    // k3s bootstrap: list /bootstrap, then create the bootstrap key once.
    range!(pb::RangeRequest {
        key: b("/bootstrap"),
        range_end: prefix_end("/bootstrap"),
        ..Default::default()
    });
    txn!(create("/bootstrap/abc", "token-data", 0));
    txn!(create("/bootstrap/abc", "token-data", 0));

    // Objects, some held by a lease (events), as the apiserver writes them.
    let lease = api
        .lease
        .lease_grant(pb::LeaseGrantRequest { ttl: 3_660, id: 7 })
        .await
        .expect("grant")
        .into_inner();
    seen.push(format!("lease {} ttl {}", lease.id, lease.ttl));
    let mut revs = Vec::new();
    for i in 0..25 {
        let key = format!("/registry/pods/default/pod-{i:02}");
        let r = txn!(create(&key, &format!("pod {i}"), 0));
        revs.push(r.header.expect("header").revision);
        txn!(create(
            &format!("/registry/events/default/ev-{i:02}"),
            "event",
            7
        ));
    }

    // The watch cache's watch from RV+1, with prev_kv and progress_notify.
    let start_rev = revs[24] + 1;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: b("/registry/pods/"),
                range_end: prefix_end("/registry/pods/"),
                start_revision: start_rev,
                progress_notify: true,
                prev_kv: true,
                ..Default::default()
            },
        )),
    })
    .await
    .expect("send");
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("hasleader", "true".parse().expect("metadata"));
    let mut stream = api.watch.watch(req).await.expect("watch").into_inner();
    let created = stream.message().await.expect("msg").expect("created");
    seen.push(format!(
        "created {} canceled {} id {}",
        created.created, created.canceled, created.watch_id
    ));

    // Updates: one succeeds, one is stale and reads the current object instead.
    txn!(update("/registry/pods/default/pod-03", revs[3], "pod 3 v2"));
    txn!(update("/registry/pods/default/pod-03", revs[3], "pod 3 v3"));
    // Deletes: stale, then current.
    txn!(remove("/registry/pods/default/pod-04", revs[3]));
    txn!(remove("/registry/pods/default/pod-04", revs[4]));

    // Watch events: exactly the three changes, in order, with prev_kv.
    let mut events = Vec::new();
    while events.len() < 2 {
        let mut m = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("events in time")
            .expect("msg")
            .expect("events");
        normalize::header(&mut m.header);
        events.extend(m.events.clone());
    }
    seen.push(format!("events {events:?}"));
    // A progress request (the watch cache polls these every 100 ms while waiting): the
    // answer comes after the events and carries the current revision.
    tx.send(pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(
            pb::WatchProgressRequest {},
        )),
    })
    .await
    .expect("send");
    let mut progress = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("progress in time")
        .expect("msg")
        .expect("progress");
    normalize::header(&mut progress.header);
    seen.push(format!("progress {progress:?}"));
    // The watch cache polls every 100 ms while it waits to be fresh.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send(pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(
                pb::WatchProgressRequest {},
            )),
        })
        .await
        .expect("send");
        let mut p = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("progress in time")
            .expect("msg")
            .expect("progress");
        normalize::header(&mut p.header);
        seen.push(format!("progress {p:?}"));
    }
    drop(tx);

    // A paginated list at a fixed revision: pages of 10, continue = last key + "\0".
    let list_rev = range!(pb::RangeRequest {
        key: b("/registry/pods/"),
        range_end: prefix_end("/registry/pods/"),
        count_only: true,
        ..Default::default()
    })
    .header
    .expect("header")
    .revision;
    txn!(create(
        "/registry/pods/default/pod-99",
        "after the list started",
        0
    ));
    let mut from = b("/registry/pods/");
    loop {
        let page = range!(pb::RangeRequest {
            key: from.clone(),
            range_end: prefix_end("/registry/pods/"),
            limit: 10,
            revision: list_rev,
            ..Default::default()
        });
        let Some(last) = page.kvs.last() else { break };
        if !page.more {
            break;
        }
        let mut next = last.key.to_vec();
        next.push(0);
        from = next.into();
    }
    range!(pb::RangeRequest {
        key: b("/registry/"),
        range_end: prefix_end("/registry/"),
        keys_only: true,
        ..Default::default()
    });
    range!(pb::RangeRequest {
        key: b("/registry/events/"),
        range_end: prefix_end("/registry/events/"),
        count_only: true,
        ..Default::default()
    });

    // The health probe.
    range!(pb::RangeRequest {
        key: b("/registry/health"),
        ..Default::default()
    });

    // The compactor: CAS on compact_rev_key's version, then Compact.
    let current = range!(pb::RangeRequest {
        key: b("/registry/health"),
        count_only: true,
        ..Default::default()
    })
    .header
    .expect("header")
    .revision;
    txn!(compactor_cas(0, current));
    txn!(compactor_cas(0, current));
    let mut c = api
        .kv
        .compact(pb::CompactionRequest {
            revision: list_rev,
            physical: false,
        })
        .await
        .expect("compact")
        .into_inner();
    normalize::header(&mut c.header);
    seen.push(format!("{c:?}"));
    let err = api
        .kv
        .range(pb::RangeRequest {
            key: b("/registry/pods/"),
            range_end: prefix_end("/registry/pods/"),
            revision: list_rev - 1,
            ..Default::default()
        })
        .await
        .expect_err("compacted");
    seen.push(format!("{:?} {}", err.code(), err.message()));

    // Revoking the events' lease deletes them in one revision.
    let mut r = api
        .lease
        .lease_revoke(pb::LeaseRevokeRequest { id: 7 })
        .await
        .expect("revoke")
        .into_inner();
    normalize::header(&mut r.header);
    seen.push(format!("{r:?}"));
    range!(pb::RangeRequest {
        key: b("/registry/events/"),
        range_end: prefix_end("/registry/events/"),
        count_only: true,
        ..Default::default()
    });

    let status = api
        .maintenance
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    seen.push(format!(
        "version parses: {}",
        parse_version(&status.version).is_some()
    ));
    seen
}

/// "3.5.16" → (3, 5, 16), as the apiserver parses Status.version.
fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let mut parts = v.split('.').map(|p| p.parse::<u64>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

#[test]
fn the_kubernetes_access_pattern_matches_etcd() {
    let etcd = Etcd::start();
    let root = tempfile::tempdir().expect("temp dir");
    let mut member = Member::new(root.path(), "k8s");
    member.start(&["--cluster-init".to_string()]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let want = rt.block_on(pattern(etcd.client_url()));
    let got = rt.block_on(pattern(member.client_url()));
    assert_eq!(want.len(), got.len(), "different numbers of steps");
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(w, g, "step {i} differs");
    }
    // Kubernetes ≥ 1.31 reads Status.version: raftkv's must be ≥ 3.5.13.
    let rt2 = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let version = rt2.block_on(async {
        let mut api = Api::connect(member.client_url()).await;
        api.maintenance
            .status(pb::StatusRequest {})
            .await
            .expect("status")
            .into_inner()
            .version
    });
    let v = parse_version(&version).expect("a semantic version");
    assert!(v >= (3, 5, 13), "{version}");
}
