//! etcd's semantics, case by case, as etcd documents and answers them (docs/compatibility.md).

mod common;

use bytes::Bytes;
use common::*;
use raftkv_storage::mvcc::*;
use raftkv_storage::{Error, MvccError};

fn compare(
    target: CompareTarget,
    result: CompareResult,
    key: &str,
    operand: CompareOperand,
) -> Compare {
    Compare {
        result,
        target,
        key: b(key),
        range_end: Bytes::new(),
        operand: Some(operand),
    }
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: b(key),
        value: b(value),
        ..Default::default()
    })
}

fn range_op(key: &str) -> RequestOp {
    RequestOp::Range(RangeRequest {
        key: b(key),
        ..Default::default()
    })
}

#[test]
fn revisions_versions_and_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    assert_eq!(s.revision(), 1, "the store starts at revision 1");
    assert_eq!(put(&s, "a", "1").revision, 2);
    let kv = get(&s, "a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 2, 1));
    assert_eq!(put(&s, "a", "2").revision, 3);
    let kv = get(&s, "a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));

    let d = delete(&s, "a", "");
    assert_eq!((d.revision, d.deleted), (4, 1));
    assert_eq!(d.prev_kvs[0].value, b("2"));
    assert!(get(&s, "a").is_none());
    // Deleting nothing does not raise the revision.
    assert_eq!(delete(&s, "a", "").revision, 4);
    assert_eq!(s.revision(), 4);
    // Recreated: version starts again at 1, create_revision is new.
    put(&s, "a", "3");
    let kv = get(&s, "a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    // History stays readable.
    assert_eq!(range(&s, "a", "", 3).unwrap().kvs[0].value, b("2"));
    assert!(range(&s, "a", "", 4).unwrap().kvs.is_empty());
    // The header revision is the current one, even for a historical read.
    assert_eq!(range(&s, "a", "", 3).unwrap().revision, 5);
    assert!(matches!(
        range(&s, "a", "", 6),
        Err(Error::Mvcc(MvccError::FutureRevision))
    ));
}

#[test]
fn range_options() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    for (k, v) in [("a", "3"), ("b", "1"), ("c", "2"), ("c\0", "0"), ("d", "4")] {
        put(&s, k, v);
    }
    put(&s, "b", "5");
    let all = range(&s, "a", "\0", 0).unwrap();
    assert_eq!(keys_of(&all), ["a", "b", "c", "c\0", "d"]);
    assert_eq!(keys_of(&range(&s, "b", "d", 0).unwrap()), ["b", "c", "c\0"]);
    assert_eq!(
        keys_of(
            &range(
                &s,
                "c",
                std::str::from_utf8(&prefix_range_end(b"c")).unwrap(),
                0
            )
            .unwrap()
        ),
        ["c", "c\0"]
    );
    assert!(
        range(&s, "d", "a", 0).unwrap().kvs.is_empty(),
        "an end before the key selects nothing"
    );

    let limited = s
        .range(&RangeRequest {
            key: b("a"),
            range_end: b("\0"),
            limit: 2,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        (keys_of(&limited), limited.count, limited.more),
        (vec!["a".into(), "b".into()], 5, true)
    );
    let exact = s
        .range(&RangeRequest {
            key: b("a"),
            range_end: b("\0"),
            limit: 5,
            ..Default::default()
        })
        .unwrap();
    assert!(!exact.more);

    let count = s
        .range(&RangeRequest {
            key: b("a"),
            range_end: b("\0"),
            count_only: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!((count.count, count.kvs.len()), (5, 0));

    let keys_only = s
        .range(&RangeRequest {
            key: b("a"),
            range_end: b("\0"),
            keys_only: true,
            ..Default::default()
        })
        .unwrap();
    assert!(keys_only
        .kvs
        .iter()
        .all(|kv| kv.value.is_empty() && kv.version > 0));

    let by_value_desc = s
        .range(&RangeRequest {
            key: b("a"),
            range_end: b("\0"),
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Value,
            limit: 2,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(keys_of(&by_value_desc), ["b", "d"]);
    assert!(by_value_desc.more);
    // A target other than KEY with no order sorts ascending, as etcd does.
    let by_mod = s
        .range(&RangeRequest {
            key: b("a"),
            range_end: b("\0"),
            sort_target: SortTarget::Mod,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(keys_of(&by_mod), ["a", "c", "c\0", "d", "b"]);

    let filtered = s
        .range(&RangeRequest {
            key: b("a"),
            range_end: b("\0"),
            min_mod_revision: 4,
            max_create_revision: 5,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(keys_of(&filtered), ["b", "c", "c\0"]);
    assert_eq!(filtered.count, 5, "count ignores the filters, as in etcd");
}

#[test]
fn put_flags_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let ignore = PutRequest {
        key: b("x"),
        ignore_value: true,
        ..Default::default()
    };
    assert_eq!(put_req(&s, ignore.clone()), Err(MvccError::KeyNotFound));
    put(&s, "x", "v1");
    let r = put_req(
        &s,
        PutRequest {
            prev_kv: true,
            ..ignore
        },
    )
    .unwrap();
    assert_eq!(r.prev_kv.unwrap().value, b("v1"));
    assert_eq!(
        get(&s, "x").unwrap().value,
        b("v1"),
        "ignore_value keeps the value"
    );
    assert_eq!(
        put_req(
            &s,
            PutRequest {
                key: b("x"),
                value: b("v"),
                ignore_value: true,
                ..Default::default()
            }
        ),
        Err(MvccError::ValueProvided)
    );
    assert_eq!(
        put_req(
            &s,
            PutRequest {
                key: b("x"),
                lease: 77,
                ..Default::default()
            }
        ),
        Err(MvccError::LeaseNotFound)
    );
    assert_eq!(
        put_req(
            &s,
            PutRequest {
                key: Bytes::new(),
                ..Default::default()
            }
        ),
        Err(MvccError::EmptyKey)
    );
    assert_eq!(
        MvccError::Compacted.to_string(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    assert_eq!(
        MvccError::FutureRevision.to_string(),
        "etcdserver: mvcc: required revision is a future revision"
    );
}

#[test]
fn kubernetes_txn_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    // create: [MOD(k)=0] -> [Put]
    let create = |value: &str| TxnRequest {
        compare: vec![compare(
            CompareTarget::Mod,
            CompareResult::Equal,
            "/registry/pods/a",
            CompareOperand::ModRevision(0),
        )],
        success: vec![put_op("/registry/pods/a", value)],
        failure: vec![],
    };
    let r = txn(&s, create("v1")).unwrap();
    assert!(r.succeeded);
    assert_eq!(r.revision, 2);
    let r = txn(&s, create("v2")).unwrap();
    assert!(!r.succeeded, "create of an existing key fails");
    assert_eq!(
        r.revision, 2,
        "a failed txn that wrote nothing keeps the revision"
    );

    // update: [MOD(k)=rev] -> [Put] else [Range]
    let update = |rev: i64, value: &str| TxnRequest {
        compare: vec![compare(
            CompareTarget::Mod,
            CompareResult::Equal,
            "/registry/pods/a",
            CompareOperand::ModRevision(rev),
        )],
        success: vec![put_op("/registry/pods/a", value)],
        failure: vec![range_op("/registry/pods/a")],
    };
    let r = txn(&s, update(1, "stale")).unwrap();
    assert!(!r.succeeded);
    let ResponseOp::Range(current) = &r.responses[0] else {
        panic!("else branch is a range")
    };
    assert_eq!(
        current.kvs[0].mod_revision, 2,
        "the else branch returns the key"
    );
    let r = txn(&s, update(2, "v2")).unwrap();
    assert!(r.succeeded);
    assert_eq!(r.revision, 3);
    let ResponseOp::Put(p) = &r.responses[0] else {
        panic!()
    };
    assert_eq!(p.revision, 3);

    // The compactor's CAS: VERSION("compact_rev_key") = 0 on a missing key is true.
    let cas = TxnRequest {
        compare: vec![compare(
            CompareTarget::Version,
            CompareResult::Equal,
            "compact_rev_key",
            CompareOperand::Version(0),
        )],
        success: vec![put_op("compact_rev_key", "3")],
        failure: vec![range_op("compact_rev_key")],
    };
    assert!(txn(&s, cas.clone()).unwrap().succeeded);
    let again = txn(&s, cas).unwrap();
    assert!(!again.succeeded);
    let ResponseOp::Range(r) = &again.responses[0] else {
        panic!()
    };
    assert_eq!(r.kvs[0].version, 1);

    // VALUE compare on a missing key is false, even for NOT_EQUAL.
    let value_missing = TxnRequest {
        compare: vec![compare(
            CompareTarget::Value,
            CompareResult::NotEqual,
            "nope",
            CompareOperand::Value(b("x")),
        )],
        success: vec![],
        failure: vec![],
    };
    assert!(!txn(&s, value_missing).unwrap().succeeded);
}

#[test]
fn txn_reads_its_own_writes_and_nests() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    put(&s, "a", "0");
    let req = TxnRequest {
        compare: vec![],
        success: vec![
            put_op("b", "1"),
            range_op("b"),
            RequestOp::Txn(TxnRequest {
                compare: vec![compare(
                    CompareTarget::Version,
                    CompareResult::Equal,
                    "a",
                    CompareOperand::Version(1),
                )],
                success: vec![put_op("c", "2")],
                failure: vec![put_op("d", "2")],
            }),
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: b("a"),
                range_end: Bytes::new(),
                prev_kv: true,
            }),
        ],
        failure: vec![],
    };
    let r = txn(&s, req).unwrap();
    assert_eq!(r.revision, 3);
    let ResponseOp::Range(seen) = &r.responses[1] else {
        panic!()
    };
    assert_eq!(
        seen.kvs[0].value,
        b("1"),
        "a range after a put in the same txn sees it"
    );
    assert_eq!(seen.revision, 3);
    let ResponseOp::Txn(nested) = &r.responses[2] else {
        panic!()
    };
    assert!(nested.succeeded);
    assert_eq!(nested.revision, 0, "etcd leaves nested headers empty");
    let ResponseOp::DeleteRange(d) = &r.responses[3] else {
        panic!()
    };
    assert_eq!(d.deleted, 1);
    assert!(get(&s, "c").is_some() && get(&s, "d").is_none() && get(&s, "a").is_none());
    let all = range(&s, "a", "\0", 0).unwrap();
    assert!(
        all.kvs.iter().all(|kv| kv.mod_revision == 3),
        "one revision for the whole txn"
    );

    // A failed check changes nothing: a put on a missing lease in the chosen branch.
    let bad = TxnRequest {
        compare: vec![],
        success: vec![
            put_op("e", "1"),
            RequestOp::Put(PutRequest {
                key: b("f"),
                lease: 9,
                ..Default::default()
            }),
        ],
        failure: vec![],
    };
    assert_eq!(txn(&s, bad), Err(MvccError::LeaseNotFound));
    assert!(get(&s, "e").is_none());
    assert_eq!(s.revision(), 3);
}

#[test]
fn leases_attach_revoke_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        apply(&s, Command::LeaseGrant { id: 7, ttl_s: 10 }).unwrap();
        assert_eq!(
            apply(&s, Command::LeaseGrant { id: 7, ttl_s: 10 }),
            Err(MvccError::LeaseExists)
        );
        for k in ["k1", "k2", "k3"] {
            put_req(
                &s,
                PutRequest {
                    key: b(k),
                    value: b("v"),
                    lease: 7,
                    ..Default::default()
                },
            )
            .unwrap();
        }
        // A put without lease detaches k3.
        put(&s, "k3", "v2");
        assert_eq!(s.lease_keys(7).unwrap(), vec![b("k1"), b("k2")]);
    }
    let s = open(dir.path());
    assert_eq!(
        s.lease(7).unwrap().ttl_s,
        10,
        "the lease table survives a restart"
    );
    let before = s.revision();
    let CommandResponse::LeaseRevoke { revision } =
        apply(&s, Command::LeaseRevoke { id: 7 }).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        revision,
        before + 1,
        "revoking deletes all its keys in one revision"
    );
    assert!(get(&s, "k1").is_none() && get(&s, "k2").is_none());
    assert!(get(&s, "k3").is_some());
    assert!(s.lease(7).is_none());
    assert_eq!(
        apply(&s, Command::LeaseRevoke { id: 7 }),
        Err(MvccError::LeaseNotFound)
    );
    // Revoking a lease with no keys does not raise the revision.
    apply(&s, Command::LeaseGrant { id: 8, ttl_s: 5 }).unwrap();
    let CommandResponse::LeaseRevoke { revision } =
        apply(&s, Command::LeaseRevoke { id: 8 }).unwrap()
    else {
        panic!()
    };
    assert_eq!(revision, before + 1);
}

#[test]
fn compaction_keeps_latest_and_drops_history() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    for i in 0..50 {
        put(&s, "hot", &i.to_string());
    }
    put(&s, "gone", "x");
    delete(&s, "gone", "");
    put(&s, "cold", "c");
    let rev = s.revision();
    assert_eq!(
        apply(&s, Command::Compact { revision: rev - 1 }),
        Ok(CommandResponse::Compact { revision: rev })
    );
    assert_eq!(
        apply(&s, Command::Compact { revision: rev - 1 }),
        Err(MvccError::Compacted)
    );
    assert_eq!(
        apply(&s, Command::Compact { revision: rev + 5 }),
        Err(MvccError::FutureRevision)
    );
    s.wait_for_compaction();
    assert!(matches!(
        range(&s, "hot", "", rev - 2),
        Err(Error::Mvcc(MvccError::Compacted))
    ));
    assert_eq!(get(&s, "hot").unwrap().value, b("49"));
    assert_eq!(
        get(&s, "hot").unwrap().version,
        50,
        "the version survives compaction"
    );
    assert!(get(&s, "gone").is_none());
    assert_eq!(
        range(&s, "a", "\0", rev - 1).unwrap().kvs.len(),
        1,
        "at the compacted revision cold is not yet there"
    );
    drop(s);
    let s = open(dir.path());
    assert_eq!(
        s.compact_revision(),
        rev - 1,
        "the compacted revision is persisted"
    );
    assert!(matches!(
        range(&s, "hot", "", 3),
        Err(Error::Mvcc(MvccError::Compacted))
    ));
}

#[tokio::test]
async fn watch_history_then_live_with_prev_kv() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    put(&s, "w/a", "1");
    put(&s, "x", "ignored");
    put(&s, "w/a", "2");
    let mut watcher = s.watch(b("w/"), prefix_range_end(b"w/"), 2);
    let events = watcher.next(100).await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].kv.mod_revision, 2);
    assert!(events[0].prev_kv.is_none());
    assert_eq!(events[1].prev_kv.as_ref().unwrap().value, b("1"));
    assert!(watcher.caught_up());

    let writer = s.clone();
    tokio::task::spawn_blocking(move || {
        delete(&writer, "w/a", "");
    });
    let events = watcher.next(100).await.unwrap();
    assert_eq!(events[0].kind, EventKind::Delete);
    assert_eq!(events[0].kv.mod_revision, 5);
    assert_eq!(events[0].prev_kv.as_ref().unwrap().value, b("2"));
}

