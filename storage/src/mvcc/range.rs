//! Reads: which version of each key is visible at a revision, and etcd's Range on top
//! (limit, exact count, more, filters, sort, keys_only, count_only).
//!
//! A `View` reads the committed tree at a revision and, inside a write transaction, the
//! writes that transaction has made so far (its overlay). Reads never take a lock: a
//! revision is a consistent cut because writers only add versions above it.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;

use super::keys::{self, KvRecord};
use super::reader::{to_kv, version_at};
use super::types::*;
use crate::error::StoreError;

/// Pending writes of a transaction: Some(kv) for a put, None for a delete.
pub(crate) type Overlay = BTreeMap<Bytes, Option<KeyValue>>;

/// After this many hidden versions of one key, jump to the next key with a fresh seek.
const VERSIONS_SKIPPED_BEFORE_SEEK: usize = 16;

pub(crate) struct View<'a> {
    pub tree: &'a super::engine::Tree,
    pub rev: Revision,
    pub overlay: Option<&'a Overlay>,
    /// Newest versions the applier cached; consulted for single-key reads.
    pub latest: &'a super::latest::LatestCache,
}

/// The bounds of a key range in etcd's terms.
#[derive(Debug, Clone)]
pub(crate) enum KeyRange {
    Single(Bytes),
    /// [start, end), or [start, ∞) when end is None.
    Span(Bytes, Option<Bytes>),
}

impl KeyRange {
    pub fn new(key: &Bytes, range_end: &Bytes) -> KeyRange {
        if range_end.is_empty() {
            KeyRange::Single(key.clone())
        } else if is_from_key(range_end) {
            KeyRange::Span(key.clone(), None)
        } else {
            KeyRange::Span(key.clone(), Some(range_end.clone()))
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Single(k) => k.as_ref() == key,
            KeyRange::Span(start, end) => {
                key >= start.as_ref() && end.as_ref().is_none_or(|e| key < e.as_ref())
            }
        }
    }
}

