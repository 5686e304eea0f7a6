//! A read-only reader of bbolt files, the database etcd keeps its key space in (and
//! what `etcdctl snapshot save` writes): pages read one at a time from the file, never
//! the whole file in memory, and every offset checked against its page — a damaged file
//! is an error, never a panic.
//!
//! Layout (bbolt's documented page format, all integers little-endian):
//! ```text
//! page:    id u64 | flags u16 | count u16 | overflow u32 | data…   (1 + overflow pages long)
//! meta:    magic u32 0xED0CDAED | version u32 2 | page_size u32 | flags u32 |
//!          root bucket (root u64, sequence u64) | freelist u64 | high water u64 |
//!          txid u64 | checksum u64 (FNV-1a 64 of the bytes before it)
//! branch:  count × (pos u32 | ksize u32 | child page u64); key at element + pos
//! leaf:    count × (flags u32 | pos u32 | ksize u32 | vsize u32); key then value
//!          at element + pos; flags 1: the value is a bucket (root u64, sequence u64),
//!          with root 0 an inline bucket whose page follows in the value
//! ```
//! Pages 0 and 1 are the two metas; the valid one with the higher txid is current.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub(super) const MAGIC: u32 = 0xED0C_DAED;
pub(super) const VERSION: u32 = 2;
pub(super) const PAGE_HEADER_BYTES: usize = 16;
pub(super) const ELEMENT_BYTES: usize = 16;
const BUCKET_HEADER_BYTES: usize = 16;
pub(super) const BRANCH_PAGE: u16 = 0x01;
pub(super) const LEAF_PAGE: u16 = 0x02;
pub(super) const BUCKET_LEAF: u32 = 0x01;
/// bbolt's page sizes are the OS page size: 4 KiB to 64 KiB in practice.
const PAGE_SIZE_RANGE: std::ops::RangeInclusive<u32> = 512..=1 << 20;
/// Deeper than any B+tree of a file that fits on a disk: a cycle in a damaged file.
const MAX_DEPTH: usize = 64;
/// A page with its overflow longer than this is damage.
const MAX_PAGE_BYTES: u64 = 1 << 32;

#[derive(Debug, thiserror::Error)]
pub enum BboltError {
    #[error("reading the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a bbolt database: {0}")]
    NotBbolt(String),
    #[error("damaged bbolt database: {0}")]
    Damaged(String),
}

fn damaged(what: impl Into<String>) -> BboltError {
    BboltError::Damaged(what.into())
}

/// What a walk calls with each entry: key, value, whether the value is a bucket.
type Visit<'a> = dyn FnMut(&[u8], &[u8], bool) + 'a;

/// An open bbolt file at its current meta.
pub struct Db {
    file: File,
    page_size: u64,
    /// Bytes of the file that are the database (a snapshot may carry more after it).
    db_bytes: u64,
    root: u64,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// bbolt's meta checksum: FNV-1a, 64 bits.
pub(super) fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A meta page's (page size, root page, txid), if it is a valid meta.
fn parse_meta(page: &[u8]) -> Option<(u32, u64, u64)> {
    let meta = page.get(PAGE_HEADER_BYTES..PAGE_HEADER_BYTES + 64)?;
    if u32_at(meta, 0)? != MAGIC || u32_at(meta, 4)? != VERSION {
        return None;
    }
    if fnv1a64(&meta[..56]) != u64_at(meta, 56)? {
        return None;
    }
    Some((u32_at(meta, 8)?, u64_at(meta, 16)?, u64_at(meta, 48)?))
}

impl Db {
    /// Opens `path`, whose first `db_bytes` are the database.
    pub fn open(path: &Path, db_bytes: u64) -> Result<Db, BboltError> {
        let file = File::open(path)?;
        let mut first = vec![0u8; 4096];
        let n = file.read_at(&mut first, 0)?;
        first.truncate(n);
        let (page_size, _, _) = parse_meta(&first).ok_or_else(|| {
            BboltError::NotBbolt("its first page is not a bbolt meta page".into())
        })?;
        if !PAGE_SIZE_RANGE.contains(&page_size) {
            return Err(damaged(format!("page size {page_size}")));
        }
        let mut db = Db {
            file,
            page_size: u64::from(page_size),
            db_bytes,
            root: 0,
        };
        let metas = [db.raw_page(0, 1)?, db.raw_page(1, 1)?];
        let (_, root, _) = metas
            .iter()
            .filter_map(|p| parse_meta(p))
            .max_by_key(|(_, _, txid)| *txid)
            .ok_or_else(|| damaged("no valid meta page"))?;
        db.root = root;
        Ok(db)
    }

    fn raw_page(&self, id: u64, pages: u64) -> Result<Vec<u8>, BboltError> {
        let at = id
            .checked_mul(self.page_size)
            .ok_or_else(|| damaged("page id"))?;
        let len = pages
            .checked_mul(self.page_size)
            .filter(|l| *l <= MAX_PAGE_BYTES);
        let len = len.ok_or_else(|| damaged(format!("page {id} overflow")))?;
        if at.checked_add(len).is_none_or(|end| end > self.db_bytes) {
            return Err(damaged(format!("page {id} is past the end of the file")));
        }
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, at)?;
        Ok(buf)
    }

    /// Page `id` with its overflow pages.
    fn page(&self, id: u64) -> Result<Vec<u8>, BboltError> {
        let head = self.raw_page(id, 1)?;
        let overflow = u32_at(&head, 12).ok_or_else(|| damaged("page header"))?;
        if overflow == 0 {
            return Ok(head);
        }
        self.raw_page(id, 1 + u64::from(overflow))
    }

