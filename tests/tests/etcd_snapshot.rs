//! Between etcd and raftkv through snapshot files, both ways, with no etcd running for
//! the conversion. A real etcd (3.5.30) takes Kubernetes-like writes (puts, deletes,
//! multi-key transactions, leases, a compaction, users and roles with authentication
//! on), `etcdctl snapshot save` writes its file, `raftkv snapshot restore` turns it into
//! a data dir, and the raftkv member started on it answers as etcd does: every revision
//! from the compacted one on, the history a watch replays, the leases, the users (who
//! log in with the passwords they had) and the roles. A damaged file is refused and
//! restores nothing. Back: the same writes on raftkv, `etcdctl snapshot save` from it
//! (etcd's format), `etcdutl snapshot status` and `restore`, and the etcd started on
//! that answers as the raftkv member does, and so does a raftkv restored from that
//! etcd's snapshot; `raftkv snapshot to-etcd` converts too.

use std::path::Path;

use etcd_client::{Client, ConnectOptions, GetOptions, SortOrder, SortTarget, WatchOptions};
use raftkv_tests::*;

const ROOT_PASSWORD: &str = "r00t";

async fn client(endpoint: &str) -> Client {
    let options = ConnectOptions::new().with_user("root", ROOT_PASSWORD);
    Client::connect([endpoint], Some(options))
        .await
        .expect("connect")
}

/// Kubernetes-like history on `endpoint`: 3 lease-held keys, updates, deletes and
/// transactions, a compaction in the middle; then users and roles, authentication on.
/// Returns the compacted revision.
async fn write_history(endpoint: &str) -> i64 {
    use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
    let mut c = Client::connect([endpoint], None).await.expect("connect");
    let lease = c.lease_grant(600, None).await.expect("grant").id();
    for i in 0..20 {
        let key = format!("/registry/pods/default/p{}", i % 7);
        let options = (i % 3 == 0).then(|| PutOptions::new().with_lease(lease));
        c.put(key, format!("spec-{i}"), options).await.expect("put");
    }
    c.delete("/registry/pods/default/p1", None)
        .await
        .expect("delete");
    let compacted = c
        .get("x", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    c.compact(compacted, None).await.expect("compact");
    for i in 0..10 {
        let key = format!("/registry/pods/default/p{}", i % 4);
        let current = c.get(key.as_str(), None).await.expect("get");
        let rev = current.kvs().first().map_or(0, |kv| kv.mod_revision());
        let txn = Txn::new()
            .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)])
            .and_then([
                TxnOp::put(key.as_str(), format!("update-{i}"), None),
                TxnOp::put(format!("/registry/events/e{i}"), "event", None),
            ]);
        c.txn(txn).await.expect("txn");
    }
    c.delete(
        "/registry/events/",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .expect("delete prefix");
    c.put("/registry/configmaps/last", "x", None)
        .await
        .expect("put");
    c.user_add("root", ROOT_PASSWORD, None).await.expect("user");
    c.user_grant_role("root", "root").await.expect("grant");
    c.role_add("reader").await.expect("role");
    let perm = etcd_client::Permission::read("/registry/").with_prefix();
    c.role_grant_permission("reader", perm).await.expect("perm");
    c.user_add("ann", "ann-pw", None).await.expect("user");
    c.user_grant_role("ann", "reader").await.expect("grant");
    c.auth_enable().await.expect("auth on");
    compacted
}

/// What a client sees of `endpoint`, line by line: every revision's key space from the
/// compacted one on, the history from it, a read below it, leases, users and roles.
async fn everything(endpoint: &str, compacted: i64) -> Vec<String> {
    let mut c = client(endpoint).await;
    let mut seen = Vec::new();
    let all = || {
        GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Key, SortOrder::Ascend)
    };
    let current = c
        .get("/", Some(all()))
        .await
        .expect("get")
        .header()
        .expect("h")
        .revision();
    seen.push(format!("revision {current}"));
    for rev in compacted..=current {
        let r = c
            .get("/", Some(all().with_revision(rev)))
            .await
            .expect("get at a revision");
        for kv in r.kvs() {
            seen.push(format!(
                "@{rev} {} {} c{} m{} v{} l{}",
                kv.key_str().unwrap_or("?"),
                kv.value_str().unwrap_or("?"),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease()
            ));
        }
    }
    let below = c.get("/", Some(all().with_revision(compacted - 1))).await;
    seen.push(format!(
        "below the compaction: {:?}",
        below.err().map(|e| e.to_string())
    ));
    let mut stream = c
        .watch(
            "/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(compacted)
                    .with_prev_key(),
            ),
        )
        .await
        .expect("watch");
    let mut replayed = 0;
    while let Some(r) = stream.message().await.expect("watch stream") {
        for e in r.events() {
            let kv = e.kv().expect("kv");
            let prev = e
                .prev_kv()
                .map(|p| p.value_str().unwrap_or("?").to_string());
            seen.push(format!(
                "event {:?} {} m{} prev {prev:?}",
                e.event_type(),
                kv.key_str().unwrap_or("?"),
                kv.mod_revision()
            ));
            replayed = replayed.max(kv.mod_revision());
        }
        if replayed >= current {
            break;
        }
    }
    for lease in c.leases().await.expect("leases").leases() {
        let ttl = c
            .lease_time_to_live(
                lease.id(),
                Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
            )
            .await
            .expect("ttl");
        let keys: Vec<String> = ttl
            .keys()
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        seen.push(format!(
            "lease {:x} granted {} keys {keys:?}",
            lease.id(),
            ttl.granted_ttl()
        ));
    }
    let users = c.user_list().await.expect("users");
    seen.push(format!("users {:?}", users.users()));
    let reader = c.role_get("reader").await.expect("role");
    seen.push(format!("reader {:?}", reader.permissions()));
    let ann = Client::connect(
        [endpoint],
        Some(ConnectOptions::new().with_user("ann", "ann-pw")),
    )
    .await;
    let mut ann = ann.expect("ann logs in with her password");
    let read = ann
        .get("/registry/configmaps/last", None)
        .await
        .expect("ann reads")
        .kvs()
        .len();
    let write = ann
        .put("/registry/x", "y", None)
        .await
        .err()
        .map(|e| e.to_string());
    seen.push(format!("ann reads {read}, writes: {write:?}"));
    seen
}

