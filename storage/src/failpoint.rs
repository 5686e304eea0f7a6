//! Failpoints for crash, slow-disk and slow-compaction tests, armed only by environment
//! variables read once per process:
//!
//! - `RAFTKV_FAILPOINT=<point>:<n>` aborts the process (as a crash: nothing is flushed,
//!   nothing unwinds) the n-th time the log reaches `<point>`. Points:
//!   `wal-before-write` (a batch is encoded, nothing written), `wal-after-write`
//!   (written, not yet fdatasynced), `wal-after-sync` (durable, not yet acknowledged).
//! - `RAFTKV_FSYNC_DELAY_MS=<ms>` sleeps before every fdatasync of the log: a slow disk.
//! - `RAFTKV_COMPACTION_PAUSE_MS=<ms>` rests at least that long between the batches of a
//!   revision compaction (mvcc/compaction.rs): a compaction that lasts long enough for a
//!   test to cut the power in the middle of it.
//!
//! Owns only those counters. Unarmed, a point costs one load of a OnceLock; it never
//! changes what the log or the key space holds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The points the log passes, in order, for every batch it writes.
pub const POINTS: [&str; 3] = ["wal-before-write", "wal-after-write", "wal-after-sync"];
/// The largest fsync delay or compaction pause accepted (a typo must not hang a test
/// for hours).
const MAX_DELAY_MS: u64 = 10_000;

struct Armed {
    point: Option<(String, u64)>,
    hits: AtomicU64,
    fsync_delay: Option<Duration>,
    compaction_pause: Option<Duration>,
}

fn delay_ms(variable: &str) -> Option<Duration> {
    std::env::var(variable)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| Duration::from_millis(ms.min(MAX_DELAY_MS)))
}

fn armed() -> &'static Armed {
    static ARMED: OnceLock<Armed> = OnceLock::new();
    ARMED.get_or_init(|| {
        let point = std::env::var("RAFTKV_FAILPOINT").ok().and_then(|v| {
            let (name, n) = v.rsplit_once(':')?;
            let n: u64 = n.parse().ok()?;
            POINTS.contains(&name).then(|| (name.to_string(), n))
        });
        if let Some((name, n)) = &point {
            tracing::warn!(point = %name, n, "failpoint armed: the process aborts there");
        }
        Armed {
            point,
            hits: AtomicU64::new(0),
            fsync_delay: delay_ms("RAFTKV_FSYNC_DELAY_MS"),
            compaction_pause: delay_ms("RAFTKV_COMPACTION_PAUSE_MS"),
        }
    })
}

/// The log reached `point`: aborts the process if this is the armed point's n-th hit.
pub fn hit(point: &'static str) {
    let armed = armed();
    let Some((name, n)) = &armed.point else {
        return;
    };
    if name == point && armed.hits.fetch_add(1, Ordering::SeqCst) + 1 == *n {
        eprintln!("failpoint {point}:{n} reached: aborting");
        std::process::abort();
    }
}

/// Sleeps for the configured fsync delay, if any (before each fdatasync of the log).
pub fn fsync_delay() {
    if let Some(delay) = armed().fsync_delay {
        std::thread::sleep(delay);
    }
}

/// The least rest between two compaction batches that the environment asks for.
pub fn compaction_pause() -> Duration {
    armed().compaction_pause.unwrap_or(Duration::ZERO)
}
