//! Crash test of the applied-index bookkeeping: after a SIGKILL, the engine holds a
//! prefix of the applied entries, and the applied index it reports names exactly the
//! last entry of that prefix. Raft replays from that index, so an index behind the
//! data would apply entries twice, and one ahead would skip them.
//!
//! A child process applies entries to the store (a put for most, an entry that
//! changes no key for every seventh, as Raft's blank and membership entries do) with
//! a tiny memtable, so memtables are sealed and written out all the time. The applied
//! id is written into a memtable only when it is sealed (`Batch::insert_deferred`).
//! The parent kills the child at a random moment, reopens the store and checks that
//! its keys, revision and applied index agree. The next child continues the same store.
//!
//! Most children flush once, some applies after their open, and print the applied
//! index that flush made durable; the parent kills those children at a random moment
//! after that line and checks that the reopened store holds at least that index. So
//! every such run must make progress, however slowly a busy machine runs the child.
//!
//! Reproduce a run with RAFTKV_CRASH_SEED=<seed> (printed on failure).

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{b, child_stdout_lines, crash_seed, spawn_crash_child};
use raftkv_storage::fuzzing::Mutator;
use raftkv_storage::mvcc::*;

const CHILD_ENV: &str = "RAFTKV_APPLIED_CRASH_CHILD_DIR";
/// What the child prints, followed by the applied index, once a flush made that
/// index durable.
const DURABLE: &str = "applied-crash-child: durable ";
/// Entries a child applies after its open before it flushes: enough to seal and
/// write out memtables of `MEMTABLE_SIZE_BYTES` several times on their own first.
const APPLIES_BEFORE_FLUSH: u64 = 1_000;
const ITERATIONS: u64 = 24;
/// One iteration in this many kills the child from its start, maybe during the open
/// or before its flush; the others at a random moment after its flush.
const KILL_FROM_START_EVERY: u64 = 4;
/// How long the parent waits for a child's flush: far beyond what a busy machine needs.
const FLUSH_TIMEOUT_S: u64 = 60;
/// Tiny, so that a run seals and writes out memtables faster than merges keep up:
/// level 0 then reaches the engine's limit (`MAX_L0_RUNS`, engine.rs), whose guard
/// this also tests. Without it, level 0 passed 255 runs, which lsm-tree 3.1.10 cannot
/// record, and the store failed to reopen in 3 of 4 runs.
const MEMTABLE_SIZE_BYTES: u64 = 32 << 10;
const VALUE_SIZE_BYTES: usize = 300;

fn options() -> MvccOptions {
    MvccOptions {
        memtable_size_bytes: MEMTABLE_SIZE_BYTES,
        ..MvccOptions::default()
    }
}

/// Entry `index` changes no key when this holds.
fn is_blank(index: u64) -> bool {
    index.is_multiple_of(7)
}

fn key_of(index: u64) -> String {
    format!("k/{index:010}")
}

/// The applied index as the store keeps it (opaque bytes; 8 bytes LE here).
fn applied_index(store: &MvccStore) -> u64 {
    let (applied, _) = store.applied_meta().expect("applied meta reads");
    applied.map_or(0, |bytes| {
        u64::from_le_bytes(bytes.as_slice().try_into().expect("8 bytes"))
    })
}

/// Entries 1..=index that put a key.
fn puts_up_to(index: u64) -> u64 {
    index - index / 7
}

/// Runs only as the child (the parent starts this test binary with CHILD_ENV set).
#[test]
fn crash_child_applier() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = MvccStore::open(Path::new(&dir), options()).expect("the store opens");
    let start = applied_index(&store) + 1;
    for index in start..start + 1_000_000 {
        if index == start + APPLIES_BEFORE_FLUSH {
            store.flush().expect("flush");
            println!("{DURABLE}{}", index - 1);
        }
        let meta = AppliedMeta {
            index,
            applied: index.to_le_bytes().to_vec(),
            membership: None,
        };
        if is_blank(index) {
            store.apply_meta(&meta).expect("apply");
        } else {
            let put = Command::Put(PutRequest {
                key: b(&key_of(index)),
                value: vec![(index % 251) as u8; VALUE_SIZE_BYTES].into(),
                ..Default::default()
            });
            store.apply(&put, &meta).expect("apply").expect("put");
        }
    }
    std::thread::sleep(Duration::from_secs(60));
}

