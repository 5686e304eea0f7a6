//! Shared helpers of raftkv's benchmarks.
//!
//! Benchmarks measure against a floor taken on the same file system in the same run
//! (a bare fdatasync of the same size), never against a fixed number.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

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
