//! Snapshots of the key space: a consistent image, streamed out and installed back.
//!
//! ```text
//! "RKVSNAP1"                                  magic
//! frame*: tag u8, len u32 LE, payload         1 = header, 2 = stored pair (klen u32 LE, key, value),
//!                                             3 = auth state (postcard; only once users or roles exist)
//! tag 0xff, len 4, crc32c u32 LE              checksum of every byte before this frame
//! ```
//!
//! A `SnapshotPoint` is taken between two applies (it copies the counters, the lease
//! table and the applied log id); the export then writes every version and change at or
//! below that revision, which writers never touch again, while holding off compaction.
//! Install verifies the checksum while loading into a fresh engine tree and only then
//! switches the store over to it, so a corrupt or cut-off snapshot changes nothing.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::keys::{self, KvRecord};
use super::kvstore::MvccStore;
use super::types::*;
use super::EventBatch;
use crate::error::StoreError;

const MAGIC: &[u8; 8] = b"RKVSNAP1";
const TAG_HEADER: u8 = 1;
const TAG_PAIR: u8 = 2;
/// A frame of its own, not a header field: snapshots from before users and roles
/// existed still decode, and have etcd's fresh auth store.
const TAG_AUTH: u8 = 3;
const TAG_TRAILER: u8 = 0xff;
/// Pairs written to the engine per batch during install.
const INSTALL_BATCH_PAIRS: usize = 10_000;
/// A frame larger than this is corruption: no key or value comes close.
const MAX_FRAME_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot is corrupt: {0}")]
    Corrupt(String),
    #[error("snapshot checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    Checksum { stored: u32, computed: u32 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("snapshot io: {0}")]
    Io(#[from] std::io::Error),
    #[error("snapshot export cancelled")]
    Cancelled,
}

impl From<super::engine::EngineError> for SnapshotError {
    fn from(e: super::engine::EngineError) -> Self {
        SnapshotError::Store(StoreError::Engine(e))
    }
}

/// The state a snapshot captures, taken between two applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPoint {
    pub revision: Revision,
    pub compact_revision: Revision,
    pub applied: Vec<u8>,
    pub membership: Vec<u8>,
    pub leases: Vec<Lease>,
    pub alarms: Vec<AlarmMember>,
    /// Users, roles and the auth switch, when they differ from a fresh store's; written
    /// in a `TAG_AUTH` frame, not in the header.
    #[serde(skip)]
    pub auth: Option<crate::auth::AuthState>,
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportSummary {
    pub size_bytes: u64,
    pub pairs: u64,
    pub checksum: u32,
}

struct Checksummed<W> {
    inner: W,
    crc: u32,
    written: u64,
}

impl<W: Write> Checksummed<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.written += bytes.len() as u64;
        self.inner.write_all(bytes)
    }

    fn frame(&mut self, tag: u8, parts: &[&[u8]]) -> std::io::Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.put(&[tag])?;
        self.put(&(len as u32).to_le_bytes())?;
        for part in parts {
            self.put(part)?;
        }
        Ok(())
    }
}

/// Writes one snapshot image: the magic, the header and auth frames, pairs, then the
/// checksum trailer. Export and import (`import.rs`) both write through it.
pub(super) struct ImageWriter<W> {
    out: Checksummed<W>,
    pairs: u64,
}

impl<W: Write> ImageWriter<W> {
    pub(super) fn start(out: W, point: &SnapshotPoint) -> Result<ImageWriter<W>, SnapshotError> {
        let mut out = Checksummed {
            inner: out,
            crc: 0,
            written: 0,
        };
        out.put(MAGIC)?;
        let header =
            postcard::to_allocvec(point).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
        out.frame(TAG_HEADER, &[&header])?;
        if let Some(auth) = &point.auth {
            let bytes =
                postcard::to_allocvec(auth).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
            out.frame(TAG_AUTH, &[&bytes])?;
        }
        Ok(ImageWriter { out, pairs: 0 })
    }

