//! The `raftkv` binary.
//!
//! The server (gRPC services, Raft glue, flags) is built in the server issue. Until then
//! this binary says so and exits non-zero rather than pretend to serve anything.

fn main() {
    eprintln!("raftkv: the server is not built yet; only the storage crate exists so far (see ARCHITECTURE.md)");
    std::process::exit(2);
}
