//! `raftkv --config raftkv.yaml`: every flag from a k3s-style YAML file; flags on the
//! command line and RAFTKV_* variables win over it; mistakes stop the start with the
//! file and key named.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use raftkv_tests::*;

fn metric(port: u16, name: &str) -> Option<String> {
    let (_, body) = http_get(port, "/metrics");
    body.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .map(|l| l[name.len() + 1..].to_string())
}

/// Starts raftkv with only `args` (and `env`), waits for its client port, returns it.
fn start(
    args: &[&str],
    env: &[(&str, &str)],
    port: u16,
    log: &std::path::Path,
) -> std::process::Child {
    let mut child = Command::new(raftkv_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log).expect("log"))
        .stderr(
            std::fs::File::options()
                .append(true)
                .open(log)
                .expect("log"),
        )
        .spawn()
        .expect("raftkv runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "raftkv exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && metric(port, "etcd_server_has_leader").as_deref() == Some("1")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not serving: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

#[test]
fn a_config_file_gives_every_flag_and_the_command_line_wins() {
    let root = tempfile::tempdir().expect("temp dir");
    let client_port = free_port();
    let peer_port = free_port();
    let data_dir = root.path().join("from-yaml");
    let yaml = root.path().join("raftkv.yaml");
    std::fs::write(
        &yaml,
        format!(
            "# as k3s's config.yaml: long flag names as keys\n\
             name: yaml-member\n\
             data-dir: {}\n\
             cluster-init: true\n\
             listen-client-urls:\n  - http://127.0.0.1:{client_port}\n\
             listen-peer-urls: http://127.0.0.1:{peer_port}\n\
             quota-backend-bytes: 100000000\n\
             auto-compaction-retention: 1h\n",
            data_dir.display()
        ),
    )
    .expect("write yaml");
    let log = root.path().join("raftkv.log");
    let cfg = yaml.to_str().unwrap();

    let mut child = start(&["--config", cfg], &[], client_port, &log);
    assert!(
        data_dir.join("member.json").exists(),
        "the data dir is the file's"
    );
    assert_eq!(
        metric(client_port, "etcd_server_quota_backend_bytes").as_deref(),
        Some("100000000")
    );
    let members = etcdctl_ok(
        &etcdctl35(),
        &[format!("127.0.0.1:{client_port}")],
        &["member", "list"],
    );
    assert!(members.contains("yaml-member"), "{members}");
    child.kill().ok();
    child.wait().ok();

    // A flag on the command line wins over the file; so does RAFTKV_*.
    let mut child = start(
        &["--config", cfg, "--quota-backend-bytes", "5000000"],
        &[],
        client_port,
        &log,
    );
    assert_eq!(
        metric(client_port, "etcd_server_quota_backend_bytes").as_deref(),
        Some("5000000")
    );
    child.kill().ok();
    child.wait().ok();
    let mut child = start(
        &[],
        &[
            ("RAFTKV_CONFIG", cfg),
            ("RAFTKV_QUOTA_BACKEND_BYTES", "7000000"),
        ],
        client_port,
        &log,
    );
    assert_eq!(
        metric(client_port, "etcd_server_quota_backend_bytes").as_deref(),
        Some("7000000")
    );
    child.kill().ok();
    child.wait().ok();

    // A mistake in the file: one line naming file and key, non-zero exit.
    std::fs::write(&yaml, "data_dir: /tmp/x\n").expect("write yaml");
    let out = Command::new(raftkv_bin())
        .args(["--config", cfg])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("raftkv.yaml") && stderr.contains("unknown key \"data_dir\""),
        "{stderr}"
    );
}
