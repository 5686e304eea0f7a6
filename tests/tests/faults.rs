//! Faults on real clusters, checked by machine: while members are SIGKILLed and
//! restarted, paused with SIGSTOP, leaders killed, or the network between members cut
//! (minority or leader isolated, one-way loss, partial partitions; the members then run
//! in network namespaces, tests/src/netns.rs), or a member's disk filled up (each then
//! on its own tmpfs), concurrent clients run register
//! operations (put, get, compare-and-set) whose histories must be linearizable
//! (tests/src/linearizability.rs), counter clients whose acknowledged increments must
//! all be there, and a watcher whose stream, resumed across failures, must have no
//! gap, duplicate or reordering.
//!
//! Every scenario is seeded: a failure prints the seed, the fault schedule and the
//! offending part of the history, and `RAFTKV_FAULT_SEED=<seed>` replays the schedule.
//! `RAFTKV_SOAK_MINUTES=<m>` (scripts/soak) runs scenarios with fresh seeds for that
//! long instead of CI's bounded set.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, Txn, TxnOp, WatchOptions,
};
use raftkv_tests::linearizability::{check, Op, RegisterOp, Verdict};
use raftkv_tests::netns::Net;
use raftkv_tests::Cluster;

const REGISTER_KEYS: u64 = 8;
/// A register client's pause between operations (keeps histories checkable).
const THINK_MS: u64 = 2;
const REGISTER_CLIENTS: usize = 4;
const COUNTER_CLIENTS: usize = 2;
/// A request's outcome counts as unknown after this long.
const REQUEST_TIMEOUT_MS: u64 = 1_500;

/// A small deterministic generator (xorshift64*): the seed alone fixes the schedule.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL a member, restart it after the pause.
    Kill { member: usize, down_ms: u64 },
    /// SIGKILL whoever leads, restart it after the pause.
    KillLeader { down_ms: u64 },
    /// SIGSTOP a member, SIGCONT it after the pause.
    Pause { member: usize, paused_ms: u64 },
    /// Cut the members in the bit set off from the others, both ways, then heal: one
    /// member (minority isolated), or two of five; `clients`: from the test's clients
    /// too (a machine that drops off the network altogether).
    Isolate {
        members: u8,
        cut_ms: u64,
        clients: bool,
    },
    /// Cut whoever leads off from every other member, both ways, then heal.
    IsolateLeader { cut_ms: u64 },
    /// Drop every packet `from` sends to `to` (asymmetric), then heal.
    OneWay { from: usize, to: usize, cut_ms: u64 },
    /// Cut `a` and `b` apart, both ways, while both still reach everyone else (a
    /// partial partition: the others bridge them).
    Split { a: usize, b: usize, cut_ms: u64 },
    /// Fill a member's file system to the last byte (another program's file), then
    /// free it and disarm the NOSPACE alarm, as an operator would.
    DiskFull { member: usize, full_ms: u64 },
    /// A member's machine loses power: SIGKILL, and its disk loses what was not synced
    /// (torn: keeps a random prefix of each file's unsynced pages); restarted after the
    /// pause.
    PowerCut {
        member: usize,
        torn: bool,
        down_ms: u64,
    },
    /// The same for whoever leads.
    PowerCutLeader { torn: bool, down_ms: u64 },
    /// Every machine loses power at once (one power strip); all restart together.
    PowerCutAll { torn: bool, down_ms: u64 },
    /// A member's power goes at a chosen moment (the first operation on its disk that
    /// the moment names), every member's if `all`; restarted after the pause.
    PowerCutAt {
        moment: Moment,
        torn: bool,
        all: bool,
        down_ms: u64,
    },
    /// An operator removes a member (`etcdctl member remove`), wipes its data dir and,
    /// after the pause, starts it with `--join`: it comes back as a new member, a
    /// learner until it has caught up, then a voter.
    Rejoin { member: usize, down_ms: u64 },
}

/// A moment a power cut is aimed at: whose disk, which operation on which path
/// (lossyfs/src/control.rs, `arm`), and what the test does to bring it about.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Moment {
    /// The leader fsyncs its log (every write).
    LogSync,
    /// A follower's engine writes out a table (a flush: --snapshot-count makes the
    /// engine flush every few hundred entries).
    EngineFlush,
    /// A member's revision compaction is under way and partly flushed: the test
    /// compacts the next part of the preloaded history (every member rests
    /// `COMPACTION_PAUSE_MS` between compaction batches, so it lasts seconds), waits
    /// until the member has flushed some of it, and cuts at its next table write.
    Compaction,
    /// A member's engine merges its tables: the test defragments it.
    CompactAndDefragment,
    /// A follower replaces peer_floors.json, the restart-safety table (every second).
    PeerFloorsRewrite,
    /// A member writes a scheduled backup (--snapshot-schedule, every 2 s).
    Backup,
    /// The leader's log starts its next segment: the test puts 1 MiB values until
    /// the 64 MiB segment is full.
    WalRollover,
    /// The leader's log deletes a segment the engine has absorbed (after a rollover).
    WalPurge,
    /// The leader writes a snapshot out for a follower that missed more entries than it
    /// keeps: the test stops the follower, writes past that, and restarts it.
    SnapshotExport,
    /// That follower installs the snapshot.
    SnapshotInstall,
    /// A member removed and wiped joins again (`--join`) and writes down who it is.
    Join,
}

impl Moment {
    const ALL: [Moment; 11] = [
        Moment::LogSync,
        Moment::EngineFlush,
        Moment::Compaction,
        Moment::CompactAndDefragment,
        Moment::PeerFloorsRewrite,
        Moment::Backup,
        Moment::WalRollover,
        Moment::SnapshotInstall,
        Moment::WalPurge,
        Moment::SnapshotExport,
        Moment::Join,
    ];

    /// The operation and path pattern to arm.
    fn trigger(self) -> (&'static str, &'static str) {
        match self {
            Moment::LogSync => ("fsync", "/data/wal/"),
            Moment::EngineFlush | Moment::Compaction | Moment::CompactAndDefragment => {
                ("write", "/tables/")
            }
            Moment::PeerFloorsRewrite => ("rename", "peer_floors.json"),
            Moment::Backup => ("write", "/data/backups/"),
            // A new segment is written as a temporary file and renamed into place.
            Moment::WalRollover => ("rename", "/data/wal/"),
            Moment::WalPurge => ("unlink", "/data/wal/"),
            Moment::SnapshotExport => ("write", "/data/snapshots/"),
            Moment::SnapshotInstall => ("write", "/data/snapshots/incoming"),
            Moment::Join => ("rename", "/data/member.json"),
        }
    }

    /// Whose disk the cut is armed on, given who leads.
    fn member(self, leader: usize, n: usize) -> usize {
        match self {
            Moment::LogSync | Moment::WalRollover | Moment::WalPurge | Moment::SnapshotExport => {
                leader
            }
            // Not member 0: the others restart with --join, it with --cluster-init.
            Moment::Join => (1..n).find(|i| *i != leader).unwrap_or(1),
            _ => (leader + 1) % n,
        }
    }
}

/// Which faults a schedule draws from.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kinds {
    /// SIGKILL, leader SIGKILL, SIGSTOP.
    Crashes,
    /// Network partitions (the members run in network namespaces, tests/src/netns.rs).
    Partitions,
    /// Full disks (each member on its own small tmpfs), with crashes.
    Disks,
    /// Power cuts of one member, of the leader and of all members at once (each member
    /// on its own lossy file system, lossyfs/), with crashes.
    PowerCuts,
    /// Power cuts aimed at moments (`Moment`), each in turn, of one member or all.
    PowerCutMoments,
    /// Crashes as `Crashes`, with every peer message delayed (`PEER_DELAY`).
    DelayedCrashes,
    /// Members removed, wiped and joining again, between SIGKILLs and SIGSTOPs.
    Membership,
}

