//! etcd's Lock and Election services through the Rust client, on raftkv and on real
//! etcd: the same script runs against both and what a user sees (keys, waits, values,
//! errors) must match line by line. Then races on a three-member cluster: clients on
//! every member contend for one lock, and a holder's or a leader's member is killed.

use std::time::Duration;

use etcd_client::{Client, GetOptions, LockOptions};
use raftkv_tests::*;

/// Replaces each lease id written in hex in `text` with `<lease N>` (ids are random).
fn normalize(text: &str, leases: &[i64]) -> String {
    leases
        .iter()
        .enumerate()
        .fold(text.to_string(), |t, (i, id)| {
            t.replace(&format!("{id:x}"), &format!("<lease {i}>"))
        })
}

/// A lock's key as text.
fn key_of(r: &etcd_client::LockResponse) -> String {
    String::from_utf8_lossy(r.key()).into_owned()
}

/// Keys under `prefix`, oldest first.
async fn holders(c: &mut Client, prefix: &str) -> Vec<String> {
    let options = GetOptions::new().with_prefix().with_sort(
        etcd_client::SortTarget::Create,
        etcd_client::SortOrder::Ascend,
    );
    c.get(prefix, Some(options))
        .await
        .expect("get")
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap_or("?").to_string())
        .collect()
}

/// Waits until the keys under `prefix` are `want` (a lock's wait or clean-up is
/// asynchronous to the caller that ends it).
async fn wait_holders(c: &mut Client, prefix: &str, want: &[String]) {
    for _ in 0..200 {
        if holders(c, prefix).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{prefix}: {:?}, wanted {want:?}", holders(c, prefix).await);
}

/// A client of `endpoint` and two leases of 60 s, the callers' sessions.
async fn client_with_two_leases(endpoint: &str) -> (Client, i64, i64) {
    let mut c = Client::connect([endpoint], None).await.expect("connect");
    let a = c.lease_grant(60, None).await.expect("grant").id();
    let b = c.lease_grant(60, None).await.expect("grant").id();
    (c, a, b)
}

/// Runs `script` on etcd 3.5.1, then on a raftkv member, and checks that both saw the
/// same; answers what etcd saw.
fn same_as_etcd<F: std::future::Future<Output = Vec<String>>>(
    script: impl Fn(String) -> F,
) -> Vec<String> {
    let run = |endpoint: String| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(script(endpoint))
    };
    let etcd = Etcd::start();
    let want = run(etcd.client_url());
    let root = tempfile::tempdir().expect("temp dir");
    let mut m = Member::new(root.path(), "solo");
    m.start(&["--cluster-init".to_string()]);
    let got = run(m.endpoint());
    assert_eq!(got, want, "raftkv (left) and etcd 3.5.1 (right) differ");
    want
}

