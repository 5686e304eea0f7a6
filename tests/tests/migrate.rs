//! `raftkv migrate --from <etcd>`: a real etcd 3.5 with thousands of keys (overwritten,
//! deleted, some on a lease) is copied into a new raftkv member, and the copy is the
//! same: every key and value, the lease with its keys and what is left of its TTL.

use etcd_client::{Client, GetOptions, LeaseTimeToLiveOptions, PutOptions};
use raftkv_tests::*;
use std::collections::BTreeMap;

/// key -> (value, on a lease)
async fn everything(endpoint: &str) -> BTreeMap<Vec<u8>, (Vec<u8>, bool)> {
    let mut c = Client::connect([endpoint], None).await.expect("connects");
    let r = c
        .get(vec![0u8], Some(GetOptions::new().with_from_key()))
        .await
        .expect("get all");
    r.kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), (kv.value().to_vec(), kv.lease() != 0)))
        .collect()
}

#[test]
fn migrate_copies_an_etcd_key_space_identically() {
    let etcd = Etcd::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let lease_id = rt.block_on(async {
        let mut c = Client::connect([etcd.endpoint()], None)
            .await
            .expect("etcd");
        for i in 0..3000 {
            let value = vec![b'a' + (i % 26) as u8; (i * 7) % 1_000];
            c.put(format!("/registry/pods/ns{}/pod-{i}", i % 10), value, None)
                .await
                .expect("put");
        }
        for i in 0..200 {
            c.put(
                format!("/registry/pods/ns{}/pod-{i}", i % 10),
                format!("v2-{i}"),
                None,
            )
            .await
            .expect("overwrite");
        }
        for i in 2900..3000 {
            c.delete(format!("/registry/pods/ns{}/pod-{i}", i % 10), None)
                .await
                .expect("delete");
        }
        let lease = c.lease_grant(600, None).await.expect("lease").id();
        for i in 0..10 {
            c.put(
                format!("/registry/leases/kube-node-lease/node-{i}"),
                "held",
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .expect("put on lease");
        }
        lease
    });
    let want = rt.block_on(everything(&etcd.endpoint()));
    assert_eq!(want.len(), 2910);

    let root = tempfile::tempdir().expect("temp dir");
    let mut m = Member::new(root.path(), "target");
    m.start(&["--cluster-init".to_string()]);
    let out = raftkv_cli(&[
        "migrate",
        "--from",
        &etcd.endpoint(),
        "--endpoints",
        &m.endpoint(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Copied 2910 keys and 1 leases"), "{stdout}");
    // Progress is drawn on a terminal only: a pipe (a log, a script) gets none.
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains('\r'),
        "{out:?}"
    );

    assert_eq!(
        rt.block_on(everything(&m.endpoint())),
        want,
        "the copy differs"
    );
    rt.block_on(async {
        let mut c = Client::connect([m.endpoint()], None).await.expect("raftkv");
        let ttl = c
            .lease_time_to_live(lease_id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .expect("the lease came along");
        assert!(ttl.ttl() > 500 && ttl.ttl() <= 600, "{}", ttl.ttl());
        assert_eq!(ttl.keys().len(), 10);
        // The copy is a live key space: it takes writes.
        c.put("/after", "migration", None).await.expect("put");
    });

    // A second run would mix two key spaces: refused.
    let again = raftkv_cli(&[
        "migrate",
        "--from",
        &etcd.endpoint(),
        "--endpoints",
        &m.endpoint(),
    ]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("migrate into an empty cluster"),
        "{again:?}"
    );
}

/// A source with users and roles and authentication on: without the source's root
/// user the copy stops and says what to give; with it, roles come with their
/// permissions and users with their roles, but not passwords (etcd's API never gives
/// them out): a copied user logs in once an operator has set its password.
#[test]
fn migrate_copies_users_and_roles_but_not_passwords() {
    let etcd = Etcd::start_newest();
    let ctl = etcd_newest_dir().join("etcdctl");
    let on = |endpoint: &str, args: &[&str]| {
        let out = etcdctl(&ctl, &[endpoint.to_string()], args, None);
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let source = etcd.endpoint();
    for args in [
        &["put", "/apisix/routes/1", "r1"][..],
        &["user", "add", "root", "--new-user-password=r00t"],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "apisix"],
        &[
            "role",
            "grant-permission",
            "apisix",
            "readwrite",
            "/apisix/",
            "--prefix",
        ],
        &["user", "add", "apisix", "--new-user-password=apw"],
        &["user", "grant-role", "apisix", "apisix"],
        &["auth", "enable"],
    ] {
        on(&source, args);
    }
    let root = tempfile::tempdir().expect("temp dir");
    let mut m = Member::new(root.path(), "target");
    m.start(&[
        "--cluster-init".to_string(),
        "--bcrypt-cost".into(),
        "4".into(),
    ]);
    let target = m.endpoint();
    let refused = raftkv_cli(&["migrate", "--from", &source, "--endpoints", &target]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--user root:PASSWORD"),
        "{refused:?}"
    );

    let out = raftkv_cli(&[
        "migrate",
        "--from",
        &source,
        "--user",
        "root:r00t",
        "--endpoints",
        &target,
    ]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Copied 2 roles with their permissions and 2 users")
            && stdout.contains("etcdctl auth enable"),
        "{stdout}"
    );
    assert_eq!(
        on(&target, &["user", "get", "apisix"]),
        "User: apisix\nRoles: apisix\n"
    );
    assert_eq!(
        on(&target, &["role", "get", "apisix"]),
        on(&source, &["--user=root:r00t", "role", "get", "apisix"])
    );
    on(&target, &["auth", "enable"]);
    let old = etcdctl(
        &ctl,
        std::slice::from_ref(&target),
        &["--user=apisix:apw", "get", "/apisix/routes/1"],
        None,
    );
    assert!(
        String::from_utf8_lossy(&old.stderr).contains("authentication failed"),
        "the source's password does not come along: {old:?}"
    );
    let passwd = etcdctl(
        &ctl,
        std::slice::from_ref(&target),
        &[
            "--user=root:r00t",
            "user",
            "passwd",
            "root",
            "--interactive=false",
        ],
        Some("r00t\n"),
    );
    assert!(
        String::from_utf8_lossy(&passwd.stderr).contains("authentication failed"),
        "root's password did not come along either: {passwd:?}"
    );
}