/// The fault schedule of a seed: one fault every 1–2 s for `duration`.
fn schedule(seed: u64, members: usize, duration: Duration, kinds: Kinds) -> Vec<(u64, Fault)> {
    let mut rng = Rng::new(seed);
    let mut at_ms = 500;
    let mut faults = Vec::new();
    let mut moments = Moment::ALL.iter().cycle();
    while at_ms < duration.as_millis() as u64 {
        let member = rng.below(members as u64) as usize;
        let other = (member + 1 + rng.below(members as u64 - 1) as usize) % members;
        let pause_ms = 300 + rng.below(1200);
        let fault = match (kinds, rng.below(4)) {
            (Kinds::Crashes | Kinds::DelayedCrashes, 0) => Fault::Kill {
                member,
                down_ms: pause_ms,
            },
            (Kinds::Crashes | Kinds::DelayedCrashes, 1) => Fault::KillLeader { down_ms: pause_ms },
            (Kinds::Crashes | Kinds::DelayedCrashes, _) => Fault::Pause {
                member,
                paused_ms: pause_ms,
            },
            (Kinds::Partitions, 0) => Fault::Isolate {
                // Five members: sometimes two (still a minority) go together.
                members: if members >= 5 && rng.below(2) == 0 {
                    (1 << member) | (1 << other)
                } else {
                    1 << member
                },
                cut_ms: pause_ms,
                // Decided by the pause already drawn: a draw of its own would shift
                // every later fault of each seed's schedule.
                clients: pause_ms % 2 == 1,
            },
            (Kinds::Partitions, 1) => Fault::IsolateLeader { cut_ms: pause_ms },
            (Kinds::Partitions, 2) => Fault::OneWay {
                from: member,
                to: other,
                cut_ms: pause_ms,
            },
            (Kinds::Partitions, _) => Fault::Split {
                a: member,
                b: other,
                cut_ms: pause_ms,
            },
            (Kinds::Disks, 0 | 1) => Fault::DiskFull {
                member,
                full_ms: pause_ms,
            },
            (Kinds::Disks, 2) => Fault::Kill {
                member,
                down_ms: pause_ms,
            },
            (Kinds::Disks, _) => Fault::KillLeader { down_ms: pause_ms },
            (Kinds::PowerCuts, 0) => Fault::PowerCut {
                member,
                torn: rng.below(2) == 0,
                down_ms: pause_ms,
            },
            (Kinds::PowerCuts, 1) => Fault::PowerCutLeader {
                torn: rng.below(2) == 0,
                down_ms: pause_ms,
            },
            (Kinds::PowerCuts, 2) => Fault::PowerCutAll {
                torn: rng.below(2) == 0,
                down_ms: pause_ms,
            },
            (Kinds::PowerCuts, _) => Fault::Kill {
                member,
                down_ms: pause_ms,
            },
            // Not member 0: it restarts with --cluster-init, the others with --join.
            (Kinds::Membership, 0) => Fault::Rejoin {
                member: if member == 0 { other } else { member },
                down_ms: pause_ms,
            },
            (Kinds::Membership, 1) => Fault::KillLeader { down_ms: pause_ms },
            (Kinds::Membership, 2) => Fault::Pause {
                member,
                paused_ms: pause_ms,
            },
            (Kinds::Membership, _) => Fault::Kill {
                member,
                down_ms: pause_ms,
            },
            (Kinds::PowerCutMoments, n) => Fault::PowerCutAt {
                moment: *moments.next().unwrap_or(&Moment::LogSync),
                torn: rng.below(2) == 0,
                all: n == 0,
                down_ms: pause_ms,
            },
        };
        faults.push((at_ms, fault));
        at_ms += pause_ms + 700 + rng.below(800);
    }
    faults
}

fn now_ns(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

async fn connect(endpoint: &str) -> Option<Client> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(Duration::from_millis(REQUEST_TIMEOUT_MS));
    Client::connect([endpoint], Some(options)).await.ok()
}

/// A connection for one slow request (a membership change, a HashKV of a large key
/// space): the scenarios' request timeout would cut it short.
async fn connect_patient(endpoint: &str, timeout_s: u64) -> Result<Client, String> {
    let options = ConnectOptions::new().with_timeout(Duration::from_secs(timeout_s));
    Client::connect([endpoint], Some(options))
        .await
        .map_err(|e| format!("{endpoint}: {e}"))
}

/// A connection to one member that moves to the next member when it cannot connect
/// or a request fails (the member may be dead or paused).
struct Roaming {
    endpoints: Vec<String>,
    member: usize,
    client: Option<Client>,
}

impl Roaming {
    fn new(endpoints: Vec<String>, first: usize) -> Roaming {
        let member = first % endpoints.len();
        Roaming {
            endpoints,
            member,
            client: None,
        }
    }

    /// The current client, connecting first if needed; None after a failed attempt.
    async fn get(&mut self) -> Option<&mut Client> {
        if self.client.is_none() {
            self.client = connect(&self.endpoints[self.member]).await;
            if self.client.is_none() {
                self.move_on();
                tokio::time::sleep(Duration::from_millis(50)).await;
                return None;
            }
        }
        self.client.as_mut()
    }

    fn move_on(&mut self) {
        self.client = None;
        self.member = (self.member + 1) % self.endpoints.len();
    }
}

/// A client on one member (moving to the next when it cannot connect), running random
/// register operations on the register keys and recording each.
async fn register_client(
    id: usize,
    seed: u64,
    endpoints: Vec<String>,
    base: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<HashMap<u64, Vec<Op>>>>,
) {
    let mut rng = Rng::new(seed ^ ((id as u64 + 1) << 32));
    let mut roaming = Roaming::new(endpoints, id);
    let mut seq = 0u64;
    let mut last_seen: HashMap<u64, u64> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = roaming.get().await else {
            continue;
        };
        let key = rng.below(REGISTER_KEYS);
        let name = format!("reg/{key}");
        seq += 1;
        // Values are unique per write: client id in the high bits.
        let value = ((id as u64 + 1) << 40) | seq;
        let invoke_ns = now_ns(base);
        let (op, result) = match rng.below(3) {
            0 => {
                let r = c.put(name.as_str(), value.to_string(), None).await;
                (RegisterOp::Write(value), r.map(|_| ()))
            }
            1 => match c.get(name.as_str(), None).await {
                Ok(r) => {
                    let seen = r
                        .kvs()
                        .first()
                        .and_then(|kv| kv.value_str().ok()?.parse::<u64>().ok());
                    if let Some(v) = seen {
                        last_seen.insert(key, v);
                    }
                    (RegisterOp::Read(seen), Ok(()))
                }
                Err(e) => (RegisterOp::Read(None), Err(e)),
            },
            _ => {
                let expect = last_seen.get(&key).copied().unwrap_or(0);
                let txn = Txn::new()
                    .when([Compare::value(
                        name.as_str(),
                        CompareOp::Equal,
                        expect.to_string(),
                    )])
                    .and_then([TxnOp::put(name.as_str(), value.to_string(), None)]);
                let r = c.txn(txn).await;
                let ok = r.as_ref().is_ok_and(|r| r.succeeded());
                (
                    RegisterOp::Cas {
                        expect,
                        new: value,
                        ok,
                    },
                    r.map(|_| ()),
                )
            }
        };
        let failed_read = matches!(op, RegisterOp::Read(_)) && result.is_err();
        if failed_read || result.as_ref().is_err_and(refused_unapplied) {
            // Definitely without effect (a read changes nothing; the others were
            // refused or never sent): as if never issued.
            roaming.move_on();
            tokio::time::sleep(Duration::from_millis(THINK_MS)).await;
            continue;
        }
        let outcome_known = result.is_ok();
        let complete_ns = outcome_known.then(|| now_ns(base));
        history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .push(Op {
                client: id,
                invoke_ns,
                complete_ns,
                op,
            });
        if !outcome_known {
            // A failed request may mean a dead member: reconnect, elsewhere.
            roaming.move_on();
        }
        tokio::time::sleep(Duration::from_millis(THINK_MS)).await;
    }
}

/// Errors that say the request took no effect: the NOSPACE alarm refuses writes before
/// or at apply, never half-way; a connection that could not be made (a member down,
/// all of them after a power cut: "tcp connect error", "Connection refused") never
/// carried the request; "no leader" is raftkv's answer only when no attempt reached a
/// leader (member/leader_link.rs: a write that may have reached one is answered
/// "request timed out, possibly due to previous leader failure" instead). The checks hold each of these
/// to it: an increment or a register value that took effect after all would show.
fn refused_unapplied(e: &etcd_client::Error) -> bool {
    let message = e.to_string();
    if message.contains("database space exceeded") {
        NOSPACE_REFUSALS.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    message.contains("Connection refused")
        || message.contains("tcp connect error")
        || message.contains("etcdserver: no leader")
}

/// Requests refused with NOSPACE in this test process (each test runs in its own).
static NOSPACE_REFUSALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Increments "counter" with compare-and-set; returns (acknowledged, unknown outcome).
async fn counter_client(id: usize, endpoints: Vec<String>, stop: Arc<AtomicBool>) -> (u64, u64) {
    let (mut acked, mut unknown) = (0u64, 0u64);
    let mut roaming = Roaming::new(endpoints, id);
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = roaming.get().await else {
            continue;
        };
        let Ok(current) = c.get("counter", None).await else {
            roaming.move_on();
            continue;
        };
        let (value, revision) = current
            .kvs()
            .first()
            .map(|kv| {
                (
                    kv.value_str()
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0),
                    kv.mod_revision(),
                )
            })
            .unwrap_or((0, 0));
        let txn = Txn::new()
            .when([Compare::mod_revision("counter", CompareOp::Equal, revision)])
            .and_then([TxnOp::put("counter", (value + 1).to_string(), None)]);
        match c.txn(txn).await {
            Ok(r) if r.succeeded() => acked += 1,
            Ok(_) => {}
            Err(e) if refused_unapplied(&e) => {}
            Err(_) => {
                unknown += 1;
                roaming.move_on();
            }
        }
    }
    (acked, unknown)
}

