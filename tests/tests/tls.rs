//! Client TLS as k3s uses it (--datastore-cafile/--datastore-certfile/--datastore-keyfile):
//! certificates made by scripts/make-certs.sh (the documented openssl commands), used
//! by etcdctl and by the Rust etcd client with the same files; clients without a
//! certificate, with one from another CA, or with an expired one are refused; a
//! renewed server certificate is picked up without a restart. Peer TLS with mutual
//! authentication: a cluster over https:// peer URLs, and a member whose certificate
//! another CA signed refused at join, with nothing changed in the cluster.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use raftkv_tests::*;

/// The TLS flags for the certificates in `certs`: `prefix` "" for clients, "peer-" for
/// members.
fn tls_args(prefix: &str, certs: &Path) -> Vec<String> {
    let file = |name: &str| certs.join(name).display().to_string();
    vec![
        format!("--{prefix}cert-file"),
        file("server.pem"),
        format!("--{prefix}key-file"),
        file("server-key.pem"),
        format!("--{prefix}trusted-ca-file"),
        file("ca.pem"),
        format!("--{prefix}client-cert-auth"),
    ]
}

fn tls_member(root: &Path, certs: &Path) -> Member {
    let mut m = Member::new(root, "m0");
    m.client_scheme = "https";
    m.extra_args = tls_args("", certs);
    m.start(&[]);
    m
}

/// etcdctl against `url` with the CA of `ca_dir` and the client certificate of
/// `client_dir` (none if `None`).
fn etcdctl_tls(
    url: &str,
    ca_dir: &Path,
    client_dir: Option<&Path>,
    args: &[&str],
) -> std::process::Output {
    let mut all: Vec<String> = vec![
        format!("--cacert={}", ca_dir.join("ca.pem").display()),
        "--dial-timeout=2s".to_string(),
        "--command-timeout=4s".to_string(),
    ];
    if let Some(dir) = client_dir {
        all.push(format!("--cert={}", dir.join("client.pem").display()));
        all.push(format!("--key={}", dir.join("client-key.pem").display()));
    }
    all.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
    etcdctl(&etcdctl35(), &[url.to_string()], &refs, None)
}

