//! etcd's Lock and Election services through the Rust client, on raftkv and on real
//! etcd: the same script runs against both and what a user sees (keys, waits, values,
//! errors) must match line by line.

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
