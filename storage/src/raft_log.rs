//! openraft's log storage over the WAL: entries, vote and committed log id.
//!
//! The entries not yet purged are kept in memory (as etcd's raft MemoryStorage does),
//! decoded, so readers never touch the disk; the WAL makes them durable. How many
//! there are is bounded by the snapshot policy, which purges the log behind snapshots.
//!
//! Invariants: entries are contiguous, except for the gap a snapshot install leaves
//! until its purge lands; an append is reported durable only from the WAL writer after
//! fdatasync; a vote is durable before `save_vote` returns; a purge never goes past
//! `purge_guard`, the index the state machine has durably absorbed. A purge asked for
//! past the guard (openraft purges behind a snapshot it is still installing) is held
//! back and done at the first append after the guard reached it.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{RaftLogId, StorageIOError};

use crate::raft_types::{Entry, LogId, StorageError, TypeConfig, Vote};
use crate::wal::{OpenReport, RecordKind, Request, Wal, WalError, WalOptions};

#[derive(Default)]
struct Memory {
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    /// A purge asked for past the purge guard, to do once the guard reaches it.
    purge_pending: Option<LogId>,
}

impl Memory {
    /// Drops the entries up to `log_id`; false if the log was purged that far already.
    fn purge_to(&mut self, log_id: LogId) -> bool {
        if self.last_purged.is_some_and(|p| p.index >= log_id.index) {
            return false;
        }
        self.entries = self.entries.split_off(&(log_id.index + 1));
        self.last_purged = Some(log_id);
        true
    }

    /// The index just before the first entry after the newest gap, if there is one.
    fn gap_end(&self) -> Option<u64> {
        let mut previous = self.last_purged.map(|p| p.index);
        let mut end = None;
        for &index in self.entries.keys() {
            if previous.is_some_and(|p| index > p + 1) {
                end = Some(index - 1);
            }
            previous = Some(index);
        }
        end
    }

    fn last_log_id(&self) -> Option<LogId> {
        self.entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(self.last_purged)
    }

    /// Replays one WAL record; refuses what would leave a hole.
    fn replay(&mut self, kind: RecordKind, payload: &[u8]) -> Result<(), String> {
        match kind {
            RecordKind::Entry => {
                let (index, entry) = decode_entry(payload)?;
                if self.last_purged.is_some_and(|p| index <= p.index) {
                    return Ok(());
                }
                self.check_next(index)?;
                self.entries.insert(index, entry);
            }
            RecordKind::Truncate => {
                let since = leading_u64(payload)?;
                self.entries.split_off(&since);
            }
            RecordKind::Purge => {
                leading_u64(payload)?;
                let log_id: LogId = decode(&payload[8..])?;
                if self.last_purged.is_none_or(|p| p.index < log_id.index) {
                    self.last_purged = Some(log_id);
                }
                self.entries = self.entries.split_off(&(log_id.index + 1));
            }
            RecordKind::Vote => self.vote = Some(decode(payload)?),
            RecordKind::Committed => self.committed = decode(payload)?,
            RecordKind::SegmentHeader => return Err("unexpanded segment header".into()),
            RecordKind::Resume => return Err("a resume record reached the log store".into()),
        }
        Ok(())
    }

