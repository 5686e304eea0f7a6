//! Users and roles at the server's edge: what the Raft log and the key space must
//! never see (passwords in the clear) and what only a serving member does with them.
//! The auth store's state and its rules live in storage (`raftkv_storage::auth`).
//!
//! - `password.rs`: bcrypt hashing before a change is proposed, and checking
//!   a password when a user authenticates;
//! - `jwt.rs`: `--auth-token`, and JWTs signed and checked by their signature.

pub mod jwt;
pub mod password;