fn restore(file: &Path, data_dir: &Path) -> std::process::Output {
    raftkv_cli(&[
        "snapshot",
        "restore",
        &file.display().to_string(),
        "--data-dir",
        &data_dir.display().to_string(),
    ])
}

#[test]
fn an_etcd_snapshot_restores_into_raftkv_with_the_same_history() {
    let etcd = Etcd::start_newest();
    let endpoint = format!("127.0.0.1:{}", etcd.client_port);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let compacted = rt.block_on(write_history(&endpoint));
    let root = tempfile::tempdir().expect("temp dir");
    let file = root.path().join("etcd.db");
    let ctl = etcd_newest_dir().join("etcdctl");
    let save = std::process::Command::new(&ctl)
        .args([
            "--endpoints",
            &endpoint,
            "--user",
            &format!("root:{ROOT_PASSWORD}"),
            "snapshot",
            "save",
        ])
        .arg(&file)
        .output()
        .expect("etcdctl runs");
    assert!(save.status.success(), "{save:?}");
    let want = rt.block_on(everything(&endpoint, compacted));
    drop(etcd);

    // A damaged copy is refused and leaves no data dir behind.
    let damaged = root.path().join("damaged.db");
    let mut bytes = std::fs::read(&file).expect("the snapshot");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&damaged, bytes).expect("write");
    let refused = restore(&damaged, &root.path().join("never"));
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && text.contains("SHA-256 does not match"),
        "{text}"
    );
    assert!(!root.path().join("never").join("mvcc").exists());

    let mut member = Member::new(root.path(), "from-etcd");
    let out = restore(&file, &member.data_dir);
    assert!(out.status.success(), "{out:?}");
    member.start(&["--cluster-init".to_string()]);
    let got = rt.block_on(everything(&member.endpoint(), compacted));
    assert!(want.len() > 100, "{want:#?}");
    assert_eq!(got, want);
}

#[test]
fn raftkv_goes_back_to_etcd_through_a_snapshot_file() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut member = Member::new(root.path(), "source");
    member.start(&["--cluster-init".to_string()]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let compacted = rt.block_on(write_history(&member.endpoint()));
    let want = rt.block_on(everything(&member.endpoint(), compacted));

    let saved = root.path().join("raftkv.snap");
    let bin = etcd_newest_dir();
    let save = std::process::Command::new(bin.join("etcdctl"))
        .args([
            "--endpoints",
            &member.endpoint(),
            "--user",
            &format!("root:{ROOT_PASSWORD}"),
            "snapshot",
            "save",
        ])
        .arg(&saved)
        .output()
        .expect("etcdctl runs");
    assert!(save.status.success(), "{save:?}");
    // What etcdctl saved from raftkv is etcd's format: etcdutl reads it as it is.
    let etcdutl = |args: &[&str]| {
        let out = std::process::Command::new(bin.join("etcdutl"))
            .args(args)
            .output()
            .expect("etcdutl runs");
        assert!(out.status.success(), "etcdutl {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let revision = want[0]
        .strip_prefix("revision ")
        .and_then(|r| r.parse::<i64>().ok());
    let status = json(&etcdutl(&[
        "snapshot",
        "status",
        &saved.display().to_string(),
        "-w",
        "json",
    ]));
    assert_eq!(status["revision"].as_i64(), revision);
    // raftkv snapshot to-etcd converts any snapshot raftkv restores (a scheduled backup
    // in raftkv's own format, or this one) into the same.
    let etcd_file = root.path().join("etcd.db");
    let out = raftkv_cli(&[
        "snapshot",
        "to-etcd",
        &saved.display().to_string(),
        &etcd_file.display().to_string(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let status = json(&etcdutl(&[
        "snapshot",
        "status",
        &etcd_file.display().to_string(),
        "-w",
        "json",
    ]));
    assert_eq!(status["revision"].as_i64(), revision);
    let data_dir = root.path().join("etcd-data");
    etcdutl(&[
        "snapshot",
        "restore",
        &etcd_file.display().to_string(),
        "--data-dir",
        &data_dir.display().to_string(),
    ]);
    let etcd = Etcd::start_with_args(
        &bin.join("etcd"),
        &["--data-dir".to_string(), data_dir.display().to_string()],
    );
    let got = rt.block_on(everything(&etcd.endpoint(), compacted));
    assert_eq!(got, want);

    // And back again: that etcd's own snapshot restores into raftkv as it all began.
    let again = root.path().join("again.db");
    let save = std::process::Command::new(bin.join("etcdctl"))
        .args([
            "--endpoints",
            &etcd.endpoint(),
            "--user",
            &format!("root:{ROOT_PASSWORD}"),
        ])
        .args(["snapshot", "save"])
        .arg(&again)
        .output()
        .expect("etcdctl runs");
    assert!(save.status.success(), "{save:?}");
    drop(etcd);
    let mut back = Member::new(root.path(), "back");
    let out = restore(&again, &back.data_dir);
    assert!(out.status.success(), "{out:?}");
    back.start(&["--cluster-init".to_string()]);
    assert_eq!(rt.block_on(everything(&back.endpoint(), compacted)), want);
}
