//! Entry points for the fuzz targets (fuzz/, run with cargo fuzz) and for their smoke
//! test in CI: each takes arbitrary bytes and must never panic, hang, or allocate
//! beyond a bound, whatever the bytes — corrupt input gets an error, nothing else.
//!
//! Not for production use: these write to temporary directories.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::mvcc::{MvccOptions, MvccStore};
use crate::raft_log::RaftLogStore;
use crate::wal::record::{encode_into, RecordKind, PAGE_SIZE_BYTES};
use crate::wal::segment::segment_path;
use crate::wal::WalOptions;

/// A fresh directory under the system's temp dir; removed by `TempDir`'s drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "raftkv-fuzz-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Turns fuzz input into a log segment. The first byte picks the shape:
/// - even: the rest is the segment's bytes as they are (torn tails, garbage);
/// - odd: the rest is a list of (kind u8, length u16 LE, payload) that is framed with
///   valid checksums, so that the records' payload decoding is reached.
pub fn segment_from(data: &[u8]) -> Vec<u8> {
    let Some((&shape, rest)) = data.split_first() else {
        return Vec::new();
    };
    if shape % 2 == 0 {
        return rest.to_vec();
    }
    let mut out = Vec::new();
    let mut input = rest;
    while input.len() >= 3 {
        let kind = input[0];
        let len = (u16::from_le_bytes([input[1], input[2]]) as usize).min(input.len() - 3);
        let payload = &input[3..3 + len];
        input = &input[3 + len..];
        // The writer never frames an empty payload (a zero length marks the end).
        match RecordKind::from_u8(kind % 8) {
            // A skip as the writer makes one: zeros to the next page, a Resume naming
            // where they start (the payload is ignored).
            Some(RecordKind::Resume) => {
                let gap_start = out.len();
                let page = PAGE_SIZE_BYTES as usize;
                if !gap_start.is_multiple_of(page) {
                    out.resize(gap_start.div_ceil(page) * page, 0);
                    encode_into(
                        &mut out,
                        RecordKind::Resume,
                        &(gap_start as u64).to_le_bytes(),
                    );
                }
            }
            Some(kind) if !payload.is_empty() => encode_into(&mut out, kind, payload),
            _ => {}
        }
    }
    out
}

/// Replays `segment` (see `segment_from`) as the Raft log's only segment: the log
/// either opens or refuses with an error. Returns whether it opened.
pub fn log_replay(segment: &[u8]) -> bool {
    let dir = TempDir::new("wal");
    let wal_dir = dir.0.join("wal");
    std::fs::create_dir_all(&wal_dir).expect("wal dir");
    std::fs::write(segment_path(&wal_dir, 1), segment).expect("segment");
    let options = WalOptions {
        segment_size_bytes: 1 << 20,
        max_record_size_bytes: 64 << 10,
        ..WalOptions::default()
    };
    RaftLogStore::open(&wal_dir, options, Arc::new(AtomicU64::new(u64::MAX))).is_ok()
}

thread_local! {
    static SNAPSHOT_STORE: (TempDir, MvccStore) = {
        let dir = TempDir::new("snapshot");
        let store = MvccStore::open(&dir.0, MvccOptions::default()).expect("store");
        (dir, store)
    };
}

/// Installs `data` as a snapshot into a store: it installs whole or changes nothing.
/// Returns whether it installed.
pub fn snapshot_install(data: &[u8]) -> bool {
    SNAPSHOT_STORE.with(|(_, store)| {
        let before = store.revision();
        match store.install_snapshot(data) {
            Ok(_) => true,
            Err(_) => {
                assert_eq!(
                    store.revision(),
                    before,
                    "a refused snapshot changed the store"
                );
                false
            }
        }
    })
}

/// A valid snapshot of a small key space, as a seed for the snapshot target.
pub fn sample_snapshot() -> Vec<u8> {
    use crate::mvcc::{AppliedMeta, Command, PutRequest};
    let dir = TempDir::new("sample");
    let store = MvccStore::open(&dir.0, MvccOptions::default()).expect("store");
    for i in 0..5u8 {
        let put = Command::Put(PutRequest {
            key: vec![b'k', i].into(),
            value: vec![i; 16].into(),
            ..PutRequest::default()
        });
        let applied = store.apply(&put, &AppliedMeta::default()).expect("apply");
        assert!(applied.is_ok(), "{applied:?}");
    }
    let point = store.snapshot_point().expect("point");
    let mut out = Vec::new();
    store.export_snapshot(&point, &mut out).expect("export");
    out
}

/// Mutations for the smoke tests that run the fuzz entry points in CI: bytes flipped,
/// cut and inserted, from a seeded xorshift, keeping the first byte (the shape or
/// request kind every entry point reads first).
pub struct Mutator(pub u64);

impl Mutator {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut input = seed.to_vec();
        for _ in 0..1 + self.next_u64() % 4 {
            let at = 1 + (self.next_u64() % (input.len().max(2) as u64 - 1)) as usize;
            match self.next_u64() % 3 {
                0 if at < input.len() => input[at] ^= 1 << (self.next_u64() % 8),
                1 => input.truncate(at),
                _ => input.insert(at.min(input.len()), self.next_u64() as u8),
            }
        }
        input
    }
}

/// Checks that the committed seed at `path` (fuzz/seeds/, where the fuzz targets
/// start) is `bytes`; with RAFTKV_WRITE_SEEDS set, writes it first.
pub fn check_seed(path: &std::path::Path, bytes: &[u8]) {
    if std::env::var_os("RAFTKV_WRITE_SEEDS").is_some() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("seed dir");
        }
        std::fs::write(path, bytes).expect("seed");
    }
    let committed = std::fs::read(path).unwrap_or_default();
    assert!(
        committed == bytes,
        "{} is stale: rewrite it with RAFTKV_WRITE_SEEDS=1",
        path.display()
    );
}