    /// An entry must follow the last one, or leave a gap forward: after openraft installs
    /// a snapshot it appends the entries after the snapshot before it purges the older
    /// ones the snapshot covers (openraft 0.9 issues the purge later). Going backwards
    /// without a Truncate record is refused.
    fn check_next(&self, index: u64) -> Result<(), String> {
        let expected = match (self.entries.keys().next_back(), self.last_purged) {
            (Some(last), _) => Some(last + 1),
            (None, Some(purged)) => Some(purged.index + 1),
            (None, None) => None,
        };
        match expected {
            Some(expected) if index < expected => Err(format!(
                "entry {index} does not follow entry {}",
                expected - 1
            )),
            Some(expected) if index > expected => {
                tracing::info!(
                    from = expected,
                    to = index - 1,
                    "raft log: a gap covered by an installed snapshot; the older entries will be purged"
                );
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

struct Shared {
    memory: RwLock<Memory>,
    wal: Wal,
    purge_guard: Arc<AtomicU64>,
}

/// The Raft log. Clones share the same log.
#[derive(Clone)]
pub struct RaftLogStore {
    shared: Arc<Shared>,
}

impl RaftLogStore {
    /// Opens the log in `dir`. `purge_guard` holds the highest log index the state
    /// machine has made durable (u64::MAX: no limit); purges never pass it.
    pub fn open(
        dir: &Path,
        options: WalOptions,
        purge_guard: Arc<AtomicU64>,
    ) -> Result<(RaftLogStore, OpenReport), WalError> {
        let mut memory = Memory::default();
        let (wal, report) = Wal::open(dir, options, |kind, payload| memory.replay(kind, payload))?;
        tracing::info!(
            segments = report.segments,
            records = report.records,
            entries = memory.entries.len(),
            last_log = ?memory.last_log_id(),
            "raft log opened"
        );
        Ok((
            RaftLogStore {
                shared: Arc::new(Shared {
                    memory: RwLock::new(memory),
                    wal,
                    purge_guard,
                }),
            },
            report,
        ))
    }

    fn memory(&self) -> std::sync::RwLockReadGuard<'_, Memory> {
        self.shared.memory.read().unwrap_or_else(|e| e.into_inner())
    }

    fn memory_mut(&self) -> std::sync::RwLockWriteGuard<'_, Memory> {
        self.shared
            .memory
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Start-up, with the state machine's last applied log id: a log left with a gap by a
    /// snapshot install whose purge never landed (the member stopped first) is purged
    /// up to what the state machine holds, if that covers the gap. If it does not, the
    /// install did not finish, and openraft could not start on this log: the error says
    /// how to get the member back.
    pub async fn purge_gap_covered_by(&mut self, applied: Option<LogId>) -> Result<(), String> {
        let Some(end) = self.memory().gap_end() else {
            return Ok(());
        };
        let applied = match applied {
            Some(applied) if applied.index >= end => applied,
            _ => {
                return Err(format!(
                    "the raft log has a gap up to entry {end} that a snapshot install was \
                     filling when this member stopped, but the key space holds only up to \
                     entry {}: remove this member (`raftkv member remove`) and add it back \
                     with an empty data dir",
                    applied.map_or(0, |a| a.index)
                ));
            }
        };
        if !self.memory_mut().purge_to(applied) {
            return Ok(());
        }
        tracing::info!(gap_end = end, purged = %applied, "raft log: purged a gap an installed snapshot covers");
        self.write_durably(vec![purge_record(applied)])
            .await
            .map_err(|e| e.to_string())
    }

    /// Entries held in memory (not yet purged).
    pub fn entries_in_memory(&self) -> usize {
        self.memory().entries.len()
    }

    /// The voters of the newest membership entry still in the log, if there is one
    /// (older ones live in the state machine). Scans from the end: for start-up only.
    pub fn last_membership_voters(&self) -> Option<Vec<crate::raft_types::NodeId>> {
        self.memory()
            .entries
            .values()
            .rev()
            .find_map(|entry| match &entry.payload {
                openraft::EntryPayload::Membership(m) => Some(m.voter_ids().collect()),
                _ => None,
            })
    }

    /// Writes records and waits until they are durable.
    async fn write_durably(
        &self,
        records: Vec<(RecordKind, Vec<u8>)>,
    ) -> Result<(), std::io::Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let request = Request {
            records,
            sync: true,
            done: Box::new(move |result| {
                let _ = tx.send(result);
            }),
        };
        self.shared
            .wal
            .submit(request)
            .await
            .map_err(std::io::Error::other)?;
        rx.await
            .map_err(|_| std::io::Error::other("wal writer stopped"))?
    }

    /// Writes records without waiting for them to be durable.
    async fn write_lazily(
        &self,
        records: Vec<(RecordKind, Vec<u8>)>,
        sync: bool,
    ) -> Result<(), std::io::Error> {
        let request = Request {
            records,
            sync,
            done: Box::new(|result| {
                if let Err(e) = result {
                    tracing::error!(error = %e, "raft log: background write failed");
                }
            }),
        };
        self.shared
            .wal
            .submit(request)
            .await
            .map_err(std::io::Error::other)
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("encoding into memory cannot fail")
}

fn decode<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("undecodable record: {e}"))
}

fn leading_u64(payload: &[u8]) -> Result<u64, String> {
    payload
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| "record too short".to_string())
}

/// The index, then the entry, encoded into one buffer sized up front (growing it from
/// empty cost several reallocations per entry on the leader's RaftCore task).
fn encode_entry(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + entry_size_bytes(entry));
    out.extend_from_slice(&entry.log_id.index.to_le_bytes());
    postcard::to_extend(entry, out).expect("encoding into memory cannot fail")
}

