//! The FUSE side: turns the kernel's requests into calls on the model (model.rs) and
//! its answers into replies. Owns no state of its own but the shared model.
//!
//! The kernel must not remember what a cut takes back, so entries and attributes are
//! never cached (TTL 0) and files are opened with direct I/O (no page cache: reads
//! always come here). mmap of files on this file system therefore fails; raftkv does
//! not map its files.

use std::ffi::OsStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    consts::FOPEN_DIRECT_IO, FileAttr, FileType, Filesystem, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

use crate::model::{Errno, Fs, Kind, PAGE_BYTES};

const TTL: Duration = Duration::ZERO;

pub struct LossyFs {
    pub model: Arc<Mutex<Fs>>,
}

impl LossyFs {
    fn fs(&self) -> MutexGuard<'_, Fs> {
        // A panic while holding the lock is a bug in the model; the state is still
        // the best there is.
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn attr_of(fs: &Fs, ino: u64) -> Result<FileAttr, Errno> {
    let inode = fs.inode(ino)?;
    let (kind, size, nlink) = match &inode.kind {
        Kind::File(f) => (FileType::RegularFile, f.len, 1),
        Kind::Dir(_) => (FileType::Directory, 0, 2),
    };
    Ok(FileAttr {
        ino,
        size,
        blocks: size.div_ceil(512),
        atime: inode.mtime,
        mtime: inode.mtime,
        ctime: inode.mtime,
        crtime: inode.mtime,
        kind,
        perm: inode.perm,
        nlink,
        uid: inode.uid,
        gid: inode.gid,
        rdev: 0,
        blksize: PAGE_BYTES as u32,
        flags: 0,
    })
}

fn entry(reply: ReplyEntry, fs: &Fs, ino: Result<u64, Errno>) {
    match ino.and_then(|ino| attr_of(fs, ino)) {
        Ok(attr) => reply.entry(&TTL, &attr, 0),
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for LossyFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let fs = self.fs();
        entry(reply, &fs, fs.lookup(parent, name));
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match attr_of(&self.fs(), ino) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let mut fs = self.fs();
        let result = (|| {
            if let Some(len) = size {
                fs.set_len(ino, len)?;
            }
            if let Some(mode) = mode {
                fs.set_perm(ino, (mode & 0o7777) as u16)?;
            }
            attr_of(&fs, ino)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut fs = self.fs();
        let perm = (mode & !umask & 0o7777) as u16;
        let ino = fs.create(parent, name, true, perm, req.uid(), req.gid());
        entry(reply, &fs, ino);
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.fs().unlink(parent, name, false));
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.fs().unlink(parent, name, true));
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return reply.error(libc::EINVAL);
        }
        let no_replace = flags & libc::RENAME_NOREPLACE != 0;
        empty(
            reply,
            self.fs()
                .rename(parent, name, newparent, newname, no_replace),
        );
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.fs().inode(ino) {
            Ok(_) => reply.opened(0, FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut fs = self.fs();
        let perm = (mode & !umask & 0o7777) as u16;
        let ino = match fs.lookup(parent, name) {
            Ok(_) if flags & libc::O_EXCL != 0 => Err(libc::EEXIST),
            Ok(ino) => Ok(ino),
            Err(_) => fs.create(parent, name, false, perm, req.uid(), req.gid()),
        };
        let ino = ino.and_then(|ino| {
            if flags & libc::O_TRUNC != 0 {
                fs.set_len(ino, 0)?;
            }
            Ok(ino)
        });
        match ino.and_then(|ino| attr_of(&fs, ino)) {
            Ok(attr) => reply.created(&TTL, &attr, 0, 0, FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        match self.fs().read(ino, offset.max(0) as u64, u64::from(size)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        match self.fs().write(ino, offset.max(0) as u64, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _owner: u64, reply: ReplyEmpty) {
        // close(2) syncs nothing.
        empty(reply, self.fs().inode(ino).map(|_| ()));
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _data: bool, reply: ReplyEmpty) {
        empty(reply, self.fs().sync_file(ino));
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _data: bool, reply: ReplyEmpty) {
        empty(reply, self.fs().sync_dir(ino));
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let (offset, length) = (offset.max(0) as u64, length.max(0) as u64);
        empty(reply, self.fs().fallocate(ino, offset, length, mode));
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.fs().dir(ino) {
            Ok(_) => reply.opened(0, 0),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let fs = self.fs();
        let dir = match fs.dir(ino) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        let dots = [
            (ino, FileType::Directory, OsStr::new(".")),
            (dir.parent, FileType::Directory, OsStr::new("..")),
        ];
        let children = dir.entries.iter().map(|(name, child)| {
            let kind = match fs.inode(*child).map(|i| &i.kind) {
                Ok(Kind::Dir(_)) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            (*child, kind, name.as_os_str())
        });
        for (i, (child, kind, name)) in dots
            .into_iter()
            .chain(children)
            .enumerate()
            .skip(offset.max(0) as usize)
        {
            if reply.add(child, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyStatfs) {
        let fs = self.fs();
        if let Err(e) = fs.inode(ino) {
            return reply.error(e);
        }
        // The backing folder's disk answers: raftkv's disk checks see real space.
        let Ok(path) = std::ffi::CString::new(fs.backing().as_os_str().as_encoded_bytes()) else {
            return reply.error(libc::EINVAL);
        };
        // SAFETY: statvfs writes into a zeroed struct of its own type; the path is a
        // valid C string.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return reply.error(libc::EIO);
        }
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            st.f_namemax as u32,
            st.f_frsize as u32,
        );
    }
}
