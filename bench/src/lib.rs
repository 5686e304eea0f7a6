//! Shared helpers of raftkv's benchmarks.
//!
//! Benchmarks measure against a floor taken on the same file system in the same run
//! (a bare fdatasync of the same size), never against a fixed number.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Applies a Put of `value` at `key` straight to the MVCC store (no Raft, no fsync):
/// the store-level write the benchmarks and stall examples measure.
pub fn put(store: &raftkv_storage::mvcc::MvccStore, key: String, value: &bytes::Bytes) {
    use raftkv_storage::mvcc::{AppliedMeta, Command, PutRequest};
    store
        .apply(
            &Command::Put(PutRequest {
                key: bytes::Bytes::from(key),
                value: value.clone(),
                ..Default::default()
            }),
            &AppliedMeta::default(),
        )
        .expect("apply")
        .expect("put");
}

/// One bare durable write: `size_bytes` written at the start of a preallocated file,
/// then fdatasync. This is the floor a durable append can approach.
pub struct FsyncFloor {
    file: std::fs::File,
    buf: Vec<u8>,
}

impl FsyncFloor {
    pub fn new(dir: &Path, size_bytes: usize) -> std::io::Result<FsyncFloor> {
        let path = dir.join("fsync-floor.dat");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)?;
        file.write_all(&vec![0u8; 1 << 20])?;
        file.sync_all()?;
        Ok(FsyncFloor {
            file,
            buf: vec![0xab; size_bytes],
        })
    }

    /// Writes and syncs once; returns how long that took.
    pub fn once(&mut self, offset: u64) -> std::io::Result<Duration> {
        let start = Instant::now();
        self.file.write_all_at(&self.buf, offset % (1 << 20))?;
        self.file.sync_data()?;
        Ok(start.elapsed())
    }
}

/// A three-member raftkv cluster of real processes on loopback, for benchmarks. The
/// binary is built (release) by cargo on first use, so the numbers are for current code.
pub struct BenchCluster {
    pub dir: tempfile::TempDir,
    children: Vec<std::process::Child>,
    pub client_ports: Vec<u16>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Builds `raftkv` in release mode and returns its path.
pub fn build_raftkv(cargo: &str, workspace: &Path) -> std::path::PathBuf {
    let status = std::process::Command::new(cargo)
        .current_dir(workspace)
        .args([
            "build",
            "--release",
            "-p",
            "raftkv-server",
            "--bin",
            "raftkv",
        ])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building raftkv failed");
    workspace.join("target").join("release").join("raftkv")
}

impl BenchCluster {
    /// Starts `n` members in a temp dir under `parent` (the file system measured).
    pub fn start(bin: &Path, parent: &Path, n: usize) -> BenchCluster {
        let dir = tempfile::tempdir_in(parent).expect("temp dir");
        let peer_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let client_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut children = Vec::new();
        for i in 0..n {
            let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).expect("log");
            let mut cmd = std::process::Command::new(bin);
            cmd.arg("--name")
                .arg(format!("m{i}"))
                .arg("--data-dir")
                .arg(dir.path().join(format!("m{i}")))
                .arg("--listen-client-urls")
                .arg(format!("http://127.0.0.1:{}", client_ports[i]))
                .arg("--listen-peer-urls")
                .arg(format!("http://127.0.0.1:{}", peer_ports[i]))
                .stdout(log.try_clone().expect("log"))
                .stderr(log);
            if i == 0 {
                cmd.arg("--cluster-init");
            } else {
                cmd.arg("--join")
                    .arg(format!("http://127.0.0.1:{}", peer_ports[0]))
                    .arg("--token-file")
                    .arg(dir.path().join("m0").join("token"));
            }
            children.push(cmd.spawn().expect("raftkv starts"));
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let log = std::fs::read_to_string(dir.path().join(format!("m{i}.log")))
                    .unwrap_or_default();
                if log.contains("raftkv is ready") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "member {i} did not start:\n{log}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        BenchCluster {
            dir,
            children,
            client_ports,
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.client_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }
}

impl Drop for BenchCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
