//! Reads of single stored records that every part of the store shares: a meta counter,
//! a key's version at a revision, a stored version as a key-value. Imports nothing of
//! the store above the engine and the layout (keys.rs), so that the store, the write
//! path, ranges and compaction all read the same way without importing each other.

use bytes::Bytes;

use super::keys::{self, KvRecord};
use super::types::{KeyValue, Revision};
use crate::error::StoreError;

/// A meta counter (8 bytes, big-endian), if stored.
pub(crate) fn read_i64(tree: &super::engine::Tree, key: &[u8]) -> Result<Option<i64>, StoreError> {
    match tree.get(key)? {
        None => Ok(None),
        Some(v) => {
            let bytes: [u8; 8] = v
                .as_ref()
                .try_into()
                .map_err(|_| StoreError::Corrupt(format!("meta {key:?} is not 8 bytes")))?;
            Ok(Some(i64::from_be_bytes(bytes)))
        }
    }
}

/// The newest stored version of `key` at or below `rev`, tombstones included.
pub(crate) fn version_at(
    tree: &super::engine::Tree,
    key: &[u8],
    rev: i64,
) -> Result<Option<(i64, KvRecord)>, StoreError> {
    let prefix = keys::kv_prefix(key);
    let mut from = prefix.clone();
    from.extend_from_slice(&keys::rev_desc(rev));
    // Bounded to this key's versions (revision 0 sorts last). Unbounded, a key with no
    // version landed on whatever family follows — the meta records, rewritten by
    // every apply — and the engine walked all their versions still in memory: puts of
    // new keys slowed to ~1.6 ms each as the memtable filled.
    let mut to = prefix.clone();
    to.extend_from_slice(&keys::rev_desc(0));
    let Some(item) = tree.range(from..=to).next() else {
        return Ok(None);
    };
    let (k, v) = item?;
    let Some((found_prefix, found_rev)) = keys::split_kv_key(&k) else {
        return Ok(None);
    };
    if found_prefix != prefix.as_slice() {
        return Ok(None);
    }
    let record = KvRecord::decode(&v, true)
        .ok_or_else(|| StoreError::Corrupt(format!("undecodable record for {k:?}")))?;
    Ok(Some((found_rev, record)))
}

/// A stored version of `key` as a client sees it; the value left out unless asked for.
pub(crate) fn to_kv(
    key: Bytes,
    mod_revision: Revision,
    record: KvRecord,
    with_value: bool,
) -> KeyValue {
    KeyValue {
        key,
        create_revision: record.create_revision,
        mod_revision,
        version: record.version,
        value: if with_value {
            record.value
        } else {
            Bytes::new()
        },
        lease: record.lease,
    }
}
