//! Routing to the leader: a write proposed on the leader or forwarded by a follower,
//! the read index, and what the leader serves for other members.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use raftkv_storage::mvcc::{Command, CommandResponse, CommandResult};

use super::leader_link::Route;
use super::node::Node;
use super::transfer::electing;
use crate::errors::ApiError;
use crate::peer::{ForwardError, ForwardReply, ForwardRequest, ForwardResponse};

/// Writes through this member that were proposed and failed (no leader, out of time,
/// stopping, or the client gone first): etcd's `etcd_server_proposals_failed_total`.
pub static PROPOSALS_FAILED: AtomicU64 = AtomicU64::new(0);
/// Writes through this member proposed and not yet applied here:
/// `etcd_server_proposals_pending`.
pub static PROPOSALS_PENDING: AtomicU64 = AtomicU64::new(0);

/// One pending write, counted until it is dropped; one that was not marked applied by
/// then failed (an error, or a client that went away and dropped the request).
struct Pending {
    applied: bool,
}

impl Pending {
    fn start() -> Pending {
        PROPOSALS_PENDING.fetch_add(1, Ordering::Relaxed);
        Pending { applied: false }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        PROPOSALS_PENDING.fetch_sub(1, Ordering::Relaxed);
        if !self.applied {
            PROPOSALS_FAILED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Node {
    /// Runs a write through Raft (via the leader) and returns what applying it answered,
    /// once this member has applied it too: as with etcd, a client reads its own writes
    /// from the member it wrote through, and response headers are never behind.
    pub async fn write(&self, command: Command) -> Result<CommandResponse, ApiError> {
        if command.needs_space() {
            self.check_space().await?;
        }
        let deadline = Instant::now() + self.config.request_timeout();
        let mut pending = Pending::start();
        let (result, index) = self.propose(command, deadline).await?;
        self.wait_applied(index, deadline.saturating_duration_since(Instant::now()))
            .await?;
        pending.applied = true;
        Ok(result?)
    }

    /// Proposes `command` where the leader is: directly when this member leads, else in
    /// the next batch a follower forwards (batching.rs). What applying it answered and
    /// its log index.
    async fn propose(
        &self,
        command: Command,
        deadline: Instant,
    ) -> Result<(CommandResult, u64), ApiError> {
        // A copy per attempt: a proposal refused for want of leadership consumed it.
        self.link
            .until_served(deadline, |route, remaining| {
                let command = command.clone();
                async move {
                    match route {
                        Route::Here => tokio::time::timeout(remaining, self.propose_here(command))
                            .await
                            .unwrap_or(Err(ForwardError::Api(ApiError::Timeout))),
                        _ => self.coalescer.forward_write(command).await,
                    }
                }
            })
            .await
    }

    /// Waits until this member has applied the log up to `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), ApiError> {
        let waited = tokio::time::timeout(timeout, self.applied_index.wait_for(index)).await;
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ApiError::Stopped),
            Err(_) => Err(ApiError::Timeout),
        }
    }

    /// Waits until this member has applied everything the leader had committed when the
    /// call started: after it, a local read is linearizable.
    pub async fn read_barrier(&self) -> Result<(), ApiError> {
        let timeout = self.config.request_timeout();
        let started = Instant::now();
        // Reads arriving together share one round (batching.rs).
        let index = self.coalescer.read_index().await?;
        self.wait_applied(index, timeout.saturating_sub(started.elapsed()))
            .await
    }

    /// Serves `request` on the leader, wherever it is, within `timeout`.
    pub async fn on_leader(
        &self,
        request: ForwardRequest,
        timeout: Duration,
    ) -> Result<ForwardResponse, ApiError> {
        let request = &request;
        self.link
            .until_served(Instant::now() + timeout, |route, remaining| async move {
                match route {
                    Route::Remote(leader) => self.link.forward(leader, request, remaining).await,
                    _ => tokio::time::timeout(remaining, self.serve_forward(request.clone()))
                        .await
                        .unwrap_or(Err(ForwardError::Api(ApiError::Timeout))),
                }
            })
            .await
    }

