//! Space: over --quota-backend-bytes (or with the disk below --disk-reserve-bytes) a
//! write raises the NOSPACE alarm, as etcd does. The cluster then answers puts, txns
//! with puts and lease grants with "etcdserver: mvcc: database space exceeded" while
//! reads, deletes and compactions go on; `etcdctl alarm list` shows the alarm, it
//! survives a restart, and `etcdctl alarm disarm` lifts it.

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
