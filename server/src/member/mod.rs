//! One member: start-up, who it is, how it reaches the leader, membership changes,
//! leader transfer, the quota check and restart safety. Everything that changes the key
//! space goes through openraft from here; this folder never speaks gRPC to clients
//! (api/ does) and never frames peer messages (peer/ does).

pub mod batching;
pub mod identity;
pub mod join_token;
pub mod lease_clocks;
pub mod node;
pub mod rollback_guard;
