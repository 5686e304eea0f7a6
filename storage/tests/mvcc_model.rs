//! Property test: the MVCC store against a small in-memory model of etcd's semantics.
//!
//! The model keeps the whole key space at every revision, so historical reads, the
//! compacted-revision errors and the watch feed can all be checked exactly. Compaction
//! runs in the background while the sequence goes on, as it does in production.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;
use raftkv_storage::mvcc::*;
use raftkv_storage::{Error, MvccError};

const KEYS: [&[u8]; 8] = [b"a", b"a\0", b"ab", b"b", b"b/1", b"b/2", b"c", b"\xff"];

#[derive(Debug, Clone)]
enum End {
    Single,
    Prefix,
    FromKey,
    Upto(usize),
}

#[derive(Debug, Clone)]
enum Op {
    Put {
        key: usize,
        value: u8,
        prev_kv: bool,
    },
    Delete {
        key: usize,
        end: End,
    },
    Cas {
        key: usize,
        expect_back: u8,
        value: u8,
    },
    Compact {
        back: u8,
    },
    Range {
        key: usize,
        end: End,
        back: Option<u8>,
        limit: u8,
    },
}

fn end_strategy() -> impl Strategy<Value = End> {
    prop_oneof![
        Just(End::Single),
        Just(End::Prefix),
        Just(End::FromKey),
        (0..KEYS.len()).prop_map(End::Upto)
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..KEYS.len(), any::<u8>(), any::<bool>()).prop_map(|(key, value, prev_kv)| Op::Put { key, value, prev_kv }),
        1 => (0..KEYS.len(), end_strategy()).prop_map(|(key, end)| Op::Delete { key, end }),
        2 => (0..KEYS.len(), 0u8..4, any::<u8>()).prop_map(|(key, expect_back, value)| Op::Cas { key, expect_back, value }),
        1 => (0u8..6).prop_map(|back| Op::Compact { back }),
        3 => (0..KEYS.len(), end_strategy(), proptest::option::of(0u8..12), 0u8..4)
            .prop_map(|(key, end, back, limit)| Op::Range { key, end, back, limit }),
    ]
}

fn range_end(key: usize, end: &End) -> Bytes {
    match end {
        End::Single => Bytes::new(),
        End::Prefix => prefix_range_end(KEYS[key]),
        End::FromKey => Bytes::from_static(&[0]),
        End::Upto(k) => Bytes::from_static(KEYS[*k]),
    }
}

fn in_range(start: &[u8], end: &[u8], key: &[u8]) -> bool {
    if end.is_empty() {
        key == start
    } else if end == [0] {
        key >= start
    } else {
        key >= start && key < end
    }
}

struct Model {
    /// states[r] is the key space at revision r; states[0] is unused.
    states: Vec<BTreeMap<Bytes, KeyValue>>,
    compact: i64,
    events: Vec<Event>,
}

impl Model {
    fn new() -> Model {
        Model {
            states: vec![BTreeMap::new(), BTreeMap::new()],
            compact: -1,
            events: Vec::new(),
        }
    }

    fn rev(&self) -> i64 {
        self.states.len() as i64 - 1
    }

    fn now(&self) -> &BTreeMap<Bytes, KeyValue> {
        self.states.last().expect("at least revision 1")
    }

    fn put(&mut self, key: Bytes, value: Bytes) -> (i64, Option<KeyValue>) {
        let rev = self.rev() + 1;
        let prev = self.now().get(&key).cloned();
        let kv = KeyValue {
            key: key.clone(),
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease: 0,
        };
        let mut next = self.now().clone();
        next.insert(key, kv.clone());
        self.states.push(next);
        self.events.push(Event {
            kind: EventKind::Put,
            kv,
            prev_kv: prev.clone(),
        });
        (rev, prev)
    }