/// The serial number of the certificate the server presents now.
fn served_serial(port: u16, ca: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -CAfile {} </dev/null 2>/dev/null | openssl x509 -noout -serial",
            ca.display()
        ))
        .output()
        .expect("openssl runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn file_serial(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(cert)
        .output()
        .expect("openssl runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn client_certificates_are_required_checked_and_reloaded() {
    let root = tempfile::tempdir().expect("temp dir");
    let certs = root.path().join("certs");
    make_certs(&certs, 365, &[]);
    let mut member = tls_member(root.path(), &certs);
    let url = member.client_url();

    let put = etcdctl_tls(&url, &certs, Some(&certs), &["put", "k", "v"]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let get = etcdctl_tls(
        &url,
        &certs,
        Some(&certs),
        &["get", "k", "--print-value-only"],
    );
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "v");

    // No client certificate.
    let none = etcdctl_tls(&url, &certs, None, &["get", "k"]);
    assert!(
        !none.status.success(),
        "a client without a certificate was served"
    );
    // A certificate from another CA.
    let other = root.path().join("other");
    make_certs(&other, 365, &[]);
    let foreign = etcdctl_tls(&url, &certs, Some(&other), &["get", "k"]);
    assert!(
        !foreign.status.success(),
        "a certificate from another CA was accepted"
    );
    // An expired certificate from the right CA.
    let expired = root.path().join("expired");
    std::fs::create_dir_all(&expired).expect("dir");
    for f in ["ca.pem", "ca-key.pem"] {
        std::fs::copy(certs.join(f), expired.join(f)).expect("copy CA");
    }
    make_certs(&expired, 0, &[]);
    std::thread::sleep(Duration::from_millis(1_500));
    let old = etcdctl_tls(&url, &certs, Some(&expired), &["get", "k"]);
    assert!(
        !old.status.success(),
        "an expired client certificate was accepted"
    );
    // Plain text to the TLS port.
    let plain = etcdctl(
        &etcdctl35(),
        &[format!("127.0.0.1:{}", member.client_port)],
        &["get", "k", "--dial-timeout=2s", "--command-timeout=4s"],
        None,
    );
    assert!(
        !plain.status.success(),
        "plain text was served on an https URL"
    );
    let log = member.log();
    assert!(
        log.contains("tls: handshake refused"),
        "refusals are logged:\n{log}"
    );

    // Renew the server certificate in place (same CA): new handshakes get it, no restart.
    let before = served_serial(member.client_port, &certs.join("ca.pem"));
    assert_eq!(before, file_serial(&certs.join("server.pem")));
    make_certs(&certs, 365, &[]);
    let renewed = file_serial(&certs.join("server.pem"));
    assert_ne!(before, renewed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_serial(member.client_port, &certs.join("ca.pem")) != renewed {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was not picked up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The renewed client certificate works too (same CA).
    let after = etcdctl_tls(
        &url,
        &certs,
        Some(&certs),
        &["get", "k", "--print-value-only"],
    );
    assert_eq!(String::from_utf8_lossy(&after.stdout).trim(), "v");

    // raftkv's own backup command takes the same files.
    let backup = root.path().join("backup.snap");
    let saved = Command::new(raftkv_bin())
        .args(["snapshot", "save"])
        .arg(&backup)
        .args(["--endpoints", &url])
        .arg("--cacert")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join("client.pem"))
        .arg("--key")
        .arg(certs.join("client-key.pem"))
        .output()
        .expect("raftkv snapshot save runs");
    assert!(saved.status.success(), "{saved:?}");
    assert!(std::fs::metadata(&backup).expect("backup file").len() > 0);
    let refused = Command::new(raftkv_bin())
        .args(["snapshot", "save"])
        .arg(root.path().join("refused.snap"))
        .args(["--endpoints", &url])
        .arg("--cacert")
        .arg(certs.join("ca.pem"))
        .output()
        .expect("raftkv snapshot save runs");
    assert!(
        !refused.status.success(),
        "a save without a client certificate was served"
    );
    assert!(!root.path().join("refused.snap").exists());
    assert!(member.is_running());
    member.stop();
}

#[test]
fn the_rust_client_uses_the_same_files() {
    let root = tempfile::tempdir().expect("temp dir");
    let certs = root.path().join("certs");
    make_certs(&certs, 365, &[]);
    let mut member = tls_member(root.path(), &certs);
    let read = |f: &str| std::fs::read(certs.join(f)).expect("cert file");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read("ca.pem")))
            .identity(etcd_client::Identity::from_pem(
                read("client.pem"),
                read("client-key.pem"),
            ))
            .domain_name("localhost");
        let options = etcd_client::ConnectOptions::new()
            .with_tls(tls)
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(10));
        let mut client = etcd_client::Client::connect([member.client_url()], Some(options))
            .await
            .expect("connects over TLS");
        client.put("rk", "rv", None).await.expect("put");
        let got = client.get("rk", None).await.expect("get");
        assert_eq!(got.kvs()[0].value(), b"rv");
        let status = client.status().await.expect("status");
        assert_eq!(status.version(), "3.5.16");

        // Without the client identity the same client is refused.
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read("ca.pem")))
            .domain_name("localhost");
        let options = etcd_client::ConnectOptions::new()
            .with_tls(tls)
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(3));
        let refused = match etcd_client::Client::connect([member.client_url()], Some(options)).await
        {
            Ok(mut c) => c.get("rk", None).await.is_err(),
            Err(_) => true,
        };
        assert!(refused, "a client without a certificate was served");
    });
    member.stop();
}

