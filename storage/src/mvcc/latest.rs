//! The newest version of recently used keys, in memory: what a write needs to know about
//! the key it changes (create revision, version, lease, the value for prev_kv) and what
//! a point read returns, without setting up an engine range scan per lookup (that scan
//! was 12% of a put's instructions; etcd keeps a whole in-memory key index for this).
//!
//! Owns the cache and the rule that keeps it right: only the applier fills it, under
//! the apply lock and before the revision it wrote is published, so an entry is always
//! the key's newest version at the moment it is read. A reader at revision R may use
//! an entry whose mod revision is ≤ R; a newer entry, or a miss, sends it to the engine.
//! It never holds a tombstone (compaction removes those from the engine, and a deleted
//! key's lookup must see what the engine sees), never holds more than its weight
//! capacity, and is emptied when a snapshot replaces the tree. Readers never fill it:
//! a reader's result may be stale by the time it would land.

use bytes::Bytes;

use super::keys::KvRecord;
use super::types::Revision;

/// What one entry costs beyond its key and value (the maps' slots, the record's fields).
const ENTRY_OVERHEAD_BYTES: u64 = 96;
/// Larger values are not cached: one would push out thousands of small keys.
pub const MAX_CACHED_VALUE_BYTES: usize = 64 << 10;
/// The entry count the cache sizes its tables for, per MiB of capacity.
const ESTIMATED_ENTRIES_PER_MIB: u64 = 2_048;

#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<Bytes, (Revision, KvRecord)> for Weigh {
    fn weight(&self, key: &Bytes, value: &(Revision, KvRecord)) -> u64 {
        key.len() as u64 + value.1.value.len() as u64 + ENTRY_OVERHEAD_BYTES
    }
}

/// Each cached key's newest version: (mod revision, record).
pub struct LatestCache {
    entries: quick_cache::sync::Cache<Bytes, (Revision, KvRecord), Weigh>,
}

impl LatestCache {
    pub fn new(capacity_bytes: u64) -> LatestCache {
        let capacity_bytes = capacity_bytes.max(1);
        let estimated = (capacity_bytes >> 20).max(1) * ESTIMATED_ENTRIES_PER_MIB;
        LatestCache {
            entries: quick_cache::sync::Cache::with_weighter(
                usize::try_from(estimated).unwrap_or(usize::MAX),
                capacity_bytes,
                Weigh,
            ),
        }
    }

    /// The key's newest version if cached and visible at `rev`; None means "ask the
    /// engine", never "the key does not exist".
    pub fn get_at(&self, key: &[u8], rev: Revision) -> Option<(Revision, KvRecord)> {
        self.entries.get(key).filter(|(mod_rev, _)| *mod_rev <= rev)
    }

    /// Records the key's newest version. Only the applier calls this, under the apply
    /// lock, before publishing a revision at or above `mod_rev`.
    pub(crate) fn set(&self, key: &Bytes, mod_rev: Revision, record: &KvRecord) {
        if record.tombstone || record.value.len() > MAX_CACHED_VALUE_BYTES {
            self.entries.remove(key.as_ref());
            return;
        }
        self.entries.insert(key.clone(), (mod_rev, record.clone()));
    }

    /// Forgets everything (a snapshot replaced the tree).
    pub(crate) fn clear(&self) {
        self.entries.clear();
    }

    #[cfg(test)]
    fn weight_bytes(&self) -> u64 {
        self.entries.weight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(value: &'static [u8], tombstone: bool) -> KvRecord {
        KvRecord {
            tombstone,
            create_revision: 2,
            version: 1,
            lease: 0,
            value: Bytes::from_static(value),
        }
    }

    #[test]
    fn an_entry_is_visible_only_at_or_after_its_revision() {
        let cache = LatestCache::new(1 << 20);
        let key = Bytes::from_static(b"k");
        cache.set(&key, 5, &record(b"v", false));
        assert!(
            cache.get_at(b"k", 4).is_none(),
            "a read at 4 must ask the engine"
        );
        assert_eq!(cache.get_at(b"k", 5).map(|(r, _)| r), Some(5));
        assert_eq!(
            cache.get_at(b"k", 9).map(|(_, v)| v.value),
            Some(Bytes::from_static(b"v"))
        );
    }

    #[test]
    fn a_delete_or_a_huge_value_removes_the_entry_rather_than_leaving_it_stale() {
        let cache = LatestCache::new(1 << 20);
        let key = Bytes::from_static(b"k");
        cache.set(&key, 5, &record(b"v", false));
        cache.set(&key, 6, &record(b"", true));
        assert!(cache.get_at(b"k", 9).is_none());
        cache.set(&key, 7, &record(b"v", false));
        let huge = KvRecord {
            value: Bytes::from(vec![0u8; MAX_CACHED_VALUE_BYTES + 1]),
            ..record(b"", false)
        };
        cache.set(&key, 8, &huge);
        assert!(cache.get_at(b"k", 9).is_none());
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let capacity_bytes = 256 << 10;
        let cache = LatestCache::new(capacity_bytes);
        for i in 0..100_000u32 {
            let key = Bytes::from(format!("key-{i}"));
            cache.set(&key, i64::from(i) + 1, &record(&[7u8; 100], false));
        }
        assert!(
            cache.weight_bytes() <= capacity_bytes,
            "{} bytes held",
            cache.weight_bytes()
        );
    }
}