/// Checks that keys, revision and applied index agree; returns the applied index.
fn verify(dir: &Path, context: &str) -> u64 {
    let store = MvccStore::open(dir, options())
        .unwrap_or_else(|e| panic!("{context}: the store does not reopen: {e}"));
    let applied = applied_index(&store);
    let puts = puts_up_to(applied);
    assert_eq!(
        store.revision(),
        puts as i64 + 1,
        "{context}: applied index {applied} names {puts} puts, the revision disagrees"
    );
    let all = store
        .range(&RangeRequest {
            key: b("k/"),
            range_end: b("k0"),
            count_only: true,
            ..Default::default()
        })
        .expect("range");
    assert_eq!(
        all.count, puts as i64,
        "{context}: applied index {applied} names {puts} puts, the store holds {} keys",
        all.count
    );
    if let Some(last) = (1..=applied).rev().find(|i| !is_blank(*i)) {
        let got = store
            .range(&RangeRequest {
                key: b(&key_of(last)),
                ..Default::default()
            })
            .expect("range");
        assert_eq!(
            got.kvs.first().map(|kv| kv.mod_revision),
            Some(puts as i64 + 1),
            "{context}: the last applied put ({last}) is missing or at another revision"
        );
    }
    applied
}

#[test]
fn sigkill_leaves_the_applied_index_naming_exactly_what_the_store_holds() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let seed = crash_seed();
    eprintln!("applied crash test seed: RAFTKV_CRASH_SEED={seed}");
    let mut rng = Mutator(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut applied = 0;
    let mut after_flush = 0;
    for iteration in 0..ITERATIONS {
        let mut child =
            spawn_crash_child("crash_child_applier", CHILD_ENV, dir.path(), Stdio::piped());
        let lines = child_stdout_lines(&mut child);
        let context = format!("seed {seed} iteration {iteration}");
        let from_start = iteration % KILL_FROM_START_EVERY == 0;
        // Kill anywhere from during the open (from the start) or from the flush (with
        // memtables sealed and written out in the background meanwhile) to deep into
        // the applies.
        let durable = if from_start {
            std::thread::sleep(Duration::from_millis(50 + rng.next_u64() % 400));
            None
        } else {
            let Some(durable) = durable_index(&lines) else {
                let _ = child.kill();
                panic!("{context}: the child did not flush its store in {FLUSH_TIMEOUT_S} s");
            };
            std::thread::sleep(Duration::from_millis(rng.next_u64() % 400));
            Some(durable)
        };
        child.kill().unwrap();
        child.wait().unwrap();
        let now = verify(dir.path(), &context);
        assert!(
            now >= applied,
            "{context}: the applied index went back from {applied} to {now}"
        );
        if let Some(durable) = durable {
            // The store really gets written out between kills (a test whose children
            // never made anything durable would prove nothing).
            assert!(
                durable > applied && now >= durable,
                "{context}: the child flushed applied index {durable} (the last run left \
                 {applied}), the reopened store holds {now}"
            );
            after_flush += 1;
        }
        applied = now;
    }
    eprintln!(
        "applied crash test: {ITERATIONS} kills ({after_flush} after a flush), applied index \
         {applied}"
    );
}

/// Waits for the child's flush line and returns the applied index it made durable;
/// None when the child exits or takes longer than `FLUSH_TIMEOUT_S`.
fn durable_index(lines: &std::sync::mpsc::Receiver<String>) -> Option<u64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(FLUSH_TIMEOUT_S);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines.recv_timeout(left).ok()?;
        // libtest's "test crash_child_applier ... " may lead the line.
        if let Some((_, index)) = line.split_once(DURABLE) {
            return index.trim().parse().ok();
        }
    }
}
