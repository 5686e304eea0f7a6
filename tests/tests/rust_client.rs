//! One raftkv member driven by the Rust etcd-client crate: the same operations as the
//! etcdctl tests, plus what only a library shows — watch ids, progress requests,
//! compacted watches, keep-alive streams and response headers.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions,
    SortOrder, SortTarget, Txn, TxnOp, WatchOptions,
};
use raftkv_tests::*;

/// The member's URLs (the member itself stays owned here, alive for the whole test).
struct Urls {
    peer: String,
    client: String,
}

fn with_member<F, Fut>(f: F)
where
    F: FnOnce(Client, Urls) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let root = tempfile::tempdir().expect("temp dir");
    let mut m = Member::new(root.path(), "solo");
    m.start(&["--cluster-init".to_string()]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = Client::connect([m.endpoint()], None)
            .await
            .expect("connects");
        let urls = Urls {
            peer: m.peer_url(),
            client: m.client_url(),
        };
        f(client, urls).await;
    });
}

#[test]
fn kv_and_txn_through_the_rust_client() {
    with_member(|mut c, _m| async move {
        let r = c.put("a", "1", None).await.expect("put");
        assert_eq!(r.header().unwrap().revision(), 2);
        c.put("b", "2", None).await.expect("put");
        let r = c
            .put("a", "11", Some(PutOptions::new().with_prev_key()))
            .await
            .expect("put");
        assert_eq!(r.prev_key().unwrap().value(), b"1");
        let r = c
            .get(
                "",
                Some(
                    GetOptions::new()
                        .with_all_keys()
                        .with_sort(SortTarget::Mod, SortOrder::Descend),
                ),
            )
            .await
            .expect("get");
        let keys: Vec<&[u8]> = r.kvs().iter().map(|kv| kv.key()).collect();
        assert_eq!(keys, vec![b"a".as_slice(), b"b"]);
        assert_eq!(r.kvs()[0].version(), 2);
        assert_eq!(r.kvs()[0].create_revision(), 2);
        assert_eq!(r.kvs()[0].mod_revision(), 4);
        let r = c
            .get("a", Some(GetOptions::new().with_revision(2)))
            .await
            .expect("get");
        assert_eq!(r.kvs()[0].value(), b"1");

        // Kubernetes' update shape, both branches.
        let update = |rev: i64| {
            Txn::new()
                .when([Compare::mod_revision("a", CompareOp::Equal, rev)])
                .and_then([TxnOp::put("a", "12", None)])
                .or_else([TxnOp::get("a", None)])
        };
        let r = c.txn(update(4)).await.expect("txn");
        assert!(r.succeeded());
        assert_eq!(r.header().unwrap().revision(), 5);
        let r = c.txn(update(4)).await.expect("txn");
        assert!(!r.succeeded());
        assert_eq!(
            r.header().unwrap().revision(),
            5,
            "a failed txn does not advance the revision"
        );

        let r = c
            .delete(
                "",
                Some(DeleteOptions::new().with_all_keys().with_prev_key()),
            )
            .await
            .expect("del");
        assert_eq!(r.deleted(), 2);
        assert_eq!(r.prev_kvs().len(), 2);
        let err = c
            .get("a", Some(GetOptions::new().with_revision(1000)))
            .await
            .expect_err("future");
        assert!(
            err.to_string()
                .contains("etcdserver: mvcc: required revision is a future revision"),
            "{err}"
        );
    });
}

#[test]
fn watch_history_live_progress_cancel_and_compaction() {
    with_member(|mut c, _m| async move {
        c.put("w/a", "1", None).await.expect("put");
        c.put("w/a", "2", None).await.expect("put");
        let mut stream = c
            .watch(
                "w/",
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_prev_key()
                        .with_start_revision(2),
                ),
            )
            .await
            .expect("watch");
        let created = stream.message().await.expect("msg").expect("created");
        assert!(created.created());
        assert_eq!(
            created.watch_id(),
            0,
            "etcd numbers a stream's watches from 0"
        );
        let mut events = Vec::new();
        while events.len() < 2 {
            let m = stream.message().await.expect("msg").expect("events");
            events.extend(m.events().to_vec());
        }
        assert_eq!(events[0].kv().unwrap().value(), b"1");
        assert!(events[0].prev_kv().is_none());
        assert_eq!(events[1].prev_kv().unwrap().value(), b"1");
        c.delete("w/a", None).await.expect("del");
        let m = stream.message().await.expect("msg").expect("delete event");
        assert_eq!(m.events()[0].event_type(), EventType::Delete);
        assert_eq!(m.events()[0].kv().unwrap().mod_revision(), 4);
        // A progress request is answered with the current revision, after the events.
        stream.request_progress().await.expect("progress");
        let m = stream.message().await.expect("msg").expect("progress");
        assert!(m.events().is_empty());
        assert_eq!(m.watch_id(), -1);
        assert_eq!(m.header().unwrap().revision(), 4);
        stream.cancel(0).await.expect("cancel");
        let m = stream.message().await.expect("msg").expect("canceled");
        assert!(m.canceled());

        // Below the compacted revision: created, then canceled with compact_revision.
        c.put("x", "1", None).await.expect("put");
        c.compact(5, None).await.expect("compact");
        let mut stream = c
            .watch(
                "w/",
                Some(WatchOptions::new().with_prefix().with_start_revision(2)),
            )
            .await
            .expect("watch");
        let created = stream.message().await.expect("msg").expect("created");
        assert!(created.created());
        let m = stream.message().await.expect("msg").expect("canceled");
        assert!(m.canceled());
        assert_eq!(m.compact_revision(), 5);
    });
}