/// One event as a watcher saw it.
/// An event: revision, key, whether a put, the value.
type Seen = (i64, String, bool, String);

/// Watches "reg/" from `from`, resuming from the last revision seen (on another
/// member) whenever the stream fails, until `stop`.
async fn watcher(endpoints: Vec<String>, from: i64, stop: Arc<AtomicBool>) -> Vec<Seen> {
    let mut seen: Vec<Seen> = Vec::new();
    let mut next = from;
    let mut member = 0;
    while !stop.load(Ordering::Relaxed) {
        member = (member + 1) % endpoints.len();
        let Some(mut c) = connect(&endpoints[member]).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let options = WatchOptions::new().with_prefix().with_start_revision(next);
        let Ok(mut stream) = c.watch("reg/", Some(options)).await else {
            continue;
        };
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if stop.load(Ordering::Relaxed) { break } else { continue }
                }
            };
            match message {
                Ok(Some(resp)) => {
                    if resp.canceled() {
                        break;
                    }
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let rev = kv.mod_revision();
                        seen.push((
                            rev,
                            String::from_utf8_lossy(kv.key()).to_string(),
                            ev.event_type() == EventType::Put,
                            String::from_utf8_lossy(kv.value()).to_string(),
                        ));
                        next = rev + 1;
                    }
                }
                _ => break,
            }
        }
    }
    seen
}

/// Every event of "reg/" from `from` to `upto`, read in one go from a healthy member.
async fn all_events(endpoint: &str, from: i64, upto: i64) -> Vec<Seen> {
    let mut c = connect(endpoint)
        .await
        .expect("connect for the final check");
    let options = WatchOptions::new().with_prefix().with_start_revision(from);
    let mut stream = c.watch("reg/", Some(options)).await.expect("watch");
    let mut events = Vec::new();
    // Generous: the history may hold hundreds of MB of other keys' values to pass over
    // (the aimed power cuts write 1 MiB values), read through a test file system.
    let deadline = Instant::now() + Duration::from_secs(60);
    while events
        .last()
        .is_none_or(|(rev, _, _, _): &Seen| *rev < upto)
    {
        assert!(Instant::now() < deadline, "the history watch stalled");
        let message = tokio::time::timeout(Duration::from_secs(30), stream.message()).await;
        let Ok(Ok(Some(resp))) = message else {
            panic!(
                "the history watch ended early ({message:?}) after {} events, last {:?}, upto {upto}",
                events.len(),
                events.last()
            );
        };
        for ev in resp.events() {
            if let Some(kv) = ev.kv() {
                if kv.mod_revision() <= upto {
                    events.push((
                        kv.mod_revision(),
                        String::from_utf8_lossy(kv.key()).to_string(),
                        ev.event_type() == EventType::Put,
                        String::from_utf8_lossy(kv.value()).to_string(),
                    ));
                }
            }
        }
    }
    events
}

fn leader_index(cluster: &mut Cluster, rt: &tokio::runtime::Runtime) -> Option<usize> {
    for (i, m) in cluster.members.iter_mut().enumerate() {
        if !m.is_running() {
            continue;
        }
        let endpoint = m.endpoint();
        let is_leader = rt.block_on(async {
            let mut c = connect(&endpoint).await?;
            let s = c.status().await.ok()?;
            Some(s.header().is_some_and(|h| h.member_id() == s.leader()))
        });
        if is_leader == Some(true) {
            return Some(i);
        }
    }
    None
}

/// Makes the cuts `cut` says in the test network, holds them `cut_ms`, then heals.
fn partition(cluster: &mut Cluster, cut_ms: u64, cut: impl FnOnce(&mut Net)) {
    let net = cluster
        .net
        .as_mut()
        .expect("partitions need the test network");
    cut(net);
    std::thread::sleep(Duration::from_millis(cut_ms));
    net.heal();
}

/// Each member's file system in the full-disk scenarios.
const DISK_MIB: u64 = 200;
/// Members on one home network and a slow switch, or across a few rooms of Wi-Fi:
/// every peer message waits 10 ± 8 ms each way.
const PEER_DELAY: raftkv_tests::delay::Delay = raftkv_tests::delay::Delay {
    delay_ms: 10,
    jitter_ms: 8,
};

/// How long after a whole-cluster power cut the cluster must take writes again.
const POWER_RECOVERY_MAX_MS: u64 = 30_000;