#[tokio::test]
async fn slow_watcher_catches_up_from_history() {
    let dir = tempfile::tempdir().unwrap();
    let s = MvccStore::open(
        dir.path(),
        MvccOptions {
            feed_capacity_batches: 4,
            ..Default::default()
        },
    )
    .unwrap();
    let mut watcher = s.watch(b("k"), Bytes::new(), 0);
    for i in 0..100 {
        put(&s, "k", &i.to_string());
    }
    let mut seen = Vec::new();
    while seen.len() < 100 {
        for e in watcher.next(7).await.unwrap() {
            seen.push(e.kv.value.clone());
        }
    }
    let expected: Vec<Bytes> = (0..100).map(|i| b(&i.to_string())).collect();
    assert_eq!(
        seen, expected,
        "every event exactly once, in order, though the feed overflowed"
    );
}

#[tokio::test]
async fn watch_below_compaction_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    for i in 0..10 {
        put(&s, "k", &i.to_string());
    }
    apply(&s, Command::Compact { revision: 8 }).unwrap();
    let mut watcher = s.watch(b("k"), Bytes::new(), 3);
    match watcher.next(10).await {
        Err(watch::WatchError::Compacted { compact_revision }) => assert_eq!(compact_revision, 8),
        other => panic!("expected compacted, got {other:?}"),
    }
    s.wait_for_compaction();
    // From the compacted revision itself the surviving event is still there.
    let mut watcher = s.watch(b("k"), Bytes::new(), 8);
    let events = watcher.next(10).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.kv.mod_revision).collect::<Vec<_>>(),
        vec![8, 9, 10, 11]
    );
}

