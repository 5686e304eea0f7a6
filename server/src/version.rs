//! The etcd API level raftkv answers as. Imports nothing of the crate.

/// The etcd API level raftkv implements, as Maintenance.Status reports it. The
/// Kubernetes API server needs ≥ 3.5.13 to enable its consistent-read features.
pub const ETCD_API_VERSION: &str = "3.5.16";
