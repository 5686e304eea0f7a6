//! `raftkv-lossyfs --backing DIR --mount DIR --control SOCKET [--seed N]`: mounts the
//! lossy file system (lib.rs) at DIR, keeping durable data in the empty folder
//! `--backing`, and serves the control socket. Runs until unmounted
//! (`fusermount3 -u DIR`) or killed.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use fuser::MountOption;
use raftkv_lossyfs::{control, fuse::LossyFs, model::Fs};

struct Args {
    backing: PathBuf,
    mount: PathBuf,
    control: PathBuf,
    seed: u64,
}

fn parse() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut backing, mut mount, mut control, mut seed) = (None, None, None, 0);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--backing" => backing = Some(PathBuf::from(value)),
            "--mount" => mount = Some(PathBuf::from(value)),
            "--control" => control = Some(PathBuf::from(value)),
            "--seed" => seed = value.parse().map_err(|e| format!("--seed: {e}"))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(Args {
        backing: backing.ok_or("--backing is required")?,
        mount: mount.ok_or("--mount is required")?,
        control: control.ok_or("--control is required")?,
        seed,
    })
}

fn main() {
    let args = parse().unwrap_or_else(|e| {
        eprintln!("raftkv-lossyfs: {e}");
        eprintln!("usage: raftkv-lossyfs --backing DIR --mount DIR --control SOCKET [--seed N]");
        std::process::exit(2);
    });
    let model = Arc::new(Mutex::new(Fs::new(args.backing, args.seed)));
    let listener = UnixListener::bind(&args.control).unwrap_or_else(|e| {
        eprintln!("raftkv-lossyfs: {}: {e}", args.control.display());
        std::process::exit(1);
    });
    let serving = model.clone();
    std::thread::spawn(move || control::serve(listener, serving));
    let options = [
        MountOption::FSName("raftkv-lossyfs".to_string()),
        MountOption::RW,
    ];
    if let Err(e) = fuser::mount2(LossyFs { model }, &args.mount, &options) {
        eprintln!("raftkv-lossyfs: mount {}: {e}", args.mount.display());
        std::process::exit(1);
    }
}