    /// Executes a request that only the leader may serve. `NotLeader` means nothing was
    /// done and the sender should find the leader again.
    pub async fn serve_forward(&self, request: ForwardRequest) -> ForwardReply {
        match request {
            // A follower's batch: each write is served as if it came alone, all at once,
            // so they share the leader's next log flush.
            ForwardRequest::Writes(commands) => {
                let results =
                    futures::future::join_all(commands.into_iter().map(|c| self.propose_here(c)))
                        .await;
                Ok(ForwardResponse::Writes(results))
            }
            ForwardRequest::Write(command) => {
                let (result, index) = self.propose_here(command).await?;
                Ok(ForwardResponse::Write(result, index))
            }
            ForwardRequest::Floors(floors) => {
                self.floors.merge(&floors);
                Ok(ForwardResponse::FloorsTaken)
            }
            ForwardRequest::FloorOf { member } => {
                Ok(ForwardResponse::Floor(self.floors.get(member)))
            }
            ForwardRequest::ReadIndex => self.link.read_index_here().await,
            ForwardRequest::LeaseKeepAlive { id } => {
                if !self.is_leader() {
                    return Err(ForwardError::NotLeader);
                }
                Ok(ForwardResponse::LeaseKeepAlive {
                    ttl_s: self.leases.keep_alive(&self.store, id),
                })
            }
            ForwardRequest::LeaseTimeToLive { id, keys } => {
                if !self.is_leader() {
                    return Err(ForwardError::NotLeader);
                }
                let (ttl_s, granted_ttl_s) = self.leases.time_to_live(&self.store, id);
                let keys = if keys && ttl_s >= 0 {
                    self.store
                        .lease_keys(id)
                        .map_err(|e| ForwardError::Api(ApiError::from(e)))?
                } else {
                    Vec::new()
                };
                Ok(ForwardResponse::LeaseTimeToLive {
                    ttl_s,
                    granted_ttl_s,
                    keys,
                })
            }
            ForwardRequest::JoinChallenge => Ok(ForwardResponse::JoinChallenge {
                nonce: self.challenges.issue().to_vec(),
            }),
            ForwardRequest::Join { id, member, proof } => {
                self.check_join_proof(id, &member, proof.as_ref())?;
                self.serve_join(id, member).await
            }
            ForwardRequest::RemoveMember { id } => self.serve_remove(id).await,
            ForwardRequest::PromoteMember { id } => self.serve_promote(id).await,
            ForwardRequest::AddMember { peer_urls, learner } => {
                self.serve_add(peer_urls, learner).await
            }
            ForwardRequest::UpdateMember { id, peer_urls } => {
                self.serve_update(id, peer_urls).await
            }
            ForwardRequest::PendingMember { peer_urls } => Ok(ForwardResponse::PendingMember {
                id: self.pending_member(&peer_urls),
            }),
            ForwardRequest::ElectInTerm { term } => {
                electing(self.raft.trigger().elect_in_term(term).await)
            }
            ForwardRequest::PreVote {
                candidate,
                last_log,
            } => Ok(ForwardResponse::PreVote {
                granted: super::election::answer_pre_vote(self, candidate, last_log).await,
            }),
        }
    }

    /// Proposes one write on this member, which must lead, and waits until it has
    /// applied it: what it answered and its log index. `NotLeader` if it does not lead:
    /// nothing was proposed. A follower's forwarded batch runs one of these per write,
    /// side by side; lease expiry runs it for its revokes, which are never forwarded.
    pub async fn propose_here(
        &self,
        command: Command,
    ) -> Result<(CommandResult, u64), ForwardError> {
        // Taken before the command is handed over: no copy of it, and no lock of the
        // lease clocks for the writes that leave them alone.
        let clock_change = crate::member::lease_clocks::ClockChange::of(&command);
        match self.raft.client_write(command).await {
            Ok(reply) => {
                if let Some(change) = clock_change {
                    self.leases.after_write(change, &reply.data);
                }
                Ok((reply.data, reply.log_id.index))
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(ForwardError::NotLeader)
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(ForwardError::Api(ApiError::Internal(e.to_string())))
            }
            Err(RaftError::Fatal(_)) => Err(ForwardError::Api(ApiError::Stopped)),
        }
    }
}
