//! Sizes and times shared by several folders. Imports nothing of the crate.

/// Largest peer message: an AppendEntries batch or a snapshot chunk.
pub const MAX_PEER_MESSAGE_SIZE_BYTES: usize = 256 << 20;

/// How long a join may take: the leader adds the new member as a learner and waits for
/// it to catch up before promoting it.
pub const JOIN_TIMEOUT_MS: u64 = 120_000;
