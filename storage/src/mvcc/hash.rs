//! A checksum of the key space at a revision, for Maintenance.HashKV: members of one
//! cluster that applied the same log must answer the same hash.
//!
//! What is hashed is what every member holds whatever its background compaction has
//! done so far: every version above the compacted revision, and for each key the newest
//! version at or below it (unless a tombstone). Never on a request's hot path: it reads
//! the whole key space.

use super::keys::{self, KvRecord};
use super::kvstore::MvccStore;
use super::types::Revision;
use crate::error::{MvccError, StoreError};

/// The answer to HashKV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    pub compact_revision: Revision,
    /// The revision hashed (the current one when 0 was asked).
    pub revision: Revision,
}

impl MvccStore {
    /// Hashes the key space at `revision` (0: the current revision). Blocking.
    pub fn hash_kv(&self, revision: Revision) -> Result<Result<KvHash, MvccError>, StoreError> {
        let current = self.revision();
        let compact = self.compact_revision();
        let at = if revision <= 0 { current } else { revision };
        if at > current {
            return Ok(Err(MvccError::FutureRevision));
        }
        if at < compact {
            return Ok(Err(MvccError::Compacted));
        }
        let tree = self.tree();
        // As etcd's, the hash starts with the name of the bucket it reads ("key"): an
        // empty key space never hashes to 0.
        let mut crc = crc32c::crc32c(b"key");
        let mut group: Option<Vec<u8>> = None;
        let mut below_compact_seen = false;
        for item in tree.scan_prefix([keys::KV]) {
            let (k, v) = item?;
            let (prefix, rev) = keys::split_kv_key(&k)
                .ok_or_else(|| StoreError::Corrupt(format!("bad kv key {k:?}")))?;
            if group.as_deref() != Some(prefix) {
                group = Some(prefix.to_vec());
                below_compact_seen = false;
            }
            if rev > at {
                continue;
            }
            if rev <= compact {
                // Only the newest version at or below the compacted revision counts.
                if below_compact_seen {
                    continue;
                }
                below_compact_seen = true;
                let record = KvRecord::decode(&v, false)
                    .ok_or_else(|| StoreError::Corrupt(format!("bad record at {k:?}")))?;
                if record.tombstone {
                    continue;
                }
            }
            crc = crc32c::crc32c_append(crc, &k);
            crc = crc32c::crc32c_append(crc, &v);
        }
        Ok(Ok(KvHash {
            hash: crc,
            compact_revision: compact,
            revision: at,
        }))
    }
}
