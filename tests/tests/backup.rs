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
    // Progress is drawn on a terminal only (below): a pipe gets none.
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains('\r'),
        "{out:?}"
    );
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
        let out = restore(file.to_str().unwrap(), restored.data_dir.to_str().unwrap());
        assert!(out.status.success(), "{out:?}");
        // Progress is drawn on a terminal only: a pipe (a log, a script) gets none.
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains('\r'),
            "{out:?}"
        );
        // Restoring over it again is refused: it holds data now.
        let again = restore(file.to_str().unwrap(), restored.data_dir.to_str().unwrap());
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
    let out = restore(bad.to_str().unwrap(), target.to_str().unwrap());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the snapshot is corrupt"),
        "{out:?}"
    );
    assert!(
        !target.exists(),
        "nothing was written for a corrupt snapshot"
    );

    // On a terminal (script(1) gives the command one), the restore draws its progress.
    let on_terminal = root.path().join("on-terminal");
    let command = format!(
        "{} snapshot restore {} --data-dir {}",
        raftkv_bin().display(),
        ours.display(),
        on_terminal.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script(1) runs");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        screen.contains("snapshot restore") && screen.contains("(100%"),
        "no progress bar on the terminal: {screen:?}"
    );
}

/// The --snapshot-s3-* flags for the test bucket on the local S3 server.
fn s3_flags(s3: &S3Server) -> Vec<String> {
    [
        "--snapshot-s3-endpoint",
        &s3.endpoint(),
        "--snapshot-s3-bucket",
        "backups",
        "--snapshot-s3-folder",
        "nightly",
        "--snapshot-s3-access-key",
        "test",
        "--snapshot-s3-secret-key",
        "test",
    ]
    .map(String::from)
    .to_vec()
}

