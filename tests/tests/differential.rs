//! Differential testing against real etcd 3.5: seeded random sequences of KV and Lease
//! operations are sent to etcd and to raftkv, and every response is compared field by
//! field (member ids, cluster ids and raft terms aside), errors by gRPC code and message.
//!
//! RAFTKV_DIFF_SEED=<n> replays one seed; RAFTKV_DIFF_OPS=<n> sets the length.
//! A failure prints the seed and the first diverging operation.

use raftkv_proto::etcdserverpb as pb;
use raftkv_proto::etcdserverpb::kv_client::KvClient;
use raftkv_proto::etcdserverpb::lease_client::LeaseClient;
use raftkv_tests::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

const KEYS: &[&str] = &["a", "a/1", "a/2", "b", "b/1", "c", "d", "\u{7f}z"];
const LEASE_IDS: &[i64] = &[1, 2, 3];

#[derive(Debug, Clone)]
enum Op {
    Put(pb::PutRequest),
    Range(pb::RangeRequest),
    Delete(pb::DeleteRangeRequest),
    Txn(pb::TxnRequest),
    Compact(pb::CompactionRequest),
    LeaseGrant(pb::LeaseGrantRequest),
    LeaseRevoke(pb::LeaseRevokeRequest),
    LeaseTimeToLive(pb::LeaseTimeToLiveRequest),
    LeaseLeases,
}

struct Gen {
    rng: StdRng,
    revision: i64,
    /// Serializable reads may lag on a follower (as etcd's do): off for clusters.
    serializable: bool,
}

impl Gen {
    fn key(&mut self) -> Vec<u8> {
        KEYS[self.rng.random_range(0..KEYS.len())]
            .as_bytes()
            .to_vec()
    }

    fn range_end(&mut self, key: &[u8]) -> Vec<u8> {
        match self.rng.random_range(0..5) {
            0 | 1 => Vec::new(),
            2 => {
                let mut end = key.to_vec();
                if let Some(last) = end.last_mut() {
                    *last += 1;
                }
                end
            }
            3 => vec![0],
            _ => self.key(),
        }
    }

    fn revision(&mut self) -> i64 {
        match self.rng.random_range(0..4) {
            0 | 1 => 0,
            2 => self.rng.random_range(1..=self.revision.max(1)),
            _ => self.revision + self.rng.random_range(-2..3),
        }
    }

    fn value(&mut self) -> Vec<u8> {
        format!("v{}", self.rng.random_range(0..5)).into_bytes()
    }

    fn put(&mut self) -> pb::PutRequest {
        let ignore_value = self.rng.random_bool(0.1);
        let ignore_lease = self.rng.random_bool(0.1);
        pb::PutRequest {
            key: self.key().into(),
            value: if ignore_value && self.rng.random_bool(0.7) {
                Vec::new()
            } else {
                self.value()
            }
            .into(),
            lease: if self.rng.random_bool(0.2) && !(ignore_lease && self.rng.random_bool(0.7)) {
                LEASE_IDS[self.rng.random_range(0..LEASE_IDS.len())]
            } else {
                0
            },
            prev_kv: self.rng.random_bool(0.5),
            ignore_value,
            ignore_lease,
        }
    }

    fn range(&mut self) -> pb::RangeRequest {
        let key = self.key();
        let filter = |g: &mut Gen| {
            if g.rng.random_bool(0.15) {
                g.rng.random_range(0..=g.revision + 1)
            } else {
                0
            }
        };
        pb::RangeRequest {
            range_end: self.range_end(&key).into(),
            key: key.into(),
            limit: if self.rng.random_bool(0.3) {
                self.rng.random_range(0..4)
            } else {
                0
            },
            revision: self.revision(),
            sort_order: self.rng.random_range(0..3),
            sort_target: self.rng.random_range(0..5),
            serializable: self.serializable && self.rng.random_bool(0.3),
            keys_only: self.rng.random_bool(0.2),
            count_only: self.rng.random_bool(0.1),
            min_mod_revision: filter(self),
            max_mod_revision: filter(self),
            min_create_revision: filter(self),
            max_create_revision: filter(self),
        }
    }

    fn delete(&mut self) -> pb::DeleteRangeRequest {
        let key = self.key();
        pb::DeleteRangeRequest {
            range_end: self.range_end(&key).into(),
            key: key.into(),
            prev_kv: self.rng.random_bool(0.5),
        }
    }