/// The lock script: what it saw, in order.
async fn lock_script(endpoint: String) -> Vec<String> {
    let mut seen = Vec::new();
    let (mut c, a, b) = client_with_two_leases(&endpoint).await;
    let leases = [a, b];
    let held = c
        .lock("job", Some(LockOptions::new().with_lease(a)))
        .await
        .expect("lock a");
    let key_a = key_of(&held);
    seen.push(format!("a holds {}", normalize(&key_a, &leases)));

    // b waits behind a: its key is queued, its call does not return.
    let mut cb = c.clone();
    let waiting = tokio::spawn(async move {
        cb.lock("job", Some(LockOptions::new().with_lease(b)))
            .await
            .map(|r| key_of(&r))
    });
    let key_b = format!("job/{b:x}");
    wait_holders(&mut c, "job/", &[key_a.clone(), key_b.clone()]).await;
    seen.push(format!("b queued; done: {}", waiting.is_finished()));
    c.unlock(key_a.as_str()).await.expect("unlock a");
    let got = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("b gets the lock once a unlocks")
        .expect("task");
    seen.push(format!(
        "after a's unlock, b: {}",
        normalize(&format!("{got:?}"), &leases)
    ));

    // Locking again with the same lease answers the key it holds.
    let again = c
        .lock("job", Some(LockOptions::new().with_lease(b)))
        .await
        .expect("relock");
    seen.push(format!("b again: {}", normalize(&key_of(&again), &leases)));
    c.unlock(key_b.as_str()).await.expect("unlock b");

    // A caller that gives up while waiting leaves no key behind.
    let blocker = c
        .lock("gate", Some(LockOptions::new().with_lease(a)))
        .await
        .expect("lock gate");
    let gate_a = key_of(&blocker);
    let options = etcd_client::ConnectOptions::new().with_timeout(Duration::from_millis(500));
    let mut impatient = Client::connect([endpoint.as_str()], Some(options))
        .await
        .expect("connect");
    let gave_up = impatient
        .lock("gate", Some(LockOptions::new().with_lease(b)))
        .await
        .is_err();
    seen.push(format!("an impatient waiter gave up: {gave_up}"));
    wait_holders(&mut c, "gate/", &[gate_a]).await;
    seen.push("its key is gone".into());

    // Errors.
    let missing = c
        .lock("job", Some(LockOptions::new().with_lease(0x7777)))
        .await
        .expect_err("no such lease");
    seen.push(format!("unknown lease: {missing}"));
    // Without a lease, the lock gets one of its own (60 s, not kept alive).
    let own = c.lock("solo", None).await.expect("lock without lease");
    let key = key_of(&own);
    let id = i64::from_str_radix(key.trim_start_matches("solo/"), 16).expect("hex lease");
    let ttl = c.lease_time_to_live(id, None).await.expect("ttl").ttl();
    // Rounded up to tens: the lease has counted down a little.
    let ttl_tens = (ttl + 9) / 10 * 10;
    seen.push(format!("a lock without a lease holds one of {ttl_tens} s"));
    seen
}

#[test]
fn locks_behave_as_etcds() {
    let seen = same_as_etcd(lock_script);
    assert!(seen.len() >= 7, "{seen:?}");
}

/// A leader's value as text.
fn value_of(r: &etcd_client::LeaderResponse) -> String {
    r.kv()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
        .unwrap_or_default()
}

/// The election script: what it saw, in order.
async fn election_script(endpoint: String) -> Vec<String> {
    use etcd_client::{ProclaimOptions, ResignOptions};
    let mut seen = Vec::new();
    let (mut c, a, b) = client_with_two_leases(&endpoint).await;
    let leases = [a, b];
    let won = c.campaign("e", "v-a", a).await.expect("campaign a");
    let lead_a = won.leader().expect("leader key").clone();
    seen.push(format!(
        "a leads as {}",
        normalize(lead_a.key_str().unwrap_or("?"), &leases)
    ));
    let now = c.leader("e").await.expect("leader");
    seen.push(format!("leader's value: {}", value_of(&now)));
    let mut observed = c.observe("e").await.expect("observe");
    let mut next_observed = async || {
        let r = tokio::time::timeout(Duration::from_secs(10), observed.message())
            .await
            .expect("an observed change")
            .expect("observe stream")
            .expect("a message");
        value_of(&r)
    };
    seen.push(format!("observed: {}", next_observed().await));

    // b campaigns behind a.
    let mut cb = c.clone();
    let waiting = tokio::spawn(async move {
        cb.campaign("e", "v-b", b)
            .await
            .map(|r| r.leader().map(|l| l.key_str().unwrap_or("?").to_string()))
    });
    wait_holders(&mut c, "e/", &[format!("e/{a:x}"), format!("e/{b:x}")]).await;
    seen.push(format!("b queued; done: {}", waiting.is_finished()));

    c.proclaim(
        "v-a2",
        Some(ProclaimOptions::new().with_leader(lead_a.clone())),
    )
    .await
    .expect("proclaim");
    seen.push(format!(
        "observed after proclaim: {}",
        next_observed().await
    ));
    let now = c.leader("e").await.expect("leader");
    seen.push(format!("leader's value: {}", value_of(&now)));

    c.resign(Some(ResignOptions::new().with_leader(lead_a.clone())))
        .await
        .expect("resign");
    let got = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("b leads once a resigns")
        .expect("task");
    seen.push(format!(
        "after a resigned, b: {}",
        normalize(&format!("{got:?}"), &leases)
    ));
    seen.push(format!("observed: {}", next_observed().await));

    // A stale leader key: proclaiming fails, resigning is not an error.
    let stale = c
        .proclaim(
            "late",
            Some(ProclaimOptions::new().with_leader(lead_a.clone())),
        )
        .await
        .expect_err("not leader");
    seen.push(format!("stale proclaim: {stale}"));
    let resigned = c
        .resign(Some(ResignOptions::new().with_leader(lead_a)))
        .await
        .is_ok();
    seen.push(format!("stale resign ok: {resigned}"));
    let none = c.leader("nobody").await.expect_err("no leader");
    seen.push(format!("no election: {none}"));
    let missing = c.proclaim("x", None).await.expect_err("no leader key");
    seen.push(format!("no leader key: {missing}"));
    seen
}