#[test]
fn snapshot_round_trip_and_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("a"));
    apply(&s, Command::LeaseGrant { id: 5, ttl_s: 60 }).unwrap();
    for i in 0..200 {
        put_req(
            &s,
            PutRequest {
                key: b(&format!("key/{i:03}")),
                value: b(&format!("value-{i}")),
                lease: if i % 10 == 0 { 5 } else { 0 },
                ..Default::default()
            },
        )
        .unwrap();
    }
    delete(&s, "key/1", "key/2");
    apply(&s, Command::Compact { revision: 50 }).unwrap();
    let point = s.snapshot_point().unwrap();
    let mut image = Vec::new();
    s.export_snapshot(&point, &mut image).unwrap();
    // Writes after the point are not in the image.
    put(&s, "late", "x");

    let t = open(&dir.path().join("b"));
    put(&t, "will-vanish", "x");
    t.install_snapshot(&image[..]).unwrap();
    assert_eq!(t.revision(), point.revision);
    assert_eq!(t.compact_revision(), 50);
    assert!(get(&t, "will-vanish").is_none() && get(&t, "late").is_none());
    let all = |st: &MvccStore, rev: i64| range(st, "key/", "key0", rev).unwrap().kvs;
    assert_eq!(all(&t, 0), all(&s, point.revision));
    assert_eq!(
        all(&t, 120),
        all(&s, 120),
        "history above the compaction travels too"
    );
    assert_eq!(t.lease_keys(5).unwrap(), s.lease_keys(5).unwrap());

    // Every flipped byte and every cut is refused, and the store stays as it was.
    let before = all(&t, 0);
    for at in (0..image.len()).step_by(97).chain([image.len() - 1]) {
        let mut bad = image.clone();
        bad[at] ^= 0x20;
        assert!(
            t.install_snapshot(&bad[..]).is_err(),
            "flip at {at} accepted"
        );
    }
    for cut in [0, 7, 100, image.len() / 2, image.len() - 1] {
        assert!(
            t.install_snapshot(&image[..cut]).is_err(),
            "cut at {cut} accepted"
        );
    }
    assert_eq!(all(&t, 0), before);
    drop(t);
    let t = open(&dir.path().join("b"));
    assert_eq!(
        all(&t, 0),
        before,
        "the installed snapshot survives a restart"
    );
}

