//! Each rule of the lossy file system, through the kernel as a process meets it: real
//! files, fsync and fdatasync, renames and directory fsyncs on a mounted
//! `raftkv-lossyfs`, a power cut through its control socket, and what is left after.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// One mounted lossy file system, unmounted when dropped.
struct Mounted {
    child: Child,
    control: BufReader<UnixStream>,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

fn mounted(path: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let path = path.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(&*path))
}

impl Mounted {
    fn new(seed: u64) -> Mounted {
        let dir = tempfile::tempdir().expect("temp dir");
        let (backing, path, socket) = (
            dir.path().join("backing"),
            dir.path().join("mnt"),
            dir.path().join("control"),
        );
        fs::create_dir(&backing).expect("backing");
        fs::create_dir(&path).expect("mount point");
        let child = Command::new(env!("CARGO_BIN_EXE_raftkv-lossyfs"))
            .arg("--backing")
            .arg(&backing)
            .arg("--mount")
            .arg(&path)
            .arg("--control")
            .arg(&socket)
            .arg("--seed")
            .arg(seed.to_string())
            .spawn()
            .expect("raftkv-lossyfs starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !mounted(&path) || !socket.exists() {
            assert!(Instant::now() < deadline, "not mounted within 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        let control = BufReader::new(UnixStream::connect(&socket).expect("control socket"));
        Mounted {
            child,
            control,
            path,
            _dir: dir,
        }
    }

    fn say(&mut self, command: &str) -> String {
        writeln!(self.control.get_mut(), "{command}").expect("sent");
        let mut answer = String::new();
        self.control.read_line(&mut answer).expect("answered");
        assert!(answer.starts_with("ok"), "{command}: {answer}");
        answer.trim().to_string()
    }

    /// A power cut and the power back (the processes that used the files are gone).
    fn cut_and_restore(&mut self, torn: bool) -> String {
        let report = self.say(if torn { "cut torn" } else { "cut" });
        self.say("on");
        report
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn sync_root(&self) {
        File::open(&self.path)
            .expect("dir")
            .sync_all()
            .expect("dir fsync");
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&self.path)
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_synced(path: &Path, data: &[u8]) {
    let mut f = File::create(path).expect("create");
    f.write_all(data).expect("write");
    f.sync_all().expect("fsync");
}

#[test]
fn synced_data_survives_a_cut_and_unsynced_data_does_not() {
    let mut m = Mounted::new(1);
    write_synced(&m.file("log"), b"synced");
    m.sync_root();
    let mut f = OpenOptions::new()
        .append(true)
        .open(m.file("log"))
        .expect("open");
    f.write_all(b" and more").expect("write");
    assert_eq!(fs::read(m.file("log")).expect("read"), b"synced and more");
    f.sync_data().expect("fdatasync");
    f.write_all(b", then lost").expect("write");
    drop(f);

    m.cut_and_restore(false);
    assert_eq!(fs::read(m.file("log")).expect("read"), b"synced and more");
}

#[test]
fn a_new_file_is_lost_unless_its_directory_is_synced() {
    let mut m = Mounted::new(2);
    write_synced(&m.file("kept"), b"1");
    m.sync_root();
    write_synced(&m.file("lost"), b"2");

    m.cut_and_restore(false);
    assert_eq!(fs::read(m.file("kept")).expect("read"), b"1");
    let err = fs::read(m.file("lost")).expect_err("gone");
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[test]
fn a_rename_without_a_directory_fsync_comes_undone() {
    let mut m = Mounted::new(3);
    write_synced(&m.file("current"), b"old");
    write_synced(&m.file("current.tmp"), b"new");
    m.sync_root();
    fs::rename(m.file("current.tmp"), m.file("current")).expect("rename");
    assert_eq!(fs::read(m.file("current")).expect("read"), b"new");

    m.cut_and_restore(false);
    assert_eq!(fs::read(m.file("current")).expect("read"), b"old");
    assert_eq!(fs::read(m.file("current.tmp")).expect("read"), b"new");

    // With the directory synced after it, the rename holds.
    fs::rename(m.file("current.tmp"), m.file("current")).expect("rename");
    m.sync_root();
    m.cut_and_restore(false);
    assert_eq!(fs::read(m.file("current")).expect("read"), b"new");
    assert!(!m.file("current.tmp").exists());
}

#[test]
fn an_unlink_without_a_directory_fsync_comes_undone() {
    let mut m = Mounted::new(4);
    fs::create_dir(m.file("segments")).expect("mkdir");
    m.sync_root();
    write_synced(&m.file("segments/1.wal"), b"entries");
    File::open(m.file("segments"))
        .expect("dir")
        .sync_all()
        .expect("dir fsync");
    fs::remove_file(m.file("segments/1.wal")).expect("unlink");

    m.cut_and_restore(false);
    assert_eq!(
        fs::read(m.file("segments/1.wal")).expect("read"),
        b"entries"
    );
}

#[test]
fn an_unsynced_truncate_or_preallocation_comes_undone() {
    let mut m = Mounted::new(5);
    write_synced(&m.file("a"), &[7; 10_000]);
    write_synced(&m.file("b"), b"short");
    m.sync_root();
    File::options()
        .write(true)
        .open(m.file("a"))
        .expect("open")
        .set_len(100)
        .expect("truncate");
    let b = File::options().write(true).open(m.file("b")).expect("open");
    b.set_len(1 << 20).expect("extend");
    assert_eq!(b.metadata().expect("stat").len(), 1 << 20);
    drop(b);

    m.cut_and_restore(false);
    assert_eq!(fs::read(m.file("a")).expect("read"), vec![7; 10_000]);
    assert_eq!(fs::read(m.file("b")).expect("read"), b"short");
}

#[test]
fn a_torn_cut_keeps_a_prefix_of_the_unsynced_pages() {
    const PAGES: usize = 16;
    let mut m = Mounted::new(6);
    let mut prefixes = Vec::new();
    for round in 0..8u8 {
        let name = format!("torn{round}");
        write_synced(&m.file(&name), b"");
        m.sync_root();
        let data: Vec<u8> = (0..PAGES * 4096)
            .map(|i| (i / 4096) as u8 ^ round)
            .collect();
        let f = File::options()
            .write(true)
            .open(m.file(&name))
            .expect("open");
        f.write_all_at(&data, 0).expect("write");
        drop(f);

        m.cut_and_restore(true);
        let kept = fs::read(m.file(&name)).expect("read");
        assert_eq!(kept.len() % 4096, 0, "whole pages are kept");
        assert_eq!(kept[..], data[..kept.len()], "a prefix of what was written");
        prefixes.push(kept.len() / 4096);
    }
    // Seeded: the same prefixes every run, and some cuts tear inside the write.
    assert!(
        prefixes.iter().any(|p| *p > 0 && *p < PAGES),
        "{prefixes:?}"
    );
}

#[test]
fn after_a_cut_every_operation_fails_until_the_power_is_back() {
    let mut m = Mounted::new(7);
    write_synced(&m.file("f"), b"x");
    m.sync_root();
    let open = File::options().write(true).open(m.file("f")).expect("open");
    m.say("cut");
    let err = open
        .write_all_at(b"y", 0)
        .expect_err("no writes after a cut");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(fs::read(m.file("f")).is_err(), "no reads after a cut");
    m.say("on");
    assert_eq!(fs::read(m.file("f")).expect("read"), b"x");
}

#[test]
fn the_control_socket_reports_what_is_unsynced() {
    let mut m = Mounted::new(8);
    assert_eq!(m.say("unsynced"), "ok 0 0");
    let f = File::create(m.file("f")).expect("create");
    f.write_all_at(&[1; 8192], 0).expect("write");
    assert_eq!(m.say("unsynced"), "ok 2 1");
    f.sync_all().expect("fsync");
    m.sync_root();
    assert_eq!(m.say("unsynced"), "ok 0 0");
}

#[test]
fn an_armed_cut_happens_instead_of_the_operation_it_names() {
    let mut m = Mounted::new(9);
    fs::create_dir(m.file("mvcc")).expect("mkdir");
    write_synced(&m.file("mvcc/CURRENT"), b"old");
    write_synced(&m.file("mvcc/CURRENT.tmp"), b"new");
    File::open(m.file("mvcc"))
        .expect("dir")
        .sync_all()
        .expect("dir fsync");
    m.sync_root();
    assert_eq!(m.say("arm rename mvcc/CURRENT"), "ok armed");
    // Other operations on other paths go on.
    write_synced(&m.file("unrelated"), b"x");
    assert_eq!(m.say("status"), "ok on");

    let err = fs::rename(m.file("mvcc/CURRENT.tmp"), m.file("mvcc/CURRENT")).expect_err("cut");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(m.say("status"), "ok off fired rename mvcc/CURRENT");
    m.say("on");
    assert_eq!(fs::read(m.file("mvcc/CURRENT")).expect("read"), b"old");
    assert!(
        !m.file("unrelated").exists(),
        "its directory was never synced"
    );
}
