//! docs/k3s-ha.md, steps 2 to 5, on one machine: the guide's certificate command, the
//! shipped deploy/config/{a,b,c}.yaml read with --config, the token file copied from a
//! to b and c, `raftkv status`, and etcdctl with the client certificate k3s would use.
//! The machines 10.0.0.1-3 become the loopback addresses 127.0.0.1-3 and the absolute
//! paths a temp dir; nothing else in the files changes, so the guide cannot drift.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raftkv_tests::*;

struct Machine {
    name: &'static str,
    root: PathBuf,
    child: Option<Child>,
}

impl Machine {
    fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("raftkv.log")).unwrap_or_default()
    }

    /// deploy/config/<name>.yaml for this machine on loopback, in its own temp root.
    fn write_config(&self) -> PathBuf {
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("../deploy/config/{}.yaml", self.name)),
        )
        .expect("deploy config");
        let root = self.root.display().to_string();
        let config = shipped
            // Three machines on one: each listens on its own loopback address only.
            .replace(", https://127.0.0.1:2379]", "]")
            .replace("10.0.0.", "127.0.0.")
            .replace("/var/lib/raftkv", &format!("{root}/var/lib/raftkv"))
            .replace("/etc/raftkv", &format!("{root}/etc/raftkv"));
        let path = self.root.join("etc/raftkv/config.yaml");
        std::fs::create_dir_all(path.parent().expect("dir")).expect("etc");
        std::fs::write(&path, config).expect("config");
        path
    }

    fn start(&mut self) {
        let config = self.write_config();
        let log = std::fs::File::create(self.root.join("raftkv.log")).expect("log");
        self.child = Some(
            Command::new(raftkv_bin())
                .arg("--config")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("raftkv runs"),
        );
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.log().contains("raftkv is ready") {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("{} exited ({status}):\n{}", self.name, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn the_three_machine_guide_works_on_loopback() {
    let tmp = tempfile::tempdir().expect("temp dir");
    // Step 2: the guide's certificate command, with the loopback addresses.
    let pki = tmp.path().join("pki");
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/make-certs.sh"
    ))
    .arg(&pki)
    .args(["a", "b", "c", "127.0.0.1", "127.0.0.2", "127.0.0.3"])
    .output()
    .expect("make-certs.sh runs");
    assert!(out.status.success(), "{out:?}");
    let mut machines: Vec<Machine> = ["a", "b", "c"]
        .into_iter()
        .map(|name| {
            let root = tmp.path().join(name);
            let etc_pki = root.join("etc/raftkv/pki");
            std::fs::create_dir_all(&etc_pki).expect("pki dir");
            for file in ["ca.pem", "server.pem", "server-key.pem"] {
                std::fs::copy(pki.join(file), etc_pki.join(file)).expect("copy certs");
            }
            Machine {
                name,
                root,
                child: None,
            }
        })
        .collect();

    // Step 3: a starts the cluster and keeps the token.
    machines[0].start();
    machines[0].wait_ready();
    let token = machines[0].root.join("var/lib/raftkv/data/token");
    // Step 4: b and c get a copy of the token and join through a.
    for m in machines.iter_mut().skip(1) {
        std::fs::copy(&token, m.root.join("etc/raftkv/token")).expect("copy token");
        m.start();
    }
    for m in machines.iter_mut().skip(1) {
        m.wait_ready();
    }
    let tls = [
        "--cacert".to_string(),
        pki.join("ca.pem").display().to_string(),
        "--cert".to_string(),
        pki.join("client.pem").display().to_string(),
        "--key".to_string(),
        pki.join("client-key.pem").display().to_string(),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let table = loop {
        let mut args = vec!["status", "--endpoints", "https://127.0.0.1:2379"];
        args.extend(tls.iter().map(String::as_str));
        let out = raftkv_cli(&args);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() && text.contains("can lose 1 of 3") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "{out:?}\n{}",
            machines
                .iter()
                .map(Machine::log)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    for ip in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        assert!(table.contains(&format!("https://{ip}:2379")), "{table}");
    }

    // Step 5: what k3s does, with its three endpoints and the client certificate.
    let endpoints =
        "--endpoints=https://127.0.0.1:2379,https://127.0.0.2:2379,https://127.0.0.3:2379";
    let etcdctl_tls = [
        format!("--cacert={}", pki.join("ca.pem").display()),
        format!("--cert={}", pki.join("client.pem").display()),
        format!("--key={}", pki.join("client-key.pem").display()),
    ];
    let put = Command::new(etcdctl35())
        .env("ETCDCTL_API", "3")
        .arg(endpoints)
        .args(&etcdctl_tls)
        .args(["put", "/registry/health", "ok"])
        .output()
        .expect("etcdctl runs");
    assert!(put.status.success(), "{put:?}");
    // Metrics without a certificate, on the metrics URL.
    let (status, head, _) = http_request_to("127.0.0.2", 2381, "GET", "/health");
    assert_eq!(status, 200, "{head}");
}
