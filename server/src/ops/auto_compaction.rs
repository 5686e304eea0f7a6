//! Auto-compaction, as etcd's --auto-compaction-mode and --auto-compaction-retention:
//! `periodic` keeps a window of time of history, `revision` keeps a number of
//! revisions. Only the leader compacts (through Raft, like a client's Compact); every
//! member samples its revision so that a new leader knows what "an hour ago" was.
//!
//! Compaction itself runs in the background in storage (mvcc/compaction.rs) and never
//! stalls writes; this module only decides the revision, at most once per interval.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftkv_storage::mvcc::{Command, CommandResponse};

use crate::errors::ApiError;
use crate::member::node::Node;

/// etcd's revision-mode check interval.
const REVISION_CHECK_MS: u64 = 5 * 60 * 1000;
/// etcd's cap on the periodic compaction interval.
const MAX_PERIODIC_INTERVAL_MS: u64 = 60 * 60 * 1000;
/// Revision samples kept at most: periodic mode samples every interval/10, or more
/// sparsely when the retention is so long that this many would not cover it.
const MAX_SAMPLES: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Keep this much time of history.
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(i64),
}

/// Parses the flags as etcd does: periodic retention is a duration ("30m", "1h",
/// "10s") or a bare number of hours; revision retention is a count; "0" is off.
pub fn parse(mode: &str, retention: &str) -> Result<Option<Policy>, String> {
    let retention = retention.trim();
    if retention.is_empty() || retention == "0" {
        return Ok(None);
    }
    match mode {
        "periodic" => {
            let duration = parse_duration(retention).ok_or_else(|| {
                format!("--auto-compaction-retention {retention:?}: want a duration such as 1h, 30m or 10s (or a number of hours)")
            })?;
            if duration.is_zero() {
                return Ok(None);
            }
            Ok(Some(Policy::Periodic(duration)))
        }
        "revision" => {
            let count: i64 = retention.parse().map_err(|_| {
                format!("--auto-compaction-retention {retention:?}: want a number of revisions")
            })?;
            Ok((count > 0).then_some(Policy::Revision(count)))
        }
        other => Err(format!(
            "--auto-compaction-mode {other:?}: want periodic or revision"
        )),
    }
}