    /// A stored pair ('k' or 'r' keys only).
    pub(super) fn pair(&mut self, key: &[u8], value: &[u8]) -> Result<(), SnapshotError> {
        debug_assert!(matches!(key.first(), Some(&keys::KV) | Some(&keys::CHANGE)));
        self.out
            .frame(TAG_PAIR, &[&(key.len() as u32).to_le_bytes(), key, value])?;
        self.pairs += 1;
        Ok(())
    }

    pub(super) fn pairs(&self) -> u64 {
        self.pairs
    }

    pub(super) fn finish(mut self) -> Result<ExportSummary, SnapshotError> {
        let crc = self.out.crc;
        self.out.put(&[TAG_TRAILER])?;
        self.out.put(&4u32.to_le_bytes())?;
        self.out.put(&crc.to_le_bytes())?;
        self.out.inner.flush()?;
        Ok(ExportSummary {
            size_bytes: self.out.written,
            pairs: self.pairs,
            checksum: crc,
        })
    }
}

impl MvccStore {
    /// Captures what a snapshot at this moment holds. Call it between applies.
    pub fn snapshot_point(&self) -> Result<SnapshotPoint, StoreError> {
        let _writer = self
            .inner
            .apply_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (applied, membership) = self.applied_meta()?;
        Ok(SnapshotPoint {
            revision: self.revision(),
            compact_revision: self.compact_revision(),
            applied: applied.unwrap_or_default(),
            membership: membership.unwrap_or_default(),
            leases: self.leases(),
            alarms: self.alarms(),
            auth: Some((*self.auth()).clone()).filter(|a| *a != Default::default()),
        })
    }

    /// Writes the snapshot of `point` to `out`. Blocking; run it off the async threads.
    pub fn export_snapshot(
        &self,
        point: &SnapshotPoint,
        out: impl Write,
    ) -> Result<ExportSummary, SnapshotError> {
        self.pin_for_export()
            .export(point, out, &AtomicBool::new(false))
    }

    /// Holds compaction off until the pin is dropped, so that the history at and below a
    /// point taken under it stays whole while it is exported. Waits for a running
    /// compaction batch (bounded) or export (unbounded) to end.
    pub fn pin_for_export(&self) -> ExportPin<'_> {
        ExportPin {
            store: self,
            _no_compaction: super::engine::lock(&self.inner.compaction_lock),
        }
    }
}

/// Compaction held off for an export (`MvccStore::pin_for_export`).
pub struct ExportPin<'a> {
    pub(super) store: &'a MvccStore,
    _no_compaction: std::sync::MutexGuard<'a, ()>,
}

/// Pairs written between two looks at an export's cancel flag.
const EXPORT_CANCEL_CHECK_PAIRS: u64 = 4_096;

impl ExportPin<'_> {
    /// The point a snapshot at this moment holds; the pin keeps its history whole.
    pub fn point(&self) -> Result<SnapshotPoint, StoreError> {
        self.store.snapshot_point()
    }

    /// Writes the snapshot of `point` to `out`; gives up with `Cancelled` soon after
    /// `cancel` is set. Blocking; run it off the async threads.
    pub fn export(
        &self,
        point: &SnapshotPoint,
        out: impl Write,
        cancel: &AtomicBool,
    ) -> Result<ExportSummary, SnapshotError> {
        let tree = self.store.tree();
        let mut image = ImageWriter::start(out, point)?;
        for prefix in [keys::KV, keys::CHANGE] {
            for item in tree.scan_prefix([prefix]) {
                let (k, v) = item?;
                let rev = if prefix == keys::KV {
                    keys::split_kv_key(&k).map(|(_, r)| r)
                } else {
                    keys::split_change_key(&k).map(|(r, _)| r)
                };
                let rev =
                    rev.ok_or_else(|| SnapshotError::Corrupt(format!("bad stored key {k:?}")))?;
                if rev > point.revision {
                    continue;
                }
                image.pair(&k, &v)?;
                if image.pairs().is_multiple_of(EXPORT_CANCEL_CHECK_PAIRS)
                    && cancel.load(Ordering::Relaxed)
                {
                    return Err(SnapshotError::Cancelled);
                }
            }
        }
        image.finish()
    }
}

