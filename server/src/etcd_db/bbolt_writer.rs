//! Writes a bbolt file in one go, from buckets given in order with their entries
//! sorted: the format `bbolt.rs` reads (its module comment has the layout). Leaves are
//! filled up to a page (an entry larger than a page gets a leaf of its own with
//! overflow pages), branches are built above them, the root bucket last, then the two
//! meta pages. No freelist page is written (bbolt rebuilds the free list when it opens
//! such a file, as etcd's own snapshots ask it to). Only appends to a new file.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use super::bbolt::{
    BRANCH_PAGE, BUCKET_LEAF, ELEMENT_BYTES, LEAF_PAGE, MAGIC, PAGE_HEADER_BYTES, VERSION,
};

/// The page size written: the OS page of the machines raftkv runs on.
const PAGE_SIZE: usize = 4096;
const META_PAGE: u16 = 0x04;
/// bbolt's "no free list was written" page id.
const NO_FREELIST: u64 = u64::MAX;
/// A page holds at most this many elements (its count is a u16).
const MAX_ELEMENTS: usize = u16::MAX as usize;
/// Keys longer than bbolt's limit are refused by bbolt itself.
const MAX_KEY_BYTES: usize = 32_768;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("writing the file: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "bucket {bucket:?}: keys must come sorted and unique ({key:02x?} after the one before)"
    )]
    Unsorted { bucket: String, key: Vec<u8> },
    #[error("a key of {0} bytes is longer than bbolt allows")]
    KeyTooLong(usize),
}

/// A new bbolt file being written.
pub struct Writer {
    file: File,
    next_page: u64,
    /// Each bucket's name and root page, in the order given.
    buckets: Vec<(Vec<u8>, u64)>,
}

/// A bucket being written: its full leaves are on disk, the current one in memory.
pub struct BucketWriter<'w> {
    writer: &'w mut Writer,
    name: Vec<u8>,
    /// Each written leaf's first key and page.
    leaves: Vec<(Vec<u8>, u64)>,
    node: Vec<(Vec<u8>, Vec<u8>)>,
    node_bytes: usize,
    last_key: Option<Vec<u8>>,
}

impl BucketWriter<'_> {
    /// The next entry; its key must be greater than the one before.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), WriteError> {
        if key.len() > MAX_KEY_BYTES {
            return Err(WriteError::KeyTooLong(key.len()));
        }
        if self.last_key.as_ref().is_some_and(|last| *last >= key) {
            let bucket = String::from_utf8_lossy(&self.name).into_owned();
            return Err(WriteError::Unsorted { bucket, key });
        }
        self.last_key = Some(key.clone());
        let bytes = leaf_entry_bytes(&key, &value);
        let full = self.node_bytes + bytes > PAGE_SIZE || self.node.len() == MAX_ELEMENTS;
        if !self.node.is_empty() && full {
            let leaf = self.writer.flush_leaf(&mut self.node)?;
            self.leaves.push(leaf);
            self.node_bytes = PAGE_HEADER_BYTES;
        }
        self.node_bytes += bytes;
        self.node.push((key, value));
        Ok(())
    }

    /// Writes the last leaf and the branches above; the bucket is then in the file.
    pub fn finish(mut self) -> Result<(), WriteError> {
        if !self.node.is_empty() || self.leaves.is_empty() {
            let leaf = self.writer.flush_leaf(&mut self.node)?;
            self.leaves.push(leaf);
        }
        let root = self
            .writer
            .branches_over(std::mem::take(&mut self.leaves))?;
        self.writer
            .buckets
            .push((std::mem::take(&mut self.name), root));
        Ok(())
    }
}

