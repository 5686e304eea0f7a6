//! The arm64 build (Raspberry Pi 5) does what the x86_64 one does: a three-member
//! cluster of the cross-built binary, each member run by qemu-user, takes etcdctl's
//! writes and reads, `raftkv status` reports it, and after the leader's SIGKILL the
//! others elect a new one and take writes again with nothing acknowledged lost.
//!
//! scripts/cross-arm64 builds the binary (scripts/test runs it before the tests).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use raftkv_tests::*;

/// Starting a member under qemu-user emulation: slower than native by several times.
const START_UNDER_QEMU_MS: u64 = 60_000;
/// Writes resume within this after the leader's SIGKILL (an election, emulated).
const FAILOVER_MAX_MS: u64 = 30_000;
/// Where Debian's libc6-arm64-cross keeps the arm64 libraries qemu-user loads.
const ARM64_SYSROOT: &str = "/usr/aarch64-linux-gnu";

/// target/aarch64-unknown-linux-gnu/cross/raftkv, checked to be an arm64 ELF file.
fn arm64_bin() -> PathBuf {
    let bin = target_dir().join("aarch64-unknown-linux-gnu/cross/raftkv");
    let header = std::fs::read(&bin).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: build it with scripts/cross-arm64 (scripts/test does)",
            bin.display()
        )
    });
    assert!(
        is_arm64_elf(&header),
        "{} is not an arm64 executable",
        bin.display()
    );
    bin
}

/// A script that runs the arm64 raftkv under qemu-user with the given arguments.
fn qemu_wrapper(dir: &Path) -> PathBuf {
    let wrapper = dir.join("raftkv-arm64");
    let script = format!(
        "#!/bin/sh\nexec qemu-aarch64-static -L {ARM64_SYSROOT} {} \"$@\"\n",
        arm64_bin().display()
    );
    std::fs::write(&wrapper, script).expect("wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    wrapper
}

#[test]
fn an_arm64_cluster_under_qemu_serves_and_survives_its_leaders_kill() {
    let root = tempfile::tempdir().expect("temp dir");
    let wrapper = qemu_wrapper(root.path());
    let mut members: Vec<Member> = ["pi0", "pi1", "pi2"]
        .iter()
        .map(|name| {
            let mut m = Member::new(root.path(), name);
            m.bin = Some(wrapper.clone());
            m
        })
        .collect();
    members[0].spawn(&["--cluster-init".to_string()]);
    members[0].wait_serving_within(START_UNDER_QEMU_MS);
    for i in 1..3 {
        let args = Member::join_args(&members[0]);
        members[i].spawn(&args);
        members[i].wait_serving_within(START_UNDER_QEMU_MS);
    }
    let endpoints: Vec<String> = members.iter().map(|m| m.endpoint()).collect();
    let ctl = etcdctl35();
    for i in 0..20 {
        etcdctl_ok(&ctl, &endpoints, &["put", &format!("pi/{i}"), "v"]);
    }
    let count = etcdctl_ok(
        &ctl,
        &endpoints,
        &["get", "pi/", "--prefix", "--count-only", "-w", "fields"],
    );
    assert!(count.contains("\"Count\" : 20"), "{count}");

    let status = std::process::Command::new(&wrapper)
        .args(["status", "--endpoints", &endpoints.join(",")])
        .output()
        .expect("raftkv status runs");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success() && text.contains("can lose 1 of 3"),
        "{status:?}"
    );

    let leader = leader_of(&ctl, &endpoints);
    members[leader].kill9();
    let others: Vec<String> = (0..3)
        .filter(|&i| i != leader)
        .map(|i| endpoints[i].clone())
        .collect();
    let killed = Instant::now();
    loop {
        let out = etcdctl(&ctl, &others, &["put", "pi/after", "v"], None);
        if out.status.success() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_millis(FAILOVER_MAX_MS),
            "no writes {FAILOVER_MAX_MS} ms after the leader's kill: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let count = etcdctl_ok(
        &ctl,
        &others,
        &["get", "pi/", "--prefix", "--count-only", "-w", "fields"],
    );
    assert!(count.contains("\"Count\" : 21"), "nothing lost: {count}");
}

/// The index of the member that leads, as `etcdctl endpoint status` reports it.
fn leader_of(ctl: &Path, endpoints: &[String]) -> usize {
    let out = etcdctl_ok(ctl, endpoints, &["endpoint", "status", "-w", "json"]);
    let statuses = json(&out);
    let rows = statuses.as_array().expect("one row per endpoint");
    rows.iter()
        .position(|row| row["Status"]["leader"] == row["Status"]["header"]["member_id"])
        .expect("a leader among the endpoints")
}