impl MvccStore {
    /// Replaces the whole store with the snapshot read from `input`, after verifying it.
    /// Returns the snapshot's point. On any error the store is left as it was.
    pub fn install_snapshot(&self, input: impl Read) -> Result<SnapshotPoint, SnapshotError> {
        let _writer = self
            .inner
            .apply_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let _no_compaction = self
            .inner
            .compaction_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let db = &self.inner.db;
        let current = self.tree();
        let fresh = db.fresh_tree(&current)?;
        let point = match load(&fresh, input) {
            Ok(point) => point,
            Err(e) => {
                db.drop_tree(fresh)?;
                return Err(e);
            }
        };
        let old = std::mem::replace(
            &mut *self.inner.tree.write().unwrap_or_else(|e| e.into_inner()),
            fresh.clone(),
        );
        drop(current);
        // The cached newest versions are the old tree's.
        self.inner.latest.clear();
        if let Err(e) = db.switch_to(&fresh, old) {
            tracing::warn!(error = %e, "mvcc: could not switch durably to the installed snapshot's tree");
            return Err(e.into());
        }
        self.load_counters()?;
        if self.inner.compact_revision.load(Ordering::SeqCst) > 0 {
            self.inner.compactor.wake();
        }
        // The revisions the snapshot brought are in history only: no live batch will
        // carry them. A watcher waiting for the next live batch would wait for the next
        // write (forever, on a quiet cluster); this empty batch wakes it to read them.
        let _ = self.inner.feed.send(Arc::new(EventBatch {
            revision: self.revision(),
            events: Vec::new(),
        }));
        Ok(point)
    }
}

struct Reader<R> {
    inner: R,
    crc: u32,
}

impl<R: Read> Reader<R> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<(), SnapshotError> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                SnapshotError::Corrupt("snapshot ends early".into())
            }
            _ => SnapshotError::Io(e),
        })?;
        self.crc = crc32c::crc32c_append(self.crc, buf);
        Ok(())
    }

    /// Reads one frame header: (tag, len), with the crc as of before it.
    fn frame_header(&mut self) -> Result<(u8, usize, u32), SnapshotError> {
        let before = self.crc;
        let mut head = [0u8; 5];
        self.exact(&mut head)?;
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_FRAME_BYTES {
            return Err(SnapshotError::Corrupt(format!("frame of {len} bytes")));
        }
        Ok((head[0], len, before))
    }
}