    fn request_op(&mut self, depth: u32) -> pb::RequestOp {
        use pb::request_op::Request;
        let request = match self.rng.random_range(0..if depth < 1 { 4 } else { 3 }) {
            0 => {
                // ignore_value/ignore_lease inside a txn can make etcd panic (a delete
                // earlier in the txn removes the key the put needs); raftkv refuses
                // those whole (storage/tests/mvcc_semantics.rs). Not sent to etcd.
                let mut p = self.put();
                p.ignore_value = false;
                p.ignore_lease = false;
                Request::RequestPut(p)
            }
            1 => {
                let mut r = self.range();
                r.serializable = false;
                // Ties under a non-key sort are ordered by Go's unstable sort in etcd;
                // inside a txn they are not normalized, so sort by key only.
                r.sort_target = 0;
                Request::RequestRange(r)
            }
            2 => Request::RequestDeleteRange(self.delete()),
            _ => Request::RequestTxn(self.txn(depth + 1)),
        };
        pb::RequestOp {
            request: Some(request),
        }
    }

    fn txn(&mut self, depth: u32) -> pb::TxnRequest {
        use pb::compare::TargetUnion;
        let compares = (0..self.rng.random_range(0..3))
            .map(|_| {
                let target = self.rng.random_range(0..5);
                let key = self.key();
                let n = self.rng.random_range(0..=self.revision + 1);
                pb::Compare {
                    result: self.rng.random_range(0..4),
                    target,
                    range_end: if self.rng.random_bool(0.2) {
                        self.range_end(&key)
                    } else {
                        Vec::new()
                    }
                    .into(),
                    key: key.into(),
                    target_union: Some(match target {
                        0 => TargetUnion::Version(self.rng.random_range(0..3)),
                        1 => TargetUnion::CreateRevision(n),
                        2 => TargetUnion::ModRevision(n),
                        3 => TargetUnion::Value(self.value().into()),
                        _ => TargetUnion::Lease(if self.rng.random_bool(0.5) {
                            0
                        } else {
                            LEASE_IDS[0]
                        }),
                    }),
                }
            })
            .collect();
        let success = (0..self.rng.random_range(0..3))
            .map(|_| self.request_op(depth))
            .collect();
        let failure = (0..self.rng.random_range(0..3))
            .map(|_| self.request_op(depth))
            .collect();
        pb::TxnRequest {
            compare: compares,
            success,
            failure,
        }
    }

    fn op(&mut self) -> Op {
        match self.rng.random_range(0..100) {
            0..=29 => Op::Put(self.put()),
            30..=49 => Op::Range(self.range()),
            50..=59 => Op::Delete(self.delete()),
            60..=79 => Op::Txn(self.txn(0)),
            80..=83 => Op::Compact(pb::CompactionRequest {
                revision: self.rng.random_range(0..=self.revision + 1),
                physical: false,
            }),
            84..=89 => Op::LeaseGrant(pb::LeaseGrantRequest {
                ttl: 600,
                id: LEASE_IDS[self.rng.random_range(0..LEASE_IDS.len())],
            }),
            90..=93 => Op::LeaseRevoke(pb::LeaseRevokeRequest {
                id: LEASE_IDS[self.rng.random_range(0..LEASE_IDS.len())],
            }),
            94..=97 => Op::LeaseTimeToLive(pb::LeaseTimeToLiveRequest {
                id: LEASE_IDS[self.rng.random_range(0..LEASE_IDS.len())],
                keys: self.rng.random_bool(0.5),
            }),
            _ => Op::LeaseLeases,
        }
    }
}

type Outcome = Result<String, (tonic::Code, String)>;

fn outcome<T>(
    r: Result<tonic::Response<T>, tonic::Status>,
    f: impl FnOnce(T) -> String,
) -> Outcome {
    r.map(|r| f(r.into_inner()))
        .map_err(|s| (s.code(), s.message().to_string()))
}

/// Opens a watch stream with one create request on `channel`; returns the stream and
/// the sender that keeps it open (progress requests go there).
async fn open_watch(
    channel: Channel,
    create: pb::WatchCreateRequest,
) -> Result<
    (
        tonic::Streaming<pb::WatchResponse>,
        tokio::sync::mpsc::Sender<pb::WatchRequest>,
    ),
    String,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
    })
    .await
    .map_err(|e| e.to_string())?;
    let stream = raftkv_proto::etcdserverpb::watch_client::WatchClient::new(channel)
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    Ok((stream, tx))
}

struct Target {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    /// A watch on every key with prev_kv, opened before the first
    /// operation; its events are compared at the end.
    /// Drained continuously by a task, so the watcher never lags (a lagging watcher is
    /// rightly canceled by a compaction, in etcd as in raftkv).
    events: tokio::sync::mpsc::UnboundedReceiver<Result<pb::WatchResponse, String>>,
    _watch_requests: tokio::sync::mpsc::Sender<pb::WatchRequest>,
    channel: Channel,
}

