//! raftkv's benchmarks and its load generator, `raftkv-bench`.
//!
//! Benchmarks measure against a floor taken on the same file system in the same run
//! (a bare fdatasync of the same size) or against etcd on the same machine in the same
//! run, never against a fixed number. Code map: `stats` (latency percentiles), `load`
//! (the workloads, against any etcd v3 endpoints), `cluster` (raftkv and etcd processes
//! and what /proc says of them), `compare` (the side-by-side run and its table).

pub mod cluster;
pub mod compare;
pub mod load;
pub mod stats;

pub use cluster::build_raftkv;

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Applies a Put of `value` at `key` straight to the MVCC store (no Raft, no fsync):
/// the store-level write the benchmarks and stall examples measure.
pub fn put(store: &raftkv_storage::mvcc::MvccStore, key: String, value: &bytes::Bytes) {
    use raftkv_storage::mvcc::{AppliedMeta, Command, PutRequest};
    store
        .apply(
            &Command::Put(PutRequest {
                key: bytes::Bytes::from(key),
                value: value.clone(),
                ..Default::default()
            }),
            &AppliedMeta::default(),
        )
        .expect("apply")
        .expect("put");
}

/// One bare durable write: `size_bytes` written at the start of a preallocated file,
/// then fdatasync. This is the floor a durable append can approach.
pub struct FsyncFloor {
    file: std::fs::File,
    buf: Vec<u8>,
}

impl FsyncFloor {
    pub fn new(dir: &Path, size_bytes: usize) -> std::io::Result<FsyncFloor> {
        let path = dir.join("fsync-floor.dat");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)?;
        file.write_all(&vec![0u8; 1 << 20])?;
        file.sync_all()?;
        Ok(FsyncFloor {
            file,
            buf: vec![0xab; size_bytes],
        })
    }

    /// Writes and syncs once; returns how long that took.
    pub fn once(&mut self, offset: u64) -> std::io::Result<Duration> {
        let start = Instant::now();
        self.file.write_all_at(&self.buf, offset % (1 << 20))?;
        self.file.sync_data()?;
        Ok(start.elapsed())
    }
}
