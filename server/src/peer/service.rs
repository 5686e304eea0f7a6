//! The peer service: serves the frames of the pipes accepted on the peer port
//! (wire.rs), handing Raft RPCs to openraft and forwarded requests to the member's
//! `PeerHandler`. Decoding failures are answered as errors, never panics.

use std::future::Future;
use std::sync::Arc;

use futures::stream::{FuturesUnordered, Stream, StreamExt};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::Raft;
use raftkv_proto::peer::{Blob, Frame};
use raftkv_storage::raft_types::{NodeId, TypeConfig};
use tokio::sync::mpsc;
use tonic::Status;

use crate::ids::hex;
use crate::peer::pipe::{reply_frame, PipeKind, MAX_PIPE_FRAMES_IN_FLIGHT, NO_REPLY_ID};
use crate::peer::wire::{FrameReader, PipeIo};
use crate::peer::{decode, encode, ForwardReply, ForwardRequest};

/// What the service needs of the member it answers for. The member decides what a
/// forwarded request means; this folder only carries it.
pub trait PeerHandler: Send + Sync + 'static {
    fn id(&self) -> NodeId;
    /// Restarted and not yet confirmed current by its peers (member/rollback_guard.rs):
    /// Raft messages are refused meanwhile.
    fn is_fenced(&self) -> bool;
    fn raft(&self) -> &Raft<TypeConfig>;
    /// Serves a request another member forwarded.
    fn serve_peer_request(
        &self,
        request: ForwardRequest,
    ) -> impl Future<Output = ForwardReply> + Send;
}

pub struct PeerService<H> {
    pub handler: Arc<H>,
}

impl<H> Clone for PeerService<H> {
    fn clone(&self) -> Self {
        PeerService {
            handler: self.handler.clone(),
        }
    }
}

impl<H: PeerHandler> PeerService<H> {
    /// Refuses a Raft message addressed to another member id (a member restarted with a
    /// wiped data dir, a new id at the old URL, must never answer for the member it
    /// was), and every Raft message while this member is fenced (member/rollback_guard.rs).
    fn check_target(&self, target: Option<NodeId>) -> Result<(), Status> {
        if self.handler.is_fenced() {
            // Aborted, not Unavailable: the sender retries at once rather than backing
            // off as from a dead member (network.rs); the fence lasts milliseconds.
            return Err(Status::aborted(
                "raftkv peer: this member restarted and is checking with its peers that its data dir is current",
            ));
        }
        let Some(target) = target else {
            return Ok(());
        };
        if target != self.handler.id() {
            tracing::warn!(
                addressed_to = %hex(target),
                "refusing Raft messages for another member: this data dir holds a different member (was it wiped?)"
            );
            return Err(Status::failed_precondition(format!(
                "raftkv peer: this is member {}, not {}",
                hex(self.handler.id()),
                hex(target)
            )));
        }
        Ok(())
    }

    /// Serves one request frame's payload.
    /// `answered`: the sender waits for the reply (a commit notice does not).
    async fn serve(
        &self,
        kind: PipeKind,
        target: Option<NodeId>,
        blob: Blob,
        answered: bool,
    ) -> Result<Blob, Status> {
        match kind {
            PipeKind::AppendEntries => {
                self.check_target(target)?;
                let rpc: AppendEntriesRequest<TypeConfig> = decode(&blob)?;
                let from = rpc.vote.leader_id().voted_for();
                let reply = encode(&self.handler.raft().append_entries(rpc).await);
                Ok(counted(from, &blob, answered, reply))
            }
            PipeKind::Vote => {
                self.check_target(target)?;
                let rpc: VoteRequest<NodeId> = decode(&blob)?;
                let from = rpc.vote.leader_id().voted_for();
                let reply = encode(&self.handler.raft().vote(rpc).await);
                Ok(counted(from, &blob, answered, reply))
            }
            PipeKind::InstallSnapshot => {
                self.check_target(target)?;
                let rpc: InstallSnapshotRequest<TypeConfig> = decode(&blob)?;
                let from = rpc.vote.leader_id().voted_for();
                let reply = encode(&self.handler.raft().install_snapshot(rpc).await);
                Ok(counted(from, &blob, answered, reply))
            }
            PipeKind::Forward => self.forward(&blob).await,
        }
    }

    async fn forward(&self, blob: &Blob) -> Result<Blob, Status> {
        let request: ForwardRequest = decode(blob)?;
        Ok(encode(&self.handler.serve_peer_request(request).await))
    }

    /// Serves one pipe frame; the reply carries its id.
    async fn serve_frame(&self, frame: Frame) -> Frame {
        let result = match PipeKind::from_wire(frame.kind) {
            Some(kind) => {
                let target = (frame.target != 0).then_some(frame.target);
                let answered = frame.id != NO_REPLY_ID;
                self.serve(kind, target, Blob { data: frame.data }, answered)
                    .await
                    .map(|blob| blob.data)
            }
            None => Err(Status::unimplemented(format!(
                "raftkv peer: unknown frame kind {}",
                frame.kind
            ))),
        };
        reply_frame(frame.id, result)
    }
}

/// Counts a Raft message from `from` and, when it is sent, this member's answer
/// (traffic.rs).
fn counted(from: Option<NodeId>, request: &Blob, answered: bool, reply: Blob) -> Blob {
    if let Some(from) = from {
        crate::peer::traffic::received(from, request.data.len());
        if answered {
            crate::peer::traffic::sent(from, reply.data.len());
        }
    }
    reply
}

/// Serves a pipe's frames, several at once (a vote must not wait behind a forwarded
/// write), until the sender closes it and every reply is out; a frame with
/// `NO_REPLY_ID` is served and not answered. At most `MAX_PIPE_FRAMES_IN_FLIGHT` are
/// served at once: beyond that no frame is read.
async fn serve_pipe<H: PeerHandler, S, E>(
    service: PeerService<H>,
    mut frames: S,
    replies: mpsc::Sender<Frame>,
) where
    S: Stream<Item = Result<Frame, E>> + Unpin,
{
    let mut in_flight = FuturesUnordered::new();
    let mut reading = true;
    loop {
        tokio::select! {
            frame = frames.next(), if reading && in_flight.len() < MAX_PIPE_FRAMES_IN_FLIGHT => {
                match frame {
                    Some(Ok(frame)) => in_flight.push(service.serve_frame(frame)),
                    // Closed by the sender, or broken: answer what was taken.
                    None | Some(Err(_)) => reading = false,
                }
            }
            Some(reply) = in_flight.next(), if !in_flight.is_empty() => {
                if reply.id == NO_REPLY_ID {
                    if reply.code != 0 {
                        tracing::debug!(code = reply.code, message = %reply.message, "a request that wants no reply failed");
                    }
                    continue;
                }
                if replies.send(reply).await.is_err() {
                    return;
                }
            }
            else => return,
        }
    }
}

/// Serves a pipe connection accepted on the peer port (wire.rs), preface done: its
/// frames, the replies written by a task of their own.
pub fn serve_pipe_connection<H: PeerHandler, T: PipeIo>(service: PeerService<H>, conn: T) {
    let (read, write) = tokio::io::split(conn);
    let (replies, outgoing) = mpsc::channel(MAX_PIPE_FRAMES_IN_FLIGHT);
    tokio::spawn(async move {
        if let Err(e) = crate::peer::wire::write_frames(write, outgoing).await {
            tracing::debug!(error = %e, "peer pipe connection broke while answering");
        }
    });
    tokio::spawn(serve_pipe(
        service,
        FrameReader::new(read).into_stream(),
        replies,
    ));
}