/// The newest-version cache (latest.rs) holds the old tree's versions; after a snapshot
/// replaces the tree, reads and writes must see the snapshot's.
#[test]
fn a_key_cached_before_a_snapshot_install_reads_the_snapshots_version() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("a"));
    for i in 0..5 {
        put(&s, "k", &format!("new-{i}"));
    }
    let point = s.snapshot_point().unwrap();
    let mut image = Vec::new();
    s.export_snapshot(&point, &mut image).unwrap();

    let t = open(&dir.path().join("b"));
    put(&t, "k", "old");
    assert_eq!(get(&t, "k").unwrap().value, b("old"));
    t.install_snapshot(&image[..]).unwrap();
    let kv = get(&t, "k").unwrap();
    assert_eq!((kv.value, kv.version), (b("new-4"), 5));
    // A write after the install builds on the snapshot's version of the key.
    put(&t, "k", "after");
    let kv = get(&t, "k").unwrap();
    assert_eq!((kv.version, kv.create_revision), (6, 2));
}

/// A member that catches up by installing a snapshot moves its revision forward
/// without live events. A watcher already waiting there must get the events the
/// snapshot brought at once, from history, not only after the next write (which on a
/// quiet cluster may never come).
#[tokio::test]
async fn a_waiting_watcher_gets_the_events_an_installed_snapshot_brought() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("leader"));
    put(&s, "w", "0");
    let t = open(&dir.path().join("follower"));
    put(&t, "w", "0");
    let mut watcher = t.watch(b("w"), Bytes::new(), 0);
    for i in 1..=5 {
        put(&s, "w", &i.to_string());
    }
    let point = s.snapshot_point().unwrap();
    let mut image = Vec::new();
    s.export_snapshot(&point, &mut image).unwrap();

    let waiting = tokio::spawn(async move { watcher.next(100).await });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(
        !waiting.is_finished(),
        "nothing to deliver before the install"
    );
    t.install_snapshot(&image[..]).unwrap();
    let events = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("the waiting watcher woke without another write")
        .unwrap()
        .unwrap();
    assert_eq!(
        events.iter().map(|e| e.kv.mod_revision).collect::<Vec<_>>(),
        vec![3, 4, 5, 6, 7]
    );
}

