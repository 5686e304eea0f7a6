//! Space: over --quota-backend-bytes (or with the disk below --disk-reserve-bytes) a
//! write raises the NOSPACE alarm, as etcd does. The cluster then answers puts, txns
//! with puts and lease grants with "etcdserver: mvcc: database space exceeded" while
//! reads, deletes and compactions go on; `etcdctl alarm list` shows the alarm, it
//! survives a restart, and `etcdctl alarm disarm` lifts it. Compaction and Defragment
//! give space back without stopping the member; a really filling disk (a small tmpfs)
//! raises NOSPACE before the Raft log could fail, and nothing acknowledged is lost.

use raftkv_tests::*;

fn put_fails_with_nospace(ctl: &std::path::Path, ep: &[String]) {
    let out = etcdctl(ctl, ep, &["put", "more", "x"], None);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr)
                .contains("etcdserver: mvcc: database space exceeded"),
        "{out:?}"
    );
}

#[test]
fn over_the_quota_the_cluster_reads_and_deletes_until_the_alarm_is_disarmed() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut m = Member::new(root.path(), "q");
    let quota = ["--quota-backend-bytes".to_string(), "1000000".to_string()];
    m.start(&[&["--cluster-init".to_string()][..], &quota].concat());
    let ctl = etcdctl35();
    let ep = [m.endpoint()];
    let value = "v".repeat(100_000);

    // Fill past 1 MB: some put fails with etcd's error, and NOSPACE is raised.
    let mut stored = 0;
    for i in 0..40 {
        let out = etcdctl(&ctl, &ep, &["put", &format!("big/{i:02}"), &value], None);
        if out.status.success() {
            stored += 1;
            continue;
        }
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains("etcdserver: mvcc: database space exceeded"),
            "{out:?}"
        );
        break;
    }
    assert!(
        (5..40).contains(&stored),
        "{stored} puts of 100 kB fit in a 1 MB quota"
    );
    let alarms = etcdctl_ok(&ctl, &ep, &["alarm", "list"]);
    assert!(alarms.contains("alarm:NOSPACE"), "{alarms}");
    let status = etcdctl_ok(&ctl, &ep, &["endpoint", "status", "-w", "json"]);
    assert!(status.contains("alarm:NOSPACE"), "{status}");

    // Capped: writes that need space fail, everything else works.
    put_fails_with_nospace(&ctl, &ep);
    let out = etcdctl(&ctl, &ep, &["lease", "grant", "60"], None);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("database space exceeded"),
        "{out:?}"
    );
    let count = etcdctl_ok(
        &ctl,
        &ep,
        &["get", "big/", "--prefix", "--keys-only", "-w", "json"],
    );
    assert_eq!(json(&count)["count"], stored, "{count}");
    let deleted = etcdctl_ok(&ctl, &ep, &["del", "big/00"]);
    assert_eq!(deleted.trim(), "1");
    let rev = json(&etcdctl_ok(&ctl, &ep, &["get", "big/01", "-w", "json"]))["header"]["revision"]
        .as_i64()
        .expect("revision");
    etcdctl_ok(&ctl, &ep, &["compaction", &rev.to_string()]);

    // The alarm is cluster state: it survives a restart, even with a larger quota,
    // until it is disarmed.
    m.stop();
    m.start(&["--quota-backend-bytes".to_string(), "100000000".to_string()]);
    assert!(etcdctl_ok(&ctl, &ep, &["alarm", "list"]).contains("alarm:NOSPACE"));
    put_fails_with_nospace(&ctl, &ep);
    let disarmed = etcdctl_ok(&ctl, &ep, &["alarm", "disarm"]);
    assert!(disarmed.contains("alarm:NOSPACE"), "{disarmed}");
    assert_eq!(etcdctl_ok(&ctl, &ep, &["alarm", "list"]).trim(), "");
    etcdctl_ok(&ctl, &ep, &["put", "more", "x"]);
    let metrics = http_get(m.client_port, "/metrics").1;
    assert!(
        metrics.contains("etcd_server_quota_backend_bytes 100000000"),
        "{metrics}"
    );
}

