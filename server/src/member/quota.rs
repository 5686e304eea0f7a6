//! etcd's space quota: a write that may grow the database is refused over the quota
//! or with the disk nearly full, and the NOSPACE alarm is raised through Raft.

use std::sync::atomic::{AtomicU64, Ordering};

use raftkv_storage::mvcc::{AlarmMember, AlarmType, Command};
use raftkv_storage::MvccError;

use super::node::Node;
use crate::errors::ApiError;

/// The quota and free-disk check reads the db size and statvfs at most this often; in
/// between, writes use the last answer (a write costs no extra I/O or locking).
pub(super) const SPACE_CHECK_INTERVAL_MS: u64 = 100;

/// The last space check: when (ms since start, +1 so 0 means never) and whether the
/// member was out of space then.
#[derive(Default)]
pub(super) struct SpaceCheck {
    checked_at_ms: AtomicU64,
    out_of_space: std::sync::atomic::AtomicBool,
}

impl Node {
    /// etcd's quota check, before proposing a write that may grow the database: over the
    /// quota (or with the disk nearly full) the write is refused and the NOSPACE alarm is
    /// raised for this member, through Raft. While the alarm is raised every member's
    /// applier refuses such writes as well.
    pub(super) async fn check_space(&self) -> Result<(), ApiError> {
        let store = &self.store;
        if store.has_alarm(AlarmType::NoSpace) {
            return Err(MvccError::NoSpace.into());
        }
        let now_ms = self.started.elapsed().as_millis() as u64 + 1;
        let checked_at_ms = self.space.checked_at_ms.load(Ordering::Relaxed);
        if checked_at_ms != 0 && now_ms.saturating_sub(checked_at_ms) < SPACE_CHECK_INTERVAL_MS {
            if self.space.out_of_space.load(Ordering::Relaxed) {
                return Err(MvccError::NoSpace.into());
            }
            return Ok(());
        }
        self.space.checked_at_ms.store(now_ms, Ordering::Relaxed);
        let db_bytes = store.size_on_disk_bytes().unwrap_or(0);
        let over_quota = self.config.quota_bytes().is_some_and(|q| db_bytes >= q);
        let free_bytes = crate::disk::free_bytes(&self.config.data_dir);
        let disk_full = free_bytes.is_some_and(|f| f < self.config.disk_reserve_bytes);
        self.space
            .out_of_space
            .store(over_quota || disk_full, Ordering::Relaxed);
        if !over_quota && !disk_full {
            return Ok(());
        }
        tracing::warn!(
            db_bytes,
            quota_bytes = self.config.quota_bytes(),
            free_bytes,
            reserve_bytes = self.config.disk_reserve_bytes,
            "out of space: raising the NOSPACE alarm; only reads, deletes and compactions are \
             taken until `etcdctl alarm disarm` (after compacting, or raising the quota, or \
             freeing disk space)"
        );
        let raise = Command::Alarm {
            activate: true,
            alarm: AlarmMember {
                member_id: self.id,
                alarm: AlarmType::NoSpace,
            },
        };
        // Boxed: raising goes through `write` again (an alarm needs no space).
        if let Err(e) = Box::pin(self.write(raise)).await {
            tracing::warn!(error = %e, "could not raise the NOSPACE alarm");
        }
        Err(MvccError::NoSpace.into())
    }
}