fn load(tree: &super::engine::Tree, input: impl Read) -> Result<SnapshotPoint, SnapshotError> {
    let mut r = Reader {
        inner: input,
        crc: 0,
    };
    let mut magic = [0u8; 8];
    r.exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(SnapshotError::Corrupt(
            "not a raftkv snapshot (bad magic)".into(),
        ));
    }
    let (tag, len, _) = r.frame_header()?;
    if tag != TAG_HEADER {
        return Err(SnapshotError::Corrupt("missing header".into()));
    }
    let mut header = vec![0u8; len];
    r.exact(&mut header)?;
    let mut point: SnapshotPoint = postcard::from_bytes(&header)
        .map_err(|e| SnapshotError::Corrupt(format!("undecodable header: {e}")))?;
    let mut batch = super::engine::Batch::default();
    let mut in_batch = 0usize;
    let mut buf = Vec::new();
    loop {
        let (tag, len, crc_before) = r.frame_header()?;
        match tag {
            TAG_PAIR => {
                buf.resize(len, 0);
                r.exact(&mut buf)?;
                let klen = buf
                    .get(..4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                    .filter(|&k| 4 + k <= buf.len())
                    .ok_or_else(|| SnapshotError::Corrupt("bad pair frame".into()))?;
                let key = &buf[4..4 + klen];
                if !matches!(key.first(), Some(&keys::KV) | Some(&keys::CHANGE)) {
                    return Err(SnapshotError::Corrupt(format!("unexpected key {key:?}")));
                }
                batch.insert(key, &buf[4 + klen..]);
                in_batch += 1;
                if in_batch >= INSTALL_BATCH_PAIRS {
                    tree.apply_batch(std::mem::take(&mut batch))?;
                    in_batch = 0;
                }
            }
            TAG_AUTH => {
                buf.resize(len, 0);
                r.exact(&mut buf)?;
                let auth = postcard::from_bytes(&buf)
                    .map_err(|e| SnapshotError::Corrupt(format!("undecodable auth state: {e}")))?;
                point.auth = Some(auth);
            }
            TAG_TRAILER => {
                let mut stored = [0u8; 4];
                r.exact(&mut stored)?;
                let stored = u32::from_le_bytes(stored);
                if len != 4 || stored != crc_before {
                    return Err(SnapshotError::Checksum {
                        stored,
                        computed: crc_before,
                    });
                }
                break;
            }
            other => return Err(SnapshotError::Corrupt(format!("unknown frame tag {other}"))),
        }
    }
    let mut probe = [0u8; 1];
    if r.inner.read(&mut probe)? != 0 {
        return Err(SnapshotError::Corrupt("data after the checksum".into()));
    }
    tree.apply_batch(batch)?;
    finish_install(tree, &point)?;
    Ok(point)
}

/// Writes what the snapshot carries outside the pairs: counters, leases, attachments.
fn finish_install(tree: &super::engine::Tree, point: &SnapshotPoint) -> Result<(), SnapshotError> {
    let mut batch = super::engine::Batch::default();
    batch.insert(keys::META_REVISION, &point.revision.to_be_bytes()[..]);
    batch.insert(
        keys::META_COMPACT,
        &point.compact_revision.to_be_bytes()[..],
    );
    if !point.applied.is_empty() {
        batch.insert(keys::META_APPLIED, point.applied.as_slice());
    }
    if !point.membership.is_empty() {
        batch.insert(keys::META_MEMBERSHIP, point.membership.as_slice());
    }
    for lease in &point.leases {
        let bytes =
            postcard::to_allocvec(lease).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
        batch.insert(&keys::lease_key(lease.id)[..], bytes);
    }
    if !point.alarms.is_empty() {
        let bytes = postcard::to_allocvec(&point.alarms)
            .map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
        batch.insert(keys::META_ALARMS, bytes);
    }
    if let Some(auth) = &point.auth {
        let bytes =
            postcard::to_allocvec(auth).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
        batch.insert(keys::META_AUTH, bytes);
    }
    // Attachments follow from each key's newest version: rebuild them.
    let mut last_prefix: Option<Vec<u8>> = None;
    for item in tree.scan_prefix([keys::KV]) {
        let (k, v) = item?;
        let Some((prefix, _)) = keys::split_kv_key(&k) else {
            continue;
        };
        if last_prefix.as_deref() == Some(prefix) {
            continue;
        }
        last_prefix = Some(prefix.to_vec());
        let record = KvRecord::decode(&v, false)
            .ok_or_else(|| SnapshotError::Corrupt(format!("bad record {k:?}")))?;
        if !record.tombstone && record.lease != 0 {
            let key = keys::decode_prefix(prefix)
                .ok_or_else(|| SnapshotError::Corrupt(format!("bad key {k:?}")))?;
            batch.insert(keys::attach_key(record.lease, &key), &[][..]);
        }
    }
    tree.apply_batch(batch)?;
    Ok(())
}
