//! `raftkv snapshot save` and `raftkv snapshot restore`: a backup taken from a running
//! member over the etcd API, and an offline restore into a new data dir that then starts
//! a new cluster (new member and cluster ids) holding the same key space.
//!
//! `save` writes what Maintenance.Snapshot streams: etcd's snapshot format (a bbolt
//! database and a SHA-256 of it, `etcd_db/export.rs`). Restore takes that, any etcd's
//! snapshot file, and raftkv's own image (scheduled backups: the image, its own CRC32C
//! inside, zero padding to 512 bytes, a SHA-256 of everything before it); it verifies
//! the file and refuses a corrupt one before touching the data dir. `to_etcd` writes
//! any of them as etcd's format, the way back to etcd.

use std::io::{Read, Write};
use std::path::Path;

use raftkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use raftkv_proto::etcdserverpb::SnapshotRequest;
use raftkv_storage::mvcc::{MvccOptions, MvccStore};
use sha2::Digest;

use crate::cli::progress::Progress;

const SHA256_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotCliError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Connect(#[from] crate::cli::client::ConnectError),
    #[error("the snapshot stream failed: {0}")]
    Stream(String),
    #[error("{path}: the snapshot is corrupt ({reason}); it was not restored")]
    Corrupt { path: String, reason: String },
    #[error("{0} already holds data; restore into a new, empty data dir")]
    NotEmpty(String),
    #[error("restoring: {0}")]
    Restore(String),
}

pub use crate::net::tls::ClientTls;

/// Streams a snapshot from `endpoint` into `file` (written to a temp file, synced, then
/// renamed, so a failed save leaves no partial file behind).
pub async fn save(
    endpoint: &str,
    file: &Path,
    access: &crate::cli::client::Access,
) -> Result<u64, SnapshotCliError> {
    let channel = crate::cli::client::connect_as(endpoint, access).await?;
    let mut client = MaintenanceClient::new(channel).max_decoding_message_size(usize::MAX);
    let mut stream = client
        .snapshot(SnapshotRequest {})
        .await
        .map_err(|s| SnapshotCliError::Stream(s.message().to_string()))?
        .into_inner();
    let tmp = file.with_extension("part");
    let mut out = std::fs::File::create(&tmp)?;
    let mut size_bytes = 0u64;
    let progress = Progress::bytes("snapshot save", 0);
    loop {
        match stream.message().await {
            Ok(Some(chunk)) => {
                out.write_all(&chunk.blob)?;
                size_bytes += chunk.blob.len() as u64;
                progress.set_total(size_bytes + chunk.remaining_bytes);
                progress.set(size_bytes);
            }
            Ok(None) => {
                progress.finish();
                break;
            }
            Err(s) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(SnapshotCliError::Stream(s.message().to_string()));
            }
        }
    }
    out.sync_all()?;
    std::fs::rename(&tmp, file)?;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        raftkv_storage::durable::sync_dir(dir)?;
    }
    Ok(size_bytes)
}

/// A reader that shows on the terminal how much of the image a restore has read.
struct Reading<R> {
    inner: R,
    read_bytes: u64,
    progress: Progress,
}

impl<R: Read> Read for Reading<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read_bytes += n as u64;
        self.progress.set(self.read_bytes);
        Ok(n)
    }
}

/// An etcd snapshot (or an etcd member's db file) as a raftkv image.
fn etcd_image(file: &Path) -> Result<Vec<u8>, SnapshotCliError> {
    let (image, imported) =
        crate::etcd_db::to_image(file).map_err(|e| SnapshotCliError::Corrupt {
            path: file.display().to_string(),
            reason: e.to_string(),
        })?;
    tracing::info!(
        revision = imported.revision,
        compact_revision = imported.compact_revision,
        history_entries = imported.entries,
        leases = imported.leases,
        users = imported.users,
        "read an etcd snapshot"
    );
    Ok(image)
}

fn verified_image(file: &Path) -> Result<Vec<u8>, SnapshotCliError> {
    let corrupt = |reason: &str| SnapshotCliError::Corrupt {
        path: file.display().to_string(),
        reason: reason.to_string(),
    };
    let mut bytes = Vec::new();
    std::fs::File::open(file)?.read_to_end(&mut bytes)?;
    if bytes.len() < SHA256_BYTES || !(bytes.len() - SHA256_BYTES).is_multiple_of(512) {
        return Err(corrupt("its length is not a snapshot's"));
    }
    let (body, trailer) = bytes.split_at(bytes.len() - SHA256_BYTES);
    if sha2::Sha256::digest(body).as_slice() != trailer {
        return Err(corrupt("SHA-256 mismatch"));
    }
    let len = image_len(body).ok_or_else(|| corrupt("no snapshot image inside"))?;
    if body[len..].iter().any(|b| *b != 0) {
        return Err(corrupt("bytes after the image are not padding"));
    }
    Ok(body[..len].to_vec())
}

