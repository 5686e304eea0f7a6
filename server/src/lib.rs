//! The raftkv server: etcd's v3 gRPC API over openraft, on the storage crate.
//!
//! Code map (see ARCHITECTURE.md):
//! - `config.rs`: the command line; `config_file.rs`: `--config FILE` (YAML) into flags
//! - `server.rs`: listeners, start-up order, shutdown
//! - `node.rs`: one member — storage, openraft, leader routing (writes, read index)
//! - `identity.rs`: member.json, who this member is
//! - `join_token.rs`: the join token, and proving knowledge of it without sending it
//! - `rollback_guard.rs`: a member restarted with an older copy of its data dir never
//!   votes or acknowledges (peers remember what each member held)
//! - `peer.rs`, `peer_service.rs`: member-to-member messages (Raft RPCs, forwarding)
//! - `peer_pipe.rs`: one long-lived pipe per peer, replies matched by id;
//!   `peer_wire.rs`: its own framing on a TCP connection to the peer port
//! - `auto_compaction.rs`: etcd's periodic and revision auto-compaction (leader only)
//! - `backups.rs`: scheduled snapshots with retention, optionally uploaded (`s3.rs`)
//! - `leases.rs`: the leader's lease clocks and expiry
//! - `api/`: etcd's services (kv, watch, lease, cluster, maintenance, auth)
//! - `convert.rs`: wire messages to storage types and back
//! - `disk.rs`: free space on the data dir's file system (for the NOSPACE alarm)
//! - `errors.rs`: errors with etcd's messages and gRPC codes
//! - `fuzzing.rs`: the gRPC request fuzz target's entry point (fuzz/)
//! - `metrics.rs`: /metrics (etcd's names), /health, /livez, /readyz, gRPC call counts
//! - `tls.rs`: TLS on the client listeners, client certificates, reload on change
//! - `coalesced_io.rs`: client connections write once per HTTP/2 flush
//! - `cli_client.rs`: how raftkv's client commands reach a member (endpoints, TLS)
//! - `snapshot_cli.rs`: `raftkv snapshot save|restore`
//! - `member_cli.rs`: `raftkv member list|add|remove|promote|update`
//! - `defrag_cli.rs`: `raftkv defrag` (space reclaim, with the db size shown shrinking)
//! - `migrate_cli.rs`: `raftkv migrate --from <etcd>` (copy a whole key space in)
//! - `status_cli.rs`: `raftkv status` (every member at a glance, and the fault tolerance)
//!
//! The server never writes to storage except through openraft.

pub mod api;
pub mod cli;
pub mod config;
pub mod disk;
pub mod errors;
#[doc(hidden)]
pub mod fuzzing;
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
