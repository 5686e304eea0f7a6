//! etcdctl end to end against etcd and raftkv: the same commands with the same inputs
//! on a fresh etcd 3.5 and a fresh raftkv, outputs compared after masking what must
//! differ (cluster and member ids, raft terms, lease ids, sizes and timings).

use std::time::Duration;

use raftkv_tests::*;

/// Masks ids, terms, and lease ids (numbered in order of first appearance).
fn mask(out: &str, leases: &mut Vec<String>) -> String {
    let mut s = String::new();
    for line in out.lines() {
        let mut line = line.to_string();
        for field in [
            "\"cluster_id\":",
            "\"member_id\":",
            "\"raft_term\":",
            "\"ClusterID\" : ",
            "\"MemberID\" : ",
            "\"RaftTerm\" : ",
        ] {
            line = mask_number_after(&line, field);
        }
        // Lease ids: 16 hex digits after "lease " or as a whole word.
        let words: Vec<String> = line
            .split(' ')
            .map(|w| {
                let bare = w.trim_matches(|c: char| !c.is_ascii_hexdigit());
                if bare.len() == 16 && bare.chars().all(|c| c.is_ascii_hexdigit()) {
                    let n = match leases.iter().position(|l| l == bare) {
                        Some(n) => n,
                        None => {
                            leases.push(bare.to_string());
                            leases.len() - 1
                        }
                    };
                    w.replace(bare, &format!("LEASE{n}"))
                } else {
                    w.to_string()
                }
            })
            .collect();
        s.push_str(&words.join(" "));
        s.push('\n');
    }
    s
}

/// Replaces the number after each `field` with 0.
fn mask_number_after(line: &str, field: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(at) = rest.find(field) {
        let start = at + field.len();
        out.push_str(&rest[..start]);
        let digits = rest[start..]
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len() - start);
        out.push('0');
        rest = &rest[start + digits..];
    }
    out.push_str(rest);
    out
}

struct Step {
    args: Vec<String>,
    stdin: Option<String>,
}

fn step(args: &[&str]) -> Step {
    Step {
        args: args.iter().map(|s| s.to_string()).collect(),
        stdin: None,
    }
}

fn script() -> Vec<Step> {
    let mut steps = vec![
        step(&["put", "a", "1"]),
        step(&["put", "b", "2"]),
        step(&["put", "b", "22", "--prev-kv"]),
        step(&["put", "c/1", "x"]),
        step(&["put", "c/2", "y"]),
        step(&["put", "d", "4"]),
        step(&["get", "a"]),
        step(&["get", "c/", "--prefix"]),
        step(&["get", "b", "--from-key", "--keys-only"]),
        step(&["get", "", "--prefix", "--limit=2", "-w", "json"]),
        step(&["get", "b", "--rev=2"]),
        step(&[
            "get",
            "",
            "--prefix",
            "--sort-by=MODIFY",
            "--order=DESCEND",
            "--print-value-only",
        ]),
        step(&[
            "get",
            "",
            "--prefix",
            "--sort-by=KEY",
            "--order=ASCEND",
            "--keys-only",
        ]),
        step(&["get", "", "--prefix", "--count-only", "-w", "fields"]),
        step(&["get", "nothing"]),
        step(&["get", "a", "--rev=100"]),
        step(&["del", "a", "--prev-kv"]),
        step(&["del", "c/", "--prefix"]),
        step(&["del", "zz", "--from-key"]),
        Step {
            args: vec!["txn".into()],
            stdin: Some("mod(\"b\") = \"3\"\n\nput b txn-ok\nget b\n\nput b txn-failed\n\n".into()),
        },
        Step {
            args: vec!["txn".into(), "-w".into(), "json".into()],
            stdin: Some("value(\"b\") = \"nope\"\n\nput b no\n\nget d\n\n".into()),
        },
        step(&["lease", "grant", "600"]),
        step(&["lease", "list"]),
        step(&["compaction", "5"]),
        step(&["get", "b", "--rev=3"]),
        step(&["compaction", "3"]),
        step(&["get", "", "--prefix", "-w", "json"]),
        // What etcd answers with authentication disabled, and with no alarms raised.
        step(&["auth", "status"]),
        step(&["user", "list"]),
        step(&["role", "list"]),
        step(&["auth", "disable"]),
        // A user name makes etcdctl call Authenticate first.
        step(&["--user", "root:secret", "get", "b"]),
        step(&["alarm", "list"]),
    ];
    steps.push(step(&["watch", "b", "--rev=1", "--prev-kv"]));
    steps.push(step(&["watch", "c/", "--prefix", "--rev=4", "--prev-kv"]));
    steps
}