/// `etcdctl alarm disarm`, through the first member that answers: as etcd's client
/// does, list the alarms and deactivate each one for its member.
async fn disarm_nospace(endpoints: &[String]) {
    use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        for endpoint in endpoints {
            let Some(mut c) = connect(endpoint).await else {
                continue;
            };
            let Ok(listed) = c.alarm(AlarmAction::Get, AlarmType::None, None).await else {
                continue;
            };
            let mut disarmed = true;
            for alarm in listed.alarms() {
                let mut options = AlarmOptions::new();
                options.with_member(alarm.member_id());
                disarmed &= c
                    .alarm(AlarmAction::Deactivate, alarm.alarm(), Some(options))
                    .await
                    .is_ok();
            }
            if disarmed {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no member disarmed the NOSPACE alarm");
}

/// What a failing scenario prints: enough to replay and to see the problem.
fn report(seed: u64, members: usize, faults: &[(u64, Fault)], problem: &str) -> String {
    format!(
        "fault scenario failed: {problem}\n  seed {seed} ({members} members); replay with RAFTKV_FAULT_SEED={seed}\n  schedule (ms from start): {faults:?}"
    )
}

/// A member whose every log fdatasync takes this much longer (a slow disk).
struct SlowDisk {
    member: usize,
    fsync_delay_ms: u64,
}

/// Applies one fault and undoes it after its pause. A power cut of every member
/// answers how long after the restart a write first succeeded; a member that did not
/// survive its fault is an error.
fn inject(
    cluster: &mut Cluster,
    rt: &tokio::runtime::Runtime,
    endpoints: &[String],
    fault: Fault,
) -> Result<Option<u128>, String> {
    let restart = |cluster: &mut Cluster, member: usize| {
        let args = cluster.restart_args(member);
        cluster.members[member].start(&args);
    };
    match fault {
        Fault::Kill { member, down_ms } => {
            cluster.members[member].kill9();
            std::thread::sleep(Duration::from_millis(down_ms));
            restart(cluster, member);
        }
        Fault::KillLeader { down_ms } => {
            if let Some(leader) = leader_index(cluster, rt) {
                cluster.members[leader].kill9();
                std::thread::sleep(Duration::from_millis(down_ms));
                restart(cluster, leader);
            }
        }
        Fault::Pause { member, paused_ms } => {
            cluster.members[member].pause();
            std::thread::sleep(Duration::from_millis(paused_ms));
            cluster.members[member].resume();
        }
        Fault::Isolate {
            members: set,
            cut_ms,
            clients,
        } => {
            let n = cluster.members.len();
            partition(cluster, cut_ms, |net| {
                for inside in (0..n).filter(|i| set & (1 << i) != 0) {
                    for outside in (0..n).filter(|i| set & (1 << i) == 0) {
                        net.cut_both(inside, outside);
                    }
                    if clients {
                        net.cut_from_clients(inside);
                    }
                }
            })
        }
        Fault::IsolateLeader { cut_ms } => {
            if let Some(leader) = leader_index(cluster, rt) {
                partition(cluster, cut_ms, |net| net.isolate(leader));
            }
        }
        Fault::OneWay { from, to, cut_ms } => partition(cluster, cut_ms, |net| net.cut(from, to)),
        Fault::Split { a, b, cut_ms } => partition(cluster, cut_ms, |net| net.cut_both(a, b)),
        Fault::DiskFull { member, full_ms } => {
            cluster.disks[member].fill();
            std::thread::sleep(Duration::from_millis(full_ms));
            cluster.disks[member].unfill();
            rt.block_on(disarm_nospace(endpoints));
            if !cluster.members[member].is_running() {
                return Err(format!("member {member} exited on a full disk"));
            }
        }
        Fault::Rejoin { member, down_ms } => {
            remove_and_wipe(cluster, rt, endpoints, member)?;
            std::thread::sleep(Duration::from_millis(down_ms));
            restart(cluster, member);
        }
        Fault::PowerCut { .. }
        | Fault::PowerCutLeader { .. }
        | Fault::PowerCutAll { .. }
        | Fault::PowerCutAt { .. } => return inject_power_cut(cluster, rt, endpoints, fault),
    }
    Ok(None)
}

/// The power-cut faults (each member on a lossy disk): one member's, the leader's,
/// every member's, or one aimed at a moment. A whole-cluster cut answers how long after
/// the power returned a write first succeeded.
fn inject_power_cut(
    cluster: &mut Cluster,
    rt: &tokio::runtime::Runtime,
    endpoints: &[String],
    fault: Fault,
) -> Result<Option<u128>, String> {
    let restart = |cluster: &mut Cluster, member: usize| {
        let args = cluster.restart_args(member);
        cluster.members[member].start(&args);
    };
    match fault {
        Fault::PowerCut {
            member,
            torn,
            down_ms,
        } => {
            cluster.members[member].kill9();
            cluster.lossy[member].power_cut(torn);
            std::thread::sleep(Duration::from_millis(down_ms));
            restart(cluster, member);
        }
        Fault::PowerCutLeader { torn, down_ms } => {
            if let Some(leader) = leader_index(cluster, rt) {
                cluster.members[leader].kill9();
                cluster.lossy[leader].power_cut(torn);
                std::thread::sleep(Duration::from_millis(down_ms));
                restart(cluster, leader);
            }
        }
        Fault::PowerCutAll { torn, down_ms } => {
            return power_cut_all(cluster, rt, endpoints, torn, down_ms).map(Some);
        }
        Fault::PowerCutAt {
            moment,
            torn,
            all,
            down_ms,
        } => return power_cut_at(cluster, rt, endpoints, moment, torn, all, down_ms),
        _ => unreachable!("not a power cut: {fault:?}"),
    }
    Ok(None)
}

/// Puts before a scenario of aimed power cuts, so that its compaction has old
/// revisions to remove.
const PRELOAD_PUTS: u64 = 2_000;

/// How long a moment may take to come once its cut is armed.
const MOMENT_WAIT_MAX_MS: u64 = 15_000;

/// Arms a cut at `moment` on the member it concerns, brings the moment about, waits for
/// the cut, and restarts the member (every member, if `all` cut the others' power too)
/// after `down_ms`. A moment that never comes fails the scenario: the cut would prove
/// nothing.
fn power_cut_at(
    cluster: &mut Cluster,
    rt: &tokio::runtime::Runtime,
    endpoints: &[String],
    moment: Moment,
    torn: bool,
    all: bool,
    down_ms: u64,
) -> Result<Option<u128>, String> {
    let n = cluster.members.len();
    let leader = leader_index(cluster, rt).ok_or("no leader to aim at")?;
    let member = moment.member(leader, n);
    let lagging = (leader + 1) % n;
    let snapshot = matches!(moment, Moment::SnapshotExport | Moment::SnapshotInstall);
    if snapshot {
        cluster.members[lagging].kill9();
        rt.block_on(burst_of_puts(endpoints[leader].clone(), LAG_ENTRIES));
    }
    if moment == Moment::Join {
        remove_and_wipe(cluster, rt, endpoints, member)?;
    }
    let resumed_before = cluster.members[member]
        .log()
        .matches(COMPACTION_RESUMED)
        .count();
    if moment == Moment::Compaction {
        compaction_under_way(cluster, rt, member)?;
    }
    let (op, pattern) = moment.trigger();
    let torn_word = if torn { " torn" } else { "" };
    cluster.lossy[member].say(&format!("arm {op} {pattern}{torn_word}"));
    let leader_endpoint = cluster.members[leader].endpoint();
    match moment {
        Moment::CompactAndDefragment => {
            rt.spawn(compact_and_defragment(cluster.members[member].endpoint()));
        }
        Moment::WalRollover => {
            rt.spawn(big_puts(leader_endpoint));
        }
        Moment::WalPurge => {
            // A full segment, then more entries than the leader keeps behind its last
            // snapshot point, so that the full segment is purged.
            rt.spawn(async move {
                big_puts(leader_endpoint.clone()).await;
                burst_of_puts(leader_endpoint, LAG_ENTRIES).await;
            });
        }
        _ if snapshot => {
            let args = cluster.restart_args(lagging);
            cluster.members[lagging].spawn(&args);
        }
        Moment::Join => {
            let args = cluster.restart_args(member);
            cluster.members[member].spawn(&args);
        }
        _ => {}
    }
    let armed = Instant::now();
    while !cluster.lossy[member].say("status").starts_with("ok off") {
        if armed.elapsed() > Duration::from_millis(MOMENT_WAIT_MAX_MS) {
            cluster.lossy[member].say("disarm");
            return Err(format!(
                "{moment:?} did not come within {MOMENT_WAIT_MAX_MS} ms"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let cut: Vec<usize> = if all { (0..n).collect() } else { vec![member] };
    for &i in &cut {
        cluster.members[i].kill9();
        if i != member {
            cluster.lossy[i].say(if torn { "cut torn" } else { "cut" });
        }
    }
    for &i in &cut {
        cluster.lossy[i].say("on");
    }
    std::thread::sleep(Duration::from_millis(down_ms));
    let first_write_ms = restart_after_power_cut(cluster, rt, endpoints, &cut)?;
    if snapshot && !cut.contains(&lagging) {
        // The follower the snapshot was for comes back too.
        cluster.members[lagging].wait_serving_within(CATCH_UP_MAX_MS);
    }
    let resumed = cluster.members[member]
        .log()
        .matches(COMPACTION_RESUMED)
        .count();
    if moment == Moment::Compaction && resumed == resumed_before {
        return Err(
            "the member did not resume a compaction after the cut: none was on its disk half-done"
                .into(),
        );
    }
    Ok(all.then_some(first_write_ms))
}

/// Removes member `i` from the cluster (as `etcdctl member remove` does), stops it
/// and empties its data dir durably, so that its next start joins as a new member.
fn remove_and_wipe(
    cluster: &mut Cluster,
    rt: &tokio::runtime::Runtime,
    endpoints: &[String],
    i: usize,
) -> Result<(), String> {
    let id = rt.block_on(async {
        let mut c = connect(&endpoints[i]).await.ok_or("no connection")?;
        let status = c.status().await.map_err(|e| e.to_string())?;
        status
            .header()
            .map(|h| h.member_id())
            .ok_or_else(|| "no header".to_string())
    })?;
    let leader = leader_index(cluster, rt).ok_or("no leader")?;
    rt.block_on(async {
        // A membership change commits two entries: more than a request's timeout
        // allows under this load.
        let mut c = connect_patient(&endpoints[leader], 15).await?;
        c.member_remove(id)
            .await
            .map_err(|e| format!("member remove: {e}"))
    })?;
    cluster.members[i].kill9();
    let data = cluster.members[i].data_dir.clone();
    std::fs::remove_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    let mount = data.parent().ok_or("no mount")?;
    std::fs::File::open(mount)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("{}: {e}", mount.display()))
}

/// Entries a stopped follower misses so that the leader must send it a snapshot: more
/// than the leader keeps behind its last snapshot point (`MAX_CATCH_UP_ENTRIES`).
const LAG_ENTRIES: usize = 6_000;
/// Puts of `BIG_VALUE_BYTES` that fill a 64 MiB log segment and then some.
const BIG_PUTS: usize = 160;
const BIG_VALUE_BYTES: usize = 1 << 20;

/// `count` puts, 64 at a time, of small values on keys of their own.
async fn burst_of_puts(endpoint: String, count: usize) -> usize {
    // A patient connection: on a busy machine the scenario's 500 ms connect bound can
    // pass before the member answers, and the burst would silently write nothing.
    let Ok(c) = connect_patient(&endpoint, 10).await else {
        return 0;
    };
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..64 {
        let mut c = c.clone();
        writers.spawn(async move {
            let mut acked = 0;
            for i in (w..count).step_by(64) {
                acked += usize::from(c.put(format!("lag/{i}"), "x", None).await.is_ok());
            }
            acked
        });
    }
    let mut acked = 0;
    while let Some(done) = writers.join_next().await {
        acked += done.unwrap_or(0);
    }
    acked
}

/// 1 MiB values, one after another, until `BIG_PUTS` or the first failure (the cut).
async fn big_puts(endpoint: String) {
    let Some(mut c) = connect(&endpoint).await else {
        return;
    };
    let value = vec![b'b'; BIG_VALUE_BYTES];
    for i in 0..BIG_PUTS {
        if c.put(format!("big/{}", i % 4), value.clone(), None)
            .await
            .is_err()
        {
            return;
        }
    }
}

/// The revision the scenario's watcher started at: compactions stay below it, so that
/// the watcher can resume and the history be read back whole.
static SCENARIO_START_REVISION: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// The revision the scenario's compactions reached: each aimed compaction removes the
/// next `COMPACTION_CHUNK_REVISIONS` of the preload.
static COMPACTED_UPTO: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
/// Preloaded revisions one aimed compaction removes: 16 batches of 32, each followed by
/// a rest of `COMPACTION_PAUSE_MS` (`RAFTKV_COMPACTION_PAUSE_MS`), about 8 s in all —
/// while the load flushes the engine every few hundred entries. It must outlast the
/// compact request's own wait and two snapshot points on a member that may be catching
/// up after the previous cut.
const COMPACTION_CHUNK_REVISIONS: i64 = 500;
const COMPACTION_PAUSE_MS: u64 = 500;
/// What a member logs when it starts with a compaction that a restart interrupted.
const COMPACTION_RESUMED: &str = "resuming a compaction that a restart interrupted";
/// What a member logs when everything it has applied is durable in its engine.
const POINT_RECORDED: &str = "snapshot point recorded";

/// Compacts the next part of the preload (on every member) and waits until `member`
/// has made part of that compaction durable: a snapshot point whose flush began after
/// the compaction was applied there, while it still runs.
fn compaction_under_way(
    cluster: &Cluster,
    rt: &tokio::runtime::Runtime,
    member: usize,
) -> Result<(), String> {
    let done = COMPACTED_UPTO.load(Ordering::Relaxed);
    let target = (done + COMPACTION_CHUNK_REVISIONS)
        .min(SCENARIO_START_REVISION.load(Ordering::Relaxed) - 1);
    if target <= done {
        return Err("no preloaded history left to compact".into());
    }
    let log = || cluster.members[member].log();
    let finished_before = log().matches("mvcc: compaction finished").count();
    let endpoint = cluster.members[member].endpoint();
    rt.block_on(async {
        let mut c = connect_patient(&endpoint, 10).await?;
        c.compact(target, None)
            .await
            .map_err(|e| format!("compact {target}: {e}"))
    })?;
    COMPACTED_UPTO.store(target, Ordering::Relaxed);
    // The second point recorded from now on: the first may have begun its flush before
    // the compaction was applied here (points are recorded one at a time).
    let points = log().matches(POINT_RECORDED).count();
    let asked = Instant::now();
    while log().matches(POINT_RECORDED).count() < points + 2 {
        if asked.elapsed() > Duration::from_millis(MOMENT_WAIT_MAX_MS) {
            return Err(format!(
                "no flush within {MOMENT_WAIT_MAX_MS} ms of the compaction"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if log().matches("mvcc: compaction finished").count() > finished_before {
        return Err("the compaction finished before any of it was flushed".into());
    }
    Ok(())
}

/// What an operator runs to reclaim space after compactions: a defragment (the engine
/// merges its tables). Errors are the cut's.
async fn compact_and_defragment(endpoint: String) {
    let Some(mut c) = connect(&endpoint).await else {
        return;
    };
    let _ = c.defragment().await;
}

/// Every member's power goes at once and returns after `down_ms`; they restart as
/// their service units would, all together, with no operator step. Answers the time
/// from the restart to the first write that succeeds.
fn power_cut_all(
    cluster: &mut Cluster,
    rt: &tokio::runtime::Runtime,
    endpoints: &[String],
    torn: bool,
    down_ms: u64,
) -> Result<u128, String> {
    for m in &mut cluster.members {
        m.kill9();
    }
    for disk in &mut cluster.lossy {
        disk.power_cut(torn);
    }
    std::thread::sleep(Duration::from_millis(down_ms));
    let all: Vec<usize> = (0..cluster.members.len()).collect();
    restart_after_power_cut(cluster, rt, endpoints, &all)
}

/// How long a member restarted or joining after a cut may take to serve: one that
/// must take the key space as a snapshot (hundreds of MB once the rollover moments'
/// 1 MiB values are in its history) installs it through the lossy file system, on two
/// cores shared with the load.
const CATCH_UP_MAX_MS: u64 = 90_000;

/// Restarts `members` together, as their service units would after the power came
/// back, with no operator step. Answers the time from the restart to the first write
/// that succeeds; fails if none does within `POWER_RECOVERY_MAX_MS` or a member does
/// not come back.
fn restart_after_power_cut(
    cluster: &mut Cluster,
    rt: &tokio::runtime::Runtime,
    endpoints: &[String],
    members: &[usize],
) -> Result<u128, String> {
    let restarted = Instant::now();
    for &i in members {
        let args = cluster.restart_args(i);
        cluster.members[i].spawn(&args);
    }
    let first_write_ms = rt.block_on(async {
        while restarted.elapsed() < Duration::from_millis(POWER_RECOVERY_MAX_MS) {
            for endpoint in endpoints {
                if let Some(mut c) = connect(endpoint).await {
                    if c.put("power-restored", "x", None).await.is_ok() {
                        return Ok(restarted.elapsed().as_millis());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "no write within {POWER_RECOVERY_MAX_MS} ms of the power returning"
        ))
    })?;
    // Each member came back by itself (this panics with its log if one did not).
    for &i in members {
        cluster.members[i].wait_serving_within(CATCH_UP_MAX_MS);
    }
    Ok(first_write_ms)
}

/// Every member holds the same key space: once each has applied the latest revision,
/// they answer the same HashKV at it.
fn same_hashkv(rt: &tokio::runtime::Runtime, endpoints: &[String]) -> Result<(), String> {
    rt.block_on(async {
        let mut first = connect(&endpoints[0]).await.ok_or("no connection")?;
        let revision = first
            .get("counter", None)
            .await
            .map_err(|e| e.to_string())?
            .header()
            .map(|h| h.revision())
            .unwrap_or(0);
        let mut hashes = Vec::new();
        // Hashing hundreds of MB of history takes longer than a request's timeout.
        for endpoint in endpoints {
            let deadline = Instant::now() + Duration::from_secs(60);
            let hash = loop {
                let mut c = connect_patient(endpoint, 60).await?;
                match c.hash_kv(revision).await {
                    Ok(r) => break r.hash(),
                    Err(e) if Instant::now() > deadline => {
                        return Err(format!("{endpoint}: HashKV at {revision}: {e}"))
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            };
            hashes.push(hash);
        }
        if hashes.windows(2).all(|w| w[0] == w[1]) {
            Ok(())
        } else {
            Err(format!(
                "HashKV at revision {revision} differs: {hashes:x?}"
            ))
        }
    })
}

/// The revision each register value was written at, from the store's own history
/// (every written value is unique).
fn revisions_of_values(events: &[Seen]) -> HashMap<u64, i64> {
    events
        .iter()
        .filter(|(_, key, put, _)| *put && key.starts_with("reg/"))
        .filter_map(|(rev, _, _, value)| Some((value.parse::<u64>().ok()?, *rev)))
        .collect()
}

/// A key's operations with their unknown outcomes narrowed by the history. A write (or
/// compare-and-set) whose value never appears in it did not happen: dropped. One whose
/// value appears took effect, before every completed operation that wrote or read a
/// value of a later revision: it completes (successfully) by the first of those. Both
/// only remove orders the checker would otherwise try: a history the server reports
/// wrongly cannot pass because of them.
fn narrow_unknowns(ops: &[Op], revision_of: &HashMap<u64, i64>) -> Vec<Op> {
    let state_revision = |op: &Op| match op.op {
        RegisterOp::Write(v)
        | RegisterOp::Cas {
            new: v, ok: true, ..
        } => revision_of.get(&v),
        RegisterOp::Read(Some(v)) => revision_of.get(&v),
        _ => None,
    };
    let completed: Vec<(i64, u64)> = ops
        .iter()
        .filter_map(|op| Some((*state_revision(op)?, op.complete_ns?)))
        .collect();
    ops.iter()
        .filter_map(|op| {
            let written = match op.op {
                RegisterOp::Write(v) | RegisterOp::Cas { new: v, .. } => v,
                RegisterOp::Read(_) => return Some(op.clone()),
            };
            if op.complete_ns.is_some() {
                return Some(op.clone());
            }
            let took_effect_at = *revision_of.get(&written)?;
            let by = completed
                .iter()
                .filter(|(rev, _)| *rev > took_effect_at)
                .map(|(_, complete_ns)| *complete_ns)
                .min()
                .filter(|by| *by > op.invoke_ns);
            let mut narrowed = op.clone();
            if let Some(by) = by {
                narrowed.complete_ns = Some(by);
                if let RegisterOp::Cas { ok, .. } = &mut narrowed.op {
                    *ok = true;
                }
            }
            Some(narrowed)
        })
        .collect()
}

fn run_scenario(seed: u64, members: usize, duration: Duration) {
    run_scenario_with(seed, members, duration, Kinds::Crashes, None)
}

fn run_scenario_with(
    seed: u64,
    members: usize,
    duration: Duration,
    kinds: Kinds,
    slow: Option<SlowDisk>,
) {
    let rt = runtime();
    let mut cluster = match kinds {
        Kinds::Crashes | Kinds::Membership => Cluster::start(members, &[]),
        Kinds::Partitions => Cluster::start_in_netns(members, &[]),
        // Room for a 64 MiB log segment and the key space; NOSPACE below 70 MiB free.
        Kinds::Disks => Cluster::start_on_small_disks(
            members,
            DISK_MIB,
            &["--disk-reserve-bytes", &(70u64 << 20).to_string()],
        ),
        Kinds::PowerCuts => Cluster::start_on_lossy_disks(members, seed, &[], &[]),
        Kinds::DelayedCrashes => Cluster::start_with_delay(members, PEER_DELAY, seed),
        Kinds::PowerCutMoments => Cluster::start_on_lossy_disks(
            members,
            seed,
            &[
                "--snapshot-count",
                "300",
                "--snapshot-schedule",
                "*/2 * * * * *",
            ],
            &[(
                "RAFTKV_COMPACTION_PAUSE_MS",
                &COMPACTION_PAUSE_MS.to_string(),
            )],
        ),
    };
    if let Some(slow) = &slow {
        let m = slow.member;
        cluster.members[m].kill9();
        cluster.members[m].env = vec![(
            "RAFTKV_FSYNC_DELAY_MS".to_string(),
            slow.fsync_delay_ms.to_string(),
        )];
        let args = cluster.restart_args(m);
        cluster.members[m].start(&args);
    }
    let endpoints = cluster.endpoints();
    let faults = schedule(seed, members, duration, kinds);
    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let history: Arc<Mutex<HashMap<u64, Vec<Op>>>> = Arc::default();

    if kinds == Kinds::PowerCutMoments {
        // History for the compaction before the defragment to remove.
        rt.block_on(async {
            let mut c = connect(&endpoints[0]).await.expect("connect");
            for i in 0..PRELOAD_PUTS {
                c.put(format!("pre/{}", i % 100), i.to_string(), None)
                    .await
                    .expect("preload put");
            }
        });
    }
    let start_revision = rt.block_on(async {
        let mut c = connect(&endpoints[0]).await.expect("connect");
        let r = c.get("reg/", None).await.expect("get");
        r.header().map(|h| h.revision()).unwrap_or(1) + 1
    });
    SCENARIO_START_REVISION.store(start_revision, Ordering::Relaxed);
    COMPACTED_UPTO.store(0, Ordering::Relaxed);
    let mut registers = Vec::new();
    for id in 0..REGISTER_CLIENTS {
        registers.push(rt.spawn(register_client(
            id,
            seed,
            endpoints.clone(),
            base,
            stop.clone(),
            history.clone(),
        )));
    }
    let counters: Vec<_> = (0..COUNTER_CLIENTS)
        .map(|id| rt.spawn(counter_client(id, endpoints.clone(), stop.clone())))
        .collect();
    let watch = rt.spawn(watcher(endpoints.clone(), start_revision, stop.clone()));

    // The faults, in the order and at the times the seed says.
    let mut recoveries_ms = Vec::new();
    for (at_ms, fault) in &faults {
        let due = base + Duration::from_millis(*at_ms);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        match inject(&mut cluster, &rt, &endpoints, *fault) {
            Ok(Some(ms)) => recoveries_ms.push(ms),
            Ok(None) => {}
            Err(problem) => panic!(
                "{}\n{}",
                report(seed, members, &faults, &problem),
                cluster.logs()
            ),
        }
    }
    std::thread::sleep((base + duration).saturating_duration_since(Instant::now()));
    stop.store(true, Ordering::Relaxed);
    for r in registers {
        rt.block_on(r).expect("register client");
    }
    let (mut acked, mut unknown) = (0, 0);
    for c in counters {
        let (a, u) = rt.block_on(c).expect("counter client");
        acked += a;
        unknown += u;
    }
    let seen = rt.block_on(watch).expect("watcher");

    // Writes resume once the faults are over.
    let resumed = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last_error = String::new();
        while Instant::now() < deadline {
            for endpoint in &endpoints {
                if let Some(mut c) = connect(endpoint).await {
                    // Under the watched prefix: the history read below reaches it.
                    match c.put("reg/after-faults", "x", None).await {
                        Ok(r) => return Ok(r.header().map(|h| h.revision()).unwrap_or(0)),
                        Err(e) => last_error = format!("{endpoint}: {e}"),
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last_error)
    });
    assert!(
        resumed.is_ok(),
        "{}: no write succeeded within 10 s of the last fault ({resumed:?}; free bytes {:?})\n{}",
        report(seed, members, &faults, "writes after the faults"),
        cluster
            .disks
            .iter()
            .map(|d| d.free_bytes())
            .collect::<Vec<_>>(),
        cluster.logs()
    );

    // The history as the store reports it, up to that write: the watcher's stream is
    // compared with it, and it narrows the registers' unknown outcomes.
    let after_faults = resumed.unwrap_or(0);
    let history_events = rt.block_on(all_events(&endpoints[0], start_revision, after_faults));

    // Linearizability of every register key.
    let revision_of = revisions_of_values(&history_events);
    let history: HashMap<u64, Vec<Op>> = history
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(key, ops)| (*key, narrow_unknowns(ops, &revision_of)))
        .collect();
    let mut total_ops = 0;
    for (key, ops) in &history {
        total_ops += ops.len();
        match check(ops) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable { longest, stuck } => {
                let mut shown: Vec<String> = stuck
                    .iter()
                    .map(|&i| format!("  stuck: {:?}", ops[i]))
                    .collect();
                for &i in longest.iter().rev().take(10) {
                    shown.push(format!("  linearized (last first): {:?}", ops[i]));
                }
                panic!(
                    "{}\n  key reg/{key}: {} ops, not linearizable\n{}\n{}",
                    report(seed, members, &faults, "a register history"),
                    ops.len(),
                    shown.join("\n"),
                    cluster.logs()
                );
            }
            Verdict::Undecided { states } => panic!(
                "{}\n  key reg/{key}: undecided after {states} states ({} of {} operations of unknown outcome)",
                report(seed, members, &faults, "the checker's bound"),
                ops.iter().filter(|o| o.complete_ns.is_none()).count(),
                ops.len()
            ),
        }
    }
    // The checker is not vacuous on this very history: a read, after everything else,
    // of the first value ever written to a key that was written again later, must fail.
    if let Some(ops) = history.values().max_by_key(|ops| ops.len()) {
        let writes: Vec<u64> = ops
            .iter()
            .filter(|o| o.complete_ns.is_some())
            .filter_map(|o| match o.op {
                RegisterOp::Write(v) => Some(v),
                RegisterOp::Cas { new, ok: true, .. } => Some(new),
                _ => None,
            })
            .collect();
        if writes.len() >= 2 {
            let end = ops.iter().filter_map(|o| o.complete_ns).max().unwrap_or(0) + 1;
            let mut stale = ops.clone();
            stale.push(Op {
                client: usize::MAX,
                invoke_ns: end,
                complete_ns: Some(end + 1),
                op: RegisterOp::Read(Some(writes[0])),
            });
            assert!(
                !matches!(check(&stale), Verdict::Linearizable),
                "the checker accepted a stale read appended to a real history"
            );
        }
    }
    assert!(
        total_ops > 50,
        "{}: only {total_ops} register operations ran",
        report(seed, members, &faults, "too little load")
    );

    // Nothing acknowledged was lost; nothing appeared from nowhere.
    let final_value = rt.block_on(async {
        for endpoint in &endpoints {
            let Some(mut c) = connect(endpoint).await else {
                continue;
            };
            if let Ok(r) = c.get("counter", None).await {
                return r
                    .kvs()
                    .first()
                    .and_then(|kv| kv.value_str().ok()?.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        panic!("no member answers after the faults");
    });
    assert!(
        acked <= final_value && final_value <= acked + unknown,
        "{}: counter is {final_value}, {acked} increments acknowledged, {unknown} unknown",
        report(seed, members, &faults, "a counter")
    );

    // The watcher's stream, resumed across failures, is exactly the history.
    let upto = seen.last().map(|(rev, _, _, _)| *rev).unwrap_or(0);
    if upto > 0 {
        let all: Vec<Seen> = history_events
            .iter()
            .filter(|(rev, _, _, _)| *rev <= upto)
            .cloned()
            .collect();
        if seen != all {
            let first = seen
                .iter()
                .zip(&all)
                .position(|(a, b)| a != b)
                .unwrap_or(seen.len().min(all.len()));
            panic!(
                "{}: watch stream differs from the history at event {first}: saw {:?}, history {:?}",
                report(seed, members, &faults, "a watch stream"),
                seen.get(first.saturating_sub(2)..(first + 3).min(seen.len())),
                all.get(first.saturating_sub(2)..(first + 3).min(all.len())),
            );
        }
    }
    if matches!(kinds, Kinds::PowerCuts | Kinds::PowerCutMoments) {
        if let Err(problem) = same_hashkv(&rt, &endpoints) {
            panic!(
                "{}\n{}",
                report(seed, members, &faults, &problem),
                cluster.logs()
            );
        }
    }
    let refusals = NOSPACE_REFUSALS.load(Ordering::Relaxed);
    if faults
        .iter()
        .any(|(_, f)| matches!(f, Fault::DiskFull { .. }))
    {
        assert!(
            refusals > 0,
            "{}: the disks filled up but no request was refused with NOSPACE",
            report(seed, members, &faults, "a full disk with no effect")
        );
    }
    eprintln!(
        "seed {seed}, {members} members: {} faults ({faults:?}), {total_ops} register ops linearizable, counter {final_value} ({acked} acked, {unknown} unknown), {} watch events in order, {refusals} writes refused with NOSPACE, writes {recoveries_ms:?} ms after each whole-cluster power cut",
        faults.len(),
        seen.len()
    );
}

fn seeds(default: &[u64]) -> Vec<u64> {
    match std::env::var("RAFTKV_FAULT_SEED") {
        Ok(s) => vec![s.parse().expect("RAFTKV_FAULT_SEED is a number")],
        Err(_) => default.to_vec(),
    }
}

fn soak_minutes() -> Option<u64> {
    std::env::var("RAFTKV_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
}

#[test]
fn three_members_under_kills_and_pauses_stay_linearizable() {
    if let Some(minutes) = soak_minutes() {
        let until = Instant::now() + Duration::from_secs(minutes * 60);
        let mut seed = std::process::id() as u64;
        while Instant::now() < until {
            seed = Rng::new(seed).next();
            run_scenario(seed, 3, Duration::from_secs(30));
        }
        return;
    }
    for seed in seeds(&[1, 2]) {
        run_scenario(seed, 3, Duration::from_secs(12));
    }
}

#[test]
fn five_members_under_kills_and_pauses_stay_linearizable() {
    for seed in seeds(&[3]) {
        run_scenario(seed, 5, Duration::from_secs(12));
    }
}

#[test]
fn a_member_with_a_slow_disk_neither_stalls_nor_breaks_the_cluster() {
    // Every fdatasync of one member's log takes 100 ms longer, while the same faults
    // run: the other two make the quorum, and every check still holds.
    for seed in seeds(&[4]) {
        run_scenario_with(
            seed,
            3,
            Duration::from_secs(10),
            Kinds::Crashes,
            Some(SlowDisk {
                member: 2,
                fsync_delay_ms: 100,
            }),
        );
    }
}

#[test]
fn three_members_through_removals_and_rejoins_stay_linearizable() {
    // Members leave and join again as new members while others crash and stall: the
    // joiner's catch-up, its promotion and the two-voter stretches in between.
    if let Some(minutes) = soak_minutes() {
        let until = Instant::now() + Duration::from_secs(minutes * 60);
        let mut seed = std::process::id() as u64 ^ 0x901;
        while Instant::now() < until {
            seed = Rng::new(seed).next();
            run_scenario_with(seed, 3, Duration::from_secs(30), Kinds::Membership, None);
        }
        return;
    }
    for seed in seeds(&[12]) {
        run_scenario_with(seed, 3, Duration::from_secs(15), Kinds::Membership, None);
    }
}

#[test]
fn three_members_under_network_partitions_stay_linearizable() {
    // Minority isolated, leader isolated, one-way loss and partial partitions; the
    // members run in network namespaces so that only member-to-member traffic is cut.
    if let Some(minutes) = soak_minutes() {
        let until = Instant::now() + Duration::from_secs(minutes * 60);
        let mut seed = std::process::id() as u64 ^ 0x5eed;
        while Instant::now() < until {
            seed = Rng::new(seed).next();
            run_scenario_with(seed, 3, Duration::from_secs(30), Kinds::Partitions, None);
        }
        return;
    }
    for seed in seeds(&[5, 6]) {
        run_scenario_with(seed, 3, Duration::from_secs(12), Kinds::Partitions, None);
    }
}

#[test]
fn five_members_under_network_partitions_stay_linearizable() {
    for seed in seeds(&[7]) {
        run_scenario_with(seed, 5, Duration::from_secs(12), Kinds::Partitions, None);
    }
}

#[test]
fn an_isolated_leader_is_replaced_and_serves_no_stale_reads() {
    // The cut is real: with the leader cut off from its peers (clients still reach
    // it), the other two elect a new leader and take writes; the old leader answers no
    // linearizable read (it cannot confirm it still leads); once healed, it has the
    // new value.
    let rt = runtime();
    let mut cluster = Cluster::start_in_netns(3, &[]);
    let endpoints = cluster.endpoints();
    rt.block_on(async {
        let mut c = connect(&endpoints[0]).await.expect("connect");
        c.put("p", "before", None).await.expect("put");
    });
    let old = leader_index(&mut cluster, &rt).expect("a leader");
    let other = (old + 1) % 3;
    cluster.net.as_mut().expect("test network").isolate(old);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let written = rt.block_on(async {
            let mut c = connect(&endpoints[other]).await?;
            c.put("p", "after", None).await.ok()
        });
        if written.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the majority side took no write; logs:\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let stale = rt.block_on(async {
        let mut c = connect(&endpoints[old])
            .await
            .expect("clients still reach it");
        c.get("p", None).await
    });
    assert!(
        stale.is_err(),
        "the isolated old leader answered a linearizable read: {stale:?}"
    );
    cluster.net.as_mut().expect("test network").heal();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let value = rt.block_on(async {
            let mut c = connect(&endpoints[old]).await?;
            let r = c.get("p", None).await.ok()?;
            Some(r.kvs().first()?.value_str().ok()?.to_string())
        });
        if value.as_deref() == Some("after") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old leader did not catch up after the heal ({value:?}); logs:\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_follower_that_stalled_or_was_cut_off_does_not_unseat_the_leader() {
    // etcd's PreVote: a follower that heard from no leader for a while — its process
    // stalled (SIGSTOP here; a slow disk or swapping on a Pi), or its links to the
    // others were cut — asks before it stands for election, and the others, who still
    // hear from the leader, say no. The leader keeps its term, and the follower, back,
    // takes the leader's writes.
    const QUIET_MS: u64 = 2_000; // over three times the longest election timeout
    let rt = runtime();
    let mut cluster = Cluster::start_in_netns(3, &[]);
    let endpoints = cluster.endpoints();
    let leader = leader_index(&mut cluster, &rt).expect("a leader");
    let follower = (leader + 1) % 3;
    let term = |endpoint: &str| {
        rt.block_on(async {
            let mut c = connect(endpoint).await.expect("connect");
            c.status().await.expect("status").raft_term()
        })
    };
    let term_before = term(&endpoints[leader]);
    for fault in ["stalled", "cut off"] {
        if fault == "stalled" {
            cluster.members[follower].pause();
            std::thread::sleep(Duration::from_millis(QUIET_MS));
            cluster.members[follower].resume();
        } else {
            let net = cluster.net.as_mut().expect("test network");
            net.isolate(follower);
            std::thread::sleep(Duration::from_millis(QUIET_MS));
            net.heal();
        }
        let key = format!("after {fault}");
        rt.block_on(async {
            let mut c = connect(&endpoints[leader]).await.expect("connect");
            c.put(key.as_str(), "v", None).await.expect("put");
        });
        wait_until_has(&cluster, &rt, follower, &key);
        let stood = cluster.members[follower].log().contains("became candidate");
        assert!(
            !stood && term(&endpoints[leader]) == term_before,
            "the {fault} follower stood for election or the leader changed:\n{}",
            cluster.leadership_log()
        );
    }
}

/// The clients' runtime: two workers, so that a client stays served while another
/// waits on a member that is paused or cut off.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Waits until member `i` answers a serializable read of `key`.
fn wait_until_has(cluster: &Cluster, rt: &tokio::runtime::Runtime, i: usize, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let endpoint = cluster.members[i].endpoint();
    loop {
        let found = rt.block_on(async {
            let mut c = connect(&endpoint).await?;
            let options = etcd_client::GetOptions::new().with_serializable();
            let r = c.get(key, Some(options)).await.ok()?;
            Some(r.count() == 1)
        });
        if found == Some(true) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never had {key}; logs:\n{}",
            cluster.members[i].name,
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_power_cut_right_after_a_snapshot_install_leaves_the_member_able_to_start() {
    // The moment a soak found: a follower installed a snapshot of what it missed and
    // answered for it, and the purge of its log up to the snapshot was not yet synced
    // when its power went. On power return its log ends before the snapshot, its key
    // space holds the snapshot, and the leader has recorded that it acknowledged the
    // snapshot: the restart check must count what the key space holds and let it in.
    const GOSSIP_WAIT_MS: u64 = 2_500; // the leader records what followers hold every second
    const EXPORT_LOGGED_WAIT_MS: u64 = 10_000;
    let rt = runtime();
    let mut cluster = Cluster::start_on_lossy_disks(3, 12, &["--snapshot-count", "300"], &[]);
    let endpoints = cluster.endpoints();
    let leader = leader_index(&mut cluster, &rt).expect("a leader");
    let lagging = (leader + 1) % 3;
    let held = cluster.members[lagging].applied_index();
    cluster.members[lagging].kill9();
    let acked = rt.block_on(async {
        let acked = burst_of_puts(endpoints[leader].clone(), LAG_ENTRIES).await;
        let mut c = connect(&endpoints[leader]).await.expect("connect");
        c.put("before the install", "v", None).await.expect("put");
        acked
    });
    assert_eq!(
        acked, LAG_ENTRIES,
        "the follower must miss every one of them"
    );
    assert!(
        cluster.members[leader].wait_log_purged_past(held, Duration::from_secs(30)),
        "the leader never purged what the follower holds; logs:\n{}",
        cluster.logs()
    );
    let args = cluster.restart_args(lagging);
    cluster.members[lagging].spawn(&args);
    wait_until_has(&cluster, &rt, lagging, "before the install");
    assert!(
        cluster.members[leader].wait_logged(
            "snapshot exported for a follower",
            Duration::from_millis(EXPORT_LOGGED_WAIT_MS)
        ),
        "the follower caught up without a snapshot; logs:\n{}",
        cluster.logs()
    );
    std::thread::sleep(Duration::from_millis(GOSSIP_WAIT_MS));
    cluster.members[lagging].kill9();
    cluster.lossy[lagging].say("cut");
    cluster.lossy[lagging].say("on");
    restart_after_power_cut(&mut cluster, &rt, &endpoints, &[lagging])
        .unwrap_or_else(|e| panic!("{e}; logs:\n{}", cluster.logs()));
    rt.block_on(async {
        let mut c = connect(&endpoints[leader]).await.expect("connect");
        c.put("after the cut", "v", None).await.expect("put");
    });
    wait_until_has(&cluster, &rt, lagging, "after the cut");
}

#[test]
fn members_whose_disks_fill_up_keep_running_and_lose_nothing() {
    // A member's file system filled to the last byte by another program, freed later,
    // between crashes: writes are refused with NOSPACE meanwhile, no member exits, and
    // every check holds.
    for seed in seeds(&[8]) {
        run_scenario_with(seed, 3, Duration::from_secs(12), Kinds::Disks, None);
    }
}

#[test]
fn three_members_lose_nothing_acknowledged_through_power_cuts() {
    // Each member's data dir on a disk that loses, at a power cut, what was not synced
    // (lossyfs/). One member's power, the leader's, and every member's at once (one
    // power strip), torn or not, between crashes: every member comes back by itself,
    // the cluster takes writes again, every check holds and the members' key spaces
    // are the same.
    if let Some(minutes) = soak_minutes() {
        let until = Instant::now() + Duration::from_secs(minutes * 60);
        let mut seed = std::process::id() as u64;
        let mut kinds = [Kinds::PowerCuts, Kinds::PowerCutMoments]
            .into_iter()
            .cycle();
        while Instant::now() < until {
            seed = Rng::new(seed).next();
            let kind = kinds.next().unwrap_or(Kinds::PowerCuts);
            run_scenario_with(seed, 3, Duration::from_secs(30), kind, None);
        }
        return;
    }
    for seed in seeds(&[9]) {
        run_scenario_with(seed, 3, Duration::from_secs(15), Kinds::PowerCuts, None);
    }
}

#[test]
fn power_cuts_aimed_at_moments_of_the_log_engine_snapshots_and_backups_lose_nothing() {
    // The same load and checks, with each power cut aimed at a moment (`Moment`): the
    // leader's log fdatasync (with every member's power going at once), a follower's
    // engine writing a table out, a member's engine merging its tables after a
    // compaction (an operator's compact and defragment), the rewrite of
    // peer_floors.json, a scheduled backup being written, the log's segment rollover and
    // purge, a snapshot's export on the leader and its install on a lagging follower.
    // Each moment must come, and every member comes back by itself.
    for seed in seeds(&[10]) {
        run_scenario_with(
            seed,
            3,
            Duration::from_secs(20),
            Kinds::PowerCutMoments,
            None,
        );
    }
}

#[test]
fn three_members_with_slow_jittery_links_under_kills_and_pauses_stay_linearizable() {
    // Every peer message waits 10 ± 8 ms each way (a user-space proxy in front of each
    // member's peer port: this kernel has no netem), while members and leaders are
    // killed and paused: every check holds.
    for seed in seeds(&[11]) {
        run_scenario_with(
            seed,
            3,
            Duration::from_secs(12),
            Kinds::DelayedCrashes,
            None,
        );
    }
}

#[test]
fn the_history_narrows_unknown_outcomes_and_nothing_else() {
    let op = |client, invoke_ns, complete_ns, op| Op {
        client,
        invoke_ns,
        complete_ns,
        op,
    };
    let ops = vec![
        op(0, 10, Some(20), RegisterOp::Write(1)),
        // Unknown, never in the history: did not happen.
        op(1, 30, None, RegisterOp::Write(2)),
        // Unknown, in the history before the completed write of 4 (done at 90).
        op(
            2,
            40,
            None,
            RegisterOp::Cas {
                expect: 1,
                new: 3,
                ok: false,
            },
        ),
        op(0, 60, Some(90), RegisterOp::Write(4)),
        // Unknown, in the history after everything completed: stays unknown.
        op(3, 95, None, RegisterOp::Write(5)),
        op(1, 100, Some(110), RegisterOp::Read(Some(4))),
    ];
    let revision_of: HashMap<u64, i64> = [(1, 5), (3, 6), (4, 7), (5, 8)].into();
    let narrowed = narrow_unknowns(&ops, &revision_of);
    assert_eq!(narrowed.len(), 5, "the write that never happened is gone");
    assert!(!narrowed.iter().any(|o| o.op == RegisterOp::Write(2)));
    let cas = narrowed.iter().find(|o| o.client == 2).expect("the cas");
    assert_eq!(
        cas.complete_ns,
        Some(90),
        "done by the later write's completion"
    );
    assert!(matches!(cas.op, RegisterOp::Cas { ok: true, .. }));
    let late = narrowed
        .iter()
        .find(|o| o.client == 3)
        .expect("the late write");
    assert_eq!(late.complete_ns, None);
    assert_eq!(check(&narrowed), Verdict::Linearizable);
    // A stale read after the narrowed cas is still caught.
    let mut stale = narrowed.clone();
    stale.push(op(4, 91, Some(92), RegisterOp::Read(Some(3))));
    assert!(!matches!(check(&stale), Verdict::Linearizable));
}