fn decode_entry(payload: &[u8]) -> Result<(u64, Entry), String> {
    let index = leading_u64(payload)?;
    let entry: Entry = decode(&payload[8..])?;
    if entry.log_id.index != index {
        return Err(format!(
            "entry framed as {index} holds index {}",
            entry.log_id.index
        ));
    }
    Ok((index, entry))
}

fn read_range(memory: &Memory, range: impl RangeBounds<u64>) -> Vec<Entry> {
    let start = range.start_bound().cloned();
    let end = range.end_bound().cloned();
    if let (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e)) =
        (start, end)
    {
        if s > e {
            return Vec::new();
        }
    }
    memory
        .entries
        .range((start, end))
        .map(|(_, e)| e.clone())
        .collect()
}

/// The most entry bytes (about: `Command::size_bytes`) one AppendEntries carries, however
/// many entries openraft's `max_payload_entries` allows: each follower has one append in
/// flight, and its frame holds the peer pipe (heartbeats and commit notices wait behind
/// it) for as long as it takes to send, about 35 ms at 1 Gbit/s.
pub const APPEND_BATCH_MAX_BYTES: usize = 4 << 20;

/// The entries of [start, end) from the first, up to `max_bytes` (always the first one:
/// a single entry larger than that still has to go).
fn read_limited(memory: &Memory, start: u64, end: u64, max_bytes: usize) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut total_bytes = 0usize;
    for (_, entry) in memory.entries.range(start..end.max(start)) {
        total_bytes = total_bytes.saturating_add(entry_size_bytes(entry));
        if !out.is_empty() && total_bytes > max_bytes {
            break;
        }
        out.push(entry.clone());
    }
    out
}

/// About how many bytes an entry takes in an append (see `encode_entry`).
fn entry_size_bytes(entry: &Entry) -> usize {
    /// The log id, the payload's tag and the command's framing beyond `size_bytes`.
    const ENTRY_FRAMING_BYTES: usize = 48;
    ENTRY_FRAMING_BYTES
        + match &entry.payload {
            openraft::EntryPayload::Normal(command) => command.size_bytes(),
            _ => 0,
        }
}

impl RaftLogReader<TypeConfig> for RaftLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(read_range(&self.memory(), range))
    }

    /// What replication sends in one AppendEntries: a prefix of [start, end) of at most
    /// `APPEND_BATCH_MAX_BYTES` (at least one entry).
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(read_limited(
            &self.memory(),
            start,
            end,
            APPEND_BATCH_MAX_BYTES,
        ))
    }
}