#[test]
fn bad_tls_flags_fail_at_start_with_a_clear_message() {
    let root = tempfile::tempdir().expect("temp dir");
    let cases: [(&[&str], &str); 3] = [
        (
            &[],
            "an https:// client URL needs both --cert-file and --key-file",
        ),
        (
            &[
                "--cert-file",
                "/nonexistent/server.pem",
                "--key-file",
                "/nonexistent/key.pem",
            ],
            "/nonexistent/server.pem",
        ),
        (
            &["--cert-file", "/x.pem"],
            "--cert-file and --key-file go together",
        ),
    ];
    for (i, (args, expected)) in cases.iter().enumerate() {
        let mut m = Member::new(root.path(), &format!("bad{i}"));
        m.client_scheme = "https";
        m.spawn(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let status = m.wait_exit(Duration::from_secs(10)).expect("exits");
        assert!(!status.success());
        let log = m.log();
        assert!(log.contains(expected), "expected {expected:?} in:\n{log}");
    }
}

fn peer_tls_args(certs: &Path) -> Vec<String> {
    tls_args("peer-", certs)
}

#[test]
fn members_talk_over_mutual_tls_and_a_foreign_certificate_cannot_join() {
    let root = tempfile::tempdir().expect("temp dir");
    let certs = root.path().join("certs");
    make_certs(&certs, 365, &[]);
    let mut members: Vec<Member> = (0..3)
        .map(|i| {
            let mut m = Member::new(root.path(), &format!("m{i}"));
            m.peer_scheme = "https";
            m.extra_args = peer_tls_args(&certs);
            m
        })
        .collect();
    members[0].start(&["--cluster-init".to_string()]);
    let join = Member::join_args(&members[0]);
    for m in members.iter_mut().skip(1) {
        m.start(&join);
    }
    let all: Vec<String> = members.iter().map(|m| m.endpoint()).collect();
    etcdctl_ok(&etcdctl35(), &[all[0].clone()], &["put", "k", "over-tls"]);
    let listed = etcdctl_ok(&etcdctl35(), &[all[2].clone()], &["member", "list"]);
    assert_eq!(listed.matches("https://127.0.0.1:").count(), 3, "{listed}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = etcdctl_ok(
            &etcdctl35(),
            &[all[2].clone()],
            &["get", "k", "--print-value-only", "--consistency=s"],
        );
        if got.trim() == "over-tls" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the write did not replicate over TLS"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Raft messages travel on pipe connections (peer/wire.rs), over TLS too.
    let log = members[0].log();
    assert!(
        log.contains("peer pipe connection open url=https://127.0.0.1:"),
        "{log}"
    );

    // A member with a certificate from another CA is refused at once, and exits.
    let other = root.path().join("other");
    make_certs(&other, 365, &[]);
    let mut stranger = Member::new(root.path(), "stranger");
    stranger.peer_scheme = "https";
    stranger.extra_args = peer_tls_args(&other);
    stranger.spawn(&join);
    let status = stranger
        .wait_exit(Duration::from_secs(15))
        .expect("the stranger exits");
    assert!(!status.success());
    assert!(stranger.log().contains("TLS refused"), "{}", stranger.log());
    let listed = etcdctl_ok(&etcdctl35(), &[all[0].clone()], &["member", "list"]);
    assert_eq!(
        listed.lines().count(),
        3,
        "nothing changed in the cluster: {listed}"
    );

    // A TLS client without a certificate is refused by the peer port.
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{} -CAfile {} </dev/null >/dev/null 2>&1",
            members[1].peer_port,
            certs.join("ca.pem").display()
        ))
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !members[1].log().contains("peer sent no certificates") {
        assert!(Instant::now() < deadline, "{}", members[1].log());
        std::thread::sleep(Duration::from_millis(100));
    }

    // Losing a member: the others reconnect over TLS and keep serving.
    members[0].kill9();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = etcdctl(
            &etcdctl35(),
            &[all[1].clone()],
            &["put", "k2", "after-failover", "--command-timeout=2s"],
            None,
        );
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "no write after losing a member");
        std::thread::sleep(Duration::from_millis(200));
    }
    for m in members.iter_mut().skip(1) {
        m.stop();
    }
}