/// One node's entries: (key, value) for a leaf, (key, child page) for a branch.
enum Node<'a> {
    Leaf(&'a [(Vec<u8>, Vec<u8>)], u32),
    Branch(&'a [(Vec<u8>, u64)]),
}

fn leaf_entry_bytes(key: &[u8], value: &[u8]) -> usize {
    ELEMENT_BYTES + key.len() + value.len()
}

impl Writer {
    /// Creates `path` (it must not exist).
    pub fn create(path: &Path) -> Result<Writer, WriteError> {
        let mut file = File::options().write(true).create_new(true).open(path)?;
        // Pages 0 and 1 are the metas, written last.
        file.write_all(&[0u8; 2 * PAGE_SIZE])?;
        Ok(Writer {
            file,
            next_page: 2,
            buckets: Vec::new(),
        })
    }

    /// A top-level bucket named `name`: put its entries in key order, then `finish` it.
    pub fn bucket(&mut self, name: &[u8]) -> BucketWriter<'_> {
        BucketWriter {
            writer: self,
            name: name.to_vec(),
            leaves: Vec::new(),
            node: Vec::new(),
            node_bytes: PAGE_HEADER_BYTES,
            last_key: None,
        }
    }

    fn flush_leaf(
        &mut self,
        node: &mut Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(Vec<u8>, u64), WriteError> {
        let first = node.first().map(|(k, _)| k.clone()).unwrap_or_default();
        let page = self.write_node(Node::Leaf(node, 0))?;
        node.clear();
        Ok((first, page))
    }

    /// Branch levels above `children` until one page is the root; returns it.
    fn branches_over(&mut self, mut children: Vec<(Vec<u8>, u64)>) -> Result<u64, WriteError> {
        while children.len() > 1 {
            let mut parents = Vec::new();
            let mut start = 0;
            while start < children.len() {
                let mut end = start;
                let mut bytes = PAGE_HEADER_BYTES;
                while end < children.len()
                    && (end == start
                        || (bytes + ELEMENT_BYTES + children[end].0.len() <= PAGE_SIZE
                            && end - start < MAX_ELEMENTS))
                {
                    bytes += ELEMENT_BYTES + children[end].0.len();
                    end += 1;
                }
                let page = self.write_node(Node::Branch(&children[start..end]))?;
                parents.push((children[start].0.clone(), page));
                start = end;
            }
            children = parents;
        }
        Ok(children[0].1)
    }

    /// Writes one node at the next page (with overflow pages when it needs them).
    fn write_node(&mut self, node: Node) -> Result<u64, WriteError> {
        let (flags, count, data_bytes) = match &node {
            Node::Leaf(entries, _) => (
                LEAF_PAGE,
                entries.len(),
                entries
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>(),
            ),
            Node::Branch(children) => (
                BRANCH_PAGE,
                children.len(),
                children.iter().map(|(k, _)| k.len()).sum::<usize>(),
            ),
        };
        let used = PAGE_HEADER_BYTES + count * ELEMENT_BYTES + data_bytes;
        let pages = used.div_ceil(PAGE_SIZE).max(1);
        let id = self.next_page;
        let mut buf = vec![0u8; pages * PAGE_SIZE];
        page_header(&mut buf, id, flags, count, pages - 1);
        let mut data_at = PAGE_HEADER_BYTES + count * ELEMENT_BYTES;
        for i in 0..count {
            let element_at = PAGE_HEADER_BYTES + i * ELEMENT_BYTES;
            let pos = (data_at - element_at) as u32;
            let (key, rest): (&[u8], &[u8]) = match &node {
                Node::Leaf(entries, leaf_flags) => {
                    let (k, v) = &entries[i];
                    put_u32(&mut buf, element_at, *leaf_flags);
                    put_u32(&mut buf, element_at + 4, pos);
                    put_u32(&mut buf, element_at + 8, k.len() as u32);
                    put_u32(&mut buf, element_at + 12, v.len() as u32);
                    (k, v)
                }
                Node::Branch(children) => {
                    let (k, child) = &children[i];
                    put_u32(&mut buf, element_at, pos);
                    put_u32(&mut buf, element_at + 4, k.len() as u32);
                    buf[element_at + 8..element_at + 16].copy_from_slice(&child.to_le_bytes());
                    (k, &[])
                }
            };
            buf[data_at..data_at + key.len()].copy_from_slice(key);
            data_at += key.len();
            buf[data_at..data_at + rest.len()].copy_from_slice(rest);
            data_at += rest.len();
        }
        self.file.write_all(&buf)?;
        self.next_page += pages as u64;
        Ok(id)
    }

    /// Writes the root bucket and the metas; returns the database's length in bytes.
    pub fn finish(mut self) -> Result<u64, WriteError> {
        let mut buckets = std::mem::take(&mut self.buckets);
        buckets.sort();
        let entries: Vec<(Vec<u8>, Vec<u8>)> = buckets
            .into_iter()
            .map(|(name, root)| {
                let mut header = root.to_le_bytes().to_vec();
                header.extend_from_slice(&0u64.to_le_bytes());
                (name, header)
            })
            .collect();
        let root = self.write_node(Node::Leaf(&entries, BUCKET_LEAF))?;
        for (page, txid) in [(0u64, 1u64), (1, 2)] {
            let meta = meta_page(page, root, self.next_page, txid);
            self.file.seek(SeekFrom::Start(page * PAGE_SIZE as u64))?;
            self.file.write_all(&meta)?;
        }
        self.file.flush()?;
        self.file.sync_all()?;
        Ok(self.next_page * PAGE_SIZE as u64)
    }
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn page_header(buf: &mut [u8], id: u64, flags: u16, count: usize, overflow: usize) {
    buf[0..8].copy_from_slice(&id.to_le_bytes());
    buf[8..10].copy_from_slice(&flags.to_le_bytes());
    buf[10..12].copy_from_slice(&(count as u16).to_le_bytes());
    buf[12..16].copy_from_slice(&(overflow as u32).to_le_bytes());
}

fn meta_page(id: u64, root: u64, high_water: u64, txid: u64) -> Vec<u8> {
    let mut page = vec![0u8; PAGE_SIZE];
    page_header(&mut page, id, META_PAGE, 0, 0);
    let mut meta = Vec::with_capacity(64);
    meta.extend_from_slice(&MAGIC.to_le_bytes());
    meta.extend_from_slice(&VERSION.to_le_bytes());
    meta.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
    meta.extend_from_slice(&0u32.to_le_bytes());
    meta.extend_from_slice(&root.to_le_bytes());
    meta.extend_from_slice(&0u64.to_le_bytes());
    meta.extend_from_slice(&NO_FREELIST.to_le_bytes());
    meta.extend_from_slice(&high_water.to_le_bytes());
    meta.extend_from_slice(&txid.to_le_bytes());
    let checksum = super::bbolt::fnv1a64(&meta);
    meta.extend_from_slice(&checksum.to_le_bytes());
    page[PAGE_HEADER_BYTES..PAGE_HEADER_BYTES + meta.len()].copy_from_slice(&meta);
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back_with_big_values_and_many_pages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut w = Writer::create(&path).unwrap();
        let many: Vec<(Vec<u8>, Vec<u8>)> = (0..20_000u32)
            .map(|i| {
                (
                    format!("k{i:08}").into_bytes(),
                    vec![b'v'; (i % 50) as usize],
                )
            })
            .collect();
        let big = vec![(b"big".to_vec(), vec![7u8; 3 * PAGE_SIZE + 5])];
        for (name, entries) in [
            (&b"many"[..], &many),
            (b"big", &big),
            (b"empty", &Vec::new()),
        ] {
            let mut bucket = w.bucket(name);
            for (k, v) in entries {
                bucket.put(k.clone(), v.clone()).unwrap();
            }
            bucket.finish().unwrap();
        }
        let mut bad = w.bucket(b"bad");
        bad.put(b"b".to_vec(), vec![]).unwrap();
        assert!(bad.put(b"a".to_vec(), vec![]).is_err());
        let len = w.finish().unwrap();

        let db = super::super::bbolt::Db::open(&path, len).unwrap();
        let read = |name: &[u8]| {
            let mut got = Vec::new();
            db.for_each(name, &mut |k, v| got.push((k.to_vec(), v.to_vec())))
                .unwrap();
            got
        };
        assert_eq!(read(b"many"), many);
        assert_eq!(
            db.last_key(b"many").unwrap(),
            many.last().map(|(k, _)| k.clone())
        );
        assert_eq!(db.last_key(b"big").unwrap(), Some(b"big".to_vec()));
        assert_eq!(db.last_key(b"empty").unwrap(), None);
        assert_eq!(read(b"big"), big);
        assert!(read(b"empty").is_empty() && db.has_bucket(b"empty").unwrap());
        assert!(!db.has_bucket(b"bad").unwrap());
    }
}
