//! etcd v3's wire types and services, and raftkv's peer protocol, generated from the
//! .proto files in `proto/proto` (written from etcd's documented wire format).
//!
//! This crate owns nothing but the wire: no behaviour, no conversions. The server turns
//! these messages into the storage crate's plain types.

#![allow(clippy::all, clippy::pedantic)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod authpb {
    tonic::include_proto!("authpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod peer {
    tonic::include_proto!("raftkv.peer");
}

pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// etcd's gRPC limits: a request may be up to 1.5 MiB plus 512 KiB of gRPC overhead.
pub const MAX_REQUEST_SIZE_BYTES: usize = 1536 * 1024;
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// What etcd sends at most in one response.
pub const MAX_SEND_SIZE_BYTES: usize = i32::MAX as usize;
