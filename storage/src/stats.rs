//! Counters the storage layer keeps for the server's /metrics: how long fdatasyncs of
//! the Raft log and commits of the key-value engine take, how many entries each append
//! to the log carried. Plain atomics, written on the
//! hot path with a few relaxed adds; this module never allocates, locks or formats
//! there. The server reads snapshots and renders them (etcd's metric names live there).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds, in seconds, of etcd's disk histograms: 1 ms doubling 14 times.
pub const DISK_BUCKETS_S: [f64; 14] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];

/// A latency histogram over `DISK_BUCKETS_S` (plus +Inf), safe to share between threads.
pub struct DurationHistogram {
    /// Non-cumulative: counts[i] is how many fell at or below bound i and above i - 1;
    /// the last slot is +Inf.
    counts: [AtomicU64; DISK_BUCKETS_S.len() + 1],
    sum_ns: AtomicU64,
}

/// What a histogram held when read.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound in seconds, cumulative count), ending with (+Inf, total).
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl DurationHistogram {
    pub const fn new() -> DurationHistogram {
        DurationHistogram {
            counts: [const { AtomicU64::new(0) }; DISK_BUCKETS_S.len() + 1],
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let slot = DISK_BUCKETS_S
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(DISK_BUCKETS_S.len());
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Records `elapsed`; true when it exceeded `warn_after` (the caller logs why).
    pub fn observe_slow(&self, elapsed: Duration, warn_after: Duration) -> bool {
        self.observe(elapsed);
        elapsed > warn_after
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets = Vec::with_capacity(self.counts.len());
        let mut cumulative = 0u64;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let bound = DISK_BUCKETS_S.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, cumulative));
        }
        HistogramSnapshot {
            buckets,
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            count: cumulative,
        }
    }
}

impl Default for DurationHistogram {
    fn default() -> Self {
        DurationHistogram::new()
    }
}

/// fdatasync of the Raft log, one observation per group commit.
pub static WAL_FSYNC: DurationHistogram = DurationHistogram::new();
/// One applied Raft entry's atomic write to the key-value engine.
pub static BACKEND_COMMIT: DurationHistogram = DurationHistogram::new();

/// Appends to the Raft log (one per `RaftLogStorage::append`, each its own flush
/// callback) and the entries they carried: their ratio shows how many client writes a
/// leader gathers into one append.
pub static LOG_APPENDS: AtomicU64 = AtomicU64::new(0);
pub static LOG_APPENDED_ENTRIES: AtomicU64 = AtomicU64::new(0);

/// An fdatasync slower than this is logged as a warning (etcd's threshold).
pub const SLOW_FSYNC_WARN: Duration = Duration::from_secs(1);
/// Applying one entry slower than this is logged as a warning (etcd's threshold).
pub const SLOW_APPLY_WARN: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_sum_is_kept() {
        let h = DurationHistogram::new();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(20));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.001, 1));
        assert_eq!(s.buckets[2], (0.004, 2));
        assert_eq!(s.buckets.last(), Some(&(f64::INFINITY, 3)));
        assert!((s.sum_seconds - 20.0035).abs() < 1e-6);
    }
}
