//! Watches under load: 100 watchers on overlapping prefixes while writers run. Each
//! must see every event in its range exactly once, in order, with the right prev_kv; a
//! progress response must never claim a revision whose events are still to come; a
//! watcher that does not read for a while is caught up from history without holding up
//! writers; and a watch on a follower carries on through the loss of the leader.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use raftkv_proto::etcdserverpb as pb;
use raftkv_proto::etcdserverpb::kv_client::KvClient;
use raftkv_proto::etcdserverpb::watch_client::WatchClient;
use raftkv_tests::*;
use tokio::sync::mpsc;
use tonic::transport::Channel;

const WATCHERS: usize = 100;
const WRITERS: usize = 4;
const WRITES_PER_WRITER: usize = 300;
const PREFIXES: &[&str] = &["/w/", "/w/a/", "/w/a/b/", "/w/c/", "/w/c/d"];

fn prefix_end(prefix: &str) -> bytes::Bytes {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("non-empty") += 1;
    end.into()
}

/// One write as the writer saw it acknowledged.
#[derive(Debug, Clone)]
struct Write {
    key: String,
    value: String,
    revision: i64,
    prev_value: Option<String>,
}

async fn open_watch(
    channel: Channel,
    prefix: &str,
    start_revision: i64,
) -> (
    mpsc::Sender<pb::WatchRequest>,
    tonic::Streaming<pb::WatchResponse>,
) {
    let (tx, rx) = mpsc::channel(8);
    tx.send(pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: bytes::Bytes::copy_from_slice(prefix.as_bytes()),
                range_end: prefix_end(prefix),
                start_revision,
                prev_kv: true,
                ..Default::default()
            },
        )),
    })
    .await
    .expect("send");
    let mut stream = WatchClient::new(channel)
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("watch")
        .into_inner();
    let created = stream.message().await.expect("msg").expect("created");
    assert!(created.created && !created.canceled);
    (tx, stream)
}

/// What one watcher stream delivered, in order: events, and progress responses
/// (revision only).
#[derive(Debug, Clone)]
enum Got {
    Event(i64, String, String, Option<String>),
    Progress(i64),
}

/// Reads a watcher continuously (as kube-apiserver does) until an event or a progress
/// response reaches the final revision, once that is known.
async fn record(
    mut stream: tonic::Streaming<pb::WatchResponse>,
    mut until: tokio::sync::watch::Receiver<i64>,
) -> Vec<Got> {
    let mut got = Vec::new();
    let mut last = 0;
    loop {
        let target = *until.borrow();
        // Done once an event or a progress response reaches the final revision (a
        // watcher whose range saw no late writes learns it from a progress response).
        if target > 0 && last >= target {
            return got;
        }
        let m = tokio::select! {
            m = stream.message() => m,
            _ = until.changed() => continue,
            _ = tokio::time::sleep(Duration::from_secs(20)) => panic!("the watcher stopped delivering at {last}"),
        };
        let m = m.expect("msg").expect("open");
        assert!(!m.canceled, "canceled: {m:?}");
        if m.events.is_empty() {
            let rev = m.header.as_ref().map_or(0, |h| h.revision);
            got.push(Got::Progress(rev));
            last = last.max(rev);
            continue;
        }
        for e in &m.events {
            let kv = e.kv.as_ref().expect("kv");
            last = last.max(kv.mod_revision);
            got.push(Got::Event(
                kv.mod_revision,
                String::from_utf8_lossy(&kv.key).to_string(),
                String::from_utf8_lossy(&kv.value).to_string(),
                e.prev_kv
                    .as_ref()
                    .map(|p| String::from_utf8_lossy(&p.value).to_string()),
            ));
        }
    }
}

/// Checks a recorded stream against the writes in its range.
fn check(prefix: &str, got: &[Got], expected: &[Write]) {
    let mut events = Vec::new();
    for g in got {
        match g {
            Got::Event(r, k, v, p) => events.push((*r, k.clone(), v.clone(), p.clone())),
            Got::Progress(rev) => {
                let owed = expected.iter().filter(|w| w.revision <= *rev).count();
                let arrived = events.iter().filter(|(r, ..)| r <= rev).count();
                assert_eq!(
                    arrived, owed,
                    "{prefix}: a progress response at {rev} overtook events"
                );
            }
        }
    }
    let want: Vec<(i64, String, String, Option<String>)> = expected
        .iter()
        .map(|w| {
            (
                w.revision,
                w.key.clone(),
                w.value.clone(),
                w.prev_value.clone(),
            )
        })
        .collect();
    assert_eq!(
        events.len(),
        want.len(),
        "{prefix}: every event exactly once"
    );
    assert_eq!(
        events, want,
        "{prefix}: every event, in order, with prev_kv"
    );
}

