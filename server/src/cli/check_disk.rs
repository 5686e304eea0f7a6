//! `raftkv check-disk`: is this disk fast enough for a Raft log? Measures what every
//! write waits for — a small sequential write followed by fdatasync — in the data dir,
//! as etcd's hardware guide does with fio (`--rw=write --ioengine=sync --fdatasync=1
//! --bs=2300`), and warns when the 99th percentile is over 10 ms.
//!
//! Owns one scratch file in the directory it is given, removed afterwards; it never
//! touches a member's data.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bytes per write: etcd's fio advice (about one small Raft entry with its framing).
pub const WRITE_SIZE_BYTES: usize = 2300;
/// Above this p99, writes will be slow and elections may fire spuriously (etcd's guide).
pub const P99_WARN_MS: f64 = 10.0;
/// Writes measured at most.
pub const MAX_WRITES: usize = 100_000;

#[derive(Debug, Clone, PartialEq)]
pub struct DiskReport {
    pub dir: PathBuf,
    pub writes: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl DiskReport {
    pub fn slow(&self) -> bool {
        self.p99_ms > P99_WARN_MS
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "{} writes of {WRITE_SIZE_BYTES} B, each followed by fdatasync, in {}\n\
             fdatasync latency: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms\n",
            self.writes,
            self.dir.display(),
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms
        );
        if self.slow() {
            out.push_str(&format!(
                "WARNING: p99 {:.2} ms is over {P99_WARN_MS} ms. Every write waits for this: expect \
                 slow writes, and raise --election-timeout-ms (to 500 or more) so that a slow \
                 flush does not start an election (docs/tuning.md). An SD card or a USB stick \
                 is not a good home for a Raft log; an NVMe or SATA SSD is.\n",
                self.p99_ms
            ));
        } else {
            out.push_str(&format!(
                "OK: p99 {:.2} ms is under {P99_WARN_MS} ms (etcd's guidance for a Raft log's disk).\n",
                self.p99_ms
            ));
        }
        out
    }
}

/// Writes `writes` blocks sequentially to a scratch file in `dir`, fdatasync after each.
pub fn check(dir: &Path, writes: usize) -> std::io::Result<DiskReport> {
    let writes = writes.clamp(1, MAX_WRITES);
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!(".raftkv-check-disk-{}", std::process::id()));
    let result = measure(&path, writes);
    let _ = std::fs::remove_file(&path);
    let mut samples = result?;
    samples.sort_unstable();
    let at = |q: f64| -> f64 {
        let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        samples[rank - 1].as_secs_f64() * 1000.0
    };
    Ok(DiskReport {
        dir: dir.to_path_buf(),
        writes,
        p50_ms: at(0.50),
        p90_ms: at(0.90),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
        max_ms: at(1.0),
    })
}

fn measure(path: &Path, writes: usize) -> std::io::Result<Vec<Duration>> {
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(path)?;
    let block = vec![0x5au8; WRITE_SIZE_BYTES];
    let mut samples = Vec::with_capacity(writes);
    for _ in 0..writes {
        let started = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_in_the_given_dir_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("temp dir");
        let report = check(dir.path(), 50).expect("check");
        assert_eq!(report.writes, 50);
        assert!(report.p50_ms > 0.0 && report.p50_ms <= report.p99_ms);
        assert!(report.p99_ms <= report.max_ms);
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
        let text = report.render();
        assert!(text.contains("fdatasync latency: p50"), "{text}");
    }

    #[test]
    fn a_slow_disk_gets_the_warning() {
        let report = DiskReport {
            dir: PathBuf::from("/data"),
            writes: 1000,
            p50_ms: 4.0,
            p90_ms: 8.0,
            p99_ms: 25.0,
            p999_ms: 40.0,
            max_ms: 50.0,
        };
        assert!(report.slow());
        assert!(report
            .render()
            .contains("WARNING: p99 25.00 ms is over 10 ms"));
    }
}