/// Snapshot files in `dir`, oldest first.
fn snapshots_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".snap"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn scheduled_snapshots_keep_the_newest_locally_and_in_s3_and_restore_identically() {
    let s3 = S3Server::start();
    s3.create_bucket("backups");
    let root = tempfile::tempdir().expect("temp dir");
    let ctl = etcdctl35();
    let mut m = Member::new(root.path(), "sched");
    m.start(&["--cluster-init".to_string()]);
    let ep = [m.endpoint()];
    for i in 0..50 {
        etcdctl_ok(
            &ctl,
            &ep,
            &["put", &format!("k/{:02}", i % 25), &format!("v{i}")],
        );
    }
    etcdctl_ok(&ctl, &ep, &["del", "k/0", "--prefix"]);
    let want = everything(&m.endpoint());

    // Every two seconds, keeping two: restarted with the schedule (a service unit's
    // changed flags), with an upload to the local S3 server.
    m.stop();
    let dir = root.path().join("backups");
    let mut schedule = [
        "--snapshot-schedule",
        "*/2 * * * * *",
        "--snapshot-retention",
        "2",
        "--snapshot-dir",
        dir.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    schedule.extend(s3_flags(&s3));
    m.start(&schedule);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while m.log().matches("old snapshot deleted from s3").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than four scheduled snapshots; log:\n{}",
            m.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let local = snapshots_in(&dir);
    assert_eq!(local.len(), 2, "{local:?}");
    assert!(
        local.iter().all(|n| n.starts_with("raftkv-sched-")),
        "{local:?}"
    );
    // A scheduled snapshot (raftkv's own format) converts into etcd's, which etcdutl
    // reads at the same revision.
    let converted = root.path().join("converted.db");
    let newest_local = dir.join(local.last().expect("a snapshot"));
    let out = raftkv_cli(&[
        "snapshot",
        "to-etcd",
        newest_local.to_str().unwrap(),
        converted.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let etcdutl = std::process::Command::new(etcd_newest_dir().join("etcdutl"))
        .args([
            "snapshot",
            "status",
            converted.to_str().unwrap(),
            "-w",
            "json",
        ])
        .output()
        .expect("etcdutl runs");
    assert!(etcdutl.status.success(), "{etcdutl:?}");
    let revision =
        json(&etcdctl_ok(&ctl, &ep, &["get", "k", "-w", "json"]))["header"]["revision"].clone();
    assert_eq!(
        json(&String::from_utf8_lossy(&etcdutl.stdout))["revision"],
        revision
    );
    let mut remote = s3.list("backups", "nightly/");
    remote.sort();
    assert!(
        (2..=3).contains(&remote.len()),
        "retention 2 in the bucket (a third may be uploading): {remote:?}"
    );

    // The newest uploaded snapshot restores straight from the bucket into a new
    // cluster with identical data.
    let newest = remote.last().expect("uploaded").clone();
    let name = newest.trim_start_matches("nightly/");
    let mut restored = Member::new(root.path(), "from-s3");
    let mut restore = ["snapshot", "restore", name, "--data-dir"]
        .map(String::from)
        .to_vec();
    restore.push(restored.data_dir.display().to_string());
    restore.extend(s3_flags(&s3));
    let out = raftkv_cli(&restore.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{out:?}");
    restored.start(&["--cluster-init".to_string()]);
    assert_eq!(everything(&restored.endpoint()), want);

    // A schedule that is not cron is refused at start with the flag named.
    let mut bad = Member::new(root.path(), "bad-schedule");
    bad.spawn(&[
        "--cluster-init".to_string(),
        "--snapshot-schedule".to_string(),
        "every day".to_string(),
    ]);
    let status = bad
        .wait_exit(std::time::Duration::from_secs(10))
        .expect("exits");
    assert!(!status.success());
    assert!(bad.log().contains("--snapshot-schedule"), "{}", bad.log());
}

/// Users, roles, their permissions and authentication being on come back with a
/// restored snapshot, and the restored cluster checks requests as the old one did.
#[test]
fn a_restored_snapshot_keeps_users_roles_and_authentication() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut m = Member::new(root.path(), "authsnap");
    m.start(&[
        "--cluster-init".to_string(),
        "--bcrypt-cost".into(),
        "4".into(),
    ]);
    let ctl = etcdctl35();
    let on = |endpoint: &str, args: &[&str]| {
        let out = etcdctl(&ctl, &[endpoint.to_string()], args, None);
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    for args in [
        &["put", "app/x", "1"][..],
        &["user", "add", "root", "--new-user-password=r00t"],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "app"],
        &[
            "role",
            "grant-permission",
            "app",
            "read",
            "app/",
            "--prefix",
        ],
        &["user", "add", "app", "--new-user-password=apw"],
        &["user", "grant-role", "app", "app"],
        &["auth", "enable"],
    ] {
        let (ok, text) = on(&m.endpoint(), args);
        assert!(ok, "{args:?}: {text}");
    }
    // raftkv's own commands take etcdctl's --user too.
    let file = root.path().join("auth.db");
    let endpoint = m.endpoint();
    let save = |user: &[&str]| {
        let mut args = vec!["snapshot", "save", file.to_str().unwrap()];
        args.extend_from_slice(user);
        args.extend_from_slice(&["--endpoints", &endpoint]);
        raftkv_cli(&args)
    };
    let refused = save(&[]);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("user name is empty"),
        "a snapshot is root's: {refused:?}"
    );
    let out = save(&["--user", "root:r00t"]);
    assert!(
        out.status.success(),
        "a root user saves the snapshot: {out:?}"
    );
    let mut restored = Member::new(root.path(), "restored");
    let out = restore(file.to_str().unwrap(), restored.data_dir.to_str().unwrap());
    assert!(out.status.success(), "{out:?}");
    restored.start(&["--cluster-init".to_string()]);
    let ep = restored.endpoint();
    let (ok, text) = on(&ep, &["get", "app/x"]);
    assert!(
        !ok && text.contains("user name is empty"),
        "auth stays on: {text}"
    );
    let (ok, text) = on(
        &ep,
        &["--user=app:apw", "get", "app/x", "--print-value-only"],
    );
    assert!(ok && text.trim() == "1", "the password came along: {text}");
    let (ok, text) = on(&ep, &["--user=app:apw", "put", "app/x", "2"]);
    assert!(
        !ok && text.contains("permission denied"),
        "read only: {text}"
    );
    let (ok, text) = on(&ep, &["--user=root:r00t", "user", "list"]);
    assert!(ok && text == "app\nroot\n", "{text}");
    let status = raftkv_cli(&["status", "--user", "root:r00t", "--endpoints", &ep]);
    assert!(status.status.success(), "{status:?}");
}

/// `raftkv snapshot restore FILE --data-dir DIR`.
fn restore(file: &str, data_dir: &str) -> std::process::Output {
    raftkv_cli(&["snapshot", "restore", file, "--data-dir", data_dir])
}