/// etcd panics on this txn (its check passes, then an earlier operation deletes the key
/// an ignore_lease put needs); raftkv refuses it whole, on every member alike.
#[test]
fn a_txn_whose_put_loses_its_key_mid_way_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    put(&s, "a", "1");
    put(&s, "c", "1");
    let before = s.revision();
    let req = TxnRequest {
        compare: vec![],
        success: vec![
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: b("a"),
                range_end: Bytes::from_static(&[0]),
                prev_kv: false,
            }),
            RequestOp::Put(PutRequest {
                key: b("c"),
                value: b("2"),
                ignore_lease: true,
                ..Default::default()
            }),
        ],
        failure: vec![],
    };
    assert_eq!(txn(&s, req), Err(raftkv_storage::MvccError::KeyNotFound));
    assert_eq!(s.revision(), before, "nothing was written");
    let r = s
        .range(&RangeRequest {
            key: b("a"),
            range_end: Bytes::from_static(&[0]),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.count, 2, "both keys survive");
    // The store goes on working.
    assert_eq!(put(&s, "d", "1").revision, before + 1);
}

/// etcd's interval rule lets a txn put a key in one nested txn and delete it in a later
/// one (not the reverse): both changes share a revision. Watchers see the put then the
/// delete, the key is gone, and compaction copes.
#[test]
fn put_then_delete_of_one_key_in_one_txn() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    put(&s, "k", "old");
    let nested = |op: RequestOp| {
        RequestOp::Txn(TxnRequest {
            compare: vec![],
            success: vec![op],
            failure: vec![],
        })
    };
    let delete_k = RequestOp::DeleteRange(DeleteRangeRequest {
        key: b("k"),
        range_end: Bytes::new(),
        prev_kv: false,
    });
    let refused = TxnRequest {
        compare: vec![],
        success: vec![nested(delete_k.clone()), nested(put_op("k", "new"))],
        failure: vec![],
    };
    assert_eq!(txn(&s, refused), Err(MvccError::DuplicateKey));
    let mut w = s.watch(b("k"), Bytes::new(), 0);
    let accepted = TxnRequest {
        compare: vec![],
        success: vec![nested(put_op("k", "new")), nested(delete_k)],
        failure: vec![],
    };
    let rev = txn(&s, accepted)
        .expect("put then delete is accepted")
        .revision;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let events = rt.block_on(w.next(8)).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].kind, EventKind::Put);
    assert_eq!(events[1].kind, EventKind::Delete);
    assert_eq!(events[1].kv.mod_revision, rev);
    // The same from history: the put keeps its value though the delete overwrote it.
    let mut h = s.watch(b("k"), Bytes::new(), rev);
    put(&s, "other", "x");
    let events = rt.block_on(h.next(1)).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].kind, EventKind::Put);
    assert_eq!(events[0].kv.value, b("new"));
    assert_eq!(
        events[0].prev_kv.as_ref().map(|p| p.value.clone()),
        Some(b("old"))
    );
    assert_eq!(events[1].kind, EventKind::Delete);
    assert_eq!(
        events[1].prev_kv.as_ref().map(|p| p.value.clone()),
        Some(b("old"))
    );
    apply(&s, Command::Compact { revision: rev }).unwrap();
    s.wait_for_compaction();
    let got = s
        .range(&RangeRequest {
            key: b("k"),
            ..Default::default()
        })
        .unwrap();
    assert!(got.kvs.is_empty());
    // A watch from the compacted revision sees the delete that revision ended with,
    // but not the put its txn made first: etcd 3.5.13 and later keep only a key's last
    // write at the compacted revision (3.5.1 kept nothing of it).
    let mut from_compacted = s.watch(b("k"), Bytes::new(), rev);
    put(&s, "k", "again");
    let events = rt.block_on(from_compacted.next(8)).unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        (events[0].kind, events[0].kv.mod_revision),
        (EventKind::Delete, rev)
    );
    assert_eq!(events[1].kv.value, b("again"));
    let got = s
        .range(&RangeRequest {
            key: b("k"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(got.kvs[0].version, 1);
}

#[test]
fn nospace_caps_the_applier_until_disarmed_and_survives_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = open(dir.path());
    put(&s, "a", "1");
    let nospace = AlarmMember {
        member_id: 7,
        alarm: AlarmType::NoSpace,
    };
    let raised = apply(
        &s,
        Command::Alarm {
            activate: true,
            alarm: nospace,
        },
    );
    assert_eq!(
        raised,
        Ok(CommandResponse::Alarm {
            alarms: vec![nospace]
        })
    );
    let put_a = Command::Put(PutRequest {
        key: b("a"),
        value: b("2"),
        ..Default::default()
    });
    assert_eq!(apply(&s, put_a.clone()), Err(MvccError::NoSpace));
    assert_eq!(
        apply(&s, Command::LeaseGrant { id: 5, ttl_s: 10 }),
        Err(MvccError::NoSpace)
    );
    // A put in either branch (or a nested txn) makes a txn need space.
    let nested_put = TxnRequest {
        compare: vec![],
        success: vec![range_op("a")],
        failure: vec![RequestOp::Txn(TxnRequest {
            compare: vec![],
            success: vec![put_op("b", "1")],
            failure: vec![],
        })],
    };
    assert_eq!(txn(&s, nested_put), Err(MvccError::NoSpace));
    let reads_only = TxnRequest {
        compare: vec![],
        success: vec![range_op("a")],
        failure: vec![],
    };
    assert!(txn(&s, reads_only).is_ok());
    assert_eq!(delete(&s, "a", "").deleted, 1);
    assert_eq!(s.revision(), 3, "only the delete moved the revision");
    drop(s);

    let s = open(dir.path());
    assert_eq!(s.alarms(), vec![nospace], "alarms survive a restart");
    assert_eq!(apply(&s, put_a.clone()), Err(MvccError::NoSpace));
    let disarmed = apply(
        &s,
        Command::Alarm {
            activate: false,
            alarm: nospace,
        },
    );
    assert_eq!(
        disarmed,
        Ok(CommandResponse::Alarm {
            alarms: vec![nospace]
        })
    );
    // Disarming what is not raised answers nothing.
    assert_eq!(
        apply(
            &s,
            Command::Alarm {
                activate: false,
                alarm: nospace,
            },
        ),
        Ok(CommandResponse::Alarm { alarms: vec![] })
    );
    assert!(apply(&s, put_a).is_ok());
    assert!(s.alarms().is_empty());
}

/// The revision is not stored with every write but derived at open (the newest change
/// record, at least the compaction's revision): a restart must find the same one in
/// every state a store can be left in.
#[test]
fn the_revision_survives_restarts_compaction_and_writes_that_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let reopened_revision = |expected: i64, why: &str| {
        let s = open(dir.path());
        assert_eq!(s.revision(), expected, "after a restart: {why}");
    };
    reopened_revision(1, "an empty store starts at 1");
    {
        let s = open(dir.path());
        put(&s, "a", "1");
        put(&s, "b", "1");
        put(&s, "a", "2");
        assert_eq!(s.revision(), 4);
    }
    reopened_revision(4, "after puts");
    {
        let s = open(dir.path());
        // Deleting nothing and a failed compare change nothing: no new revision.
        delete(&s, "missing", "");
        let req = TxnRequest {
            compare: vec![compare(
                CompareTarget::Value,
                CompareResult::Equal,
                "a",
                CompareOperand::Value(b("no")),
            )],
            success: vec![put_op("a", "x")],
            failure: vec![],
        };
        assert!(!txn(&s, req).unwrap().succeeded);
        assert_eq!(s.revision(), 4);
    }
    reopened_revision(4, "after writes that changed nothing");
    {
        let s = open(dir.path());
        delete(&s, "a", "z");
        assert_eq!(s.revision(), 5);
        // Compacted at the current revision: every older change record goes.
        assert_eq!(
            apply(&s, Command::Compact { revision: 5 }),
            Ok(CommandResponse::Compact { revision: 5 })
        );
        s.wait_for_compaction();
    }
    reopened_revision(
        5,
        "after deleting everything and compacting at the revision",
    );
    {
        let s = open(dir.path());
        put(&s, "c", "1");
        assert_eq!(s.revision(), 6);
        assert_eq!(get(&s, "c").unwrap().mod_revision, 6);
    }
    reopened_revision(6, "after writing again");
}

