//! Coalescing of leader round trips: linearizable reads that arrive together share one
//! read-index round (etcd's linearizableReadLoop does the same), and the writes a
//! follower forwards travel to the leader in batches, one peer RPC for many.
//!
//! Owns two queues and the tasks draining them. It never decides what a request means:
//! the leader serves each batched write exactly as a single one (`Node::serve_write`),
//! and a read-index round is `ForwardRequest::ReadIndex`. It must never hand a read an
//! index from a round that began before the read arrived (that read would not be
//! linearizable): a round only answers the reads queued before it started.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::errors::ApiError;
use crate::member::node::Node;
use crate::peer::{ForwardError, ForwardRequest, ForwardResponse};
use raftkv_storage::mvcc::Command;

/// Reads waiting for the next read-index round, at most.
pub const MAX_QUEUED_READS: usize = 65_536;
/// The pause before asking for a read index again after the leader could not confirm
/// its leadership.
const READ_INDEX_RETRY_MS: u64 = 20;
/// Writes waiting to be forwarded, at most (a full queue makes writers wait).
pub const MAX_QUEUED_FORWARDS: usize = 16_384;
/// Commands in one forwarded batch, at most.
pub const MAX_FORWARD_BATCH_COMMANDS: usize = 256;
/// Bytes of commands in one forwarded batch, at most (one command may exceed it alone).
pub const MAX_FORWARD_BATCH_BYTES: usize = 4 << 20;
/// Forwarded batches in flight to the leader at once, per member.
pub const MAX_FORWARD_BATCHES_IN_FLIGHT: usize = 4;

type ReadWaiter = oneshot::Sender<Result<u64, ApiError>>;

/// What a forwarded write answered: the result and the log index it was applied at.
pub type WriteOutcome = Result<(raftkv_storage::mvcc::CommandResult, u64), ApiError>;

struct QueuedWrite {
    command: Command,
    size_bytes: usize,
    reply: oneshot::Sender<WriteOutcome>,
}

/// The queues; the tasks draining them hold only a weak reference to the node.
pub struct Coalescer {
    reads: mpsc::Sender<ReadWaiter>,
    writes: mpsc::Sender<QueuedWrite>,
}

impl Coalescer {
    /// Makes the queues and starts their tasks for `node` (which may still be under
    /// construction: the tasks upgrade it only when a request arrives).
    pub fn start(node: Weak<Node>) -> Coalescer {
        let (reads, read_rx) = mpsc::channel(MAX_QUEUED_READS);
        let (writes, write_rx) = mpsc::channel(MAX_QUEUED_FORWARDS);
        tokio::spawn(read_rounds(node.clone(), read_rx));
        tokio::spawn(forward_batches(node, write_rx));
        Coalescer { reads, writes }
    }

    /// The leader's read index, from a round that starts after this call.
    pub async fn read_index(&self) -> Result<u64, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.reads.send(tx).await.map_err(|_| ApiError::Stopped)?;
        rx.await.map_err(|_| ApiError::Stopped)?
    }

    /// Forwards `command` to the leader in the next batch; what applying it answered.
    pub async fn forward_write(&self, command: Command) -> WriteOutcome {
        let (tx, rx) = oneshot::channel();
        let size_bytes = command.size_bytes();
        let queued = QueuedWrite {
            command,
            size_bytes,
            reply: tx,
        };
        self.writes
            .send(queued)
            .await
            .map_err(|_| ApiError::Stopped)?;
        rx.await.map_err(|_| ApiError::Stopped)?
    }
}

