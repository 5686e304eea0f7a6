//! Scheduled backups (`--snapshot-schedule`): on a cron schedule every member writes a
//! snapshot of its own key space to `--snapshot-dir` — the same file `raftkv snapshot
//! save` makes, so `raftkv snapshot restore` takes it — keeps the newest
//! `--snapshot-retention` of its own, and optionally uploads each to S3-compatible
//! storage and keeps the same number there. Every member does it (as k3s's servers do),
//! so losing a machine does not lose its backups.
//!
//! It must never block writes: the export runs on a blocking thread over an engine
//! snapshot view, and a failed backup is logged and retried at the next tick.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sha2::Digest;

use crate::config::backup::{parse_schedule, BackupConfig};
use crate::member::node::Node;
use crate::ops::s3::S3Client;

use crate::snapshot_file::snapshot_padding_bytes;
/// Writes `store`'s snapshot to `dest` as `raftkv snapshot save` does: the image, zero
/// padding to 512 bytes and a SHA-256 of all of it; through a temp file, fsynced,
/// renamed. Blocking.
pub fn write_backup(store: &raftkv_storage::mvcc::MvccStore, dest: &Path) -> Result<u64, String> {
    struct Hashing<W: Write> {
        inner: W,
        hasher: sha2::Sha256,
        written: u64,
    }
    impl<W: Write> Write for Hashing<W> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = self.inner.write(buf)?;
            self.hasher.update(&buf[..n]);
            self.written += n as u64;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }
    let tmp = dest.with_extension("part");
    let result = (|| -> Result<u64, String> {
        let file = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        let mut out = Hashing {
            inner: std::io::BufWriter::with_capacity(1 << 20, file),
            hasher: sha2::Sha256::new(),
            written: 0,
        };
        let point = store.snapshot_point().map_err(|e| e.to_string())?;
        store
            .export_snapshot(&point, &mut out)
            .map_err(|e| e.to_string())?;
        let padding = snapshot_padding_bytes(out.written);
        out.write_all(&vec![0u8; padding as usize])
            .map_err(|e| e.to_string())?;
        let digest = std::mem::take(&mut out.hasher).finalize();
        let mut inner = out.inner;
        inner.write_all(&digest).map_err(|e| e.to_string())?;
        let file = inner.into_inner().map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| e.to_string())?;
        Ok(out.written + digest.len() as u64)
    })();
    match result {
        Ok(size) => {
            std::fs::rename(&tmp, dest).map_err(|e| e.to_string())?;
            if let Some(dir) = dest.parent() {
                raftkv_storage::durable::sync_dir(dir)
                    .map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            Ok(size)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// File names of this member's backups: raftkv-<member name>-<UTC time>.snap, which
/// sort by age.
fn prefix(node: &Node) -> String {
    format!("raftkv-{}-", node.name)
}

/// Starts the scheduler; it runs until the process ends.
pub fn start(node: Arc<Node>, config: BackupConfig) -> Result<(), String> {
    let cron = parse_schedule(&config.schedule)?;
    raftkv_storage::durable::create_dir_all(&config.dir)
        .map_err(|e| format!("--snapshot-dir {}: {e}", config.dir.display()))?;
    let s3 = match &config.s3 {
        Some(s3) => Some(Arc::new(
            S3Client::new(s3.clone()).map_err(|e| e.to_string())?,
        )),
        None => None,
    };
    tracing::info!(
        schedule = %config.schedule,
        retention = config.retention,
        dir = %config.dir.display(),
        s3 = config.s3.as_ref().map(|s| format!("{}/{}/{}", s.endpoint, s.bucket, s.folder)),
        "scheduled snapshots on"
    );
    tokio::spawn(async move {
        loop {
            let now = chrono::Utc::now();
            let Ok(next) = cron.find_next_occurrence(&now, false) else {
                tracing::warn!(schedule = %config.schedule, "the snapshot schedule never fires again");
                return;
            };
            let wait = (next - now).to_std().unwrap_or_default();
            tokio::time::sleep(wait).await;
            if let Err(e) = take(&node, &config, s3.as_deref(), next).await {
                tracing::warn!(error = %e, "scheduled snapshot failed; next try at the next scheduled time");
            }
        }
    });
    Ok(())
}

async fn take(
    node: &Arc<Node>,
    config: &BackupConfig,
    s3: Option<&S3Client>,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), String> {
    let started = Instant::now();
    let name = format!("{}{}.snap", prefix(node), at.format("%Y%m%dT%H%M%SZ"));
    let path = config.dir.join(&name);
    let store = node.store.clone();
    let dest = path.clone();
    let size_bytes = tokio::task::spawn_blocking(move || write_backup(&store, &dest))
        .await
        .map_err(|e| e.to_string())??;
    tracing::info!(
        file = %path.display(),
        size_bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "scheduled snapshot saved"
    );
    prune_local(&config.dir, &prefix(node), config.retention)?;
    if let Some(s3) = s3 {
        let body = tokio::fs::read(&path).await.map_err(|e| e.to_string())?;
        let key = s3.key(&name);
        s3.put(&key, body.into()).await.map_err(|e| e.to_string())?;
        tracing::info!(key = %key, "scheduled snapshot uploaded");
        let mut keys = s3
            .list(&s3.key(&prefix(node)))
            .await
            .map_err(|e| e.to_string())?;
        keys.sort();
        let excess = keys.len().saturating_sub(config.retention);
        for old in &keys[..excess] {
            s3.delete(old).await.map_err(|e| e.to_string())?;
            tracing::info!(key = %old, "old snapshot deleted from s3");
        }
    }
    Ok(())
}

/// Deletes this member's oldest backups beyond `retention`.
fn prune_local(dir: &Path, prefix: &str, retention: usize) -> Result<(), String> {
    let mut mine: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".snap"))
        })
        .collect();
    mine.sort();
    let excess = mine.len().saturating_sub(retention);
    for old in &mine[..excess] {
        std::fs::remove_file(old).map_err(|e| format!("{}: {e}", old.display()))?;
        tracing::info!(file = %old.display(), "old snapshot deleted");
    }
    Ok(())
}
