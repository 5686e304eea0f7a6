//! `raftkv check-disk` measures fdatasync latency in the directory it is given and
//! leaves nothing behind.

use raftkv_tests::raftkv_cli;

#[test]
fn check_disk_reports_fdatasync_latency_and_cleans_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let out = raftkv_cli(&[
        "check-disk",
        "--data-dir",
        data_dir.to_str().expect("utf-8 path"),
        "--writes",
        "200",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("200 writes of 2300 B, each followed by fdatasync"),
        "{stdout}"
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("fdatasync latency: p50"))
        .unwrap_or_else(|| panic!("no latency line in:\n{stdout}"));
    // Which device holds it, as Linux describes it (or that it describes none).
    assert!(
        stdout.lines().any(|l| l.starts_with("device: ")),
        "no device line in:\n{stdout}"
    );
    // The verdict and the exit code agree.
    if stdout.contains("WARNING: ") {
        assert_eq!(out.status.code(), Some(1), "{stdout}");
    } else {
        assert!(stdout.contains("OK: p99"), "{stdout}");
        assert!(out.status.success(), "{stdout}");
    }
    assert!(line.contains(" ms, max "), "{line}");
    // The scratch file is gone; the directory it made is there and empty.
    let left: Vec<_> = std::fs::read_dir(&data_dir)
        .expect("data dir made")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    // A path that cannot be a directory gets one clear line and a non-zero exit.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").expect("write");
    let out = raftkv_cli(&["check-disk", "--data-dir", file.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("raftkv: cannot measure"), "{stderr}");
}