impl Target {
    async fn connect(url: String) -> Target {
        let channel = Channel::from_shared(url)
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let create = pb::WatchCreateRequest {
            key: vec![0].into(),
            range_end: vec![0].into(),
            // From the next revision: etcd syncs a watcher that starts in the past
            // asynchronously, and a compaction before that cancels it.
            start_revision: 0,
            prev_kv: true,
            ..Default::default()
        };
        let (mut events, tx) = open_watch(channel.clone(), create).await.expect("watch");
        let created = events.message().await.expect("msg").expect("created");
        assert!(created.created);
        let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let m = match events.message().await {
                    Ok(Some(m)) => Ok(m),
                    Ok(None) => Err("the watch ended".to_string()),
                    Err(e) => Err(e.to_string()),
                };
                let end = m.is_err();
                if events_tx.send(m).is_err() || end {
                    return;
                }
            }
        });
        let events = events_rx;
        Target {
            kv: KvClient::new(channel.clone()),
            lease: LeaseClient::new(channel.clone()),
            events,
            _watch_requests: tx,
            channel,
        }
    }

    /// Sends a progress request on the live watch; returns the answer (watch id and
    /// revision), once every event before it has been read.
    async fn progress(&mut self) -> Result<String, String> {
        self._watch_requests
            .send(pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(
                    pb::WatchProgressRequest {},
                )),
            })
            .await
            .map_err(|e| e.to_string())?;
        loop {
            let m = tokio::time::timeout(std::time::Duration::from_secs(10), self.events.recv())
                .await
                .map_err(|_| "no progress response".to_string())?
                .ok_or("the watch ended")??;
            if m.events.is_empty() && !m.created && !m.canceled {
                let rev = m.header.as_ref().map_or(0, |h| h.revision);
                return Ok(format!("watch_id {} revision {rev}", m.watch_id));
            }
        }
    }

    /// A watch with filters, read until it has been quiet for a while (a filtered watch
    /// need not reach the last revision).
    async fn filtered(&mut self, create: pb::WatchCreateRequest) -> Result<Vec<String>, String> {
        let (mut stream, _keep_open) = open_watch(self.channel.clone(), create).await?;
        let mut out = Vec::new();
        while let Ok(m) =
            tokio::time::timeout(std::time::Duration::from_millis(700), stream.message()).await
        {
            let m = m
                .map_err(|e| e.to_string())?
                .ok_or("the filtered watch ended")?;
            if m.canceled {
                return Err(format!("filtered watch canceled: {m:?}"));
            }
            out.extend(m.events.iter().map(|e| format!("{e:?}")));
        }
        Ok(out)
    }

    /// A new watch on every key from `from`, read until `revision`.
    async fn history(&mut self, from: i64, revision: i64) -> Result<Vec<String>, String> {
        let create = pb::WatchCreateRequest {
            key: vec![0].into(),
            range_end: vec![0].into(),
            start_revision: from,
            prev_kv: true,
            ..Default::default()
        };
        let (mut stream, _keep_open) = open_watch(self.channel.clone(), create).await?;
        let mut out = Vec::new();
        let mut last = from - 1;
        while last < revision {
            let m = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
                .await
                .map_err(|_| format!("history watch stalled at {last}"))?
                .map_err(|e| e.to_string())?
                .ok_or("the history watch ended")?;
            if m.canceled {
                return Err(format!("history watch canceled: {m:?}"));
            }
            if m.created {
                continue;
            }
            for e in &m.events {
                last = last.max(e.kv.as_ref().map_or(0, |kv| kv.mod_revision));
                out.push(format!("{e:?}"));
            }
        }
        Ok(out)
    }

    /// Every event up to `revision`, as the watch delivered them.
    async fn events_until(&mut self, revision: i64) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        let mut last = 1;
        while last < revision {
            let m = tokio::time::timeout(std::time::Duration::from_secs(10), self.events.recv())
                .await
                .map_err(|_| format!("no events after revision {last} (want {revision})"))?
                .ok_or("the watch ended")??;
            if m.canceled {
                return Err(format!("the watch was canceled: {m:?}"));
            }
            for e in &m.events {
                last = last.max(e.kv.as_ref().map_or(0, |kv| kv.mod_revision));
                out.push(format!("{e:?}"));
            }
        }
        Ok(out)
    }

    async fn run(&mut self, op: &Op) -> Outcome {
        match op.clone() {
            Op::Put(r) => outcome(self.kv.put(r).await, |mut x| {
                normalize::header(&mut x.header);
                format!("{x:?}")
            }),
            Op::Range(r) => {
                // A non-key target sorts (ascending when no order is given).
                let tie_prone = r.sort_target != 0;
                let limited = r.limit > 0;
                outcome(self.kv.range(r.clone()).await, |mut x| {
                    normalize::header(&mut x.header);
                    if tie_prone {
                        // etcd orders ties of the sort target by Go's unstable sort:
                        // compare the sorted values, and the keys as a set unless a
                        // limit may have cut through a tie.
                        let target = |kv: &raftkv_proto::mvccpb::KeyValue| match r.sort_target {
                            1 => format!("{}", kv.version),
                            2 => format!("{}", kv.create_revision),
                            3 => format!("{}", kv.mod_revision),
                            _ => format!("{:?}", kv.value),
                        };
                        let values: Vec<String> = x.kvs.iter().map(target).collect();
                        let mut kvs: Vec<String> =
                            x.kvs.iter().map(|kv| format!("{kv:?}")).collect();
                        kvs.sort();
                        x.kvs.clear();
                        if limited {
                            return format!("{x:?} values {values:?}");
                        }
                        return format!("{x:?} values {values:?} kvs {kvs:?}");
                    }
                    format!("{x:?}")
                })
            }
            Op::Delete(r) => outcome(self.kv.delete_range(r).await, |mut x| {
                normalize::header(&mut x.header);
                format!("{x:?}")
            }),
            Op::Txn(r) => outcome(self.kv.txn(r).await, |mut x| {
                normalize::txn(&mut x);
                format!("{x:?}")
            }),
            Op::Compact(r) => outcome(self.kv.compact(r).await, |mut x| {
                normalize::header(&mut x.header);
                format!("{x:?}")
            }),
            Op::LeaseGrant(r) => outcome(self.lease.lease_grant(r).await, |mut x| {
                normalize::header(&mut x.header);
                format!("{x:?}")
            }),
            Op::LeaseRevoke(r) => outcome(self.lease.lease_revoke(r).await, |mut x| {
                normalize::header(&mut x.header);
                format!("{x:?}")
            }),
            Op::LeaseTimeToLive(r) => outcome(self.lease.lease_time_to_live(r).await, |mut x| {
                normalize::header(&mut x.header);
                // The remaining TTL depends on timing: only its sign is compared.
                x.ttl = x.ttl.signum();
                // etcd lists a lease's keys from a hash map: in no particular order.
                x.keys.sort();
                format!("{x:?}")
            }),
            Op::LeaseLeases => outcome(
                self.lease.lease_leases(pb::LeaseLeasesRequest {}).await,
                |mut x| {
                    normalize::header(&mut x.header);
                    x.leases.sort_by_key(|l| l.id);
                    format!("{x:?}")
                },
            ),
        }
    }
}