#[test]
fn a_hundred_watchers_see_every_event_once_in_order_with_prev_kv() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut m = Member::new(root.path(), "w");
    m.start(&["--cluster-init".to_string()]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let channel = Channel::from_shared(m.client_url())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let start = KvClient::new(channel.clone())
            .range(pb::RangeRequest {
                key: "x".into(),
                ..Default::default()
            })
            .await
            .expect("range")
            .into_inner()
            .header
            .expect("header")
            .revision
            + 1;
        // Watchers on their own connection, read continuously; writers on another.
        let watch_channel = Channel::from_shared(m.client_url())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let (until_tx, until_rx) = tokio::sync::watch::channel(0i64);
        let mut watchers = Vec::new();
        for i in 0..WATCHERS {
            let prefix = PREFIXES[i % PREFIXES.len()];
            let (tx, stream) = open_watch(watch_channel.clone(), prefix, start).await;
            let until = until_rx.clone();
            let recorder = tokio::spawn(record(stream, until));
            watchers.push((prefix, tx, recorder));
        }

        // Writers on their own keys, so each knows its keys' previous values.
        let started = Instant::now();
        let mut handles = Vec::new();
        for w in 0..WRITERS {
            let channel = channel.clone();
            handles.push(tokio::spawn(async move {
                let mut kv = KvClient::new(channel);
                let mut writes = Vec::new();
                let mut last: BTreeMap<String, String> = BTreeMap::new();
                let mut worst = Duration::ZERO;
                for i in 0..WRITES_PER_WRITER {
                    let dir = ["/w/a/b/", "/w/a/", "/w/c/", "/w/c/d", "/w/"][i % 5];
                    let key = format!("{dir}k{w}-{}", i % 7);
                    let value = format!("{w}-{i}");
                    let t = Instant::now();
                    let r = kv
                        .put(pb::PutRequest {
                            key: key.clone().into(),
                            value: value.clone().into(),
                            ..Default::default()
                        })
                        .await
                        .expect("put")
                        .into_inner();
                    worst = worst.max(t.elapsed());
                    let prev_value = last.insert(key.clone(), value.clone());
                    writes.push(Write {
                        key,
                        value,
                        revision: r.header.expect("header").revision,
                        prev_value,
                    });
                }
                (writes, worst)
            }));
        }
        // While writers run, ask every 10th watcher's stream for progress.
        for (_, tx, _) in watchers.iter().step_by(10) {
            tx.send(pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(
                    pb::WatchProgressRequest {},
                )),
            })
            .await
            .expect("progress");
        }
        let mut writes = Vec::new();
        let mut worst = Duration::ZERO;
        for h in handles {
            let (w, d) = h.await.expect("writer");
            writes.extend(w);
            worst = worst.max(d);
        }
        writes.sort_by_key(|w| w.revision);
        let last_rev = writes.last().expect("writes").revision;
        // Writers were not held up by 100 watchers nobody had read yet.
        assert!(worst < Duration::from_secs(2), "a put took {worst:?}");
        eprintln!("{} writes in {:?}", writes.len(), started.elapsed());

        // Every watcher must reach the last revision; progress requests tell those
        // whose range saw no late writes.
        let _ = until_tx.send(last_rev);
        let progress = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(
                pb::WatchProgressRequest {},
            )),
        };
        while watchers.iter().any(|(_, _, r)| !r.is_finished()) {
            for (_, tx, r) in &watchers {
                if !r.is_finished() {
                    let _ = tx.send(progress.clone()).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for (prefix, _tx, recorder) in watchers {
            let expected: Vec<Write> = writes
                .iter()
                .filter(|w| w.key.starts_with(prefix))
                .cloned()
                .collect();
            let got = recorder.await.expect("recorder");
            check(prefix, &got, &expected);
        }

        // A watcher that arrives late is caught up from history, every event intact.
        let (late, stream) = open_watch(watch_channel.clone(), "/w/", start).await;
        let (late_tx, late_rx) = tokio::sync::watch::channel(last_rev);
        late.send(progress.clone()).await.expect("progress");
        let got = record(stream, late_rx).await;
        drop(late_tx);
        let expected: Vec<Write> = writes
            .iter()
            .filter(|w| w.key.starts_with("/w/"))
            .cloned()
            .collect();
        check("late /w/", &got, &expected);
        assert!(last_rev >= (WRITERS * WRITES_PER_WRITER) as i64);
    });
}

#[test]
fn a_watch_on_a_follower_carries_on_when_the_leader_dies() {
    let mut cluster = Cluster::start(3, &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // Find the leader through the first member's status.
        let mut c = etcd_client::Client::connect([cluster.members[0].endpoint()], None)
            .await
            .expect("connect");
        let leader_id = c.status().await.expect("status").leader();
        let mut leader = 0;
        for (i, m) in cluster.members.iter().enumerate() {
            let mut c = etcd_client::Client::connect([m.endpoint()], None)
                .await
                .expect("connect");
            if c.status()
                .await
                .expect("status")
                .header()
                .expect("header")
                .member_id()
                == leader_id
            {
                leader = i;
            }
        }
        let follower = (leader + 1) % 3;
        let other = (leader + 2) % 3;
        let channel = Channel::from_shared(cluster.members[follower].client_url())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let (_tx, mut stream) = open_watch(channel, "/lw/", 0).await;
        let mut kv = etcd_client::Client::connect([cluster.members[other].endpoint()], None)
            .await
            .expect("connect");
        kv.put("/lw/before", "1", None).await.expect("put");
        cluster.members[leader].kill9();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_secs(1), kv.put("/lw/after", "2", None)).await
            {
                break;
            }
            assert!(Instant::now() < deadline, "no write after the leader died");
        }
        let mut keys = Vec::new();
        while keys.len() < 2 {
            let m = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .expect("events keep coming")
                .expect("msg")
                .expect("open");
            for e in m.events {
                keys.push(String::from_utf8_lossy(&e.kv.expect("kv").key).to_string());
            }
        }
        assert_eq!(keys, vec!["/lw/before", "/lw/after"]);
    });
}
