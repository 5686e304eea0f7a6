//! A member's disk that can lose power: `raftkv-lossyfs` (lossyfs/) mounted at a folder
//! the member's data dir sits in, and its control socket. Unmounted on drop.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const MOUNT_TIMEOUT_MS: u64 = 10_000;

pub struct LossyDisk {
    /// Where it is mounted: the member's data dir is `<mount>/data`.
    pub mount: PathBuf,
    child: Child,
    control: BufReader<UnixStream>,
}

/// The lossyfs binary cargo built beside raftkv (scripts/test builds both).
fn lossyfs_bin() -> PathBuf {
    let bin = crate::raftkv_bin().with_file_name("raftkv-lossyfs");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p raftkv-lossyfs` (scripts/test does)",
        bin.display()
    );
    bin
}

fn mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let path = path.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(&*path))
}

impl LossyDisk {
    /// Mounts a fresh lossy file system at `<dir>/disk` (backing data in
    /// `<dir>/backing`); `seed` decides what torn cuts keep.
    pub fn mount(dir: &Path, seed: u64) -> LossyDisk {
        let (backing, mount, socket) = (dir.join("backing"), dir.join("disk"), dir.join("control"));
        for d in [&backing, &mount] {
            std::fs::create_dir_all(d).expect("lossy disk folders");
        }
        let log = std::fs::File::create(dir.join("lossyfs.log")).expect("log");
        let child = Command::new(lossyfs_bin())
            .arg("--backing")
            .arg(&backing)
            .arg("--mount")
            .arg(&mount)
            .arg("--control")
            .arg(&socket)
            .arg("--seed")
            .arg(seed.to_string())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("raftkv-lossyfs starts");
        let deadline = Instant::now() + Duration::from_millis(MOUNT_TIMEOUT_MS);
        while !mounted(&mount) || !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "{}: not mounted",
                mount.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let control = BufReader::new(UnixStream::connect(&socket).expect("control socket"));
        LossyDisk {
            mount,
            child,
            control,
        }
    }

    /// Sends one control command (lossyfs/src/control.rs) and returns its answer.
    pub fn say(&mut self, command: &str) -> String {
        writeln!(self.control.get_mut(), "{command}").expect("control: sent");
        let mut answer = String::new();
        self.control
            .read_line(&mut answer)
            .expect("control: answered");
        assert!(answer.starts_with("ok"), "lossyfs {command}: {answer}");
        answer.trim().to_string()
    }

    /// The power goes (what was not synced is lost; torn: a random prefix of each
    /// file's unsynced pages is kept) and comes back. Kill the member first: a
    /// process does not outlive its machine's power.
    pub fn power_cut(&mut self, torn: bool) -> String {
        let report = self.say(if torn { "cut torn" } else { "cut" });
        self.say("on");
        report
    }
}

impl Drop for LossyDisk {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&self.mount)
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
