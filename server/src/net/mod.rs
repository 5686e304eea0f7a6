//! Connection plumbing shared by the client and peer listeners: TLS (rustls, reload on
//! change) and the client connections' coalesced writes. Imports nothing of the crate.

pub mod coalesced_io;
pub mod tls;