#[test]
fn leases_through_the_rust_client() {
    with_member(|mut c, _m| async move {
        let lease = c.lease_grant(30, None).await.expect("grant");
        assert_eq!(lease.ttl(), 30);
        c.put("l", "v", Some(PutOptions::new().with_lease(lease.id())))
            .await
            .expect("put");
        let (mut keeper, mut responses) = c.lease_keep_alive(lease.id()).await.expect("keep-alive");
        for _ in 0..3 {
            keeper.keep_alive().await.expect("send");
            let r = responses.message().await.expect("msg").expect("response");
            assert_eq!(r.ttl(), 30);
            assert_eq!(r.id(), lease.id());
        }
        let ttl = c
            .lease_time_to_live(
                lease.id(),
                Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
            )
            .await
            .expect("ttl");
        assert_eq!(ttl.granted_ttl(), 30);
        assert!(ttl.ttl() > 25 && ttl.ttl() <= 30, "{}", ttl.ttl());
        assert_eq!(ttl.keys(), &[b"l".to_vec()]);
        let leases = c.leases().await.expect("leases");
        assert_eq!(leases.leases().len(), 1);
        c.lease_revoke(lease.id()).await.expect("revoke");
        assert!(c.get("l", None).await.expect("get").kvs().is_empty());
        let err = c.lease_revoke(lease.id()).await.expect_err("gone");
        assert!(
            err.to_string()
                .contains("etcdserver: requested lease not found"),
            "{err}"
        );
        // Keep-alive of an unknown lease answers TTL 0.
        keeper.keep_alive().await.expect("send");
        let r = responses.message().await.expect("msg").expect("response");
        assert_eq!(r.ttl(), 0);
        tokio::time::sleep(Duration::from_millis(10)).await;
    });
}

#[test]
fn maintenance_and_cluster_through_the_rust_client() {
    with_member(|mut c, m| async move {
        let s = c.status().await.expect("status");
        assert_eq!(s.version(), "3.5.16");
        assert_eq!(s.leader(), s.header().unwrap().member_id());
        let members = c.member_list().await.expect("members");
        assert_eq!(members.members().len(), 1);
        assert_eq!(members.members()[0].name(), "solo");
        assert_eq!(members.members()[0].peer_urls(), &[m.peer]);
        assert_eq!(members.members()[0].client_urls(), &[m.client]);
        let mut snap = c.snapshot().await.expect("snapshot");
        let mut bytes = 0usize;
        while let Some(chunk) = snap.message().await.expect("chunk") {
            bytes += chunk.blob().len();
        }
        assert_eq!(bytes % 512, 32, "etcd's layout: pages then a SHA-256");
        let defragmented = c.defragment().await.expect("defragment");
        assert!(
            defragmented.header().is_none(),
            "etcd 3.5 answers without a header"
        );
        let err = c.auth_enable().await.expect_err("no root user yet");
        assert!(
            err.to_string()
                .contains("etcdserver: root user does not exist"),
            "{err}"
        );
    });
}

