//! raftkv's storage: the Raft log on disk and the MVCC state machine derived from it.
//!
//! - `wal/`: the segmented write-ahead log (framing, segments, group-commit writer)
//! - `raft_log.rs`: openraft's log storage over the WAL
//! - `mvcc/`: etcd's key space on an LSM tree (lsm-tree) (see its module comment for the file map)
//! - `state_machine.rs`: openraft's state machine over the MVCC store, and snapshots
//!   (points recorded every --snapshot-count entries, exported when a follower needs one)
//! - `snapshot_data.rs`: a snapshot's bytes as openraft carries them, read once exported
//! - `applied.rs`: the applied index and the requests waiting for it to rise
//! - `auth.rs`: users, roles and permissions, and etcd's rules for changing them
//! - `raft_types.rs`: the openraft type configuration
//! - `error.rs`: typed errors, etcd's messages for the ones clients see
//! - `stats.rs`: fsync and commit latency histograms for the server's /metrics
//! - `fuzzing.rs`: entry points for the fuzz targets in fuzz/ (bytes in, never a panic)
//!
//! This crate knows nothing of gRPC or protobuf: the server converts wire messages into
//! `mvcc::types` and back. The log is the only thing fsynced on the write path.

pub mod applied;
pub mod auth;
mod background;
pub mod durable;
pub mod error;
pub mod failpoint;
#[doc(hidden)]
pub mod fuzzing;
pub mod mvcc;
pub mod raft_log;
pub mod raft_types;
pub mod snapshot_data;
pub mod state_machine;
pub mod stats;
pub mod wal;

pub use error::{Error, MvccError, StoreError};