#[test]
fn elections_behave_as_etcds() {
    let seen = same_as_etcd(election_script);
    assert!(seen.len() >= 10, "{seen:?}");
}

/// A lease of `ttl_s` kept alive once a second until the task is aborted (or its
/// member dies): a live session.
async fn session(c: &mut Client, ttl_s: i64) -> (i64, tokio::task::JoinHandle<()>) {
    let id = c.lease_grant(ttl_s, None).await.expect("grant").id();
    let (mut keeper, mut answers) = c.lease_keep_alive(id).await.expect("keep alive");
    let task = tokio::spawn(async move {
        loop {
            if keeper.keep_alive().await.is_err() || !matches!(answers.message().await, Ok(Some(_)))
            {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    (id, task)
}

/// Clients on every member take the lock in turn and do a read-modify-write of a
/// counter under it: no two ever hold it at once, and no increment is lost.
async fn contend(endpoints: &[String]) {
    use std::sync::atomic::{AtomicBool, Ordering};
    const CLIENTS: usize = 4;
    const ROUNDS: usize = 10;
    let held = std::sync::Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let endpoint = endpoints[i % endpoints.len()].clone();
        let held = held.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect([endpoint], None).await.expect("connect");
            for _ in 0..ROUNDS {
                let lease = c.lease_grant(30, None).await.expect("grant").id();
                let options = LockOptions::new().with_lease(lease);
                let lock = c.lock("race", Some(options)).await.expect("lock");
                assert!(!held.swap(true, Ordering::SeqCst), "two holders at once");
                let counter = c.get("race-counter", None).await.expect("get");
                let n: u64 = counter.kvs().first().map_or(0, |kv| {
                    kv.value_str().unwrap_or("0").parse().expect("a number")
                });
                tokio::time::sleep(Duration::from_millis(5)).await;
                c.put("race-counter", (n + 1).to_string(), None)
                    .await
                    .expect("put");
                held.store(false, Ordering::SeqCst);
                c.unlock(lock.key()).await.expect("unlock");
                c.lease_revoke(lease).await.expect("revoke");
            }
        }));
    }
    for task in tasks {
        task.await.expect("a client's rounds");
    }
    let mut c = Client::connect(endpoints, None).await.expect("connect");
    let counter = c.get("race-counter", None).await.expect("get");
    let total = counter.kvs()[0].value_str().expect("utf-8").to_string();
    assert_eq!(
        total,
        (CLIENTS * ROUNDS).to_string(),
        "an increment was lost"
    );
}

/// How long a dead session's lease may take to expire: its TTL, plus an election
/// when its member led (the new leader gives every lease a full TTL, as etcd's does),
/// plus a busy machine's margin.
const DEAD_SESSION_EXPIRY_MS: u64 = 20_000;
const SESSION_TTL_S: i64 = 3;

