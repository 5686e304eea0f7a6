//! The control socket: a test connects to it (a Unix socket beside the mount) and sends
//! one command per line; each is answered with one line once it is done.
//!
//! - `cut`: a power cut; every unsynced write and directory change is lost.
//! - `cut torn`: a power cut that keeps a random prefix of each file's unsynced pages.
//! - `on`: the power is back; operations succeed again.
//! - `unsynced`: `<pages> <dirs>`, the unsynced pages and the directories with unsynced
//!   entries.
//! - `arm <op> <pattern> [torn]`: a cut, instead of the first `<op>` (write, fsync,
//!   create, mkdir, rename, unlink) on a path containing `<pattern>` (model.rs).
//! - `disarm`: forgets the armed cut, if it has not fired.
//! - `status`: `on`, or `off` and, if an armed cut fired, `fired <op> <pattern>`.
//!
//! Answers: `ok` and what a command reports, or `error <why>`. A line is at most
//! `MAX_LINE_BYTES`; connections are served one at a time.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};

use crate::model::{Fs, Trigger};

const MAX_LINE_BYTES: u64 = 256;

/// Serves the socket until the process ends.
pub fn serve(listener: UnixListener, model: Arc<Mutex<Fs>>) {
    for stream in listener.incoming().flatten() {
        serve_one(stream, &model);
    }
}

fn serve_one(stream: UnixStream, model: &Mutex<Fs>) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream.take(u64::MAX));
    loop {
        let mut line = String::new();
        reader.get_mut().set_limit(MAX_LINE_BYTES);
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let answer = answer(line.trim(), model);
        if writeln!(writer, "{answer}").is_err() {
            return;
        }
    }
}

fn answer(command: &str, model: &Mutex<Fs>) -> String {
    let mut fs = model.lock().unwrap_or_else(|e| e.into_inner());
    match command {
        "cut" | "cut torn" => {
            let r = fs.power_cut(command == "cut torn");
            format!(
                "ok lost {} pages, kept {} torn, undid {} entries",
                r.pages_lost, r.pages_kept_torn, r.entries_undone
            )
        }
        "on" => {
            fs.power_on();
            "ok".to_string()
        }
        "unsynced" => {
            let (pages, dirs) = fs.unsynced();
            format!("ok {pages} {dirs}")
        }
        "disarm" => {
            fs.disarm();
            "ok".to_string()
        }
        "status" => match (fs.powered().is_ok(), fs.fired()) {
            (true, _) => "ok on".to_string(),
            (false, Some(t)) => format!("ok off fired {} {}", t.op, t.pattern),
            (false, None) => "ok off".to_string(),
        },
        other => match other.strip_prefix("arm ") {
            Some(args) => arm(&mut fs, args),
            None => format!("error unknown command {other:?}"),
        },
    }
}

fn arm(fs: &mut Fs, args: &str) -> String {
    const OPS: [&str; 6] = ["write", "fsync", "create", "mkdir", "rename", "unlink"];
    let words: Vec<&str> = args.split_whitespace().collect();
    let (op, pattern, torn) = match words[..] {
        [op, pattern] => (op, pattern, false),
        [op, pattern, "torn"] => (op, pattern, true),
        _ => return "error usage: arm <op> <pattern> [torn]".to_string(),
    };
    if !OPS.contains(&op) {
        return format!("error unknown operation {op:?} (one of {OPS:?})");
    }
    fs.arm(Trigger {
        op: op.to_string(),
        pattern: pattern.to_string(),
        torn,
    });
    "ok armed".to_string()
}