/// One read-index round at a time; each answers every read queued before it began.
async fn read_rounds(node: Weak<Node>, mut rx: mpsc::Receiver<ReadWaiter>) {
    let mut waiters = Vec::new();
    while let Some(first) = rx.recv().await {
        waiters.push(first);
        while waiters.len() < MAX_QUEUED_READS {
            match rx.try_recv() {
                Ok(w) => waiters.push(w),
                Err(_) => break,
            }
        }
        let Some(node) = node.upgrade() else { return };
        let deadline = tokio::time::Instant::now() + node.config.request_timeout();
        let result = loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            match node.on_leader(ForwardRequest::ReadIndex, remaining).await {
                Ok(ForwardResponse::ReadIndex(index)) => break Ok(index),
                Ok(other) => break Err(ApiError::Internal(format!("unexpected reply {other:?}"))),
                // The leader could not hear from a quorum this time (a heartbeat lost
                // to a busy follower): ask again while the request has time and the
                // cluster still has a leader that heard from a quorum lately, as etcd
                // retries its read index. A later index still serves these reads.
                Err(ApiError::Timeout)
                    if node.leader().is_some()
                        && deadline.saturating_duration_since(tokio::time::Instant::now())
                            > Duration::from_millis(READ_INDEX_RETRY_MS) =>
                {
                    tokio::time::sleep(Duration::from_millis(READ_INDEX_RETRY_MS)).await;
                }
                Err(e) => break Err(e),
            }
        };
        drop(node);
        for w in waiters.drain(..) {
            let _ = w.send(result.clone());
        }
    }
}

/// Drains queued writes into batches, up to MAX_FORWARD_BATCHES_IN_FLIGHT at once: while
/// every slot is busy, writes pile up and the next batch takes them all.
async fn forward_batches(node: Weak<Node>, mut rx: mpsc::Receiver<QueuedWrite>) {
    let slots = Arc::new(Semaphore::new(MAX_FORWARD_BATCHES_IN_FLIGHT));
    let mut next: Option<QueuedWrite> = None;
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match next.take() {
            Some(w) => w,
            None => match rx.recv().await {
                Some(w) => w,
                None => return,
            },
        };
        let mut batch_bytes = first.size_bytes;
        let mut batch = vec![first];
        while batch.len() < MAX_FORWARD_BATCH_COMMANDS {
            match rx.try_recv() {
                Ok(w) if batch_bytes + w.size_bytes > MAX_FORWARD_BATCH_BYTES => {
                    next = Some(w);
                    break;
                }
                Ok(w) => {
                    batch_bytes += w.size_bytes;
                    batch.push(w);
                }
                Err(_) => break,
            }
        }
        let Some(node) = node.upgrade() else { return };
        tokio::spawn(async move {
            send_batch(&node, batch).await;
            drop(permit);
        });
    }
}

/// Sends one batch to the leader and answers each write in it. A write the leader could
/// not take (it lost leadership first) goes again on its own, through `on_leader`.
async fn send_batch(node: &Node, batch: Vec<QueuedWrite>) {
    let timeout = node.config.request_timeout();
    let (commands, replies): (Vec<Command>, Vec<(usize, oneshot::Sender<WriteOutcome>)>) = batch
        .into_iter()
        .map(|w| (w.command, (w.size_bytes, w.reply)))
        .unzip();
    if commands.len() == 1 {
        let command = commands.into_iter().next();
        if let (Some(command), Some((_, reply))) = (command, replies.into_iter().next()) {
            let _ = reply.send(single(node, command, timeout).await);
        }
        return;
    }
    let retry = commands.clone();
    match node
        .on_leader(ForwardRequest::Writes(commands), timeout)
        .await
    {
        Ok(ForwardResponse::Writes(results)) if results.len() == replies.len() => {
            for ((result, (_, reply)), command) in results.into_iter().zip(replies).zip(retry) {
                let outcome = match result {
                    Ok((result, index)) => Ok((result, index)),
                    Err(ForwardError::Api(e)) => Err(e),
                    Err(ForwardError::NotLeader) => single(node, command, timeout).await,
                };
                let _ = reply.send(outcome);
            }
        }
        Ok(other) => {
            let e = ApiError::Internal(format!("unexpected reply to a write batch: {other:?}"));
            for (_, reply) in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for (_, reply) in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

async fn single(node: &Node, command: Command, timeout: Duration) -> WriteOutcome {
    match node
        .on_leader(ForwardRequest::Write(command), timeout)
        .await?
    {
        ForwardResponse::Write(result, index) => Ok((result, index)),
        other => Err(ApiError::Internal(format!("unexpected reply {other:?}"))),
    }
}