/// A deployment that configures a user name and password (APISIX, Patroni, CoreDNS):
/// the client authenticates, sends its token with every call, is held to its role's
/// keys, and is told "invalid auth token" once a new password ended its token.
#[test]
fn a_client_with_a_user_and_password_works_within_its_permissions() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut m = Member::new(root.path(), "solo");
    m.start(&[
        "--cluster-init".to_string(),
        "--bcrypt-cost".into(),
        "4".into(),
    ]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut admin = Client::connect([m.endpoint()], None)
            .await
            .expect("connect");
        admin.user_add("root", "rootpw", None).await.expect("root");
        admin.role_add("root").await.expect("root role");
        admin
            .user_grant_role("root", "root")
            .await
            .expect("grant root");
        admin.user_add("app", "apppw", None).await.expect("app");
        admin.role_add("app").await.expect("app role");
        let perm = etcd_client::Permission::read_write("app/").with_prefix();
        admin
            .role_grant_permission("app", perm)
            .await
            .expect("perm");
        admin
            .user_grant_role("app", "app")
            .await
            .expect("grant app");
        admin.auth_enable().await.expect("auth enable");

        let err = admin
            .put("app/x", "1", None)
            .await
            .expect_err("no credentials");
        assert!(
            err.to_string().contains("etcdserver: user name is empty"),
            "{err}"
        );

        let options = ConnectOptions::new().with_user("app", "apppw");
        let mut app = Client::connect([m.endpoint()], Some(options))
            .await
            .expect("app connects");
        app.put("app/x", "1", None)
            .await
            .expect("put in its prefix");
        let got = app.get("app/x", None).await.expect("get");
        assert_eq!(got.kvs()[0].value(), b"1");
        let err = app
            .put("other", "1", None)
            .await
            .expect_err("outside its prefix");
        assert!(
            err.to_string().contains("etcdserver: permission denied"),
            "{err}"
        );
        let mut events = app
            .watch("app/", Some(WatchOptions::new().with_prefix()))
            .await
            .expect("watch its prefix");
        app.put("app/y", "2", None).await.expect("put");
        let event = loop {
            let m = events.message().await.expect("watch").expect("a message");
            assert!(!m.canceled(), "{:?}", m.cancel_reason());
            if let Some(e) = m.events().first() {
                break e.clone();
            }
        };
        assert_eq!(event.kv().unwrap().key(), b"app/y");

        let wrong = ConnectOptions::new().with_user("app", "wrong");
        let err = Client::connect([m.endpoint()], Some(wrong))
            .await
            .err()
            .expect("a wrong password is refused");
        assert!(
            err.to_string()
                .contains("etcdserver: authentication failed, invalid user ID or password"),
            "{err}"
        );

        // A new password ends the old token: the next call says so.
        let options = ConnectOptions::new().with_user("root", "rootpw");
        let mut root_client = Client::connect([m.endpoint()], Some(options))
            .await
            .expect("root connects");
        root_client
            .user_change_password("app", "newpw")
            .await
            .expect("change password");
        let err = app.get("app/x", None).await.expect_err("the old token");
        assert!(
            err.to_string().contains("etcdserver: invalid auth token"),
            "{err}"
        );
        root_client.auth_disable().await.expect("auth disable");
        admin
            .put("app/x", "3", None)
            .await
            .expect("no credentials needed again");
    });
}

/// The Kubernetes API server pings every few seconds on idle connections; etcd allows
/// pings every 5 s. raftkv must not drop a connection that pings more often than that.
#[test]
fn frequent_keepalive_pings_do_not_drop_the_connection() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut m = Member::new(root.path(), "solo");
    m.start(&["--cluster-init".to_string()]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let options = etcd_client::ConnectOptions::new()
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        let mut c = Client::connect([m.endpoint()], Some(options))
            .await
            .expect("connects");
        let mut watch = c.watch("idle", None).await.expect("watch");
        watch.message().await.expect("msg").expect("created");
        tokio::time::sleep(Duration::from_secs(7)).await;
        let mut other = Client::connect([m.endpoint()], None)
            .await
            .expect("connects");
        other.put("idle", "still here", None).await.expect("put");
        let msg = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .expect("the watch still delivers")
            .expect("stream intact")
            .expect("event");
        assert_eq!(msg.events()[0].kv().unwrap().value(), b"still here");
        c.get("idle", None)
            .await
            .expect("the pinging connection still serves");
    });
}

/// A watch asking for progress_notify gets empty responses carrying the current
/// revision while nothing changes (interval set short here; etcd's default is 10 min).
#[test]
fn progress_notify_reports_the_revision_while_idle() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut m = Member::new(root.path(), "solo");
    m.extra_args = vec!["--watch-progress-notify-interval-ms".into(), "300".into()];
    m.start(&["--cluster-init".to_string()]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut c = Client::connect([m.endpoint()], None)
            .await
            .expect("connects");
        let rev = c
            .put("p", "1", None)
            .await
            .expect("put")
            .header()
            .unwrap()
            .revision();
        let mut stream = c
            .watch("p", Some(WatchOptions::new().with_progress_notify()))
            .await
            .expect("watch");
        stream.message().await.expect("msg").expect("created");
        let m = tokio::time::timeout(Duration::from_secs(3), stream.message())
            .await
            .expect("a progress notification within 3 s")
            .expect("msg")
            .expect("open");
        assert!(m.events().is_empty());
        assert_eq!(m.watch_id(), 0);
        assert_eq!(m.header().unwrap().revision(), rev);
    });
}