/// The length of the snapshot image at the start of `body`: its frames are walked
/// (`tag u8 | len u32 LE | payload`, after an 8-byte magic) up to the trailer frame.
fn image_len(body: &[u8]) -> Option<usize> {
    const TRAILER_TAG: u8 = 0xff;
    let mut pos = 8usize;
    loop {
        let tag = *body.get(pos)?;
        let len = u32::from_le_bytes(body.get(pos + 1..pos + 5)?.try_into().ok()?) as usize;
        pos = pos.checked_add(5)?.checked_add(len)?;
        if pos > body.len() {
            return None;
        }
        if tag == TRAILER_TAG {
            return Some(pos);
        }
    }
}

/// Restores `file` into `data_dir` (which must not hold a member yet). Starting raftkv
/// on that data dir then creates a new cluster holding the restored key space.
/// Downloads the scheduled snapshot `name` (or a full key) from S3 next to `data_dir`,
/// restores it as `restore` does, and removes the download.
pub async fn restore_from_s3(
    s3: crate::config::backup::S3Config,
    name: &str,
    data_dir: &Path,
) -> Result<(), String> {
    let folder = format!("{}/", s3.folder);
    let key = if !s3.folder.is_empty() && name.starts_with(&folder) {
        name.to_string()
    } else {
        s3.key(name)
    };
    let client = crate::ops::s3::S3Client::new(s3).map_err(|e| e.to_string())?;
    let body = client.get(&key).await.map_err(|e| e.to_string())?;
    let download = data_dir.with_extension("s3-download");
    std::fs::write(&download, &body).map_err(|e| format!("{}: {e}", download.display()))?;
    let result = restore(&download, data_dir).map_err(|e| e.to_string());
    let _ = std::fs::remove_file(&download);
    result
}

pub fn restore(file: &Path, data_dir: &Path) -> Result<(), SnapshotCliError> {
    let store = restore_store(file, data_dir)?;
    tracing::info!(
        revision = store.revision(),
        data_dir = %data_dir.display(),
        "snapshot restored; start raftkv on this data dir to run it as a new cluster"
    );
    Ok(())
}

/// `raftkv snapshot to-etcd FILE OUT`: FILE (raftkv's snapshot or etcd's) written as
/// etcd's snapshot file OUT, for `etcdutl snapshot restore`: the way back to etcd. The
/// key space is restored into a scratch dir beside OUT first, then written out.
pub fn to_etcd(
    file: &Path,
    out: &Path,
) -> Result<crate::etcd_db::export::Exported, SnapshotCliError> {
    if out.exists() {
        return Err(SnapshotCliError::Restore(format!(
            "{} exists; give a new file",
            out.display()
        )));
    }
    let scratch = out.with_extension("scratch");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)?;
    }
    let result = restore_store(file, &scratch).and_then(|store| {
        crate::etcd_db::export::write_etcd_file(&store, out)
            .map_err(|e| SnapshotCliError::Restore(e.to_string()))
    });
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Installs `file` into a new store in `data_dir` (which must not hold a member).
fn restore_store(file: &Path, data_dir: &Path) -> Result<MvccStore, SnapshotCliError> {
    if data_dir.join(crate::member::identity::FILE_NAME).exists() || data_dir.join("mvcc").exists()
    {
        return Err(SnapshotCliError::NotEmpty(data_dir.display().to_string()));
    }
    let image = if crate::etcd_db::is_etcd_file(file) {
        etcd_image(file)?
    } else {
        verified_image(file)?
    };
    raftkv_storage::durable::create_dir_all(data_dir)?;
    let store = MvccStore::open(&data_dir.join("mvcc"), MvccOptions::default())
        .map_err(|e| SnapshotCliError::Restore(e.to_string()))?;
    let progress = Progress::bytes("snapshot restore", image.len() as u64);
    let point = store
        .install_snapshot(Reading {
            inner: std::io::Cursor::new(image),
            read_bytes: 0,
            progress: progress.clone(),
        })
        .map_err(|e| SnapshotCliError::Corrupt {
            path: file.display().to_string(),
            reason: e.to_string(),
        })?;
    progress.finish();
    store
        .forget_raft_state()
        .map_err(|e| SnapshotCliError::Restore(e.to_string()))?;
    debug_assert_eq!(store.revision(), point.revision);
    Ok(store)
}
