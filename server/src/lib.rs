//! The raftkv server: etcd's v3 gRPC API over openraft, on the storage crate.
//!
//! Folders by job (ARCHITECTURE.md has the code map and the entry points):
//! - `member/`: one member — start-up, joining, routing to the leader, membership,
//!   leader transfer, the quota, restart safety, the lease clocks
//! - `peer/`: member-to-member traffic — the forwarded-request protocol, pipes, their
//!   wire, openraft's network, the peer service
//! - `api/`: etcd's services (kv, watch, lease, cluster, maintenance, auth)
//! - `gateway/`: etcd's JSON gateway, calling `api/`'s services in process
//! - `auth/`: users' passwords at the edge (hashed before a change is proposed)
//! - `ops/`: backups (and S3), auto-compaction, lease expiry, metrics and health
//! - `cli/`: the subcommands that reach a running member or work on a data dir
//! - `etcd_db/`: etcd's data file (bbolt) read into a raftkv snapshot image
//! - `net/`: TLS and the client connections' coalesced writes
//! - `config/`: the command line, `--config FILE`, the backup settings
//! - `server.rs`: listeners, start-up order, shutdown
//! - shared, importing nothing of the crate: `errors.rs`, `ids.rs`, `quorum.rs`,
//!   `version.rs`, `limits.rs`, `snapshot_file.rs`, `disk.rs`
//!
//! Folders import one way: `gateway/` → `api/`; `api/` and `ops/` → `member/` → `peer/` → `net/`
//! (`server/tests/layout.rs`). The server never writes to storage except through
//! openraft.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod disk;
pub mod errors;
pub mod etcd_db;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod ids;
pub mod limits;
pub mod member;
pub mod net;
pub mod ops;
pub mod peer;
pub mod quorum;
pub mod server;
pub mod snapshot_file;
pub mod version;