#[test]
fn a_nearly_full_disk_raises_nospace_instead_of_failing_the_log() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut m = Member::new(root.path(), "d");
    m.start(&["--cluster-init".to_string()]);
    let ctl = etcdctl35();
    let ep = [m.endpoint()];
    etcdctl_ok(&ctl, &ep, &["put", "before", "1"]);
    m.stop();
    // A reserve larger than any disk: the file system counts as full.
    let reserve = ["--disk-reserve-bytes".to_string(), (1u64 << 60).to_string()];
    m.start(&reserve);
    put_fails_with_nospace(&ctl, &ep);
    assert!(etcdctl_ok(&ctl, &ep, &["alarm", "list"]).contains("alarm:NOSPACE"));
    assert!(
        m.log().contains("out of space: raising the NOSPACE alarm"),
        "{}",
        m.log()
    );
    // Reads and deletes go on; nothing written before is lost.
    assert_eq!(
        etcdctl_ok(&ctl, &ep, &["get", "before", "--print-value-only"]),
        "1\n"
    );
    assert_eq!(etcdctl_ok(&ctl, &ep, &["del", "before"]).trim(), "1");
    // With room again (the default reserve), disarming brings writes back.
    m.stop();
    m.start(&[]);
    etcdctl_ok(&ctl, &ep, &["alarm", "disarm"]);
    etcdctl_ok(&ctl, &ep, &["put", "after", "2"]);
}

/// The member's db size as `etcdctl endpoint status` reports it.
fn db_size(ctl: &std::path::Path, ep: &[String]) -> u64 {
    let status = json(&etcdctl_ok(ctl, ep, &["endpoint", "status", "-w", "json"]));
    status[0]["Status"]["dbSize"].as_u64().unwrap_or(0)
}

#[test]
fn compaction_and_defrag_give_space_back_while_writes_go_on() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut m = Member::new(root.path(), "reclaim");
    m.start(&["--cluster-init".to_string()]);
    let ctl = etcdctl35();
    let ep = [m.endpoint()];
    let value = "x".repeat(20_000);
    // 4 MB live, written three times over: 12 MB of history.
    for round in 0..3 {
        for i in 0..200 {
            etcdctl_ok(
                &ctl,
                &ep,
                &["put", &format!("big/{i:03}"), &format!("{round}{value}")],
            );
        }
    }
    etcdctl_ok(&ctl, &ep, &["del", "big/", "--prefix"]);
    let peak = db_size(&ctl, &ep);
    assert!(peak > 8_000_000, "db size {peak} after 12 MB of writes");
    let rev = json(&etcdctl_ok(
        &ctl,
        &ep,
        &["put", "marker", "1", "-w", "json"],
    ))["header"]["revision"]
        .as_i64()
        .expect("revision");
    etcdctl_ok(&ctl, &ep, &["compaction", &rev.to_string()]);
    // Defragment answers once the space is back, as etcd's does (so that `etcdctl
    // defrag --cluster` reclaims one member at a time), while writes keep being
    // answered: the engine merges in the background.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (ctl, ep, stop) = (ctl.clone(), ep.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while n < 3 || !stop.load(std::sync::atomic::Ordering::Acquire) {
                etcdctl_ok(&ctl, &ep, &["put", &format!("during/{n}"), "w"]);
                n += 1;
            }
            n
        })
    };
    let out = etcdctl_ok(&ctl, &ep, &["defrag", "--command-timeout=60s"]);
    assert!(out.contains("Finished defragmenting"), "{out}");
    let size = db_size(&ctl, &ep);
    stop.store(true, std::sync::atomic::Ordering::Release);
    let n = writer.join().expect("writer");
    assert!(
        size < peak / 4,
        "db size still {size} (peak {peak}) when Defragment answered; log:\n{}",
        m.log()
    );
    assert!(m.log().contains("space reclaimed"), "{}", m.log());
    // raftkv's own command shows the size before and after.
    let out = raftkv_cli(&["defrag", "--endpoints", &m.endpoint()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Finished defragmenting")
            && String::from_utf8_lossy(&out.stdout).contains(" MB -> "),
        "{out:?}"
    );
    let count = json(&etcdctl_ok(
        &ctl,
        &ep,
        &["get", "during/", "--prefix", "--keys-only", "-w", "json"],
    ));
    assert_eq!(count["count"], n, "every write during the reclaim was kept");
}

