//! The release files scripts/release makes (dist/), as a user meets them: the sums
//! check; the arm64 package holds an arm64 binary that runs; the amd64 package
//! installs on this machine with a raftkv system user, a data dir only that user
//! enters, a config only it and root read, and a unit neither enabled nor started; the
//! unit's ExecStart, run as the unit's user with the shipped config, serves etcdctl; a
//! reinstall keeps the edited config and the data; a purge asks nothing and removes the
//! user, keeping the data dir that holds a member's data.
//!
//! scripts/test runs scripts/release before the tests. The test installs a package, so
//! it needs root, as CI has.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use raftkv_tests::*;

/// The shipped config's client URL.
const SHIPPED_ENDPOINT: &str = "127.0.0.1:2379";
/// A fresh single member starts well within this.
const START_TIMEOUT_MS: u64 = 30_000;
const UNIT: &str = "/usr/lib/systemd/system/raftkv.service";
const CONFIG: &str = "/etc/raftkv/config.yaml";
const STATE_DIR: &str = "/var/lib/raftkv";

fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist")
}

/// The one file in dist/ whose name ends with `suffix`.
fn dist_file(suffix: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dist())
        .expect("dist/ exists: scripts/release makes it (scripts/test runs it)")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    assert_eq!(found.len(), 1, "one *{suffix} in dist/: {found:?}");
    found[0].clone()
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"))
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?}: {text}");
    text
}

/// Purges the package and its data dir however the test ends.
struct Installed {
    member: Option<Child>,
}

impl Drop for Installed {
    fn drop(&mut self) {
        stop(&mut self.member);
        let _ = run("dpkg", &["--purge", "raftkv"]);
        let _ = std::fs::remove_dir_all(STATE_DIR);
    }
}

fn stop(member: &mut Option<Child>) {
    if let Some(mut child) = member.take() {
        // SAFETY: signalling a child process we started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
    }
}

/// The unit's `key=` value.
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{UNIT} has no {key}="))
        .to_string()
}

