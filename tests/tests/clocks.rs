//! The wall clock of a member jumps and strobes (libfaketime from Debian, preloaded
//! into the leader with its monotonic clock left alone): leases expire on time, reads
//! stay linearizable, leadership stays put. Lease expiry and the leader's read lease
//! must run on the monotonic clock; only log timestamps and file names may follow the
//! wall clock.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use etcd_client::{Client, PutOptions};
use raftkv_tests::*;

/// Debian's libfaketime, wherever the architecture puts it (scripts/test installs it).
fn libfaketime() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .expect("/usr/lib")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists());
    found.expect("libfaketime is missing: apt-get install faketime (scripts/test does)")
}

fn set_offset(file: &Path, offset: &str) {
    std::fs::write(file, format!("{offset}\n")).expect("offset file");
}

#[test]
fn wall_clock_jumps_on_the_leader_change_no_lease_read_or_leadership() {
    const LEASE_TTL_S: i64 = 10;
    let root = tempfile::tempdir().expect("temp dir");
    let offset_file = root.path().join("faketime");
    set_offset(&offset_file, "+0");
    let preload = libfaketime();
    let faked: &[(&str, &str)] = &[
        ("LD_PRELOAD", preload.to_str().expect("path")),
        (
            "FAKETIME_TIMESTAMP_FILE",
            offset_file.to_str().expect("path"),
        ),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let cluster = Cluster::start_with_env(3, &[], &[faked, &[], &[]]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // Member 0 started the cluster and leads; clients talk to it.
        let mut c = Client::connect([cluster.members[0].endpoint()], None)
            .await
            .expect("connects");
        let term_before = c.status().await.expect("status").raft_term();
        assert_eq!(
            c.status().await.expect("status").leader(),
            c.status()
                .await
                .expect("status")
                .header()
                .expect("header")
                .member_id(),
            "member 0 leads"
        );
        let lease = c.lease_grant(LEASE_TTL_S, None).await.expect("grant").id();
        let granted = Instant::now();
        let opts = PutOptions::new().with_lease(lease);
        c.put("leased", "v", Some(opts)).await.expect("put");

        // Forward two hours, back, and a strobe of an hour each way.
        set_offset(&offset_file, "+2h");
        tokio::time::sleep(Duration::from_millis(500)).await;
        set_offset(&offset_file, "-1h");
        for i in 0..10 {
            set_offset(&offset_file, if i % 2 == 0 { "+1h" } else { "-1h" });
            c.put("counter", i.to_string(), None).await.expect("put");
            let got = c.get("counter", None).await.expect("get");
            assert_eq!(got.kvs()[0].value_str().expect("utf8"), i.to_string());
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        set_offset(&offset_file, "+3h");
        // The fake clock really reached the member: it dates its answers hours ahead.
        let hours_ahead =
            (member_hour(cluster.members[0].client_port) - real_hour()).rem_euclid(24);
        assert!(
            (2..=4).contains(&hours_ahead),
            "the member's clock is {hours_ahead} h ahead, not 3: libfaketime did not apply"
        );

        // Still alive before its TTL, with about the TTL left that the monotonic
        // clock says.
        assert!(granted.elapsed() < Duration::from_secs(LEASE_TTL_S as u64 - 1));
        let ttl = c.lease_time_to_live(lease, None).await.expect("ttl").ttl();
        let elapsed_s = granted.elapsed().as_secs() as i64;
        assert!(
            ttl > 0 && ttl <= LEASE_TTL_S - elapsed_s + 1,
            "TTL left {ttl} s after {elapsed_s} s of {LEASE_TTL_S}"
        );
        assert_eq!(c.get("leased", None).await.expect("get").count(), 1);

        // And gone once the TTL has passed, not long after.
        let deadline = granted + Duration::from_secs(LEASE_TTL_S as u64 + 5);
        loop {
            if c.get("leased", None).await.expect("get").count() == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the leased key outlived its TTL by 5 s; logs:\n{}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(granted.elapsed() >= Duration::from_secs(LEASE_TTL_S as u64 - 1));

        let term_after = c.status().await.expect("status").raft_term();
        assert_eq!(
            term_before,
            term_after,
            "the leader changed; logs:\n{}",
            cluster.logs()
        );
    });
}

/// The hour the member's HTTP answers are dated (hyper dates them by the wall clock).
fn member_hour(port: u16) -> i64 {
    let (_, head, _) = http_request(port, "GET", "/health");
    let date = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("date: ")
                .or_else(|| l.strip_prefix("Date: "))
        })
        .unwrap_or_else(|| panic!("no Date header in {head}"));
    // "Mon, 07 Dec 2026 07:40:01 GMT"
    date.split_whitespace()
        .nth(4)
        .and_then(|t| t.get(0..2))
        .and_then(|h| h.parse().ok())
        .unwrap_or_else(|| panic!("bad Date header {date:?}"))
}

fn real_hour() -> i64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    secs.rem_euclid(86_400) / 3_600
}
