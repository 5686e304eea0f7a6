//! Coalescing of leader round trips: linearizable reads that arrive together share one
//! read-index round (etcd's linearizableReadLoop does the same), and the writes a
//! follower forwards travel to the leader in batches, one peer RPC for many.
//!
//! Owns two queues and the tasks draining them, which reach the leader through the
//! `LeaderLink` and never through the Node. It never decides what a request means: the
//! leader serves each batched write exactly as a single one (`Node::propose_here`), and
//! a read-index round is `ForwardRequest::ReadIndex`. It must never hand a read an
//! index from a round that began before the read arrived (that read would not be
//! linearizable): a round only answers the reads queued before it started.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::leader_link::{LeaderLink, Route};
use crate::errors::ApiError;
use crate::peer::{ForwardError, ForwardRequest, ForwardResponse};
use raftkv_storage::mvcc::Command;

/// Reads waiting for the next read-index round, at most.
pub const MAX_QUEUED_READS: usize = 65_536;
/// Writes waiting to be forwarded, at most (a full queue makes writers wait).
pub const MAX_QUEUED_FORWARDS: usize = 16_384;
/// Commands in one forwarded batch, at most.
pub const MAX_FORWARD_BATCH_COMMANDS: usize = 256;
/// Bytes of commands in one forwarded batch, at most (one command may exceed it alone).
pub const MAX_FORWARD_BATCH_BYTES: usize = 4 << 20;
/// Forwarded batches in flight to the leader at once, per member.
pub const MAX_FORWARD_BATCHES_IN_FLIGHT: usize = 4;

type ReadWaiter = oneshot::Sender<Result<u64, ApiError>>;

/// What a forwarded write answered: the result and the log index it was applied at, or
/// `NotLeader` when it was not executed and must be routed again.
pub type WriteOutcome = Result<(raftkv_storage::mvcc::CommandResult, u64), ForwardError>;

struct QueuedWrite {
    command: Command,
    size_bytes: usize,
    reply: oneshot::Sender<WriteOutcome>,
}

/// The queues; the tasks draining them hold the way to the leader, not the node.
pub struct Coalescer {
    reads: mpsc::Sender<ReadWaiter>,
    writes: mpsc::Sender<QueuedWrite>,
}

impl Coalescer {
    /// Makes the queues and starts their tasks; each round or batch may take up to
    /// `timeout`.
    pub fn start(link: LeaderLink, timeout: Duration) -> Coalescer {
        let (reads, read_rx) = mpsc::channel(MAX_QUEUED_READS);
        let (writes, write_rx) = mpsc::channel(MAX_QUEUED_FORWARDS);
        tokio::spawn(read_rounds(link.clone(), timeout, read_rx));
        tokio::spawn(forward_batches(link, timeout, write_rx));
        Coalescer { reads, writes }
    }

    /// The leader's read index, from a round that starts after this call.
    pub async fn read_index(&self) -> Result<u64, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.reads.send(tx).await.map_err(|_| ApiError::Stopped)?;
        rx.await.map_err(|_| ApiError::Stopped)?
    }

    /// Forwards `command` to the leader in the next batch; what applying it answered.
    /// `NotLeader` when no other member leads by the time the batch leaves.
    pub async fn forward_write(&self, command: Command) -> WriteOutcome {
        let (tx, rx) = oneshot::channel();
        let size_bytes = command.size_bytes();
        let queued = QueuedWrite {
            command,
            size_bytes,
            reply: tx,
        };
        let stopped = |_| ForwardError::Api(ApiError::Stopped);
        self.writes.send(queued).await.map_err(stopped)?;
        rx.await.map_err(|_| ForwardError::Api(ApiError::Stopped))?
    }
}

/// One read-index round at a time; each answers every read queued before it began.
async fn read_rounds(link: LeaderLink, timeout: Duration, mut rx: mpsc::Receiver<ReadWaiter>) {
    let mut waiters = Vec::new();
    while let Some(first) = rx.recv().await {
        waiters.push(first);
        while waiters.len() < MAX_QUEUED_READS {
            match rx.try_recv() {
                Ok(w) => waiters.push(w),
                Err(_) => break,
            }
        }
        let result = read_index(&link, Instant::now() + timeout).await;
        for w in waiters.drain(..) {
            let _ = w.send(result.clone());
        }
    }
}

/// The leader's read index, asked here or of the leader, by `deadline`.
async fn read_index(link: &LeaderLink, deadline: Instant) -> Result<u64, ApiError> {
    link.until_served(deadline, |route, remaining| async move {
        let reply = match route {
            Route::Remote(leader) => {
                link.forward(leader, &ForwardRequest::ReadIndex, remaining)
                    .await
            }
            _ => link.read_index_here().await,
        };
        match reply {
            Ok(ForwardResponse::ReadIndex(index)) => Ok(index),
            Ok(other) => Err(ForwardError::Api(ApiError::Internal(format!(
                "unexpected reply {other:?}"
            )))),
            // The leader could not hear from a quorum this time (a heartbeat lost to a
            // busy follower): ask again while the request has time and the cluster
            // still has a leader that heard from a quorum lately, as etcd retries its
            // read index. A later index still serves these reads.
            Err(ForwardError::Api(ApiError::Timeout)) if link.leader().is_some() => {
                Err(ForwardError::NotLeader)
            }
            Err(e) => Err(e),
        }
    })
    .await
}

/// Drains queued writes into batches, up to MAX_FORWARD_BATCHES_IN_FLIGHT at once: while
/// every slot is busy, writes pile up and the next batch takes them all.
async fn forward_batches(link: LeaderLink, timeout: Duration, mut rx: mpsc::Receiver<QueuedWrite>) {
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
        let link = link.clone();
        tokio::spawn(async move {
            send_batch(&link, timeout, batch).await;
            drop(permit);
        });
    }
}

/// Sends one batch to the leader and answers each write in it: `NotLeader` for each
/// when no other member leads now, or when the leader could not take them (the
/// proposer routes those again).
async fn send_batch(link: &LeaderLink, timeout: Duration, batch: Vec<QueuedWrite>) {
    let count = batch.len();
    let (commands, replies): (Vec<Command>, Vec<oneshot::Sender<WriteOutcome>>) =
        batch.into_iter().map(|w| (w.command, w.reply)).unzip();
    let Route::Remote(leader) = link.route() else {
        for reply in replies {
            let _ = reply.send(Err(ForwardError::NotLeader));
        }
        return;
    };
    let request = match <[Command; 1]>::try_from(commands) {
        Ok([command]) => ForwardRequest::Write(command),
        Err(commands) => ForwardRequest::Writes(commands),
    };
    let outcomes: Vec<WriteOutcome> = match link.forward(leader, &request, timeout).await {
        Ok(ForwardResponse::Write(result, index)) if count == 1 => vec![Ok((result, index))],
        Ok(ForwardResponse::Writes(results)) if results.len() == count => results,
        Ok(other) => {
            let e = ApiError::Internal(format!("unexpected reply to a write batch: {other:?}"));
            vec![Err(ForwardError::Api(e)); count]
        }
        Err(e) => vec![Err(e); count],
    };
    debug_assert_eq!(outcomes.len(), replies.len());
    for (outcome, reply) in outcomes.into_iter().zip(replies) {
        let _ = reply.send(outcome);
    }
}