/// With `--client-cert-auth` and authentication on, a request without a token is made
/// by the user its certificate names (the Common Name, as etcd): k3s or a backup job
/// can be given a role by certificate alone. A token, when sent, wins.
#[test]
fn a_certificates_common_name_is_the_user_when_no_token_is_sent() {
    let root = tempfile::tempdir().expect("temp dir");
    let certs = root.path().join("certs");
    make_certs(&certs, 365, &[]);
    let member = tls_member(root.path(), &certs);
    let url = member.client_url();
    let ctl = |args: &[&str]| {
        let out = etcdctl_tls(&url, &certs, Some(&certs), args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    for args in [
        &["user", "add", "root", "--new-user-password=r00t"][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        // make-certs.sh's client certificate: CN=raftkv-client.
        &["user", "add", "raftkv-client", "--no-password"],
        &["role", "add", "app"],
        &[
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "app/",
            "--prefix",
        ],
        &["user", "grant-role", "raftkv-client", "app"],
        &["auth", "enable"],
    ] {
        let (ok, text) = ctl(args);
        assert!(ok, "{args:?}: {text}");
    }
    let (ok, text) = ctl(&["put", "app/x", "1"]);
    assert!(ok, "the certificate's user may write its prefix: {text}");
    let (ok, text) = ctl(&["put", "other", "1"]);
    assert!(
        !ok && text.contains("etcdserver: permission denied"),
        "{text}"
    );
    let (ok, text) = ctl(&["user", "list"]);
    assert!(
        !ok && text.contains("etcdserver: permission denied"),
        "{text}"
    );
    let (ok, text) = ctl(&["--user=root:r00t", "user", "list"]);
    assert!(ok && text.contains("raftkv-client"), "a token wins: {text}");
    let (ok, text) = ctl(&["--user=raftkv-client:x", "get", "app/x"]);
    assert!(
        !ok && text.contains("password was given for no password user"),
        "a no-password user cannot log in with a password: {text}"
    );
    gateway_over_tls_takes_tokens_not_certificates(&url, &certs);
}

/// The JSON gateway on the same TLS port, over HTTP/1.1 and HTTP/2: a client
/// certificate's name is no caller there (etcd's gateway does not pass it on); a token is.
fn gateway_over_tls_takes_tokens_not_certificates(url: &str, certs: &Path) {
    let file = |name: &str| certs.join(name).display().to_string();
    let curl = |http: &str, path: &str, body: &str, token: Option<&str>| {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-s",
            http,
            "--cacert",
            &file("ca.pem"),
            "--cert",
            &file("client.pem"),
        ])
        .args([
            "--key",
            &file("client-key.pem"),
            "-d",
            body,
            &format!("{url}{path}"),
        ]);
        if let Some(token) = token {
            cmd.args(["-H", &format!("Authorization: {token}")]);
        }
        let out = cmd.output().expect("curl runs (scripts/test installs it)");
        json(&String::from_utf8_lossy(&out.stdout))
    };
    let read_x = r#"{"key":"YXBwL3g="}"#;
    for http in ["--http1.1", "--http2"] {
        let refused = curl(http, "/v3/kv/range", read_x, None);
        assert_eq!(
            refused["message"], "etcdserver: user name is empty",
            "{http}"
        );
        let login = curl(
            http,
            "/v3/auth/authenticate",
            r#"{"name":"root","password":"r00t"}"#,
            None,
        );
        let token = login["token"].as_str().expect("a token");
        let read = curl(http, "/v3/kv/range", read_x, Some(token));
        assert_eq!(read["kvs"][0]["value"], "MQ==", "{http}: {read}");
    }
}
