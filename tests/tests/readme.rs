//! The README's three-member quick start, run as written: the shell block under "A
//! three-member cluster on one machine" is taken from README.md and run by bash in an
//! empty directory, with `cargo` a no-op and target/release/raftkv the binary under
//! test, so the README cannot drift from the program.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use raftkv_tests::*;

/// The first ```sh block after `heading` in README.md.
fn shell_block(heading: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let section = &readme[readme.find(heading).expect("the heading is in the README")..];
    let start = section.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let end = section[start..].find("```").expect("the block ends");
    section[start..start + end].to_string()
}

#[test]
fn the_readme_quick_start_runs_as_written() {
    let script = shell_block("## A three-member cluster on one machine");
    assert!(
        script.contains("--cluster-init") && script.contains("--join"),
        "{script}"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("target/release")).expect("dirs");
    std::os::unix::fs::symlink(raftkv_bin(), dir.path().join("target/release/raftkv"))
        .expect("symlink");
    let shims = dir.path().join("shims");
    std::fs::create_dir_all(&shims).expect("dirs");
    let cargo = shims.join("cargo");
    std::fs::write(&cargo, "#!/bin/sh\nexit 0\n").expect("cargo shim");
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&cargo)
        .status()
        .expect("chmod");
    let path = format!(
        "{}:{}",
        shims.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Output to a file: the members started in the background keep it open. Its own
    // process group, so that those members are stopped with it.
    let out_path = dir.path().join("out.txt");
    let out_file = std::fs::File::create(&out_path).expect("output file");
    let mut child = Command::new("bash")
        .arg("-ec")
        .arg(&script)
        .current_dir(dir.path())
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(out_file.try_clone().expect("file"))
        .stderr(out_file)
        .process_group(0)
        .spawn()
        .expect("bash runs");
    let pgid = child.id() as i32;
    let status = child.wait().expect("the block finishes");
    // SAFETY: kill(2) on the process group this test made; no memory is involved.
    unsafe {
        libc::kill(-pgid, libc::SIGTERM);
    }
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    // The members' own log lines are in the file too: keep what the commands printed.
    let stdout: String = output
        .lines()
        .filter(|l| !l.contains(" INFO ") && !l.contains(" WARN "))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(status.success(), "the quick start failed:\n{output}");
    assert!(stdout.contains("can lose 1 of 3"), "{stdout}");
    for name in ["a", "b", "c"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(&format!("{name} "))),
            "member {name} missing:\n{stdout}"
        );
    }
    assert!(
        stdout.trim_end().ends_with("OK"),
        "the put answers OK:\n{stdout}"
    );
}
