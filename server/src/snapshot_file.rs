//! etcd's snapshot file: the image in whole 512-byte pages, then a SHA-256 of all of
//! it. Shared by Maintenance.Snapshot and the scheduled backups, which write the same
//! file. Imports nothing of the crate.

/// etcd's snapshots are whole 512-byte pages; etcdctl checks the length by that.
pub const SNAPSHOT_ALIGN_BYTES: u64 = 512;

/// Zero bytes etcd's snapshot stream puts after an image of `size_bytes`, before the
/// SHA-256 trailer (shared with the scheduled backups, which write the same file).
pub fn snapshot_padding_bytes(size_bytes: u64) -> u64 {
    (SNAPSHOT_ALIGN_BYTES - size_bytes % SNAPSHOT_ALIGN_BYTES) % SNAPSHOT_ALIGN_BYTES
}
