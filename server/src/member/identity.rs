//! Who this member is: `<data-dir>/member.json`, written once before the member first
//! takes part in Raft and read at every start.
//!
//! Its presence is what makes a restart resume: --cluster-init and --join are ignored
//! once it exists. It must never be rewritten with a different id: a member id is bound
//! to the vote and log in the same data dir.

use std::path::Path;

use serde::{Deserialize, Serialize};

pub const FILE_NAME: &str = "member.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub member_id: u64,
    /// 0 until a joining member has been accepted into a cluster.
    pub cluster_id: u64,
    pub name: String,
    /// False while a join is in progress: a restart then retries the join with the same id.
    pub joined: bool,
}

impl Identity {
    pub fn load(data_dir: &Path) -> std::io::Result<Option<Identity>> {
        let path = data_dir.join(FILE_NAME);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes the file durably (temp file, fsync, rename, fsync the directory).
    pub fn store(&self, data_dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        raftkv_storage::durable::replace_file(&data_dir.join(FILE_NAME), &bytes, 0o644)
    }
}

/// A random non-zero id, as etcd's member and cluster ids are.
pub fn random_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}