/// Runs the unit's ExecStart as the unit's user, as systemd would, and waits until
/// etcdctl can write through it.
fn start_as_the_unit_does(log: &Path) -> Child {
    let unit = std::fs::read_to_string(UNIT).expect("the unit is installed");
    let user = unit_value(&unit, "User");
    let exec = unit_value(&unit, "ExecStart");
    let log_file = std::fs::File::create(log).expect("log");
    let mut child = Command::new("setpriv")
        .args(["--reuid", &user, "--regid", &user, "--init-groups", "--"])
        .args(exec.split_whitespace())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log"))
        .stderr(log_file)
        .spawn()
        .expect("setpriv runs");
    let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
    loop {
        let probe = etcdctl(
            &etcdctl34(),
            &[SHIPPED_ENDPOINT.into()],
            &["endpoint", "health"],
            None,
        );
        if probe.status.success() {
            return child;
        }
        let exited = child.try_wait().expect("wait");
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "the packaged member did not serve ({exited:?}):\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ctl(args: &[&str]) -> String {
    etcdctl_ok(&etcdctl34(), &[SHIPPED_ENDPOINT.into()], args)
}

#[test]
fn the_sums_check_and_the_arm64_package_holds_a_binary_that_runs() {
    run_ok(
        "sh",
        &[
            "-c",
            &format!("cd {} && sha256sum -c SHA256SUMS", dist().display()),
        ],
    );
    for suffix in [
        "x86_64-unknown-linux-gnu.tar.gz",
        "aarch64-unknown-linux-gnu.tar.gz",
    ] {
        let listing = run_ok("tar", &["-tzf", &dist_file(suffix).display().to_string()]);
        for file in [
            "raftkv",
            "raftkv.service",
            "config.yaml",
            "README.md",
            "k3s-ha.md",
        ] {
            assert!(
                listing.lines().any(|l| l.ends_with(&format!("/{file}"))),
                "{suffix}: {listing}"
            );
        }
    }
    let deb = dist_file("_arm64.deb").display().to_string();
    let info = run_ok("dpkg-deb", &["--field", &deb, "Architecture", "Package"]);
    assert_eq!(info, "Architecture: arm64\nPackage: raftkv\n");
    let root = tempfile::tempdir().expect("temp dir");
    run_ok(
        "dpkg-deb",
        &["-x", &deb, &root.path().display().to_string()],
    );
    let bin = root.path().join("usr/bin/raftkv");
    assert!(is_arm64_elf(&std::fs::read(&bin).expect("usr/bin/raftkv")));
    let version = run_ok(
        "qemu-aarch64-static",
        &[
            "-L",
            "/usr/aarch64-linux-gnu",
            &bin.display().to_string(),
            "--version",
        ],
    );
    assert!(version.starts_with("raftkv "), "{version}");
}

#[test]
fn the_amd64_package_installs_serves_upgrades_and_purges() {
    // SAFETY: a plain getter.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "installing a package needs root (CI has it)"
    );
    let deb = dist_file("_amd64.deb").display().to_string();
    let _ = run("dpkg", &["--purge", "raftkv"]);
    let mut installed = Installed { member: None };
    run_ok("dpkg", &["-i", &deb]);

    // What the package made: the user, the data dir, the config, a unit left alone.
    let user = run_ok("getent", &["passwd", "raftkv"]);
    assert!(
        user.contains(":/var/lib/raftkv:/usr/sbin/nologin"),
        "{user}"
    );
    let uid: u32 = user
        .split(':')
        .nth(2)
        .and_then(|u| u.parse().ok())
        .expect("a uid");
    let state = std::fs::metadata(STATE_DIR).expect("the data dir");
    assert_eq!(
        (state.permissions().mode() & 0o777, state.uid()),
        (0o700, uid)
    );
    let config = std::fs::metadata(CONFIG).expect("the config");
    assert_eq!(
        (config.permissions().mode() & 0o777, config.uid()),
        (0o640, 0)
    );
    assert!(!Path::new("/etc/systemd/system/multi-user.target.wants/raftkv.service").exists());
    let unit = std::fs::read_to_string(UNIT).expect("the unit");
    for hardening in [
        "ProtectSystem=strict",
        "NoNewPrivileges=true",
        "CapabilityBoundingSet=",
    ] {
        assert!(unit.contains(hardening), "{hardening}");
    }

    let logs = tempfile::tempdir().expect("temp dir");
    installed.member = Some(start_as_the_unit_does(&logs.path().join("first.log")));
    ctl(&["put", "pkg/key", "kept"]);
    assert_eq!(ctl(&["get", "pkg/key", "--print-value-only"]), "kept\n");
    stop(&mut installed.member);

    // A reinstall (an upgrade's path) keeps the edited config and the data.
    let edited = std::fs::read_to_string(CONFIG).expect("config") + "# edited here\n";
    std::fs::write(CONFIG, &edited).expect("edit the config");
    run_ok("dpkg", &["-i", &deb]);
    assert_eq!(std::fs::read_to_string(CONFIG).expect("config"), edited);
    installed.member = Some(start_as_the_unit_does(&logs.path().join("second.log")));
    assert_eq!(ctl(&["get", "pkg/key", "--print-value-only"]), "kept\n");
    stop(&mut installed.member);

    // A purge asks nothing, removes the user and the binary, keeps the data.
    let purged = run_ok("dpkg", &["--purge", "raftkv"]);
    assert!(
        purged.contains("/var/lib/raftkv holds a member's data and was kept"),
        "{purged}"
    );
    assert!(!run("getent", &["passwd", "raftkv"]).status.success());
    assert!(!Path::new("/usr/bin/raftkv").exists() && !Path::new(CONFIG).exists());
    assert!(Path::new(STATE_DIR).join("data").exists());
}