fn current_revision(o: &Outcome) -> Option<i64> {
    let s = o.as_ref().ok()?;
    let at = s.find("revision: ")? + "revision: ".len();
    s[at..]
        .split(|c: char| !c.is_ascii_digit() && c != '-')
        .next()?
        .parse()
        .ok()
}

/// Which etcd line a run compares with.
#[derive(Clone, Copy, PartialEq)]
enum Line {
    /// 3.5.13 and later: a delete at the compacted revision stays in its history.
    Newest,
    /// 3.5.1 and 3.4: it does not, so watches from history start after that revision.
    Old,
}

fn run_seed(
    seed: u64,
    ops: usize,
    etcd_url: String,
    raftkv_url: String,
    serializable: bool,
    line: Line,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut etcd = Target::connect(etcd_url).await;
        let mut raftkv = Target::connect(raftkv_url).await;
        let mut gen = Gen {
            rng: StdRng::seed_from_u64(seed),
            revision: 1,
            serializable,
        };
        let mut history: Vec<String> = Vec::new();
        let mut compacted = 0i64;
        for i in 0..ops {
            let op = gen.op();
            let want = etcd.run(&op).await;
            let got = raftkv.run(&op).await;
            history.push(format!("#{i} {op:?}\n    => {want:?}"));
            if want != got {
                let recent = history
                    .iter()
                    .rev()
                    .take(8)
                    .rev()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(format!(
                    "seed {seed}: operation #{i} diverges (replay: RAFTKV_DIFF_SEED={seed})\n\
                     op:     {op:?}\n etcd:   {want:?}\n raftkv: {got:?}\n\
                     the operations before it:\n{recent}"
                ));
            }
            if let (Op::Compact(c), Ok(_)) = (&op, &want) {
                compacted = compacted.max(c.revision);
            }
            if let Some(rev) = current_revision(&want) {
                gen.revision = gen.revision.max(rev);
            }
        }
        // The watch streams: every event, in order, with prev_kv, the same.
        let want = etcd.events_until(gen.revision).await?;
        let got = raftkv.events_until(gen.revision).await?;
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            if w != g {
                return Err(format!(
                    "seed {seed}: watch event #{i} diverges\n etcd:   {w}\n raftkv: {g}"
                ));
            }
        }
        if want.len() != got.len() {
            return Err(format!(
                "seed {seed}: etcd delivered {} events, raftkv {}",
                want.len(),
                got.len()
            ));
        }
        // A progress request on the live watch: both answer with the current revision.
        let want = etcd.progress().await?;
        let got = raftkv.progress().await?;
        if want != got {
            return Err(format!("seed {seed}: progress responses differ\n etcd:   {want}\n raftkv: {got}"));
        }
        // The oldest revision a watch from history may start at, where both lines agree.
        let from = match line {
            Line::Newest => compacted.max(1),
            Line::Old => (compacted + 1).max(1),
        };
        if from > gen.revision {
            return Ok(());
        }
        // Filtered watches from history on a prefix: NODELETE without prev_kv, and NOPUT
        // with it.
        for (filter, prev_kv) in [(1, false), (0, true)] {
            let create = pb::WatchCreateRequest {
                key: b"a".to_vec().into(),
                range_end: b"b".to_vec().into(),
                start_revision: from,
                filters: vec![filter],
                prev_kv,
                ..Default::default()
            };
            let want = etcd.filtered(create.clone()).await?;
            let got = raftkv.filtered(create).await?;
            if want != got {
                return Err(format!(
                    "seed {seed}: a filtered watch (filter {filter}) diverges\n etcd:   {want:?}\n raftkv: {got:?}"
                ));
            }
        }
        // A watch from history: from the oldest revision above, every event up to now,
        // prev_kv included.
        let want = etcd.history(from, gen.revision).await?;
        let got = raftkv.history(from, gen.revision).await?;
        if want != got {
            let at = want.iter().zip(&got).position(|(w, g)| w != g).unwrap_or(want.len().min(got.len()));
            // The operations that produced the revisions around the divergence.
            let around: Vec<&String> = history
                .iter()
                .filter(|h| {
                    (from..=from + 1).any(|r| h.contains(&format!("revision: {r},")))
                })
                .take(8)
                .collect();
            return Err(format!(
                "seed {seed}: the watch from revision {from} diverges at event #{at}\n etcd:   {:?}\n raftkv: {:?}\n operations answered at revisions {from} and {}:\n{}",
                want.get(at),
                got.get(at),
                from + 1,
                around.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
            ));
        }
        Ok(())
    })
}

