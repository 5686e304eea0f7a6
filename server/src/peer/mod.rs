//! Member-to-member traffic: the forwarded-request protocol, the pool of connections to
//! other members, openraft's network over it, the pipes and their wire, and the service
//! that answers peers. It never decides what a forwarded request means: the member that
//! serves it does (`service::PeerHandler`).

pub mod network;
pub mod pipe;
pub mod pool;
pub mod protocol;
pub mod rtt;
pub mod service;
pub mod traffic;
pub mod wire;

pub use protocol::{
    decode, encode, Floor, Floors, ForwardError, ForwardReply, ForwardRequest, ForwardResponse,
    JoinProof,
};
