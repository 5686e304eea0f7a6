//! File system changes that must survive a power cut. An fsync of a file makes its data
//! durable, not its name: a new file or directory, a rename or a removal lasts only once
//! the directory holding it is fsynced as well. Every place that creates the data dir's
//! folders or replaces a small file goes through here (the WAL's segments and the
//! engine's tables do the same in their own code). Each call costs fsyncs: never on the
//! write path.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// fsync of a directory: its entries as they are now survive a power cut.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// `create_dir_all`, with every directory it creates made durable in its parent.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(parent)?;
    }
    match std::fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    sync_dir(parent)
}

/// Replaces the file at `path` with `bytes` (permissions `mode`) so that a power cut
/// leaves either the old file or the new one, whole: a temporary file beside it,
/// written and fsynced, renamed over it, and the directory fsynced.
pub fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_every_missing_level_and_replaces_whole_files() {
        let root = tempfile::tempdir().expect("temp dir");
        let deep = root.path().join("a/b/c");
        create_dir_all(&deep).expect("created");
        create_dir_all(&deep).expect("again: nothing to do");
        assert!(deep.is_dir());
        let file = deep.join("member.json");
        replace_file(&file, b"one", 0o600).expect("written");
        replace_file(&file, b"two", 0o600).expect("replaced");
        assert_eq!(std::fs::read(&file).expect("read"), b"two");
        assert!(!deep.join("member.json.tmp").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