impl RaftLogStorage<TypeConfig> for RaftLogStore {
    type LogReader = RaftLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let memory = self.memory();
        Ok(LogState {
            last_purged_log_id: memory.last_purged,
            last_log_id: memory.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_durably(vec![(RecordKind::Vote, encode(vote))])
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.memory_mut().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.memory().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: the WAL holds it back and writes it in front of the next append
        // (or at close), under that append's fdatasync. Losing it only means
        // replaying a little more of the log after a crash.
        self.write_lazily(vec![(RecordKind::Committed, encode(&committed))], false)
            .await
            .map_err(|e| StorageIOError::write(&e))?;
        self.memory_mut().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.memory().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut records = Vec::new();
        let mut appended = 0u64;
        {
            let mut memory = self.memory_mut();
            let guard = self.shared.purge_guard.load(Ordering::SeqCst);
            if let Some(pending) = memory.purge_pending.filter(|p| p.index <= guard) {
                memory.purge_pending = None;
                if memory.purge_to(pending) {
                    // Durable with these entries' fdatasync, and replayed before them.
                    records.push(purge_record(pending));
                    tracing::info!(purged = %pending, "raft log: a held-back purge done, the state machine holds it now");
                }
            }
            for entry in entries {
                let index = entry.get_log_id().index;
                if memory.last_purged.is_some_and(|p| index <= p.index) {
                    // Already covered by the purge point (a snapshot holds it).
                    continue;
                }
                memory.check_next(index).map_err(|reason| {
                    StorageIOError::write_log_entry(
                        *entry.get_log_id(),
                        &std::io::Error::other(reason),
                    )
                })?;
                records.push((RecordKind::Entry, encode_entry(&entry)));
                appended += 1;
                memory.entries.insert(index, entry);
                debug_assert_eq!(
                    memory.entries.keys().next_back(),
                    Some(&index),
                    "log ids grow at the tail only"
                );
            }
        }
        if records.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        crate::stats::LOG_APPENDS.fetch_add(1, Ordering::Relaxed);
        crate::stats::LOG_APPENDED_ENTRIES.fetch_add(appended, Ordering::Relaxed);
        let request = Request {
            records,
            sync: true,
            done: Box::new(move |result| callback.log_io_completed(result)),
        };
        self.shared
            .wal
            .submit(request)
            .await
            .map_err(|e| StorageIOError::write_logs(&std::io::Error::other(e)))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.memory_mut().entries.split_off(&log_id.index);
        self.write_durably(vec![(
            RecordKind::Truncate,
            log_id.index.to_le_bytes().to_vec(),
        )])
        .await
        .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let guard = self.shared.purge_guard.load(Ordering::SeqCst);
        let log_id = if log_id.index > guard {
            let mut memory = self.memory_mut();
            // openraft does not ask again: the next append after the guard rises does it.
            if memory.purge_pending.is_none_or(|p| p.index < log_id.index) {
                memory.purge_pending = Some(log_id);
            }
            // The state machine has not made these durable yet: keep them.
            let clamped = memory.entries.get(&guard).map(|e| e.log_id);
            drop(memory);
            let Some(clamped) = clamped else {
                tracing::warn!(asked = %log_id, guard, "raft log: purge refused, the state machine has not flushed that far");
                return Ok(());
            };
            tracing::warn!(asked = %log_id, purged = %clamped, "raft log: purge held back to what the state machine has flushed");
            clamped
        } else {
            log_id
        };
        debug_assert!(
            log_id.index <= guard,
            "a purge past the purge guard: {} > {guard}",
            log_id.index
        );
        if !self.memory_mut().purge_to(log_id) {
            return Ok(());
        }
        self.write_lazily(vec![purge_record(log_id)], true)
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

/// The WAL record of a purge up to `log_id`.
fn purge_record(log_id: LogId) -> (RecordKind, Vec<u8>) {
    let mut payload = log_id.index.to_le_bytes().to_vec();
    payload.extend_from_slice(&encode(&log_id));
    (RecordKind::Purge, payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::{Command, PutRequest};
    use openraft::{CommittedLeaderId, EntryPayload};

    fn put(index: u64, value_bytes: usize) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::Put(PutRequest {
                key: bytes::Bytes::from(format!("k{index}")),
                value: bytes::Bytes::from(vec![7u8; value_bytes]),
                ..PutRequest::default()
            })),
        }
    }

    fn memory_of(entries: Vec<Entry>) -> Memory {
        let mut memory = Memory::default();
        for e in entries {
            memory.entries.insert(e.log_id.index, e);
        }
        memory
    }

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    #[test]
    fn an_append_stops_at_the_byte_budget_and_never_comes_back_empty() {
        // Ten entries of about 1 KiB each.
        let memory = memory_of((1..=10).map(|i| put(i, 1000)).collect());
        let one = entry_size_bytes(&put(1, 1000));
        assert!(one > 1000 && one < 1100, "size estimate {one}");
        // Budget for three and a half: three go.
        assert_eq!(
            indexes(&read_limited(&memory, 1, 11, one * 7 / 2)),
            vec![1, 2, 3]
        );
        // Exactly three.
        assert_eq!(
            indexes(&read_limited(&memory, 4, 11, one * 3)),
            vec![4, 5, 6]
        );
        // A budget under one entry still sends that entry, alone.
        assert_eq!(indexes(&read_limited(&memory, 5, 11, 10)), vec![5]);
        // The range's end bounds it too; an empty range is empty.
        assert_eq!(
            indexes(&read_limited(&memory, 8, 10, usize::MAX)),
            vec![8, 9]
        );
        assert!(read_limited(&memory, 8, 8, usize::MAX).is_empty());
        assert!(read_limited(&memory, 9, 3, usize::MAX).is_empty());
    }

    #[test]
    fn the_budget_holds_a_full_batch_of_the_largest_requests_apart() {
        // Requests are at most 1.5 MiB (etcd's --max-request-bytes): an append of them
        // carries two, not max_payload_entries of them.
        let memory = memory_of((1..=10).map(|i| put(i, 3 << 19)).collect());
        assert_eq!(
            indexes(&read_limited(&memory, 1, 11, APPEND_BATCH_MAX_BYTES)),
            vec![1, 2]
        );
    }
}
