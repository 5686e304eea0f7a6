//! The scheduled-backup settings (`--snapshot-schedule`, `--snapshot-dir`, S3), as plain
//! data; ops/backups.rs and ops/s3.rs act on them.

use std::path::PathBuf;

/// Backups kept when --snapshot-retention is not given (k3s's default).
pub const DEFAULT_RETENTION: usize = 5;

/// What the scheduler needs, from the flags.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    pub schedule: String,
    pub retention: usize,
    pub dir: PathBuf,
    pub s3: Option<S3Config>,
}

/// Parses a schedule: five cron fields (minute hour day month weekday), or six with
/// seconds first.
pub fn parse_schedule(schedule: &str) -> Result<croner::Cron, String> {
    croner::Cron::new(schedule)
        .with_seconds_optional()
        .parse()
        .map_err(|e| format!("--snapshot-schedule {schedule:?}: {e}"))
}

/// Where backups go.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// `http(s)://host[:port]`
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    /// Key prefix ("folder"), without leading or trailing slashes; may be empty.
    pub folder: String,
    pub access_key: String,
    pub secret_key: String,
    /// CA bundle for an https endpoint (default: the system's).
    pub ca_file: Option<PathBuf>,
}

impl S3Config {
    /// The object key for a file name: folder/name.
    pub fn key(&self, name: &str) -> String {
        if self.folder.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.folder)
        }
    }
}
