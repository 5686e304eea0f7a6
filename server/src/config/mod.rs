//! The command line of `raftkv`: flags named as etcd's and k3s's, with their defaults.
//!
//! This module only parses and checks; `member/startup.rs` decides what the flags mean
//! for a data dir that already holds a member.

pub mod backup;
pub mod file;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// etcd's default --quota-backend-bytes.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;

#[derive(Debug, Parser)]
#[command(
    name = "raftkv",
    version,
    about = "A Raft-replicated etcd v3 server for k3s",
    // A flag given twice takes its last value: the command line's over --config's.
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub server: ServerConfig,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve (the default when no subcommand is given).
    Serve,
    /// Save a snapshot from a running member, or restore one into a new data dir.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Every member's role, Raft term and index, db size and health, and what the
    /// cluster can still lose.
    Status {
        /// table, or json for scripts.
        #[arg(short = 'w', long = "write-out", default_value = "table")]
        write_out: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Copy every key (and lease) of an etcd v3 server — k3s's embedded etcd, kine over
    /// SQLite or MariaDB, etcd — into an empty raftkv cluster, at one revision.
    Migrate {
        /// The source's client endpoints, comma-separated.
        #[arg(long)]
        from: String,
        /// CA certificate (PEM) for an https:// source.
        #[arg(long)]
        cacert: Option<PathBuf>,
        /// Client certificate (PEM) for the source.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// The client certificate's key (PEM).
        #[arg(long)]
        key: Option<PathBuf>,
        /// NAME:PASSWORD on the source, when its authentication is on (etcdctl's
        /// --user): reading its users and roles is root's.
        #[arg(long)]
        user: Option<String>,
        /// raftkv's client endpoints, comma-separated.
        #[arg(long, default_value = "127.0.0.1:2379")]
        endpoints: String,
        /// CA certificate (PEM) for https:// raftkv endpoints.
        #[arg(long)]
        to_cacert: Option<PathBuf>,
        /// Client certificate (PEM) for raftkv.
        #[arg(long)]
        to_cert: Option<PathBuf>,
        /// The client certificate's key (PEM).
        #[arg(long)]
        to_key: Option<PathBuf>,
    },
    /// Give the space of deleted and compacted data back on each endpoint (in the
    /// background: nothing stops), showing the db size as it shrinks.
    Defrag {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Measure the disk a data dir is on: small writes each followed by fdatasync, as
    /// every Raft log append does (etcd's fio advice). Warns (exit 1) when the 99th
    /// percentile is over 10 ms.
    CheckDisk {
        /// The directory to measure in (a scratch file is written, then removed).
        #[arg(
            long = "data-dir",
            id = "check_data_dir",
            default_value = "raftkv.data"
        )]
        data_dir: PathBuf,
        /// How many writes to time.
        #[arg(long, default_value_t = 1000)]
        writes: usize,
    },
    /// List, add, remove, promote or update members of a running cluster.
    Member {
        #[command(subcommand)]
        action: MemberCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// How a client command reaches the cluster (as etcdctl's flags).
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Comma-separated client endpoints; the first that answers is used.
    #[arg(long, global = true, default_value = "127.0.0.1:2379")]
    pub endpoints: String,
    /// CA certificate (PEM) to verify https:// endpoints with.
    #[arg(long, global = true)]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM), for members with --client-cert-auth.
    #[arg(long, global = true)]
    pub cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, global = true)]
    pub key: Option<PathBuf>,
    /// NAME:PASSWORD, for members with authentication on (etcdctl's --user).
    #[arg(long, global = true)]
    pub user: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Show every member: id, started or not, name, URLs, voter or learner.
    List,
    /// Reserve an id for a new member; then start it with --join and this peer URL.
    Add {
        /// The new member's name (what it will be started with).
        name: String,
        /// The peer URL(s) it will listen on, comma-separated.
        #[arg(long = "peer-urls")]
        peer_urls: String,
        /// It stays a learner until promoted (otherwise it becomes a voter once it has
        /// started and caught up).
        #[arg(long)]
        learner: bool,
    },
    /// Remove a member (its id in hex). The last voter cannot be removed.
    Remove { id: String },
    /// Make a learner that has caught up a voter.
    Promote { id: String },
    /// Change a member's peer URLs.
    Update {
        id: String,
        #[arg(long = "peer-urls")]
        peer_urls: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Stream a consistent snapshot from a running member into FILE.
    Save {
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Restore FILE into a new data dir; starting raftkv on it begins a new cluster
    /// (new ids) holding the same keys and revisions. With --snapshot-s3-endpoint, FILE
    /// is the name of a scheduled snapshot in the bucket (and folder).
    Restore {
        file: PathBuf,
        /// Where to restore (must not hold a member).
        #[arg(long = "data-dir", id = "restore_data_dir")]
        data_dir: PathBuf,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Write FILE (a raftkv or an etcd snapshot) as etcd's snapshot file OUT, which
    /// `etcdutl snapshot restore` turns into an etcd data dir with the same keys,
    /// revisions, leases, users and roles: the way back to etcd.
    ToEtcd { file: PathBuf, out: PathBuf },
}

impl ClientArgs {
    pub fn tls(&self) -> crate::net::tls::ClientTls {
        crate::net::tls::ClientTls {
            cacert: self.cacert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

/// Where scheduled snapshots are uploaded to (and restored from).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct S3Args {
    /// Upload scheduled snapshots to this S3-compatible endpoint (http(s)://host[:port];
    /// path-style requests), or restore one from it.
    #[arg(long, env = "RAFTKV_SNAPSHOT_S3_ENDPOINT")]
    pub snapshot_s3_endpoint: Option<String>,
    #[arg(long, env = "RAFTKV_SNAPSHOT_S3_BUCKET")]
    pub snapshot_s3_bucket: Option<String>,
    #[arg(long, env = "RAFTKV_SNAPSHOT_S3_REGION", default_value = "us-east-1")]
    pub snapshot_s3_region: String,
    /// Key prefix ("folder") in the bucket.
    #[arg(long, env = "RAFTKV_SNAPSHOT_S3_FOLDER", default_value = "")]
    pub snapshot_s3_folder: String,
    #[arg(long, env = "RAFTKV_SNAPSHOT_S3_ACCESS_KEY", hide_env_values = true)]
    pub snapshot_s3_access_key: Option<String>,
    #[arg(long, env = "RAFTKV_SNAPSHOT_S3_SECRET_KEY", hide_env_values = true)]
    pub snapshot_s3_secret_key: Option<String>,
    /// CA bundle (PEM) for an https S3 endpoint (default: the system's).
    #[arg(long, env = "RAFTKV_SNAPSHOT_S3_CA_FILE")]
    pub snapshot_s3_ca_file: Option<PathBuf>,
}

impl S3Args {
    /// The S3 target, None without an endpoint, or what is missing.
    pub fn config(&self) -> Result<Option<crate::config::backup::S3Config>, String> {
        let Some(endpoint) = &self.snapshot_s3_endpoint else {
            return Ok(None);
        };
        Ok(Some(crate::config::backup::S3Config {
            endpoint: endpoint.clone(),
            bucket: self
                .snapshot_s3_bucket
                .clone()
                .ok_or("--snapshot-s3-endpoint needs --snapshot-s3-bucket")?,
            region: self.snapshot_s3_region.clone(),
            folder: self.snapshot_s3_folder.trim_matches('/').to_string(),
            access_key: self.snapshot_s3_access_key.clone().unwrap_or_default(),
            secret_key: self.snapshot_s3_secret_key.clone().unwrap_or_default(),
            ca_file: self.snapshot_s3_ca_file.clone(),
        }))
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServerConfig {
    /// A YAML file of flags (keys are the long flag names: `data-dir: /var/lib/raftkv`,
    /// `cluster-init: true`); flags and RAFTKV_* variables given as well win over it.
    #[arg(long, env = "RAFTKV_CONFIG")]
    pub config: Option<PathBuf>,
    /// This member's human-readable name.
    #[arg(long, env = "RAFTKV_NAME", default_value = "default")]
    pub name: String,
    /// Where the Raft log, the key space and snapshots live.
    #[arg(long, env = "RAFTKV_DATA_DIR", default_value = "raftkv.data")]
    pub data_dir: PathBuf,
    /// Start a new cluster with this member as its first voter.
    #[arg(long, env = "RAFTKV_CLUSTER_INIT")]
    pub cluster_init: bool,
    /// Join the cluster a member of which serves peers at this URL.
    #[arg(long, env = "RAFTKV_JOIN", value_name = "PEER_URL")]
    pub join: Option<String>,
    /// The cluster's join token (default for --cluster-init: a new random one, kept in
    /// <data-dir>/token). A joining member must give the same one.
    #[arg(long, env = "RAFTKV_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Join as a learner and stay one until promoted (`raftkv member promote ID` or
    /// `etcdctl member promote ID`); without it a joined member becomes a voter as soon
    /// as it has caught up.
    #[arg(long, env = "RAFTKV_LEARNER")]
    pub learner: bool,
    /// A file whose first line is the join token (instead of --token).
    #[arg(long, env = "RAFTKV_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Comma-separated URLs to serve clients on.
    #[arg(
        long,
        env = "RAFTKV_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub listen_client_urls: String,
    /// Client URLs to tell others (defaults to the listen URLs).
    #[arg(long, env = "RAFTKV_ADVERTISE_CLIENT_URLS")]
    pub advertise_client_urls: Option<String>,
    /// The URL to serve peers on.
    #[arg(
        long,
        env = "RAFTKV_LISTEN_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    pub listen_peer_urls: String,
    /// Comma-separated plain-HTTP URLs serving only /metrics, /health, /livez and
    /// /readyz (the client URLs serve them too).
    #[arg(long, env = "RAFTKV_LISTEN_METRICS_URLS")]
    pub listen_metrics_urls: Option<String>,
    /// The peer URL other members reach this one at (defaults to the listen URL).
    #[arg(long, env = "RAFTKV_ADVERTISE_PEER_URLS")]
    pub advertise_peer_urls: Option<String>,
    /// Raft heartbeat interval.
    #[arg(long, env = "RAFTKV_HEARTBEAT_INTERVAL_MS", default_value_t = 100)]
    pub heartbeat_interval_ms: u64,
    /// Raft election timeout. A follower that hears nothing from the leader stands for
    /// election after 3 to 4 times this: openraft's leader lease (2×, during which it
    /// also refuses to vote for others, so a live leader is not disrupted) plus its own
    /// timeout (1× to 2×). 150 ms: failover in about half a second, where etcd's
    /// defaults take 1 to 2 s (bench/RESULTS.md; docs/tuning.md for slow disks).
    #[arg(long, env = "RAFTKV_ELECTION_TIMEOUT_MS", default_value_t = 150)]
    pub election_timeout_ms: u64,
    /// Confirm every linearizable read with a heartbeat round to the voters, as etcd
    /// does, instead of by the leader's lease. The lease (by default) answers reads at
    /// once while a quorum acknowledged the leader within 0.8× of two election
    /// timeouts; it assumes the members' clocks run at rates within 20% of one another,
    /// which any working clock does (docs/tuning.md, "Lease reads").
    #[arg(long, env = "RAFTKV_NO_LEASE_READS")]
    pub no_lease_reads: bool,
    /// Threads running requests (the async runtime's workers); 0: half the cores, at
    /// least one. raftkv shares its machine with the k3s server, and its throughput is
    /// bound by fdatasync and the network more than by parallel CPU: fewer workers
    /// wake fewer threads per request (docs/tuning.md, "Threads"). The Raft log's
    /// fdatasync and the engine's file work have threads of their own.
    #[arg(long, env = "RAFTKV_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
    /// How long a client request may wait for Raft before "request timed out".
    #[arg(long, env = "RAFTKV_REQUEST_TIMEOUT_MS", default_value_t = 7000)]
    pub request_timeout_ms: u64,
    /// bcrypt cost of users' password hashes (etcd's flag and default; 4 to 31): each
    /// step doubles what adding a user or authenticating costs in CPU.
    #[arg(
        long,
        env = "RAFTKV_BCRYPT_COST",
        default_value_t = crate::auth::password::DEFAULT_BCRYPT_COST,
        value_parser = clap::value_parser!(u32).range(
            crate::auth::password::MIN_BCRYPT_COST as i64..=crate::auth::password::MAX_BCRYPT_COST as i64
        )
    )]
    pub bcrypt_cost: u32,
    /// How long an authentication token lives unused, in seconds (etcd's
    /// --auth-token-ttl and default): each request with it starts the time again.
    #[arg(
        long = "auth-token-ttl",
        env = "RAFTKV_AUTH_TOKEN_TTL",
        default_value_t = raftkv_storage::auth::tokens::DEFAULT_TOKEN_TTL_S,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub auth_token_ttl_s: u64,
    /// The tokens Authenticate hands out (etcd's flag): `simple`, or
    /// `jwt,pub-key=FILE,priv-key=FILE,sign-method=RS256[,ttl=5m]` (docs/auth.md).
    #[arg(long, env = "RAFTKV_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,
    /// Space quota of the key space (etcd's flag): a write that finds the database
    /// larger raises the NOSPACE alarm, and the cluster then takes only reads, deletes
    /// and compactions until `etcdctl alarm disarm`. 0: etcd's default, 2 GiB;
    /// negative: no quota.
    #[arg(
        long,
        env = "RAFTKV_QUOTA_BACKEND_BYTES",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub quota_backend_bytes: i64,
    /// Free space to keep on the data dir's file system: below it, writes raise the
    /// NOSPACE alarm as an exceeded quota does, so that a full disk never fails a log
    /// append (deletes and compactions still have room).
    #[arg(long, env = "RAFTKV_DISK_RESERVE_BYTES", default_value_t = 256 << 20)]
    pub disk_reserve_bytes: u64,
    /// The key-space engine's block cache: hot keys and index blocks read from disk
    /// stay here. Most of a member's memory beyond the keys being written.
    #[arg(long, env = "RAFTKV_BACKEND_CACHE_BYTES", default_value_t = 64 << 20)]
    pub backend_cache_bytes: u64,
    /// Take a Raft snapshot (and allow purging the log) every this many applied entries.
    /// etcd 3.5's default. A snapshot is a point: the key-space engine is flushed and
    /// the log behind it may go; the key space (a 1M-key space is ~300 MB) is exported
    /// only when a follower needs it. The log entries kept in memory until then cost
    /// about their size (100k × 256 B values ≈ 40 MB). Each member adds up to half
    /// again, by member id, so that members do not all flush at once (member/startup.rs,
    /// `snapshot_interval_entries`).
    #[arg(long, env = "RAFTKV_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,
    /// Interval of progress notifications to watchers that asked for them.
    #[arg(
        long,
        env = "RAFTKV_WATCH_PROGRESS_NOTIFY_INTERVAL_MS",
        default_value_t = 600_000
    )]
    pub watch_progress_notify_interval_ms: u64,
    /// Auto-compaction mode: "periodic" (keep --auto-compaction-retention of time) or
    /// "revision" (keep that many revisions), as etcd's.
    #[arg(long, env = "RAFTKV_AUTO_COMPACTION_MODE", default_value = "periodic")]
    pub auto_compaction_mode: String,
    /// How much history auto-compaction keeps: a duration ("1h", "30m", or a number of
    /// hours) in periodic mode, a count in revision mode; "0" turns it off.
    #[arg(long, env = "RAFTKV_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,
    /// Scheduled snapshots (backups) on a cron schedule: "0 */6 * * *" is every six
    /// hours; six fields put seconds first. Off when not given.
    #[arg(long, env = "RAFTKV_SNAPSHOT_SCHEDULE")]
    pub snapshot_schedule: Option<String>,
    /// Scheduled snapshots this member keeps (in --snapshot-dir, and in S3).
    #[arg(long, env = "RAFTKV_SNAPSHOT_RETENTION", default_value_t = crate::config::backup::DEFAULT_RETENTION)]
    pub snapshot_retention: usize,
    /// Where scheduled snapshots go (default: <data-dir>/backups).
    #[arg(long, env = "RAFTKV_SNAPSHOT_DIR")]
    pub snapshot_dir: Option<PathBuf>,
    /// S3-compatible storage for scheduled snapshots.
    #[command(flatten)]
    pub s3: S3Args,
    /// Client TLS: the server certificate (PEM) for https:// client URLs.
    #[arg(long, env = "RAFTKV_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Client TLS: the certificate's private key (PEM).
    #[arg(long, env = "RAFTKV_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Client TLS: CA certificates (PEM) that client certificates must be signed by.
    #[arg(long, env = "RAFTKV_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Client TLS: refuse clients without a certificate signed by --trusted-ca-file.
    #[arg(long, env = "RAFTKV_CLIENT_CERT_AUTH")]
    pub client_cert_auth: bool,
    /// Peer TLS: this member's certificate (PEM), served on https:// peer URLs and
    /// presented to other members.
    #[arg(long, env = "RAFTKV_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Peer TLS: the certificate's private key (PEM).
    #[arg(long, env = "RAFTKV_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// Peer TLS: the CA (PEM) that signed every member's peer certificate.
    #[arg(long, env = "RAFTKV_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Peer TLS: refuse members that do not present a certificate the CA signed.
    #[arg(long, env = "RAFTKV_PEER_CLIENT_CERT_AUTH")]
    pub peer_client_cert_auth: bool,
    /// Log filter (tracing's env-filter syntax), e.g. "info" or "debug,openraft=info".
    /// openraft's own progress lines are kept at warn by default.
    #[arg(long, env = "RAFTKV_LOG", default_value = "info,openraft=warn")]
    pub log: String,
}

impl ServerConfig {
    pub fn client_listen_urls(&self) -> Vec<String> {
        split_urls(&self.listen_client_urls)
    }

    /// The client TLS files, if any URL needs them; an error names what is missing.
    pub fn client_tls(&self) -> Result<Option<crate::net::tls::TlsFiles>, String> {
        let wants_tls = self
            .client_listen_urls()
            .iter()
            .any(|u| u.starts_with("https://"));
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Ok(Some(crate::net::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                trusted_ca: self.trusted_ca_file.clone(),
                client_cert_auth: self.client_cert_auth,
            })),
            (Some(_), None) | (None, Some(_)) => {
                Err("--cert-file and --key-file go together".to_string())
            }
            (None, None) if wants_tls => {
                Err("an https:// client URL needs both --cert-file and --key-file".to_string())
            }
            (None, None) if self.client_cert_auth => Err(
                "--client-cert-auth needs TLS: --cert-file, --key-file and an https:// client URL"
                    .to_string(),
            ),
            (None, None) => Ok(None),
        }
    }

    /// The peer TLS files, if the peer URLs use https://; an error names what is missing.
    pub fn peer_tls(&self) -> Result<Option<crate::net::tls::TlsFiles>, String> {
        let urls = [
            Some(self.listen_peer_urls.as_str()),
            self.advertise_peer_urls.as_deref(),
            self.join.as_deref(),
        ];
        let wants_tls = urls.iter().flatten().any(|u| u.starts_with("https://"));
        match (&self.peer_cert_file, &self.peer_key_file, &self.peer_trusted_ca_file) {
            (Some(cert), Some(key), Some(ca)) => Ok(Some(crate::net::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                trusted_ca: Some(ca.clone()),
                client_cert_auth: self.peer_client_cert_auth,
            })),
            (None, None, None) if !wants_tls && !self.peer_client_cert_auth => Ok(None),
            _ => Err(
                "peer TLS needs --peer-cert-file, --peer-key-file and --peer-trusted-ca-file, with https:// peer URLs"
                    .to_string(),
            ),
        }
    }

    pub fn metrics_listen_urls(&self) -> Vec<String> {
        self.listen_metrics_urls
            .as_deref()
            .map(split_urls)
            .unwrap_or_default()
    }

    pub fn client_advertise_urls(&self) -> Vec<String> {
        self.advertise_client_urls
            .as_deref()
            .map(split_urls)
            .unwrap_or_else(|| self.client_listen_urls())
    }

    pub fn peer_advertise_url(&self) -> String {
        self.advertise_peer_urls
            .clone()
            .unwrap_or_else(|| self.listen_peer_urls.clone())
    }

    /// Scheduled snapshots as configured, None when off, or what is wrong with the flags.
    pub fn backups(&self) -> Result<Option<crate::config::backup::BackupConfig>, String> {
        let Some(schedule) = &self.snapshot_schedule else {
            if self.s3.snapshot_s3_endpoint.is_some() {
                return Err("--snapshot-s3-endpoint needs --snapshot-schedule".into());
            }
            return Ok(None);
        };
        crate::config::backup::parse_schedule(schedule)?;
        if self.snapshot_retention == 0 {
            return Err("--snapshot-retention must keep at least 1 snapshot".into());
        }
        let s3 = self.s3.config()?;
        Ok(Some(crate::config::backup::BackupConfig {
            schedule: schedule.clone(),
            retention: self.snapshot_retention,
            dir: self
                .snapshot_dir
                .clone()
                .unwrap_or_else(|| self.data_dir.join("backups")),
            s3,
        }))
    }

    /// The quota in bytes, or None without one.
    pub fn quota_bytes(&self) -> Option<u64> {
        match self.quota_backend_bytes {
            0 => Some(DEFAULT_QUOTA_BYTES),
            q if q < 0 => None,
            q => Some(q as u64),
        }
    }

    /// The runtime's worker threads: the flag, else half the cores (at least one).
    pub fn worker_threads(&self) -> usize {
        if self.worker_threads > 0 {
            return self.worker_threads;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / 2).max(1)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

pub fn split_urls(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

/// "http://127.0.0.1:2379" → "127.0.0.1:2379", for binding.
pub fn socket_addr_of(url: &str) -> Result<std::net::SocketAddr, String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let host_port = rest.split('/').next().unwrap_or(rest);
    use std::net::ToSocketAddrs;
    host_port
        .to_socket_addrs()
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))
}
