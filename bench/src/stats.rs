//! Latency samples and their summary: min, p50, p90, p99, p99.9, max.
//!
//! Owns only arithmetic on recorded samples; it never times anything itself. Samples are
//! kept whole (sorted once at the end) up to a fixed limit per recorder, so a
//! percentile is exact rather than bucketed.

use std::time::Duration;

/// At most this many samples per recorder (one per client): 4 bytes each, 16 MiB.
pub const MAX_SAMPLES_PER_RECORDER: usize = 4 << 20;

/// Latencies of one client, in microseconds.
#[derive(Debug, Default, Clone)]
pub struct Recorder {
    samples_us: Vec<u32>,
    /// Samples past MAX_SAMPLES_PER_RECORDER, counted but not kept.
    dropped: u64,
}

impl Recorder {
    pub fn record(&mut self, latency: Duration) {
        if self.samples_us.len() >= MAX_SAMPLES_PER_RECORDER {
            self.dropped += 1;
            return;
        }
        let us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        self.samples_us.push(us);
    }

    pub fn len(&self) -> usize {
        self.samples_us.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples_us.is_empty()
    }

    pub fn merge(&mut self, other: Recorder) {
        self.dropped += other.dropped;
        self.samples_us.extend(other.samples_us);
    }

    /// Sorts the samples and summarises them.
    pub fn summary(mut self) -> Summary {
        self.samples_us.sort_unstable();
        let s = &self.samples_us;
        let at = |q: f64| -> u32 {
            if s.is_empty() {
                return 0;
            }
            // Nearest rank: the smallest sample with at least q of all at or below it.
            let rank = (q * s.len() as f64).ceil() as usize;
            s[rank.clamp(1, s.len()) - 1]
        };
        Summary {
            count: s.len() as u64 + self.dropped,
            min_us: s.first().copied().unwrap_or(0),
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: s.last().copied().unwrap_or(0),
        }
    }
}

/// A latency distribution, in microseconds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub count: u64,
    pub min_us: u32,
    pub p50_us: u32,
    pub p90_us: u32,
    pub p99_us: u32,
    pub p999_us: u32,
    pub max_us: u32,
}

/// `us` as milliseconds with three decimals, for tables.
pub fn ms(us: u32) -> String {
    format!("{:.3}", f64::from(us) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut r = Recorder::default();
        for us in (1..=1000u64).rev() {
            r.record(Duration::from_micros(us));
        }
        let s = r.summary();
        assert_eq!(s.count, 1000);
        assert_eq!((s.min_us, s.max_us), (1, 1000));
        assert_eq!(
            (s.p50_us, s.p90_us, s.p99_us, s.p999_us),
            (500, 900, 990, 999)
        );
    }

    #[test]
    fn an_empty_recorder_summarises_to_zeros() {
        assert_eq!(Recorder::default().summary(), Summary::default());
    }
}