#[test]
fn locks_exclude_each_other_across_members_and_pass_on_when_a_holders_member_dies() {
    let mut cluster = Cluster::start(3, &[]);
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(contend(&endpoints));

    // A holder on member 2 keeps its session alive; a waiter on member 0 waits for as
    // long as it does, and gets the lock once member 2 is killed and the lease expires.
    let (_holder, holder_key) = rt.block_on(async {
        let mut holder = Client::connect([endpoints[2].clone()], None)
            .await
            .expect("connect");
        let (lease, _keeping) = session(&mut holder, SESSION_TTL_S).await;
        let options = LockOptions::new().with_lease(lease);
        let lock = holder.lock("dead", Some(options)).await.expect("lock");
        (holder, lock.key().to_vec())
    });
    let waiter = rt.spawn({
        let endpoint = endpoints[0].clone();
        async move {
            let mut c = Client::connect([endpoint], None).await.expect("connect");
            let lease = c.lease_grant(60, None).await.expect("grant").id();
            let lock = c
                .lock("dead", Some(LockOptions::new().with_lease(lease)))
                .await;
            (c, lock.expect("the waiter's lock"))
        }
    });
    std::thread::sleep(Duration::from_millis(2_000 * SESSION_TTL_S as u64));
    assert!(
        !waiter.is_finished(),
        "the lock was granted while its holder was alive"
    );
    cluster.members[2].kill9();
    let killed = std::time::Instant::now();
    let (mut c, _lock) = rt
        .block_on(async {
            tokio::time::timeout(Duration::from_millis(DEAD_SESSION_EXPIRY_MS), waiter).await
        })
        .expect("the waiter got the lock once the dead holder's lease expired")
        .expect("the waiter's task");
    assert!(
        killed.elapsed() >= Duration::from_secs(1),
        "granted before the lease could expire"
    );
    let left = rt.block_on(c.get(holder_key, None)).expect("get");
    assert!(left.kvs().is_empty(), "the dead holder's key is gone");
}

#[test]
fn an_election_passes_to_the_next_candidate_when_the_leaders_member_dies() {
    let mut cluster = Cluster::start(3, &[]);
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // Candidate i on member i, each with a live session; 0 campaigns first and leads.
    let mut campaigns = Vec::new();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let endpoint = endpoint.clone();
        campaigns.push(rt.spawn(async move {
            let mut c = Client::connect([endpoint], None).await.expect("connect");
            let (lease, keeping) = session(&mut c, SESSION_TTL_S).await;
            let won = c.campaign("elect", format!("cand-{i}"), lease).await;
            (c, won, keeping)
        }));
        let mut c = rt
            .block_on(Client::connect([endpoints[1].clone()], None))
            .expect("connect");
        let queued = format!("cand-{i}");
        rt.block_on(async {
            for _ in 0..200 {
                let values: Vec<String> = c
                    .get("elect/", Some(GetOptions::new().with_prefix()))
                    .await
                    .expect("get")
                    .kvs()
                    .iter()
                    .map(|kv| kv.value_str().unwrap_or("").to_string())
                    .collect();
                if values.contains(&queued) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("{queued} never campaigned");
        });
    }
    let mut observer = rt
        .block_on(Client::connect([endpoints[1].clone()], None))
        .expect("connect");
    let mut observed = rt.block_on(observer.observe("elect")).expect("observe");
    let mut next_leader = || {
        let leader = rt
            .block_on(async {
                tokio::time::timeout(
                    Duration::from_millis(DEAD_SESSION_EXPIRY_MS),
                    observed.message(),
                )
                .await
            })
            .expect("a leader observed in time")
            .expect("observe")
            .expect("the stream goes on");
        leader
            .kv()
            .map(|kv| kv.value_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    assert_eq!(next_leader(), "cand-0");
    assert!(!campaigns[1].is_finished() && !campaigns[2].is_finished());

    cluster.members[0].kill9();
    assert_eq!(next_leader(), "cand-1", "the next oldest candidate leads");
    let (mut c1, won, _keeping) = rt.block_on(campaigns.remove(1)).expect("candidate 1");
    let won = won.expect("candidate 1's campaign returns once it leads");
    assert!(!campaigns[1].is_finished(), "candidate 2 still waits");

    let leader_key = won.leader().expect("a leader key").clone();
    rt.block_on(c1.resign(Some(
        etcd_client::ResignOptions::new().with_leader(leader_key),
    )))
    .expect("resign");
    assert_eq!(next_leader(), "cand-2");
    let (_c2, won, _keeping) = rt.block_on(campaigns.remove(1)).expect("candidate 2");
    won.expect("candidate 2's campaign returns");
}
