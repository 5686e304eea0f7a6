//! Backups: `raftkv snapshot save` and `etcdctl snapshot save` from a running member,
//! `raftkv snapshot restore` into a new data dir, and the restored member serving the
//! same keys at the same revisions as a new cluster. A corrupt file is refused.

use raftkv_tests::*;

fn everything(endpoint: &str) -> serde_json::Value {
    let mut j = json(&etcdctl_ok(
        &etcdctl35(),
        &[endpoint.to_string()],
        &["get", "", "--prefix", "-w", "json"],
    ));
    j["header"]["cluster_id"] = 0.into();
    j["header"]["member_id"] = 0.into();
    j["header"]["raft_term"] = 0.into();
    j
}

#[test]
fn a_snapshot_restores_into_a_new_cluster_with_the_same_data() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut m = Member::new(root.path(), "orig");
    m.start(&["--cluster-init".to_string()]);
    let ep = vec![m.endpoint()];
    let ctl = etcdctl35();
    for i in 0..50 {
        etcdctl_ok(
            &ctl,
            &ep,
            &["put", &format!("k/{:02}", i % 20), &format!("v{i}")],
        );
    }
    etcdctl_ok(&ctl, &ep, &["del", "k/1", "--prefix"]);
    etcdctl_ok(&ctl, &ep, &["compaction", "30"]);
    let want = everything(&m.endpoint());

    let ours = root.path().join("ours.db");
    let out = raftkv_cli(&[
        "snapshot",
        "save",
        ours.to_str().unwrap(),
        "--endpoints",
        &m.endpoint(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let theirs = root.path().join("etcdctl.db");
    let out = etcdctl(
        &ctl,
        &ep,
        &["snapshot", "save", theirs.to_str().unwrap()],
        None,
    );
    assert!(out.status.success(), "{out:?}");

    for (name, file) in [("from-raftkv", &ours), ("from-etcdctl", &theirs)] {
        let mut restored = Member::new(root.path(), name);
        let out = raftkv_cli(&[
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            restored.data_dir.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{out:?}");
        // Restoring over it again is refused: it holds data now.
        let again = raftkv_cli(&[
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            restored.data_dir.to_str().unwrap(),
        ]);
        assert!(!again.status.success());
        assert!(
            String::from_utf8_lossy(&again.stderr).contains("already holds data"),
            "{again:?}"
        );
        restored.start(&["--cluster-init".to_string()]);
        assert_eq!(everything(&restored.endpoint()), want, "{name}");
        // A new cluster: new ids, and it takes writes after the restored revision.
        let status = json(&etcdctl_ok(
            &ctl,
            &[restored.endpoint()],
            &["endpoint", "status", "-w", "json"],
        ));
        assert_ne!(
            status[0]["Status"]["header"]["cluster_id"],
            json(&etcdctl_ok(
                &ctl,
                &ep,
                &["endpoint", "status", "-w", "json"]
            ))[0]["Status"]["header"]["cluster_id"]
        );
        let put = json(&etcdctl_ok(
            &ctl,
            &[restored.endpoint()],
            &["put", "after", "x", "-w", "json"],
        ));
        assert_eq!(
            put["header"]["revision"].as_i64().unwrap(),
            want["header"]["revision"].as_i64().unwrap() + 1
        );
    }

    // A flipped byte: refused before anything is written.
    let mut bytes = std::fs::read(&ours).expect("read");
    bytes[40] ^= 0xff;
    let bad = root.path().join("bad.db");
    std::fs::write(&bad, bytes).expect("write");
    let target = root.path().join("never");
    let out = raftkv_cli(&[
        "snapshot",
        "restore",
        bad.to_str().unwrap(),
        "--data-dir",
        target.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the snapshot is corrupt"),
        "{out:?}"
    );
    assert!(
        !target.exists(),
        "nothing was written for a corrupt snapshot"
    );
}
