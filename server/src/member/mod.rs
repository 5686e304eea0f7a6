//! One member: start-up, who it is, how it reaches the leader, membership changes,
//! leader transfer, the quota check and restart safety. Everything that changes the key
//! space goes through openraft from here; this folder never speaks gRPC to clients
//! (api/ does) and never frames peer messages (peer/ does).

pub mod batching;
pub mod election;
pub mod identity;
mod join;
pub mod join_token;
pub mod leader_link;
pub mod lease_clocks;
mod membership;
pub mod node;
mod quota;
pub mod rollback_guard;
mod routing;
pub use routing::{PROPOSALS_FAILED, PROPOSALS_PENDING};
pub mod startup;
mod transfer;