#[test]
fn auth_changes_apply_survive_restart_and_travel_in_snapshots() {
    use raftkv_storage::auth::{AuthCommand, AuthError, AuthState, ROOT};
    let dir = tempfile::tempdir().expect("temp dir");
    let s = open(&dir.path().join("a"));
    put(&s, "k", "v");
    let add_root = Command::Auth(AuthCommand::UserAdd {
        name: ROOT.into(),
        password_hash: b"$2a$10$x".to_vec(),
        no_password: false,
    });
    assert_eq!(
        apply(&s, add_root.clone()),
        Ok(CommandResponse::Auth {
            revision: 2,
            auth_revision: 2
        }),
        "an auth change keeps the key space's revision"
    );
    assert_eq!(
        apply(&s, add_root),
        Err(MvccError::Auth(AuthError::UserAlreadyExist))
    );
    assert_eq!(
        apply(&s, Command::Auth(AuthCommand::Enable)),
        Err(MvccError::Auth(AuthError::RootRoleNotExist))
    );
    for change in [
        AuthCommand::UserGrantRole {
            user: ROOT.into(),
            role: ROOT.into(),
        },
        AuthCommand::Enable,
    ] {
        apply(&s, Command::Auth(change)).expect("applied");
    }
    assert_eq!(s.revision(), 2);
    let enabled = s.auth();
    assert!(enabled.enabled && enabled.revision == 3);
    // On behalf of a user: applied only when permitted, checked at apply.
    let as_user = |user: &str, auth_revision, command| Command::As {
        caller: raftkv_storage::auth::Caller {
            user: user.into(),
            auth_revision,
        },
        command: Box::new(command),
    };
    let write_k = || {
        Command::Put(PutRequest {
            key: b("k"),
            value: b("w"),
            ..Default::default()
        })
    };
    apply(
        &s,
        Command::Auth(AuthCommand::UserAdd {
            name: "alice".into(),
            password_hash: vec![],
            no_password: true,
        }),
    )
    .expect("root's change");
    assert_eq!(
        apply(&s, as_user("alice", 3, write_k())),
        Err(MvccError::Auth(AuthError::AuthOldRevision)),
        "the auth store changed since revision 3"
    );
    assert_eq!(
        apply(&s, as_user("alice", 4, write_k())),
        Err(MvccError::Auth(AuthError::PermissionDenied))
    );
    assert_eq!(
        get(&s, "k").unwrap().value,
        b("v"),
        "refused: nothing written"
    );
    assert!(matches!(
        apply(&s, as_user(ROOT, 4, write_k())),
        Ok(CommandResponse::Put(_))
    ));
    assert_eq!(s.revision(), 3);
    let enabled = s.auth();
    drop(s);

    let s = open(&dir.path().join("a"));
    assert_eq!(*s.auth(), *enabled, "the auth state survives a restart");
    let point = s.snapshot_point().unwrap();
    let mut image = Vec::new();
    s.export_snapshot(&point, &mut image).unwrap();
    let t = open(&dir.path().join("b"));
    t.install_snapshot(&image[..]).unwrap();
    assert_eq!(*t.auth(), *enabled, "and travels in a snapshot");

    // A snapshot of a store that never had users carries no auth frame, and installing
    // it resets whatever the receiver had.
    let fresh = open(&dir.path().join("c"));
    put(&fresh, "k", "v");
    let mut plain = Vec::new();
    fresh
        .export_snapshot(&fresh.snapshot_point().unwrap(), &mut plain)
        .unwrap();
    t.install_snapshot(&plain[..]).unwrap();
    assert_eq!(*t.auth(), AuthState::default());
}