    /// Calls `f` with each key and value of the top-level bucket `name`, in key order;
    /// a missing bucket calls it never. Nested buckets' entries are skipped.
    pub fn for_each(&self, name: &[u8], f: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), BboltError> {
        let Some(header) = self.bucket_header(name)? else {
            return Ok(());
        };
        let root = u64_at(&header, 0).ok_or_else(|| damaged("bucket header"))?;
        let mut visit = |k: &[u8], v: &[u8], is_bucket: bool| {
            if !is_bucket {
                f(k, v);
            }
        };
        if root == 0 {
            let inline = header
                .get(BUCKET_HEADER_BYTES..)
                .ok_or_else(|| damaged("inline bucket"))?;
            return walk_leaf(inline, &mut visit);
        }
        self.walk_page(root, 0, &mut visit)
    }

    /// The greatest key of the top-level bucket `name` (bbolt keeps keys sorted): the
    /// rightmost path down, a page per level. None for a missing or empty bucket.
    pub fn last_key(&self, name: &[u8]) -> Result<Option<Vec<u8>>, BboltError> {
        let Some(header) = self.bucket_header(name)? else {
            return Ok(None);
        };
        let mut id = u64_at(&header, 0).ok_or_else(|| damaged("bucket header"))?;
        if id == 0 {
            let inline = header
                .get(BUCKET_HEADER_BYTES..)
                .ok_or_else(|| damaged("inline bucket"))?;
            return last_leaf_key(inline);
        }
        for _ in 0..=MAX_DEPTH {
            let page = self.page(id)?;
            match u16_at(&page, 8).ok_or_else(|| damaged("page header"))? {
                LEAF_PAGE => return last_leaf_key(&page),
                BRANCH_PAGE => {
                    let children = branch_children(&page)?;
                    id = *children.last().ok_or_else(|| damaged("an empty branch"))?;
                }
                other => return Err(damaged(format!("page {id} has flags {other:#x} in a tree"))),
            }
        }
        Err(damaged("the tree is deeper than any real one (a cycle?)"))
    }

    /// Whether the file has a top-level bucket `name`.
    pub fn has_bucket(&self, name: &[u8]) -> Result<bool, BboltError> {
        Ok(self.bucket_header(name)?.is_some())
    }

    fn bucket_header(&self, name: &[u8]) -> Result<Option<Vec<u8>>, BboltError> {
        let mut bucket = None;
        self.walk_page(self.root, 0, &mut |key, value, is_bucket| {
            if is_bucket && key == name {
                bucket = Some(value.to_vec());
            }
        })?;
        Ok(bucket)
    }

    fn walk_page(&self, id: u64, depth: usize, f: &mut Visit) -> Result<(), BboltError> {
        if depth > MAX_DEPTH {
            return Err(damaged("the tree is deeper than any real one (a cycle?)"));
        }
        let page = self.page(id)?;
        let flags = u16_at(&page, 8).ok_or_else(|| damaged("page header"))?;
        match flags {
            LEAF_PAGE => walk_leaf(&page, f),
            BRANCH_PAGE => {
                for child in branch_children(&page)? {
                    self.walk_page(child, depth + 1, f)?;
                }
                Ok(())
            }
            other => Err(damaged(format!("page {id} has flags {other:#x} in a tree"))),
        }
    }
}

fn branch_children(page: &[u8]) -> Result<Vec<u64>, BboltError> {
    let count = u16_at(page, 10).ok_or_else(|| damaged("page header"))?;
    (0..usize::from(count))
        .map(|i| {
            u64_at(page, PAGE_HEADER_BYTES + i * ELEMENT_BYTES + 8)
                .ok_or_else(|| damaged("branch element"))
        })
        .collect()
}

fn last_leaf_key(page: &[u8]) -> Result<Option<Vec<u8>>, BboltError> {
    let mut last = None;
    walk_leaf(page, &mut |k, _, is_bucket| {
        if !is_bucket {
            last = Some(k.to_vec());
        }
    })?;
    Ok(last)
}

/// The entries of a leaf page (`page` starts at its header).
fn walk_leaf(page: &[u8], f: &mut Visit) -> Result<(), BboltError> {
    let count = u16_at(page, 10).ok_or_else(|| damaged("page header"))?;
    for i in 0..usize::from(count) {
        let at = PAGE_HEADER_BYTES + i * ELEMENT_BYTES;
        let element = (|| {
            let flags = u32_at(page, at)?;
            let pos = at.checked_add(u32_at(page, at + 4)? as usize)?;
            let ksize = u32_at(page, at + 8)? as usize;
            let vsize = u32_at(page, at + 12)? as usize;
            let key = page.get(pos..pos.checked_add(ksize)?)?;
            let value = page.get(pos + ksize..(pos + ksize).checked_add(vsize)?)?;
            Some((flags, key, value))
        })();
        let (flags, key, value) = element.ok_or_else(|| damaged("leaf element"))?;
        f(key, value, flags & BUCKET_LEAF != 0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_is_the_standard_one() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn a_file_that_is_not_bbolt_is_refused_and_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        assert!(matches!(
            Db::open(&path, 8192),
            Err(BboltError::NotBbolt(_))
        ));
        let page = vec![0u8; 64];
        let mut leaf = page.clone();
        leaf[8] = LEAF_PAGE as u8;
        leaf[10] = 1;
        leaf[20] = 0xff; // pos far outside the page
        assert!(walk_leaf(&leaf, &mut |_, _, _| {}).is_err());
    }
}