#[test]
fn a_filling_disk_raises_nospace_before_the_log_fails_and_loses_nothing() {
    let root = tempfile::tempdir().expect("temp dir");
    let disk = SmallDisk::mount(&root.path().join("small"), 160);
    let mut m = Member::new(&disk.0, "full");
    // Room for the Raft log's next 64 MiB segment and more.
    let reserve = [
        "--disk-reserve-bytes".to_string(),
        (70u64 << 20).to_string(),
    ];
    m.start(&[&["--cluster-init".to_string()][..], &reserve].concat());
    let ctl = etcdctl35();
    let ep = [m.endpoint()];
    // Something else fills the disk until 6 MiB above the reserve are left.
    let filler_bytes = disk.free_bytes().saturating_sub(76 << 20);
    let filler = disk.0.join("filler");
    std::fs::write(&filler, vec![0u8; filler_bytes as usize]).expect("filler");

    let value = "v".repeat(100_000);
    let mut acknowledged = Vec::new();
    for i in 0..200 {
        let key = format!("fill/{i:03}");
        let out = etcdctl(&ctl, &ep, &["put", &key, &value], None);
        if out.status.success() {
            acknowledged.push(key);
            continue;
        }
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("database space exceeded"),
            "{out:?}"
        );
        break;
    }
    assert!(
        !acknowledged.is_empty() && acknowledged.len() < 200,
        "{} puts before NOSPACE",
        acknowledged.len()
    );
    assert!(etcdctl_ok(&ctl, &ep, &["alarm", "list"]).contains("alarm:NOSPACE"));

    // A crash on the nearly full disk: the log opens and every acknowledged put is there.
    m.kill9();
    m.start(&reserve);
    let got = json(&etcdctl_ok(
        &ctl,
        &ep,
        &["get", "fill/", "--prefix", "--keys-only", "-w", "json"],
    ));
    assert_eq!(got["count"], acknowledged.len(), "{got}");
    assert_eq!(
        etcdctl_ok(&ctl, &ep, &["get", &acknowledged[0], "--print-value-only"]).trim(),
        value
    );
    // Deletes still go through; with room again and the alarm disarmed, so do puts.
    assert_eq!(
        etcdctl_ok(&ctl, &ep, &["del", &acknowledged[0]]).trim(),
        "1"
    );
    std::fs::remove_file(&filler).expect("remove filler");
    etcdctl_ok(&ctl, &ep, &["alarm", "disarm"]);
    etcdctl_ok(&ctl, &ep, &["put", "after", "room"]);
    m.stop();
}

/// raftkv's own files fill the disk: scheduled backups every second, kept many at a
/// time, on the data dir's own file system. The member must not fail, nor lose what it
/// acknowledged: NOSPACE is raised once the free space falls below the reserve, and the
/// backups stop taking the space the log and the engine need.
#[test]
fn its_own_backups_filling_the_disk_neither_fail_the_member_nor_lose_writes() {
    let root = tempfile::tempdir().expect("temp dir");
    let disk = SmallDisk::mount(&root.path().join("small"), 160);
    let mut m = Member::new(&disk.0, "own");
    let args = [
        "--cluster-init",
        "--disk-reserve-bytes",
        &(70u64 << 20).to_string(),
        "--snapshot-schedule",
        "* * * * * *",
        "--snapshot-retention",
        "50",
    ]
    .map(String::from);
    m.start(&args);
    let ctl = etcdctl35();
    let ep = [m.endpoint()];
    let value = "v".repeat(1 << 20);
    let mut acknowledged = Vec::new();
    let started = std::time::Instant::now();
    let mut refused = 0;
    // Writes for 20 s while the backups pile up.
    let mut i = 0;
    while started.elapsed() < std::time::Duration::from_secs(20) {
        let key = format!("own/{:03}", i % 40);
        i += 1;
        let out = etcdctl(&ctl, &ep, &["put", &key], Some(&value));
        if out.status.success() {
            acknowledged.push(key);
        } else {
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("database space exceeded"),
                "{out:?}\n{}",
                m.log()
            );
            refused += 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(m.is_running(), "the member exited; log:\n{}", m.log());
    }
    assert!(
        refused > 0,
        "the disk never filled: {} MiB free",
        disk.free_bytes() >> 20
    );
    assert!(m.is_running(), "the member exited; log:\n{}", m.log());
    // Everything acknowledged is there, after a crash too.
    m.kill9();
    m.start(&[]);
    let got = json(&etcdctl_ok(
        &ctl,
        &ep,
        &["get", "own/", "--prefix", "--keys-only", "-w", "json"],
    ));
    let distinct: std::collections::BTreeSet<_> = acknowledged.iter().collect();
    assert_eq!(got["count"], distinct.len(), "{got}\n{}", m.log());
}