impl<'a> View<'a> {
    pub fn committed(
        tree: &'a super::engine::Tree,
        latest: &'a super::latest::LatestCache,
        rev: Revision,
    ) -> View<'a> {
        View {
            tree,
            rev,
            overlay: None,
            latest,
        }
    }

    /// Calls `f` with every key visible in `range`, in key order, until it returns false.
    pub fn for_each(
        &self,
        range: &KeyRange,
        with_value: bool,
        mut f: impl FnMut(KeyValue) -> bool,
    ) -> Result<(), StoreError> {
        let Some(overlay) = self.overlay else {
            return self.for_each_stored(range, with_value, f);
        };
        let pending: Vec<(&Bytes, &Option<KeyValue>)> = match range {
            KeyRange::Single(k) => overlay.get_key_value(k).into_iter().collect(),
            // An empty span (end at or before start) holds nothing; BTreeMap::range
            // would panic on it.
            KeyRange::Span(start, Some(end)) if end.as_ref() <= start.as_ref() => Vec::new(),
            KeyRange::Span(start, end) => {
                let upper: Bound<&Bytes> = end.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
                overlay
                    .range::<Bytes, _>((Bound::Included(start), upper))
                    .collect()
            }
        };
        let mut pending = pending.into_iter().peekable();
        let mut go_on = true;
        self.for_each_stored(range, with_value, |stored| {
            while let Some((k, _)) = pending.peek() {
                if k.as_ref() > stored.key.as_ref() {
                    break;
                }
                let Some((k, kv)) = pending.next() else {
                    break;
                };
                let same = k.as_ref() == stored.key.as_ref();
                if let Some(kv) = kv {
                    go_on = f(kv.clone());
                    if !go_on {
                        return false;
                    }
                }
                if same {
                    return true;
                }
            }
            go_on = f(stored);
            go_on
        })?;
        if go_on {
            for (_, kv) in pending {
                if let Some(kv) = kv {
                    if !f(kv.clone()) {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn for_each_stored(
        &self,
        range: &KeyRange,
        with_value: bool,
        mut f: impl FnMut(KeyValue) -> bool,
    ) -> Result<(), StoreError> {
        match range {
            KeyRange::Single(key) => {
                let found = match self.latest.get_at(key, self.rev) {
                    Some(hit) => Some(hit),
                    None => version_at(self.tree, key, self.rev)?,
                };
                if let Some((rev, record)) = found {
                    if !record.tombstone {
                        f(to_kv(key.clone(), rev, record, with_value));
                    }
                }
                Ok(())
            }
            KeyRange::Span(start, end) => {
                if end.as_ref().is_some_and(|e| e.as_ref() <= start.as_ref()) {
                    return Ok(());
                }
                let lower = keys::kv_prefix(start);
                let upper = match end {
                    Some(e) => keys::kv_prefix(e),
                    None => vec![keys::KV + 1],
                };
                self.scan(lower, upper, with_value, &mut f)
            }
        }
    }

    fn scan(
        &self,
        lower: Vec<u8>,
        upper: Vec<u8>,
        with_value: bool,
        f: &mut impl FnMut(KeyValue) -> bool,
    ) -> Result<(), StoreError> {
        let mut iter = self.tree.range(lower..upper.clone());
        // The key whose versions we are walking, and whether its visible one was found.
        let mut current: Option<Vec<u8>> = None;
        let mut resolved = false;
        let mut skipped = 0usize;
        while let Some(item) = iter.next() {
            let (k, v) = item?;
            let (prefix, rev) = keys::split_kv_key(&k)
                .ok_or_else(|| StoreError::Corrupt(format!("bad kv key {k:?}")))?;
            if current.as_deref() != Some(prefix) {
                current = Some(prefix.to_vec());
                resolved = false;
                skipped = 0;
            }
            if resolved || rev > self.rev {
                skipped += 1;
                if skipped > VERSIONS_SKIPPED_BEFORE_SEEK {
                    skipped = 0;
                    let mut target = prefix.to_vec();
                    iter = if resolved {
                        // Past every remaining (older) version of this key.
                        target.extend_from_slice(&[0xff; 8]);
                        self.tree
                            .range((Bound::Excluded(target), Bound::Excluded(upper.clone())))
                    } else {
                        // Straight to the newest version the view can see.
                        target.extend_from_slice(&keys::rev_desc(self.rev));
                        self.tree
                            .range((Bound::Included(target), Bound::Excluded(upper.clone())))
                    };
                }
                continue;
            }
            resolved = true;
            let record = KvRecord::decode(&v, with_value)
                .ok_or_else(|| StoreError::Corrupt(format!("bad record at {k:?}")))?;
            if record.tombstone {
                continue;
            }
            let key = keys::decode_prefix(prefix)
                .ok_or_else(|| StoreError::Corrupt(format!("bad key {k:?}")))?;
            if !f(to_kv(key, rev, record, with_value)) {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// etcd's executeRange over a view; the caller has checked the revision and sets the
/// header revision.
pub(crate) fn execute(view: &View<'_>, req: &RangeRequest) -> Result<RangeResponse, StoreError> {
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    // Sorting or filtering needs every key; otherwise fetch one past the limit for `more`.
    // As etcd, this looks at the requested order only: a non-key target without an order
    // sorts (ascending) just the keys the limit fetched.
    let fetch_limit: usize = if req.sort_order != SortOrder::None || filtered || req.limit <= 0 {
        usize::MAX
    } else {
        usize::try_from(req.limit)
            .unwrap_or(usize::MAX)
            .saturating_add(1)
    };
    let with_value = !req.keys_only || req.sort_target == SortTarget::Value;
    let range = KeyRange::new(&req.key, &req.range_end);
    let mut count: i64 = 0;
    let mut kvs = Vec::new();
    view.for_each(&range, with_value && !req.count_only, |kv| {
        count += 1;
        if !req.count_only && kvs.len() < fetch_limit {
            kvs.push(kv);
        }
        true
    })?;
    if req.count_only {
        return Ok(RangeResponse {
            revision: 0,
            kvs: Vec::new(),
            more: false,
            count,
        });
    }
    if filtered {
        kvs.retain(|kv| {
            !(req.max_mod_revision != 0 && kv.mod_revision > req.max_mod_revision
                || req.min_mod_revision != 0 && kv.mod_revision < req.min_mod_revision
                || req.max_create_revision != 0 && kv.create_revision > req.max_create_revision
                || req.min_create_revision != 0 && kv.create_revision < req.min_create_revision)
        });
    }
    let order = match (req.sort_target, req.sort_order) {
        (SortTarget::Key, SortOrder::Ascend) => SortOrder::None,
        (SortTarget::Key, order) => order,
        (_, SortOrder::None) => SortOrder::Ascend,
        (_, order) => order,
    };
    if order != SortOrder::None {
        kvs.sort_by(|a, b| {
            let ord = match req.sort_target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            };
            if order == SortOrder::Descend {
                ord.reverse()
            } else {
                ord
            }
        });
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() as i64 > req.limit {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value = Bytes::new();
        }
    }
    Ok(RangeResponse {
        revision: 0,
        kvs,
        more,
        count,
    })
}
