//! etcd's v3 gRPC services, one file each. Handlers convert wire messages
//! (`convert.rs`), check them as etcd does, and hand them to the `Node`.

pub mod auth;
pub mod cluster;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod watch;

use raftkv_storage::MvccError;
use tonic::{Request, Status};

use crate::errors::ApiError;
use crate::node::Node;

/// etcd's --max-request-bytes default: a larger Put or Txn is refused.
pub const MAX_REQUEST_BYTES: usize = raftkv_proto::MAX_REQUEST_SIZE_BYTES;

/// Requests carrying `hasleader: true` metadata fail at once when there is no leader,
/// as etcd's interceptor does (the Kubernetes API server sets it on watches).
pub fn check_leader_metadata<T>(node: &Node, req: &Request<T>) -> Result<(), Status> {
    if wants_leader(req) && node.leader().is_none() {
        return Err(ApiError::NoLeader.status());
    }
    Ok(())
}

/// Whether the request carries `hasleader: true` metadata.
pub fn wants_leader<T>(req: &Request<T>) -> bool {
    req.metadata()
        .get("hasleader")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "true")
}

/// etcd measures the encoded request (inside its Raft envelope, a few bytes more).
pub fn request_size_ok(encoded_len_bytes: usize) -> Result<(), Status> {
    if encoded_len_bytes > MAX_REQUEST_BYTES {
        return Err(ApiError::Mvcc(MvccError::RequestTooLarge).status());
    }
    Ok(())
}
