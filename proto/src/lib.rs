//! Wire definitions: the etcd v3 gRPC services and raftkv's peer protocol.
//!
//! Nothing lives here yet. The .proto files and their generated code arrive with the
//! server (issue 3); until then no crate depends on this one, and it offers no API that
//! could be mistaken for a working one.
