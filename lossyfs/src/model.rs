//! The file system's state and its rules, without FUSE: what processes see (the current
//! state) and what a power cut leaves (the durable state).
//!
//! The rules, those of a disk's page cache that the power took away:
//! - File data written since that file's last fsync or fdatasync is lost at a cut;
//!   torn, a random prefix (in offset order) of its unsynced 4 KiB pages is kept. A
//!   size change (truncate, fallocate, a write past the end) is data: kept once synced.
//! - A directory's entries created, renamed or removed since that directory's last
//!   fsync are undone at a cut (a new file whose directory was never synced vanishes,
//!   whatever its own fsyncs; a rename not followed by one comes undone).
//! - After a cut every operation fails with EIO until the power is back.
//!
//! A cut can also be armed to happen at a moment (`arm`): the first time a process
//! writes, fsyncs, creates, renames or removes a file whose path contains a pattern,
//! the power goes instead of that operation, which fails.
//!
//! Durable file data lives in the backing folder, one file per inode (`<backing>/<ino>`);
//! everything not yet durable lives in memory. This module never touches FUSE and
//! never syncs the backing folder: it stands for the platters, which keep what they got.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::SystemTime;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The unit of unsynced data a torn cut keeps or loses.
pub const PAGE_BYTES: u64 = 4096;
/// The root directory's inode (FUSE's).
pub const ROOT_INO: u64 = 1;
/// The most unsynced bytes held in memory: writes past it fail with ENOSPC, as a full
/// page cache would block them; a test that writes more syncs or gets told.
pub const MAX_UNSYNCED_BYTES: u64 = 4 << 30;

/// An errno for FUSE's reply.
pub type Errno = i32;

/// What a power cut threw away (or kept, torn).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CutReport {
    pub pages_lost: u64,
    pub pages_kept_torn: u64,
    pub entries_undone: u64,
}

#[derive(Debug)]
pub enum Kind {
    File(FileState),
    Dir(DirState),
}

#[derive(Debug)]
pub struct Inode {
    pub kind: Kind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
}

#[derive(Debug, Default)]
pub struct FileState {
    /// Length of the backing file (what survives a cut).
    pub durable_len: u64,
    /// Length processes see.
    pub len: u64,
    /// Pages written since the last sync, whole (bytes past `len` are zero).
    pages: BTreeMap<u64, Box<[u8]>>,
    /// Durable bytes at or past this offset are gone from the current view (a truncate
    /// since the last sync); they read as zeros until overwritten.
    hidden_from: Option<u64>,
}

#[derive(Debug, Default)]
pub struct DirState {
    pub parent: u64,
    pub entries: BTreeMap<OsString, u64>,
    /// The entries as of this directory's last fsync.
    durable: BTreeMap<OsString, u64>,
}

/// A cut armed to happen at the first matching operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    /// "write", "fsync", "create", "mkdir", "rename" or "unlink".
    pub op: String,
    /// A substring of the path (from the mount's root, with a leading '/'); for a
    /// rename, of the old or the new path.
    pub pattern: String,
    pub torn: bool,
}

pub struct Fs {
    backing: PathBuf,
    inodes: HashMap<u64, Inode>,
    /// Each inode's directory and name, as last linked (for paths in triggers).
    links: HashMap<u64, (u64, OsString)>,
    armed: Option<Trigger>,
    fired: Option<Trigger>,
    next_ino: u64,
    powered: bool,
    unsynced_bytes: u64,
    rng: StdRng,
}