    fn delete(&mut self, start: &[u8], end: &[u8]) -> (i64, Vec<KeyValue>) {
        let doomed: Vec<KeyValue> = self
            .now()
            .values()
            .filter(|kv| in_range(start, end, &kv.key))
            .cloned()
            .collect();
        if doomed.is_empty() {
            return (self.rev(), doomed);
        }
        let rev = self.rev() + 1;
        let mut next = self.now().clone();
        for kv in &doomed {
            next.remove(&kv.key);
            self.events.push(Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: kv.key.clone(),
                    mod_revision: rev,
                    ..Default::default()
                },
                prev_kv: Some(kv.clone()),
            });
        }
        self.states.push(next);
        (rev, doomed)
    }

    fn range(
        &self,
        start: &[u8],
        end: &[u8],
        rev: i64,
        limit: i64,
    ) -> Result<RangeResponse, MvccError> {
        let at = if rev <= 0 { self.rev() } else { rev };
        if at > self.rev() {
            return Err(MvccError::FutureRevision);
        }
        if at < self.compact {
            return Err(MvccError::Compacted);
        }
        let all: Vec<KeyValue> = self.states[at as usize]
            .values()
            .filter(|kv| in_range(start, end, &kv.key))
            .cloned()
            .collect();
        let count = all.len() as i64;
        let more = limit > 0 && count > limit;
        let kvs = if more {
            all[..limit as usize].to_vec()
        } else {
            all
        };
        Ok(RangeResponse {
            revision: self.rev(),
            kvs,
            more,
            count,
        })
    }
}

