//! How member and cluster ids are written: lower-case hex, as etcd prints them.
//! Imports nothing of the crate.

/// Member and cluster ids are shown in hex, as etcd does.
pub fn hex(id: u64) -> String {
    format!("{id:x}")
}
