//! Joining a cluster: the challenge, the proof of the join token (never the token
//! itself), and the leader's check of that proof.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftkv_storage::raft_types::{Member, NodeId};

use super::node::{Node, StartError};
use crate::errors::ApiError;
use crate::ids::hex;
use crate::limits::JOIN_TIMEOUT_MS;
use crate::member::identity::Identity;
use crate::peer::{ForwardError, ForwardReply, ForwardRequest, ForwardResponse, JoinProof};

impl Node {
    pub(super) async fn join(
        self: &Arc<Node>,
        url: &str,
        data_dir: &Path,
    ) -> Result<(), StartError> {
        Identity {
            member_id: self.id,
            cluster_id: 0,
            name: self.name.clone(),
            joined: false,
        }
        .store(data_dir)?;
        let token = self.join_token();
        let deadline = Instant::now() + Duration::from_millis(JOIN_TIMEOUT_MS);
        tracing::info!(peer = url, member_id = %hex(self.id), "joining");
        let cluster_id = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(StartError::Config(format!(
                    "could not join through {url}: no answer within {JOIN_TIMEOUT_MS} ms"
                )));
            }
            match self.join_attempt(url, token.as_deref(), remaining).await {
                Ok(Ok(ForwardResponse::Join { cluster_id })) => break cluster_id,
                Ok(Ok(other)) => {
                    return Err(StartError::Config(format!(
                        "{url} answered a join with {other:?}"
                    )))
                }
                Ok(Err(ForwardError::Api(e @ ApiError::RejoinWithLostState { .. }))) => {
                    return Err(StartError::Config(e.to_string()))
                }
                Ok(Err(ForwardError::Api(e @ ApiError::JoinRefused(_)))) => {
                    return Err(StartError::Config(format!(
                        "could not join through {url}: {e}"
                    )))
                }
                Ok(Err(e)) => {
                    tracing::warn!(peer = url, error = ?e, "join refused for now; retrying")
                }
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    return Err(StartError::Config(format!(
                        "{url} is not a raftkv peer URL: it does not answer raftkv's peer \
                         pipe (a client URL? members' peer URLs are their --listen-peer-urls, \
                         port 2380 by default)"
                    )))
                }
                // A certificate the other side refuses (or that we refuse) will not get
                // better by retrying: say so and stop.
                Err(status) if is_tls_refusal(&status) => {
                    return Err(StartError::Config(format!(
                        "could not join through {url}: TLS refused ({}); check that both \
                         members' peer certificates are signed by the CA each one trusts \
                         (--peer-trusted-ca-file) and have not expired",
                        status.message()
                    )))
                }
                Err(status) => tracing::warn!(
                    peer = url,
                    code = ?status.code(),
                    error = %status.message(),
                    "join: peer unreachable; retrying"
                ),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        Identity {
            member_id: self.id,
            cluster_id,
            name: self.name.clone(),
            joined: true,
        }
        .store(data_dir)?;
        if let Some(token) = &token {
            // Kept so that this member can admit the next ones.
            crate::member::join_token::store(data_dir, token)?;
        }
        self.cluster_id.store(cluster_id, Ordering::SeqCst);
        tracing::info!(member_id = %hex(self.id), cluster_id = %hex(cluster_id), "joined");
        Ok(())
    }

    pub(super) fn join_token(&self) -> Option<String> {
        self.join_token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// One try at joining through `url`: a challenge (if this member has a token), then
    /// the join with the proof.
    pub(super) async fn join_attempt(
        &self,
        url: &str,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<ForwardReply, tonic::Status> {
        let member = self.self_member();
        let proof = match token {
            None => None,
            Some(token) => match self
                .peers
                .forward(url, &ForwardRequest::JoinChallenge, timeout)
                .await?
            {
                Ok(ForwardResponse::JoinChallenge { nonce }) => Some(JoinProof {
                    mac: crate::member::join_token::prove(
                        token,
                        self.id,
                        &member.peer_urls,
                        &nonce,
                    ),
                    nonce,
                }),
                Ok(other) => {
                    return Err(tonic::Status::internal(format!(
                        "{url} answered a join challenge with {other:?}"
                    )))
                }
                Err(e) => return Ok(Err(e)),
            },
        };
        let request = ForwardRequest::Join {
            id: self.id,
            member,
            proof,
        };
        self.peers.forward(url, &request, timeout).await
    }

    /// Checks a joiner's proof of the token; nothing is changed when it fails.
    pub(super) fn check_join_proof(
        &self,
        id: NodeId,
        member: &Member,
        proof: Option<&JoinProof>,
    ) -> Result<(), ForwardError> {
        let Some(token) = self.join_token() else {
            tracing::warn!(member_id = %hex(id), "admitting a member without a join token: this cluster has none (made before tokens)");
            return Ok(());
        };
        let Some(proof) = proof else {
            return Err(ForwardError::Api(ApiError::JoinRefused(
                "this cluster needs its join token: start the new member with --token or \
                 --token-file (the first member keeps it in <its data dir>/token)"
                    .into(),
            )));
        };
        if !self.challenges.take(&proof.nonce) {
            // Expired, or issued by a member that restarted since: the joiner asks again.
            return Err(ForwardError::Api(ApiError::Internal(
                "join challenge unknown or expired".into(),
            )));
        }
        if !crate::member::join_token::verify(
            &token,
            id,
            &member.peer_urls,
            &proof.nonce,
            &proof.mac,
        ) {
            tracing::warn!(member_id = %hex(id), peer = ?member.peer_urls, "join refused: wrong token");
            return Err(ForwardError::Api(ApiError::JoinRefused(
                "the join token does not match this cluster's".into(),
            )));
        }
        Ok(())
    }
}

/// A gRPC error that is a TLS handshake refusal (bad, foreign or expired certificate).
pub(super) fn is_tls_refusal(status: &tonic::Status) -> bool {
    let text = format!("{} {:?}", status.message(), status);
    [
        "invalid peer certificate",
        "certificate required",
        "received fatal alert",
        "UnknownIssuer",
        "BadSignature",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}