impl Fs {
    /// An empty file system over the empty folder `backing`; `seed` decides torn cuts.
    pub fn new(backing: PathBuf, seed: u64) -> Fs {
        let root = Inode {
            kind: Kind::Dir(DirState {
                parent: ROOT_INO,
                ..DirState::default()
            }),
            perm: 0o755,
            uid: 0,
            gid: 0,
            mtime: SystemTime::now(),
        };
        Fs {
            backing,
            inodes: HashMap::from([(ROOT_INO, root)]),
            links: HashMap::new(),
            armed: None,
            fired: None,
            next_ino: ROOT_INO + 1,
            powered: true,
            unsynced_bytes: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    pub fn powered(&self) -> Result<(), Errno> {
        if self.powered {
            Ok(())
        } else {
            Err(libc::EIO)
        }
    }

    pub fn inode(&self, ino: u64) -> Result<&Inode, Errno> {
        self.powered()?;
        self.inodes.get(&ino).ok_or(libc::ENOENT)
    }

    pub fn dir(&self, ino: u64) -> Result<&DirState, Errno> {
        match &self.inode(ino)?.kind {
            Kind::Dir(d) => Ok(d),
            Kind::File(_) => Err(libc::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut DirState, Errno> {
        self.powered()?;
        match &mut self.inodes.get_mut(&ino).ok_or(libc::ENOENT)?.kind {
            Kind::Dir(d) => Ok(d),
            Kind::File(_) => Err(libc::ENOTDIR),
        }
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut FileState, Errno> {
        self.powered()?;
        match &mut self.inodes.get_mut(&ino).ok_or(libc::ENOENT)?.kind {
            Kind::File(f) => Ok(f),
            Kind::Dir(_) => Err(libc::EISDIR),
        }
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.dir(parent)?
            .entries
            .get(name)
            .copied()
            .ok_or(libc::ENOENT)
    }

    /// Arms a cut at the first operation `trigger` names (replacing one armed before).
    pub fn arm(&mut self, trigger: Trigger) {
        self.armed = Some(trigger);
        self.fired = None;
    }

    pub fn disarm(&mut self) {
        self.armed = None;
    }

    /// The trigger that cut the power, if one did since it was armed.
    pub fn fired(&self) -> Option<&Trigger> {
        self.fired.as_ref()
    }

    /// The path of `ino` from the root ("/" for the root), as last linked.
    fn path_of(&self, mut ino: u64) -> String {
        let mut parts = Vec::new();
        while ino != ROOT_INO {
            let Some((parent, name)) = self.links.get(&ino) else {
                break;
            };
            parts.push(name.to_string_lossy().into_owned());
            ino = *parent;
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    fn child_path(&self, parent: u64, name: &OsStr) -> String {
        let dir = self.path_of(parent);
        format!("{}/{}", dir.trim_end_matches('/'), name.to_string_lossy())
    }

    /// Cuts the power instead of `op` on `paths` if the armed trigger matches.
    fn trip(&mut self, op: &str, paths: &[String]) -> Result<(), Errno> {
        self.powered()?;
        let hit = self
            .armed
            .as_ref()
            .is_some_and(|t| t.op == op && paths.iter().any(|p| p.contains(&t.pattern)));
        if hit {
            let trigger = self.armed.take();
            let torn = trigger.as_ref().is_some_and(|t| t.torn);
            self.power_cut(torn);
            self.fired = trigger;
            return Err(libc::EIO);
        }
        Ok(())
    }

    /// The folder durable data lives in.
    pub fn backing(&self) -> &std::path::Path {
        &self.backing
    }

    fn backing_path(&self, ino: u64) -> PathBuf {
        self.backing.join(ino.to_string())
    }

    /// A new file or directory `name` in `parent`.
    pub fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        dir: bool,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<u64, Errno> {
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let path = self.child_path(parent, name);
        self.trip(if dir { "mkdir" } else { "create" }, &[path])?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let kind = if dir {
            Kind::Dir(DirState {
                parent,
                ..DirState::default()
            })
        } else {
            File::create(self.backing_path(ino)).map_err(|_| libc::EIO)?;
            Kind::File(FileState::default())
        };
        let inode = Inode {
            kind,
            perm,
            uid,
            gid,
            mtime: SystemTime::now(),
        };
        self.inodes.insert(ino, inode);
        self.links.insert(ino, (parent, name.to_owned()));
        self.dir_mut(parent)?.entries.insert(name.to_owned(), ino);
        Ok(ino)
    }

    pub fn unlink(&mut self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        match (&self.inode(ino)?.kind, dir) {
            (Kind::Dir(d), true) if !d.entries.is_empty() => return Err(libc::ENOTEMPTY),
            (Kind::Dir(_), false) => return Err(libc::EISDIR),
            (Kind::File(_), true) => return Err(libc::ENOTDIR),
            _ => {}
        }
        let path = self.child_path(parent, name);
        self.trip("unlink", &[path])?;
        self.dir_mut(parent)?.entries.remove(name);
        Ok(())
    }

    /// rename(2), replacing `new_name` if it exists (`no_replace`: fail instead).
    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        if let Ok(existing) = self.lookup(new_parent, new_name) {
            if no_replace {
                return Err(libc::EEXIST);
            }
            if let Kind::Dir(d) = &self.inode(existing)?.kind {
                if !d.entries.is_empty() {
                    return Err(libc::ENOTEMPTY);
                }
            }
        }
        self.dir(new_parent)?;
        let paths = [
            self.child_path(parent, name),
            self.child_path(new_parent, new_name),
        ];
        self.trip("rename", &paths)?;
        self.dir_mut(parent)?.entries.remove(name);
        self.dir_mut(new_parent)?
            .entries
            .insert(new_name.to_owned(), ino);
        if let Kind::Dir(d) = &mut self.inodes.get_mut(&ino).ok_or(libc::ENOENT)?.kind {
            d.parent = new_parent;
        }
        self.links.insert(ino, (new_parent, new_name.to_owned()));
        Ok(())
    }

    /// Reads up to `size` bytes at `offset` as processes see them.
    pub fn read(&mut self, ino: u64, offset: u64, size: u64) -> Result<Vec<u8>, Errno> {
        let backing = self.backing_path(ino);
        let f = self.file_mut(ino)?;
        let end = f.len.min(offset.saturating_add(size));
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let durable = File::open(&backing).map_err(|_| libc::EIO)?;
        let mut at = offset;
        while at < end {
            let page = at / PAGE_BYTES;
            let data = page_now(f, &durable, page)?;
            let from = (at - page * PAGE_BYTES) as usize;
            let to = ((end - page * PAGE_BYTES).min(PAGE_BYTES)) as usize;
            out.extend_from_slice(&data[from..to]);
            at = page * PAGE_BYTES + to as u64;
        }
        Ok(out)
    }

    pub fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let path = self.path_of(ino);
        self.trip("write", &[path])?;
        let backing = self.backing_path(ino);
        let held = self.unsynced_bytes;
        let f = self.file_mut(ino)?;
        let pages_before = f.pages.len() as u64;
        let end = offset + data.len() as u64;
        let new_pages = (offset / PAGE_BYTES..end.div_ceil(PAGE_BYTES))
            .filter(|p| !f.pages.contains_key(p))
            .count() as u64;
        if held + new_pages * PAGE_BYTES > MAX_UNSYNCED_BYTES {
            return Err(libc::ENOSPC);
        }
        let durable = File::open(&backing).map_err(|_| libc::EIO)?;
        let mut at = offset;
        while at < end {
            let page = at / PAGE_BYTES;
            if !f.pages.contains_key(&page) {
                let now = page_now(f, &durable, page)?;
                f.pages.insert(page, now);
            }
            let buf = f.pages.get_mut(&page).ok_or(libc::EIO)?;
            let from = (at - page * PAGE_BYTES) as usize;
            let n = ((PAGE_BYTES as usize - from) as u64).min(end - at) as usize;
            let src = (at - offset) as usize;
            buf[from..from + n].copy_from_slice(&data[src..src + n]);
            at += n as u64;
        }
        f.len = f.len.max(end);
        let added = f.pages.len() as u64 - pages_before;
        self.unsynced_bytes += added * PAGE_BYTES;
        self.touch(ino);
        Ok(())
    }

    /// ftruncate(2) / truncate(2).
    pub fn set_len(&mut self, ino: u64, len: u64) -> Result<(), Errno> {
        let f = self.file_mut(ino)?;
        if len < f.len {
            let dropped = f.pages.split_off(&len.div_ceil(PAGE_BYTES)).len() as u64;
            if let Some(page) = f.pages.get_mut(&(len / PAGE_BYTES)) {
                page[(len % PAGE_BYTES) as usize..].fill(0);
            }
            f.hidden_from = Some(f.hidden_from.map_or(len, |h| h.min(len)));
            self.unsynced_bytes -= dropped * PAGE_BYTES;
        }
        self.file_mut(ino)?.len = len;
        self.touch(ino);
        Ok(())
    }

    /// fallocate(2): mode 0 and KEEP_SIZE reserve (only the size changes); punching a
    /// hole or zeroing a range writes zeros.
    pub fn fallocate(&mut self, ino: u64, offset: u64, len: u64, mode: i32) -> Result<(), Errno> {
        let end = offset.saturating_add(len);
        let zeroing = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !(libc::FALLOC_FL_KEEP_SIZE | zeroing) != 0 {
            return Err(libc::EOPNOTSUPP);
        }
        if mode & zeroing != 0 {
            let size = self.file_mut(ino)?.len;
            let zero_end = if mode & libc::FALLOC_FL_KEEP_SIZE != 0 {
                end.min(size)
            } else {
                end
            };
            if zero_end > offset {
                self.write(ino, offset, &vec![0; (zero_end - offset) as usize])?;
            }
            return Ok(());
        }
        if mode & libc::FALLOC_FL_KEEP_SIZE == 0 {
            let f = self.file_mut(ino)?;
            f.len = f.len.max(end);
        }
        Ok(())
    }

    /// fsync(2) or fdatasync(2) of a file: what processes see of it becomes durable.
    pub fn sync_file(&mut self, ino: u64) -> Result<(), Errno> {
        let path = self.path_of(ino);
        self.trip("fsync", &[path])?;
        let backing = self.backing_path(ino);
        let f = self.file_mut(ino)?;
        let pages = f.pages.len() as u64;
        let len = f.len;
        persist(f, &backing, None, len)?;
        self.unsynced_bytes -= pages * PAGE_BYTES;
        Ok(())
    }

    /// fsync(2) of a directory: its entries become durable.
    pub fn sync_dir(&mut self, ino: u64) -> Result<(), Errno> {
        let d = self.dir_mut(ino)?;
        d.durable = d.entries.clone();
        Ok(())
    }

    fn touch(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.mtime = SystemTime::now();
        }
    }

    pub fn set_perm(&mut self, ino: u64, perm: u16) -> Result<(), Errno> {
        self.powered()?;
        self.inodes.get_mut(&ino).ok_or(libc::ENOENT)?.perm = perm;
        Ok(())
    }

    /// Unsynced pages and directories with unsynced entries.
    pub fn unsynced(&self) -> (u64, u64) {
        let mut pages = 0;
        let mut dirs = 0;
        for inode in self.inodes.values() {
            match &inode.kind {
                Kind::File(f) => pages += f.pages.len() as u64,
                Kind::Dir(d) => dirs += u64::from(d.entries != d.durable),
            }
        }
        (pages, dirs)
    }

    /// The power goes: unsynced state is thrown away (torn: a random prefix of each
    /// file's unsynced pages is kept), and every operation fails until `power_on`.
    pub fn power_cut(&mut self, torn: bool) -> CutReport {
        let mut report = CutReport::default();
        let inos: Vec<u64> = self.inodes.keys().copied().collect();
        for ino in inos {
            let backing = self.backing_path(ino);
            let keep_pages = match &self.inodes[&ino].kind {
                Kind::File(f) if torn => self.rng.random_range(0..=f.pages.len()),
                _ => 0,
            };
            let Some(inode) = self.inodes.get_mut(&ino) else {
                continue;
            };
            match &mut inode.kind {
                Kind::File(f) => {
                    report.pages_kept_torn += keep_pages as u64;
                    report.pages_lost += (f.pages.len() - keep_pages) as u64;
                    f.hidden_from = None;
                    let len = f.len;
                    if keep_pages > 0 {
                        // A failed write of the kept pages keeps fewer: still a cut.
                        let _ = persist(f, &backing, Some(keep_pages), len);
                    }
                    f.pages.clear();
                    f.len = f.durable_len;
                }
                Kind::Dir(d) => {
                    let changed = d
                        .entries
                        .iter()
                        .filter(|(k, v)| d.durable.get(*k) != Some(v));
                    let removed = d.durable.keys().filter(|k| !d.entries.contains_key(*k));
                    report.entries_undone += (changed.count() + removed.count()) as u64;
                    d.entries = d.durable.clone();
                }
            }
        }
        self.unsynced_bytes = 0;
        self.forget_unreachable();
        self.powered = false;
        report
    }

    pub fn power_on(&mut self) {
        self.powered = true;
    }

    /// Drops inodes no directory entry leads to from the root (and their backing files).
    fn forget_unreachable(&mut self) {
        let mut reachable = HashSet::from([ROOT_INO]);
        let mut stack = vec![ROOT_INO];
        while let Some(ino) = stack.pop() {
            if let Some(Inode {
                kind: Kind::Dir(d), ..
            }) = self.inodes.get(&ino)
            {
                for child in d.entries.values() {
                    if reachable.insert(*child) {
                        stack.push(*child);
                    }
                }
            }
        }
        let gone: Vec<u64> = self
            .inodes
            .keys()
            .filter(|ino| !reachable.contains(ino))
            .copied()
            .collect();
        for ino in gone {
            self.links.remove(&ino);
            if let Some(Inode {
                kind: Kind::File(_),
                ..
            }) = self.inodes.remove(&ino)
            {
                let _ = std::fs::remove_file(self.backing_path(ino));
            }
        }
        for inode in self.inodes.values_mut() {
            if let Kind::Dir(d) = &mut inode.kind {
                d.entries.retain(|_, ino| reachable.contains(ino));
            }
        }
    }
}

/// One page as processes see it now: the unsynced copy, or the durable bytes (those
/// hidden by an unsynced truncate read as zeros).
fn page_now(f: &FileState, durable: &File, page: u64) -> Result<Box<[u8]>, Errno> {
    if let Some(data) = f.pages.get(&page) {
        return Ok(data.clone());
    }
    let mut data = vec![0u8; PAGE_BYTES as usize].into_boxed_slice();
    let start = page * PAGE_BYTES;
    let visible_end = f
        .hidden_from
        .unwrap_or(u64::MAX)
        .min(f.durable_len)
        .min(f.len);
    if start < visible_end {
        let n = (visible_end - start).min(PAGE_BYTES) as usize;
        durable
            .read_exact_at(&mut data[..n], start)
            .map_err(|_| libc::EIO)?;
    }
    Ok(data)
}

/// Makes what processes see of a file durable (`torn`: None), or only the first `torn`
/// unsynced pages, as far as `len`, as a cut that tore the write-back does. The
/// durable length follows what was written.
fn persist(
    f: &mut FileState,
    backing: &PathBuf,
    torn: Option<usize>,
    len: u64,
) -> Result<(), Errno> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(backing)
        .map_err(|_| libc::EIO)?;
    let all = torn.is_none();
    let keep_pages = torn.unwrap_or(usize::MAX);
    if all {
        if let Some(hidden) = f.hidden_from.take() {
            f.durable_len = f.durable_len.min(hidden);
            file.set_len(f.durable_len).map_err(|_| libc::EIO)?;
        }
    }
    for (page, data) in f.pages.iter().take(keep_pages) {
        let start = page * PAGE_BYTES;
        if start >= len {
            break;
        }
        let n = (len - start).min(PAGE_BYTES) as usize;
        file.write_all_at(&data[..n], start)
            .map_err(|_| libc::EIO)?;
        f.durable_len = f.durable_len.max(start + n as u64);
    }
    if all {
        file.set_len(len).map_err(|_| libc::EIO)?;
        f.durable_len = len;
        f.pages.clear();
    }
    Ok(())
}
