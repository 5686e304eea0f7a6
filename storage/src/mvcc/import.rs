//! A snapshot image built from another store's history — etcd's, read from its data
//! file by the server — so that `install_snapshot` takes it as it takes an exported
//! one: the same keys with the same revisions, versions, leases and compacted revision.
//!
//! etcd keeps one entry per (revision, sub-revision); raftkv keeps one version per
//! (key, revision) and one change record per (revision, sub-revision) (`keys.rs`). This
//! module owns that mapping; it never touches a live store. Entries must come in
//! (revision, sub-revision) order, as etcd's key bucket holds them. History below the
//! compacted revision that raftkv would not keep is written anyway: the compactor,
//! which resumes at the member's first start, removes it.

use std::collections::HashMap;
use std::io::Write;

use bytes::Bytes;

use super::keys::{self, ChangeRecord, KvRecord};
use super::snapshot::{ExportSummary, ImageWriter, SnapshotError, SnapshotPoint};

/// The most changes one revision may hold (etcd's --max-txn-ops is 128 by default; a
/// file with more in one revision is not one etcd wrote).
const MAX_CHANGES_PER_REVISION: usize = 1 << 20;

/// One entry of etcd's history: what revision `revision`.`sub` did to `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub revision: i64,
    pub sub: i64,
    pub key: Bytes,
    /// A delete; the other fields are then zero.
    pub tombstone: bool,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub value: Bytes,
}

/// Builds an image: the point (revision, compacted revision, leases, auth) first, then
/// the history entry by entry, then `finish`.
pub struct ImageBuilder<W> {
    image: ImageWriter<W>,
    point_revision: i64,
    /// Each key's newest revision so far, tombstones included: what the next change
    /// of the key supersedes.
    newest: HashMap<Bytes, i64>,
    /// The entries of the revision being read, written when the next one begins.
    current: Vec<HistoryEntry>,
    last: Option<(i64, i64)>,
}

impl<W: Write> ImageBuilder<W> {
    pub fn start(out: W, point: &SnapshotPoint) -> Result<ImageBuilder<W>, SnapshotError> {
        Ok(ImageBuilder {
            image: ImageWriter::start(out, point)?,
            point_revision: point.revision,
            newest: HashMap::new(),
            current: Vec::new(),
            last: None,
        })
    }

    pub fn add(&mut self, entry: HistoryEntry) -> Result<(), SnapshotError> {
        let at = (entry.revision, entry.sub);
        if self.last.is_some_and(|last| last >= at) || entry.revision < 1 {
            return Err(SnapshotError::Corrupt(format!(
                "history out of order: {at:?} after {:?}",
                self.last
            )));
        }
        if entry.revision > self.point_revision {
            return Err(SnapshotError::Corrupt(format!(
                "revision {} is past the snapshot's {}",
                entry.revision, self.point_revision
            )));
        }
        if self
            .current
            .first()
            .is_some_and(|c| c.revision != entry.revision)
        {
            self.write_revision()?;
        }
        if self.current.len() >= MAX_CHANGES_PER_REVISION {
            return Err(SnapshotError::Corrupt(format!(
                "revision {} changes more than {MAX_CHANGES_PER_REVISION} keys",
                entry.revision
            )));
        }
        self.last = Some(at);
        self.current.push(entry);
        Ok(())
    }

    pub fn finish(mut self) -> Result<ExportSummary, SnapshotError> {
        self.write_revision()?;
        self.image.finish()
    }

    /// The current revision's versions and change records, as a transaction that made
    /// these changes would have stored them.
    fn write_revision(&mut self) -> Result<(), SnapshotError> {
        let changes = std::mem::take(&mut self.current);
        for (sub, change) in changes.iter().enumerate() {
            let record = KvRecord {
                tombstone: change.tombstone,
                create_revision: change.create_revision,
                version: change.version,
                lease: change.lease,
                value: change.value.clone(),
            };
            let overwritten = changes[sub + 1..].iter().any(|l| l.key == change.key);
            let prev_revision = self.newest.get(&change.key).copied().unwrap_or(0);
            let change_record = ChangeRecord {
                prev_revision,
                tombstone: change.tombstone,
                key: change.key.clone(),
                shadowed: (overwritten && !change.tombstone).then(|| record.clone()),
            };
            let sub = u32::try_from(sub).expect("bounded by MAX_CHANGES_PER_REVISION");
            self.image.pair(
                &keys::change_key(change.revision, sub),
                &change_record.encode(),
            )?;
            if !overwritten {
                self.image.pair(
                    &keys::kv_key(&change.key, change.revision),
                    &record.encode(),
                )?;
            }
        }
        for change in changes {
            self.newest.insert(change.key, change.revision);
        }
        Ok(())
    }
}
