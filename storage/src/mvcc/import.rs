//! etcd's layout of the key space's history, both ways: a snapshot image built from
//! etcd's history (read from its data file by the server), which `install_snapshot`
//! takes as it takes an exported one, and a store's history walked in etcd's order (for
//! the server to write etcd's data file).
//!
//! etcd keeps one entry per (revision, sub-revision); raftkv keeps one version per
//! (key, revision) and one change record per (revision, sub-revision) (`keys.rs`). This
//! module owns that mapping. Building never touches a live store: entries must come in
//! (revision, sub-revision) order, as etcd's key bucket holds them, and history below
//! the compacted revision that raftkv would not keep is written anyway (the compactor,
//! which resumes at the member's first start, removes it). Walking only reads.

use std::collections::HashMap;
use std::io::Write;

use bytes::Bytes;

use super::keys::{self, ChangeRecord, KvRecord};
use super::snapshot::{ExportPin, ExportSummary, ImageWriter, SnapshotError, SnapshotPoint};
use crate::error::StoreError;

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

impl ExportPin<'_> {
    /// Every version a snapshot at `point` holds, in etcd's key bucket order (revision,
    /// then sub-revision), as etcd would hold them after the same writes and compaction:
    /// each key's newest version below the compacted revision unless it is a delete (no
    /// change record of it is left; sub-revisions numbered in key order), then one entry
    /// per change record from the compacted revision to the point's, where at the
    /// compacted revision only each key's last write of it counts, as etcd keeps. Holds
    /// whether or not compaction has caught up. `point` must be taken under this pin.
    pub fn walk_etcd_history(
        &self,
        point: &SnapshotPoint,
        f: &mut dyn FnMut(HistoryEntry) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let compacted = point.compact_revision;
        let tree = self.store.tree();
        let mut below: Vec<(i64, Bytes)> = Vec::new();
        let mut last_prefix: Option<Vec<u8>> = None;
        for item in tree.scan_prefix([keys::KV]) {
            let (k, v) = item?;
            let (prefix, rev) = keys::split_kv_key(&k)
                .ok_or_else(|| StoreError::Corrupt(format!("bad stored key {k:?}")))?;
            // Versions come newest first: the first one at or below the compacted
            // revision is the one etcd keeps there.
            if rev > compacted || last_prefix.as_deref() == Some(prefix) {
                continue;
            }
            last_prefix = Some(prefix.to_vec());
            let tombstone = KvRecord::decode(&v, false)
                .ok_or_else(|| StoreError::Corrupt(format!("bad record at {k:?}")))?
                .tombstone;
            if rev < compacted && !tombstone {
                let key = keys::decode_prefix(prefix)
                    .ok_or_else(|| StoreError::Corrupt(format!("bad stored key {k:?}")))?;
                below.push((rev, key));
            }
        }
        below.sort();
        let mut sub = 0i64;
        for (i, (rev, key)) in below.iter().enumerate() {
            sub = if i > 0 && below[i - 1].0 == *rev {
                sub + 1
            } else {
                0
            };
            let record = stored(&tree, key, *rev)?
                .ok_or_else(|| StoreError::Corrupt(format!("version {rev} of {key:?} vanished")))?;
            f(entry(*rev, sub, key.clone(), record))?;
        }
        let from = keys::change_key(compacted.max(0), 0);
        let to = keys::change_key(point.revision, u32::MAX);
        for item in tree.range(from..=to) {
            let (k, v) = item?;
            let (rev, sub) = keys::split_change_key(&k)
                .ok_or_else(|| StoreError::Corrupt(format!("bad change key {k:?}")))?;
            let change = ChangeRecord::decode(&v)
                .ok_or_else(|| StoreError::Corrupt(format!("bad change at {k:?}")))?;
            let record = match stored(&tree, &change.key, rev)? {
                Some(record) => record,
                // A delete at the compacted revision that an older compactor removed:
                // etcd 3.5.1 kept none either.
                None if rev <= compacted => continue,
                None => {
                    return Err(StoreError::Corrupt(format!(
                        "version {rev} of {:?} vanished",
                        change.key
                    )))
                }
            };
            let overwritten = change.shadowed.is_some() || (change.tombstone && !record.tombstone);
            if rev <= compacted && overwritten {
                continue;
            }
            let record = match (&change.shadowed, change.tombstone) {
                (Some(put), _) => put.clone(),
                (None, true) => KvRecord {
                    tombstone: true,
                    create_revision: 0,
                    version: 0,
                    lease: 0,
                    value: Bytes::new(),
                },
                (None, false) => record,
            };
            f(entry(rev, i64::from(sub), change.key, record))?;
        }
        Ok(())
    }
}

/// The stored version of `key` at `rev`, if there is one.
fn stored(
    tree: &super::engine::Tree,
    key: &Bytes,
    rev: i64,
) -> Result<Option<KvRecord>, StoreError> {
    let Some(raw) = tree.get(keys::kv_key(key, rev))? else {
        return Ok(None);
    };
    KvRecord::decode(&raw, true)
        .map(Some)
        .ok_or_else(|| StoreError::Corrupt(format!("bad record of {key:?}")))
}

fn entry(revision: i64, sub: i64, key: Bytes, record: KvRecord) -> HistoryEntry {
    HistoryEntry {
        revision,
        sub,
        key,
        tombstone: record.tombstone,
        create_revision: record.create_revision,
        version: record.version,
        lease: record.lease,
        value: record.value,
    }
}