/// The next events, or None once the watcher is caught up and nothing more comes.
async fn drain(watcher: &mut watch::Watcher) -> Result<Option<Vec<Event>>, watch::WatchError> {
    match tokio::time::timeout(std::time::Duration::from_millis(50), watcher.next(3)).await {
        Ok(events) => events.map(Some),
        Err(_) if watcher.caught_up() => Ok(None),
        Err(_) => Err(watch::WatchError::Closed),
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let store = MvccStore::open(
        dir.path(),
        MvccOptions {
            compaction_batch_revisions: 3,
            compaction_pause_ms: 0,
            // Small enough that the model's keys are evicted and read back from the
            // engine, so both paths of latest.rs are checked against the model.
            latest_cache_size_bytes: 2 << 10,
            ..Default::default()
        },
    )
    .unwrap();
    let mut model = Model::new();
    let mut watcher = store.watch(Bytes::new(), Bytes::from_static(&[0]), 1);
    for op in ops {
        match op {
            Op::Put {
                key,
                value,
                prev_kv,
            } => {
                let key = Bytes::from_static(KEYS[key]);
                let value = Bytes::from(vec![value]);
                let got = common::put_req(
                    &store,
                    PutRequest {
                        key: key.clone(),
                        value: value.clone(),
                        prev_kv,
                        ..Default::default()
                    },
                )
                .unwrap();
                let (rev, prev) = model.put(key, value);
                prop_assert_eq!(got.revision, rev);
                prop_assert_eq!(got.prev_kv, if prev_kv { prev } else { None });
            }
            Op::Delete { key, end } => {
                let end = range_end(key, &end);
                let got = match common::apply(
                    &store,
                    Command::DeleteRange(DeleteRangeRequest {
                        key: Bytes::from_static(KEYS[key]),
                        range_end: end.clone(),
                        prev_kv: true,
                    }),
                )
                .unwrap()
                {
                    CommandResponse::DeleteRange(d) => d,
                    other => panic!("{other:?}"),
                };
                let (rev, doomed) = model.delete(KEYS[key], &end);
                prop_assert_eq!(got.revision, rev);
                prop_assert_eq!(got.deleted, doomed.len() as i64);
                prop_assert_eq!(got.prev_kvs, doomed);
            }
            Op::Cas {
                key,
                expect_back,
                value,
            } => {
                let key = Bytes::from_static(KEYS[key]);
                let current = model.now().get(&key).map_or(0, |kv| kv.mod_revision);
                // Sometimes the right revision, sometimes a stale one.
                let expect = (current - i64::from(expect_back)).max(0);
                let req = TxnRequest {
                    compare: vec![Compare {
                        result: CompareResult::Equal,
                        target: CompareTarget::Mod,
                        key: key.clone(),
                        range_end: Bytes::new(),
                        operand: Some(CompareOperand::ModRevision(expect)),
                    }],
                    success: vec![RequestOp::Put(PutRequest {
                        key: key.clone(),
                        value: Bytes::from(vec![value]),
                        ..Default::default()
                    })],
                    failure: vec![RequestOp::Range(RangeRequest {
                        key: key.clone(),
                        ..Default::default()
                    })],
                };
                let got = common::txn(&store, req).unwrap();
                prop_assert_eq!(got.succeeded, expect == current);
                if got.succeeded {
                    let (rev, _) = model.put(key, Bytes::from(vec![value]));
                    prop_assert_eq!(got.revision, rev);
                } else {
                    let ResponseOp::Range(r) = &got.responses[0] else {
                        panic!()
                    };
                    prop_assert_eq!(r.kvs.first(), model.now().get(&key));
                    prop_assert_eq!(got.revision, model.rev());
                }
            }
            Op::Compact { back } => {
                let target = model.rev() - i64::from(back);
                let got = common::apply(&store, Command::Compact { revision: target });
                let want = if target <= model.compact {
                    Err(MvccError::Compacted)
                } else {
                    model.compact = target;
                    Ok(CommandResponse::Compact {
                        revision: model.rev(),
                    })
                };
                prop_assert_eq!(got, want);
            }
            Op::Range {
                key,
                end,
                back,
                limit,
            } => {
                let end = range_end(key, &end);
                let rev = back.map_or(0, |b| model.rev() + 1 - i64::from(b));
                let got = store.range(&RangeRequest {
                    key: Bytes::from_static(KEYS[key]),
                    range_end: end.clone(),
                    revision: rev,
                    limit: i64::from(limit),
                    ..Default::default()
                });
                let want = model.range(KEYS[key], &end, rev, i64::from(limit));
                match (got, want) {
                    (Ok(g), Ok(w)) => prop_assert_eq!(g, w),
                    (Err(Error::Mvcc(g)), Err(w)) => prop_assert_eq!(g, w),
                    (g, w) => prop_assert!(false, "store {:?} vs model {:?}", g, w),
                }
            }
        }
    }
    store.wait_for_compaction();
    // Every revision the model kept is still readable exactly.
    for rev in model.compact.max(1)..=model.rev() {
        let got = common::range(&store, "\0", "\0", rev)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(
            got,
            model.range(b"\0", &[0], rev, 0).unwrap(),
            "full read at {}",
            rev
        );
    }
    // The watcher opened at revision 1 either saw every event or was compacted away.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut seen = Vec::new();
    let outcome = rt.block_on(async {
        while let Some(events) = drain(&mut watcher).await? {
            seen.extend(events);
        }
        Ok::<(), watch::WatchError>(())
    });
    match outcome {
        Ok(()) => prop_assert_eq!(&seen, &model.events),
        Err(watch::WatchError::Compacted { compact_revision }) => {
            prop_assert_eq!(compact_revision, model.compact)
        }
        Err(e) => prop_assert!(false, "watch failed: {}", e),
    }
    // A watch from just above the compaction sees exactly the model's later events.
    let from = model.compact.max(1) + 1;
    let mut late = store.watch(Bytes::new(), Bytes::from_static(&[0]), from);
    let mut seen = Vec::new();
    rt.block_on(async {
        while let Some(events) = drain(&mut late).await.unwrap() {
            seen.extend(events);
        }
    });
    let want: Vec<Event> = model
        .events
        .iter()
        .filter(|e| e.kv.mod_revision >= from)
        .cloned()
        .collect();
    prop_assert_eq!(seen, want);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op_strategy(), 1..80)) {
        run(ops)?;
    }
}
