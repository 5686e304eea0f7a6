//! raftkv's subcommands other than serving: each reaches a running member over the etcd
//! API (`client.rs`) or works on a data dir offline. Nothing here runs inside a member.

pub mod check_disk;
pub mod client;
pub mod defrag;
pub mod disk_device;
pub mod member;
pub mod migrate;
pub mod migrate_auth;
pub mod progress;
pub mod snapshot;
pub mod status;