fn parse_duration(s: &str) -> Option<Duration> {
    if let Ok(hours) = s.parse::<u64>() {
        return Some(Duration::from_secs(hours.checked_mul(3600)?));
    }
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().ok()?;
    if !number.is_finite() || number < 0.0 {
        return None;
    }
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

/// How often the policy compacts, how often the revision is sampled, and how many
/// samples cover the retention.
fn intervals(policy: Policy) -> (Duration, Duration, usize) {
    match policy {
        Policy::Periodic(retention) => {
            let every = retention.min(Duration::from_millis(MAX_PERIODIC_INTERVAL_MS));
            let sample = (every / 10).max(retention / MAX_SAMPLES as u32);
            let needed = (retention.as_secs_f64() / sample.as_secs_f64().max(1e-3)).ceil();
            (every, sample, (needed as usize + 2).min(MAX_SAMPLES + 2))
        }
        Policy::Revision(_) => {
            let every = Duration::from_millis(REVISION_CHECK_MS);
            (every, every, 2)
        }
    }
}

/// The revision to compact to now, if any: periodic mode takes the newest sample at
/// least `retention` old; revision mode keeps `count` revisions below the current one.
fn target(
    policy: Policy,
    samples: &VecDeque<(Instant, i64)>,
    current: i64,
    now: Instant,
) -> Option<i64> {
    match policy {
        Policy::Periodic(retention) => samples
            .iter()
            .rev()
            .find(|(at, _)| now.duration_since(*at) >= retention)
            .map(|(_, rev)| *rev),
        Policy::Revision(count) => Some(current - count).filter(|r| *r > 0),
    }
}

/// Runs the policy until the member stops.
pub async fn run(node: Arc<Node>, policy: Policy) {
    let (compact_every, sample_every, max_samples) = intervals(policy);
    tracing::info!(
        ?policy,
        compact_every_ms = compact_every.as_millis() as u64,
        "auto-compaction on"
    );
    let mut samples: VecDeque<(Instant, i64)> = VecDeque::with_capacity(max_samples);
    let mut last_compaction = Instant::now();
    loop {
        let now = Instant::now();
        if samples.len() >= max_samples {
            samples.pop_front();
        }
        samples.push_back((now, node.store.revision()));
        if now.duration_since(last_compaction) >= compact_every {
            last_compaction = now;
            let wanted = target(policy, &samples, node.store.revision(), now);
            if let Some(revision) = wanted.filter(|r| *r > node.store.compact_revision()) {
                if node.is_leader() {
                    compact(&node, revision).await;
                }
            }
        }
        tokio::time::sleep(sample_every.max(Duration::from_millis(10))).await;
    }
}

async fn compact(node: &Node, revision: i64) {
    match node.write(Command::Compact { revision }).await {
        Ok(CommandResponse::Compact { .. }) => {
            tracing::info!(revision, "auto-compaction: compacted")
        }
        // Someone (the API server, say) compacted further already: nothing to do.
        Err(ApiError::Mvcc(raftkv_storage::MvccError::Compacted)) => {}
        Ok(other) => tracing::warn!(?other, "auto-compaction: unexpected answer"),
        Err(e) => tracing::warn!(revision, error = %e, "auto-compaction failed; will try again"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_as_etcds() {
        assert_eq!(
            parse("periodic", "1"),
            Ok(Some(Policy::Periodic(Duration::from_secs(3600))))
        );
        assert_eq!(
            parse("periodic", "30m"),
            Ok(Some(Policy::Periodic(Duration::from_secs(1800))))
        );
        assert_eq!(
            parse("periodic", "500ms"),
            Ok(Some(Policy::Periodic(Duration::from_millis(500))))
        );
        assert_eq!(parse("revision", "1000"), Ok(Some(Policy::Revision(1000))));
        assert_eq!(parse("periodic", "0"), Ok(None));
        assert_eq!(parse("revision", "0"), Ok(None));
        assert!(parse("hourly", "1").is_err());
        assert!(parse("revision", "1h").is_err());
        assert!(parse("periodic", "abc").is_err());
    }

    #[test]
    fn periodic_compacts_to_the_newest_sample_old_enough_and_revision_keeps_a_count() {
        let start = Instant::now();
        let samples: VecDeque<(Instant, i64)> = [(0, 10), (5, 20), (10, 30)]
            .iter()
            .map(|(s, r)| (start + Duration::from_secs(*s), *r))
            .collect();
        let now = start + Duration::from_secs(12);
        let hour = Policy::Periodic(Duration::from_secs(7));
        assert_eq!(target(hour, &samples, 40, now), Some(20));
        let long = Policy::Periodic(Duration::from_secs(60));
        assert_eq!(target(long, &samples, 40, now), None);
        assert_eq!(target(Policy::Revision(15), &samples, 40, now), Some(25));
        assert_eq!(target(Policy::Revision(50), &samples, 40, now), None);
    }

    #[test]
    fn intervals_follow_etcd() {
        let (every, sample, kept) = intervals(Policy::Periodic(Duration::from_secs(10 * 3600)));
        assert_eq!(every, Duration::from_secs(3600));
        assert_eq!(sample, Duration::from_secs(360));
        assert!(kept >= 100, "samples cover the whole 10 h: {kept}");
        let (every, _, _) = intervals(Policy::Periodic(Duration::from_secs(60)));
        assert_eq!(every, Duration::from_secs(60));
        let (_, sample, kept) = intervals(Policy::Periodic(Duration::from_secs(10_000 * 3600)));
        assert!(
            kept <= MAX_SAMPLES + 2 && sample * kept as u32 >= Duration::from_secs(10_000 * 3600)
        );
        let (every, _, _) = intervals(Policy::Revision(5));
        assert_eq!(every, Duration::from_secs(300));
    }
}
