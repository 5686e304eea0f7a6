//! A FUSE file system for tests that forgets, at a power cut, what was not synced:
//! file data written since the file's last fsync or fdatasync, and directory entries
//! created, renamed or removed since the directory's last fsync (model.rs says each
//! rule). raftkv's power-cut tests mount it over each member's data dir, kill the
//! members and cut the power of their file systems together.
//!
//! The pieces: `model` (the state and the rules), `fuse` (the kernel's requests),
//! `control` (the socket a test cuts the power through), and the `raftkv-lossyfs`
//! binary that mounts one. Never used by raftkv itself.

pub mod control;
pub mod fuse;
pub mod model;
