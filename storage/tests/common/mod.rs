//! Helpers shared by the storage tests.
#![allow(dead_code)]

use bytes::Bytes;
use raftkv_storage::mvcc::*;

pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

pub fn open(dir: &std::path::Path) -> MvccStore {
    MvccStore::open(dir, MvccOptions::default()).expect("store opens")
}

pub fn apply(store: &MvccStore, command: Command) -> CommandResult {
    store
        .apply(&command, &AppliedMeta::default())
        .expect("apply does not fail")
}

pub fn put(store: &MvccStore, key: &str, value: &str) -> PutResponse {
    put_req(
        store,
        PutRequest {
            key: b(key),
            value: b(value),
            ..Default::default()
        },
    )
    .expect("put succeeds")
}

pub fn put_req(
    store: &MvccStore,
    req: PutRequest,
) -> Result<PutResponse, raftkv_storage::MvccError> {
    match apply(store, Command::Put(req))? {
        CommandResponse::Put(r) => Ok(r),
        other => panic!("unexpected {other:?}"),
    }
}

pub fn delete(store: &MvccStore, key: &str, range_end: &str) -> DeleteRangeResponse {
    match apply(
        store,
        Command::DeleteRange(DeleteRangeRequest {
            key: b(key),
            range_end: b(range_end),
            prev_kv: true,
        }),
    )
    .expect("delete succeeds")
    {
        CommandResponse::DeleteRange(r) => r,
        other => panic!("unexpected {other:?}"),
    }
}

pub fn txn(store: &MvccStore, req: TxnRequest) -> Result<TxnResponse, raftkv_storage::MvccError> {
    match apply(store, Command::Txn(req))? {
        CommandResponse::Txn(r) => Ok(r),
        other => panic!("unexpected {other:?}"),
    }
}

pub fn get(store: &MvccStore, key: &str) -> Option<KeyValue> {
    let r = store
        .range(&RangeRequest {
            key: b(key),
            ..Default::default()
        })
        .expect("range succeeds");
    r.kvs.into_iter().next()
}

pub fn range(
    store: &MvccStore,
    key: &str,
    end: &str,
    rev: i64,
) -> Result<RangeResponse, raftkv_storage::Error> {
    store.range(&RangeRequest {
        key: b(key),
        range_end: b(end),
        revision: rev,
        ..Default::default()
    })
}

pub fn keys_of(r: &RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

/// The crash tests' seed: RAFTKV_CRASH_SEED when set (to reproduce a run), else the
/// clock. Printed by the caller; kill times come from `fuzzing::Mutator::next_u64`.
pub fn crash_seed() -> u64 {
    std::env::var("RAFTKV_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

/// Starts this test binary again as a crash test's child: only the test `name` runs,
/// with `env_key` naming the directory it works in.
pub fn spawn_crash_child(
    name: &str,
    env_key: &str,
    dir: &std::path::Path,
    stdout: std::process::Stdio,
) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(env_key, dir)
        .stdout(stdout)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Reads a crash child's stdout to its end on a thread, sending each line (the child
/// reports its progress there).
pub fn child_stdout_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("the child's stdout is piped");
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    line_rx
}
