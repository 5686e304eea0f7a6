//! Crash test: a child process appends to the log (pipelined, so group commit batches
//! many appends per fdatasync) and prints each index once its completion reports it
//! durable. The parent kills it with SIGKILL at a random moment, reopens the log through
//! the Raft log store, and checks that every index reported durable is there, intact,
//! and that the log is contiguous. The next child continues the same log, so repairs
//! of torn tails are themselves crashed into.
//!
//! Reproduce a run with RAFTKV_CRASH_SEED=<seed> (printed on failure).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{crash_seed, spawn_crash_child};
use openraft::storage::{RaftLogReader, RaftLogStorage};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use raftkv_storage::fuzzing::Mutator;
use raftkv_storage::mvcc::{Command, PutRequest};
use raftkv_storage::raft_log::RaftLogStore;
use raftkv_storage::raft_types::TypeConfig;
use raftkv_storage::wal::{RecordKind, Request, Wal, WalOptions};

const CHILD_ENV: &str = "RAFTKV_CRASH_CHILD_DIR";
const ITERATIONS: u64 = 200;
const FRESH_LOG_EVERY: u64 = 40;

fn options() -> WalOptions {
    WalOptions {
        segment_size_bytes: 256 << 10,
        max_record_size_bytes: 64 << 10,
        ..WalOptions::default()
    }
}

fn entry(index: u64) -> Entry<TypeConfig> {
    let len = 64 + (index * 7919 % 3000) as usize;
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Command::Put(PutRequest {
            key: Bytes::from(format!("key/{index}")),
            value: Bytes::from(vec![(index % 251) as u8; len]),
            ..Default::default()
        })),
    }
}

/// The same bytes the Raft log store writes for an entry.
fn encode(entry: &Entry<TypeConfig>) -> Vec<u8> {
    let mut out = entry.log_id.index.to_le_bytes().to_vec();
    out.extend_from_slice(&postcard::to_allocvec(entry).unwrap());
    out
}

/// Runs only as the child (the parent starts this test binary with CHILD_ENV set).
#[test]
fn crash_child_appender() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut last: Option<u64> = None;
    let (wal, _) = Wal::open(Path::new(&dir), options(), |kind, payload| {
        match kind {
            RecordKind::Entry => last = Some(u64::from_le_bytes(payload[..8].try_into().unwrap())),
            RecordKind::Truncate => {}
            _ => {}
        }
        Ok(())
    })
    .expect("the log opens after any crash");
    let start = last.map_or(0, |l| l + 1);
    println!("\nS {start}");
    std::io::stdout().flush().unwrap();
    for index in start..start + 20_000 {
        wal.submit_blocking(Request {
            records: vec![(RecordKind::Entry, encode(&entry(index)))],
            sync: true,
            done: Box::new(move |result| {
                if result.is_ok() {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "D {index}");
                    let _ = out.flush();
                }
            }),
        })
        .unwrap();
    }
    drop(wal);
    std::thread::sleep(Duration::from_secs(60));
}

fn verify(dir: &Path, durable: Option<u64>, context: &str) -> Option<u64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut log, report) = RaftLogStore::open(dir, options(), Arc::new(AtomicU64::new(u64::MAX)))
            .unwrap_or_else(|e| panic!("{context}: the log does not reopen: {e}"));
        let state = log.get_log_state().await.unwrap();
        let last = state.last_log_id.map(|l| l.index);
        if let Some(durable) = durable {
            assert!(
                last.is_some_and(|l| l >= durable),
                "{context}: index {durable} was reported durable but the log ends at {last:?} (repair: {:?})",
                report.torn_tail
            );
        }
        if let Some(last) = last {
            let entries = log.try_get_log_entries(0..=last).await.unwrap();
            assert_eq!(entries.len() as u64, last + 1, "{context}: the log has a hole");
            for (i, e) in entries.iter().enumerate() {
                assert_eq!(e.log_id.index, i as u64, "{context}");
                assert_eq!(encode(e), encode(&entry(i as u64)), "{context}: entry {i} changed");
            }
        }
        last
    })
}

#[test]
fn sigkill_at_random_points_never_loses_a_durable_append() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let seed = crash_seed();
    eprintln!("crash test seed: RAFTKV_CRASH_SEED={seed}");
    let mut rng = Mutator(seed);
    let mut dir = tempfile::tempdir().unwrap();
    let mut total_durable = 0u64;
    for iteration in 0..ITERATIONS {
        if iteration % FRESH_LOG_EVERY == 0 {
            dir = tempfile::tempdir().unwrap();
        }
        let mut child = spawn_crash_child(
            "crash_child_appender",
            CHILD_ENV,
            dir.path(),
            Stdio::piped(),
        );
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut durable: Option<u64> = None;
            let mut start: Option<u64> = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(i) = line.strip_prefix("D ") {
                    let i: u64 = i.parse().unwrap();
                    assert!(
                        durable.is_none_or(|d| i == d + 1),
                        "completions out of order: {i} after {durable:?}"
                    );
                    durable = Some(i);
                } else if let Some(s) = line.strip_prefix("S ") {
                    start = s.parse().ok();
                }
            }
            (start, durable)
        });
        // Kill anywhere from during the open to deep into the appends.
        std::thread::sleep(Duration::from_micros(rng.next_u64() % 60_000));
        child.kill().unwrap();
        child.wait().unwrap();
        let (start, durable) = reader.join().unwrap();
        let context = format!("seed {seed} iteration {iteration}");
        verify(dir.path(), durable, &context);
        if let (Some(start), Some(durable)) = (start, durable) {
            total_durable += durable + 1 - start;
        }
    }
    eprintln!("crash test: {ITERATIONS} kills, {total_durable} durable appends checked");
    assert!(
        total_durable > ITERATIONS,
        "the children must get appends done before being killed"
    );
}
