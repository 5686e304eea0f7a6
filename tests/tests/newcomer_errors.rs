//! The mistakes a newcomer makes first each stop raftkv at once with one line saying
//! what is wrong and what to do, and a non-zero exit: a port already in use, a data dir
//! another raftkv holds. (An unreadable certificate: tls.rs; a join URL that is not a
//! raftkv peer: cluster.rs.)

use std::time::Duration;

use raftkv_tests::*;

/// The line raftkv ends with when it cannot start.
fn last_error_line(log: &str) -> String {
    log.lines()
        .rev()
        .find(|l| l.starts_with("raftkv: "))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_port_in_use_is_named_with_what_to_check() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut m = Member::new(root.path(), "busy");
    let _taken = std::net::TcpListener::bind(("127.0.0.1", m.client_port)).expect("bind");
    m.spawn(&["--cluster-init".to_string()]);
    let status = m.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(!status.success());
    let line = last_error_line(&m.log());
    assert!(
        line.contains(&format!("127.0.0.1:{}", m.client_port))
            && line.contains("the port is in use (is another raftkv or etcd running?)"),
        "{}",
        m.log()
    );
}

#[test]
fn a_data_dir_in_use_by_another_raftkv_is_refused() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut first = Member::new(root.path(), "first");
    first.start(&["--cluster-init".to_string()]);
    let mut second = Member::new(root.path(), "second");
    second.data_dir = first.data_dir.clone();
    second.spawn(&["--cluster-init".to_string()]);
    let status = second.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(!status.success());
    let line = last_error_line(&second.log());
    assert!(
        line.contains("is locked by another process (is another raftkv using this data dir?)"),
        "{}",
        second.log()
    );
    // The first member is unharmed.
    etcdctl_ok(&etcdctl35(), &[first.endpoint()], &["put", "still", "here"]);
}