fn report(result: Result<(), String>, logs: String) {
    if let Err(report) = result {
        let tail: Vec<&str> = logs
            .lines()
            .filter(|l| !l.starts_with(' '))
            .rev()
            .take(30)
            .collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!("{report}\nraftkv's log (last lines):\n{}", tail.join("\n"));
    }
}

#[test]
fn random_kv_and_lease_operations_match_etcd() {
    against_one_member(Etcd::start(), 3_000, Line::Old);
}

/// A seeded run of `default_ops` against `etcd` and a one-member raftkv cluster.
fn against_one_member(etcd: Etcd, default_ops: usize, line: Line) {
    let root = tempfile::tempdir().expect("temp dir");
    let mut member = Member::new(root.path(), "diff");
    member.start(&["--cluster-init".to_string()]);
    let (seed, ops) = diff_seed_and_ops("differential", default_ops);
    let result = run_seed(
        seed,
        ops,
        etcd.client_url(),
        member.client_url(),
        true,
        line,
    );
    report(result, member.log());
}

/// The same through a member of a three-member cluster (writes forwarded to the
/// leader when that member follows), against the newest etcd.
#[test]
fn random_operations_through_a_three_member_cluster_match_etcd() {
    let etcd = Etcd::start_newest();
    let cluster = Cluster::start(3, &[]);
    let (seed, ops) = diff_seed_and_ops("differential", 1_500);
    let result = run_seed(
        seed,
        ops,
        etcd.client_url(),
        cluster.members[1].client_url(),
        false,
        Line::Newest,
    );
    report(result, cluster.logs());
}

/// The same against Debian's etcd-server (3.4), the reference the issue names.
#[test]
fn random_operations_match_debians_etcd_3_4() {
    against_one_member(Etcd::start_debian(), 1_500, Line::Old);
}