/// etcdctl's "Error:" lines; its own log lines (JSON with timestamps) are not compared.
fn error_lines(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("Error"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A watch from history: what it prints in a moment, then it is stopped.
fn watch_output(ctl: &std::path::Path, endpoint: &str, args: &[&str]) -> std::process::Output {
    let mut child = std::process::Command::new(ctl)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("watch");
    std::thread::sleep(Duration::from_millis(800));
    let _ = child.kill();
    child.wait_with_output().expect("watch output")
}

fn run_all(endpoint: &str) -> Vec<String> {
    let ctl = etcdctl35();
    let ep = vec![endpoint.to_string()];
    let mut leases = Vec::new();
    let mut outputs = Vec::new();
    let mut lease_id = String::new();
    for s in script() {
        let args: Vec<&str> = s.args.iter().map(|a| a.as_str()).collect();
        if args[0] == "watch" {
            let out = watch_output(&ctl, endpoint, &args);
            outputs.push(format!(
                "{args:?}\n{}",
                mask(&String::from_utf8_lossy(&out.stdout), &mut leases)
            ));
            continue;
        }
        let out = etcdctl(&ctl, &ep, &args, s.stdin.as_deref());
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if args.starts_with(&["lease", "grant"]) {
            lease_id = stdout
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
        }
        outputs.push(format!(
            "{args:?} exit {:?}\n{}{}",
            out.status.code(),
            mask(&stdout, &mut leases),
            error_lines(&out)
        ));
    }
    // Lease commands that need the granted id.
    for args in [
        vec!["put", "leased", "v", "--lease", lease_id.as_str()],
        vec!["lease", "timetolive", lease_id.as_str(), "--keys"],
        vec!["lease", "keep-alive", "--once", lease_id.as_str()],
        vec!["lease", "revoke", lease_id.as_str()],
        vec!["lease", "timetolive", lease_id.as_str()],
        vec!["get", "leased"],
    ] {
        let out = etcdctl(&ctl, &ep, &args, None);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        // The remaining TTL depends on how long the commands above took.
        let stdout = round_remaining_ttl(&stdout);
        let line = format!("{args:?} exit {:?}\n{stdout}", out.status.code());
        outputs.push(mask(&line, &mut leases));
    }
    outputs
}

/// `remaining(597s)` counts down while the script runs (watches sleep, a slow
/// machine is slower), so a remaining TTL within 10 s of the granted 600 s reads
/// `remaining(~600s)`; anything further off is compared as printed.
fn round_remaining_ttl(stdout: &str) -> String {
    const MARK: &str = "remaining(";
    let Some(start) = stdout.find(MARK) else {
        return stdout.to_string();
    };
    let digits_at = start + MARK.len();
    let Some(len) = stdout[digits_at..].find("s)") else {
        return stdout.to_string();
    };
    match stdout[digits_at..digits_at + len].parse::<u64>() {
        Ok(remaining_s) if (590..=600).contains(&remaining_s) => {
            format!("{}~600{}", &stdout[..digits_at], &stdout[digits_at + len..])
        }
        _ => stdout.to_string(),
    }
}

#[test]
fn etcdctl_prints_the_same_for_etcd_and_raftkv() {
    let etcd = Etcd::start();
    let root = tempfile::tempdir().expect("temp dir");
    let mut member = Member::new(root.path(), "ctl");
    member.start(&["--cluster-init".to_string()]);
    same_outputs(&etcd, &member, run_all);

    // What cannot be equal is checked for shape: status, health, member list, snapshot.
    let ctl = etcdctl35();
    let ep = vec![member.endpoint()];
    let table = etcdctl_ok(&ctl, &ep, &["endpoint", "status", "-w", "table"]);
    assert!(
        table.contains(" 3.5.16 |") && table.contains(" true |"),
        "{table}"
    );
    let health = etcdctl(&ctl, &ep, &["endpoint", "health", "-w", "json"], None);
    let health = json(&String::from_utf8_lossy(&health.stdout));
    assert_eq!(health[0]["health"], true);
    let members = json(&etcdctl_ok(&ctl, &ep, &["member", "list", "-w", "json"]));
    assert_eq!(members["members"][0]["name"], "ctl");
    let out = etcdctl(&ctl, &ep, &["defrag"], None);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Finished defragmenting etcd member"),
        "{out:?}"
    );
    let snap = root.path().join("s.db");
    let out = etcdctl(
        &ctl,
        &ep,
        &["snapshot", "save", snap.to_str().unwrap()],
        None,
    );
    assert!(out.status.success(), "{out:?}");
}

/// An operator's session with users and roles: set them up, turn authentication on,
/// work as a restricted user and as root, change a password, take a permission away,
/// turn it off again. Each command's output and error line, as etcdctl prints them.
fn auth_script() -> Vec<Step> {
    let as_root = |args: &[&str]| {
        let mut all = vec!["--user=root:r00t"];
        all.extend_from_slice(args);
        step(&all)
    };
    let as_alice = |password: &str, args: &[&str]| {
        let user = format!("--user=alice:{password}");
        let mut all = vec![user.as_str()];
        all.extend_from_slice(args);
        step(&all)
    };
    vec![
        step(&["put", "a/1", "one"]),
        step(&["put", "b", "two"]),
        step(&["auth", "enable"]),
        // etcdctl adds the root role and grants it with the root user.
        step(&["user", "add", "root", "--new-user-password=r00t"]),
        step(&["role", "add", "root"]),
        step(&["user", "grant-role", "root", "root"]),
        step(&["user", "add", "alice", "--new-user-password=a1"]),
        step(&["user", "add", "carol", "--no-password"]),
        step(&["role", "add", "reader"]),
        step(&[
            "role",
            "grant-permission",
            "reader",
            "read",
            "a/",
            "--prefix",
        ]),
        step(&["role", "grant-permission", "reader", "readwrite", "b"]),
        step(&["role", "get", "reader"]),
        step(&["user", "grant-role", "alice", "reader"]),
        step(&["user", "get", "alice"]),
        step(&["user", "list"]),
        step(&["role", "list"]),
        step(&["auth", "enable"]),
        step(&["get", "a/", "--prefix"]),
        as_alice("a1", &["get", "a/", "--prefix"]),
        as_alice("a1", &["put", "a/1", "mine"]),
        as_alice("a1", &["put", "b", "mine"]),
        as_alice("a1", &["get", "", "--prefix"]),
        as_alice("wrong", &["get", "b"]),
        as_alice("a1", &["user", "list"]),
        as_alice("a1", &["user", "get", "alice"]),
        as_alice("a1", &["role", "get", "reader"]),
        as_alice("a1", &["role", "get", "root"]),
        as_alice("a1", &["watch", "b", "--rev=1"]),
        as_root(&["get", "", "--prefix"]),
        as_root(&["auth", "status"]),
        as_root(&["role", "revoke-permission", "reader", "b"]),
        as_alice("a1", &["get", "b"]),
        Step {
            args: vec![
                "--user=root:r00t".into(),
                "user".into(),
                "passwd".into(),
                "alice".into(),
                "--interactive=false".into(),
            ],
            stdin: Some("a2\n".into()),
        },
        as_alice("a1", &["get", "a/1"]),
        as_alice("a2", &["get", "a/1"]),
        as_root(&["user", "delete", "carol"]),
        as_root(&["user", "revoke-role", "alice", "reader"]),
        as_alice("a2", &["get", "a/1"]),
        as_root(&["role", "delete", "reader"]),
        as_root(&["auth", "status"]),
        as_root(&["auth", "disable"]),
        step(&["get", "a/", "--prefix"]),
        step(&["auth", "status"]),
    ]
}

fn run_auth_session(endpoint: &str) -> Vec<String> {
    let ctl = etcdctl35();
    let ep = vec![endpoint.to_string()];
    let mut leases = Vec::new();
    let mut outputs = Vec::new();
    for s in auth_script() {
        let args: Vec<&str> = s.args.iter().map(|a| a.as_str()).collect();
        let out = if args.contains(&"watch") {
            watch_output(&ctl, endpoint, &args)
        } else {
            etcdctl(&ctl, &ep, &args, s.stdin.as_deref())
        };
        outputs.push(format!(
            "{args:?}\n{}{}",
            mask(&String::from_utf8_lossy(&out.stdout), &mut leases),
            error_lines(&out)
        ));
    }
    outputs
}

#[test]
fn etcdctl_prints_the_same_for_an_auth_session() {
    let etcd = Etcd::start_newest();
    let root = tempfile::tempdir().expect("temp dir");
    let mut member = Member::new(root.path(), "ctlauth");
    member.start(&["--cluster-init".to_string()]);
    same_outputs(&etcd, &member, run_auth_session);
}

/// Runs `session` against etcd and against raftkv and compares each output.
fn same_outputs(etcd: &Etcd, member: &Member, session: fn(&str) -> Vec<String>) {
    let want = session(&etcd.endpoint());
    let got = session(&member.endpoint());
    assert_eq!(want.len(), got.len());
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(w, g, "etcdctl output differs");
    }
}
