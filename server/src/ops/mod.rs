//! What runs beside the request path on every member: scheduled backups (and their S3
//! upload), auto-compaction, lease expiry, metrics and health. Each calls down into the
//! member; nothing below calls up into these.

pub mod auto_compaction;
pub mod backups;
pub mod lease_expiry;
pub mod metrics;
pub mod s3;