#[test]
fn an_empty_key_space_never_hashes_to_zero() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = open(dir.path());
    let empty = s.hash_kv(0).unwrap().unwrap();
    assert_ne!(
        empty.hash, 0,
        "etcd's never does: its hash starts with a bucket name"
    );
    put(&s, "a", "1");
    assert_ne!(s.hash_kv(0).unwrap().unwrap().hash, empty.hash);
}

/// Simple tokens follow the log on every member: an applied Authenticate hands one
/// out, a password change ends it, and a member that installs a snapshot keeps none
/// (the entries that would have ended them are behind the snapshot).
#[test]
fn tokens_follow_the_log_and_die_with_an_installed_snapshot() {
    use raftkv_storage::auth::AuthCommand;
    let auth = |store: &MvccStore, change: AuthCommand| apply(store, Command::Auth(change));
    let with_root = |store: &MvccStore| {
        let user = AuthCommand::UserAdd {
            name: "root".into(),
            password_hash: b"h".to_vec(),
            no_password: false,
        };
        let role = AuthCommand::RoleAdd {
            name: "root".into(),
        };
        let grant = AuthCommand::UserGrantRole {
            user: "root".into(),
            role: "root".into(),
        };
        for change in [user, role, grant] {
            auth(store, change).unwrap();
        }
    };
    let login = |store: &MvccStore| {
        auth(
            store,
            AuthCommand::Authenticate {
                name: "root".into(),
                token_prefix: "abcdefghijklmnop".into(),
            },
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("a"));
    with_root(&s);
    let refused = login(&s);
    assert!(
        matches!(refused, Err(MvccError::Auth(_))),
        "authentication is off: {refused:?}"
    );
    auth(&s, AuthCommand::Enable).unwrap();
    let token_of = |r: CommandResult| match r {
        Ok(CommandResponse::Authenticated { token, .. }) => token,
        other => panic!("{other:?}"),
    };
    let token = token_of(login(&s));
    assert_eq!(s.token_user(&token).as_deref(), Some("root"));
    let new_password = AuthCommand::UserChangePassword {
        name: "root".into(),
        password_hash: b"h2".to_vec(),
    };
    auth(&s, new_password).unwrap();
    assert_eq!(s.token_user(&token), None, "a new password ends the token");

    let t = open(&dir.path().join("b"));
    with_root(&t);
    auth(&t, AuthCommand::Enable).unwrap();
    let kept = token_of(login(&t));
    let point = s.snapshot_point().unwrap();
    let mut image = Vec::new();
    s.export_snapshot(&point, &mut image).unwrap();
    t.install_snapshot(&image[..]).unwrap();
    assert_eq!(
        t.token_user(&kept),
        None,
        "an installed snapshot ends every token"
    );
    assert!(t.auth().enabled);
}

/// etcd's history of the writes `imported_history_installs_as_the_same_store` makes:
/// one entry per revision and sub-revision, as etcd's key bucket holds them.
fn etcd_history() -> Vec<import::HistoryEntry> {
    let entry =
        |revision, sub, key: &str, created, version, lease, value: &str| import::HistoryEntry {
            revision,
            sub,
            key: b(key),
            tombstone: false,
            create_revision: created,
            version,
            lease,
            value: b(value),
        };
    let tombstone = |revision, sub, key: &str| import::HistoryEntry {
        tombstone: true,
        ..entry(revision, sub, key, 0, 0, 0, "")
    };
    vec![
        entry(2, 0, "a", 2, 1, 0, "1"),
        entry(3, 0, "a", 2, 2, 0, "2"),
        entry(4, 0, "b", 4, 1, 5, "3"),
        tombstone(5, 0, "a"),
        entry(6, 0, "a", 6, 1, 0, "5"),
        entry(6, 1, "c", 6, 1, 0, "6"),
        entry(7, 0, "b", 4, 2, 0, "7"),
    ]
}

#[test]
fn imported_history_installs_as_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let native = open(&dir.path().join("native"));
    apply(&native, Command::LeaseGrant { id: 5, ttl_s: 60 }).unwrap();
    put(&native, "a", "1");
    put(&native, "a", "2");
    put_req(
        &native,
        PutRequest {
            key: b("b"),
            value: b("3"),
            lease: 5,
            ..Default::default()
        },
    )
    .unwrap();
    delete(&native, "a", "");
    txn(
        &native,
        TxnRequest {
            success: vec![put_op("a", "5"), put_op("c", "6")],
            ..Default::default()
        },
    )
    .unwrap();
    put(&native, "b", "7");
    let point = native.snapshot_point().unwrap();
    assert_eq!(point.revision, 7);

    let mut image = Vec::new();
    let mut builder = import::ImageBuilder::start(&mut image, &point).unwrap();
    for entry in etcd_history() {
        builder.add(entry).unwrap();
    }
    builder.finish().unwrap();
    let imported = open(&dir.path().join("imported"));
    imported.install_snapshot(&image[..]).unwrap();

    let all = |st: &MvccStore, rev: i64| range(st, "", "\0", rev).map(|r| r.kvs).ok();
    for rev in 2..=7 {
        assert_eq!(all(&imported, rev), all(&native, rev), "at revision {rev}");
    }
    assert_eq!(
        imported.lease_keys(5).unwrap(),
        native.lease_keys(5).unwrap()
    );
    // Compaction follows the change records back to the versions they superseded.
    for store in [&native, &imported] {
        apply(store, Command::Compact { revision: 5 }).unwrap();
        store.wait_for_compaction();
    }
    for rev in 5..=7 {
        assert_eq!(
            all(&imported, rev),
            all(&native, rev),
            "after compaction, at {rev}"
        );
    }
    assert!(all(&imported, 4).is_none() && all(&native, 4).is_none());
    // The same versions survive (the checksum covers every stored version).
    let hash = |st: &MvccStore| st.hash_kv(7).unwrap().unwrap().hash;
    assert_eq!(hash(&imported), hash(&native));

    // Walked back out in etcd's order, the compacted store's history is etcd's (the
    // versions before the compaction, then every change from it on: the delete at 5
    // stays) and rebuilds the same store.
    let mut walked = Vec::new();
    let pin = native.pin_for_export();
    let compacted_point = pin.point().unwrap();
    pin.walk_etcd_history(&compacted_point, &mut |e| {
        walked.push(e);
        Ok(())
    })
    .unwrap();
    drop(pin);
    let at = |e: &import::HistoryEntry| (e.revision, e.sub, e.key.clone(), e.tombstone);
    assert_eq!(
        walked.iter().map(at).collect::<Vec<_>>(),
        vec![
            (4, 0, b("b"), false),
            (5, 0, b("a"), true),
            (6, 0, b("a"), false),
            (6, 1, b("c"), false),
            (7, 0, b("b"), false),
        ]
    );
    let mut image = Vec::new();
    let mut builder = import::ImageBuilder::start(&mut image, &compacted_point).unwrap();
    for entry in walked {
        builder.add(entry).unwrap();
    }
    builder.finish().unwrap();
    let again = open(&dir.path().join("again"));
    again.install_snapshot(&image[..]).unwrap();
    for rev in 5..=7 {
        assert_eq!(all(&again, rev), all(&native, rev), "walked back, at {rev}");
    }

    // History out of order is refused.
    let mut builder = import::ImageBuilder::start(Vec::new(), &point).unwrap();
    builder.add(etcd_history()[1].clone()).unwrap();
    assert!(builder.add(etcd_history()[0].clone()).is_err());
}
