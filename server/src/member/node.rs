//! One raftkv member: its storage, its openraft instance, and the routing of requests
//! that only the leader may serve (writes, read indexes, lease clocks, joins).
//!
//! A Put's path: `api/kv.rs` → `Node::write` → (forwarded to the leader if need be,
//! `peer.rs`) → `Node::serve_forward` → `openraft::Raft::client_write` → the log
//! (`storage::raft_log`, fdatasync) → applied by `storage::state_machine` → answered.
//! This module must never answer a write before openraft reports it applied, and never
//! retry a write whose outcome is unknown.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Raft, ServerState, SnapshotPolicy};
use raftkv_proto::etcdserverpb::ResponseHeader;
use raftkv_storage::mvcc::{
    AlarmMember, AlarmType, Command, CommandResponse, CommandResult, MvccOptions, MvccStore,
};
use raftkv_storage::raft_log::RaftLogStore;
use raftkv_storage::raft_types::{Member, NodeId, TypeConfig};
use raftkv_storage::state_machine::StateMachine;
use raftkv_storage::wal::WalOptions;
use raftkv_storage::MvccError;

use crate::config::ServerConfig;
use crate::errors::ApiError;
use crate::ids::hex;
use crate::limits::JOIN_TIMEOUT_MS;
use crate::member::identity::{random_id, Identity};
use crate::member::lease_clocks::LeaseKeeper;
use crate::peer::network::RaftNetworkImpl;
use crate::peer::pool::PeerClients;
use crate::peer::service::PeerHandler;
use crate::peer::{ForwardError, ForwardReply, ForwardRequest, ForwardResponse, JoinProof};
use crate::quorum::{fault_tolerance_of, voter_count};

/// The quota and free-disk check reads the db size and statvfs at most this often; in
/// between, writes use the last answer (a write costs no extra I/O or locking).
const SPACE_CHECK_INTERVAL_MS: u64 = 100;

/// The last space check: when (ms since start, +1 so 0 means never) and whether the
/// member was out of space then.
#[derive(Default)]
struct SpaceCheck {
    checked_at_ms: AtomicU64,
    out_of_space: std::sync::atomic::AtomicBool,
}

/// How long a starting member waits to learn whether MemberAdd reserved its id.
const PENDING_MEMBER_TIMEOUT_MS: u64 = 5_000;
/// How far behind the leader's log a learner may be and still be promoted (etcd:
/// 90% of the leader's progress; here a fixed number of entries).
const LEARNER_READY_LAG_ENTRIES: u64 = 1_000;
/// Pause between attempts to find a leader.
const LEADER_POLL_MS: u64 = 20;
/// The most entries one AppendEntries carries (openraft's `max_payload_entries`; the
/// bytes are bounded too, by `raft_log::APPEND_BATCH_MAX_BYTES`). openraft keeps one
/// append in flight per follower, so this caps how many writes one replication round
/// trip commits: at 64 the cluster's puts stopped at about 18k/s however many clients
/// wrote (the appends were full), at 1024 they follow the CPU (bench/RESULTS.md,
/// session 25). A follower catching up after a restart gets its entries 1024 at a time.
const APPEND_BATCH_MAX_ENTRIES: u64 = 1024;

pub struct Node {
    pub id: NodeId,
    pub name: String,
    cluster_id: AtomicU64,
    pub raft: Raft<TypeConfig>,
    pub store: MvccStore,
    pub config: ServerConfig,
    pub peers: PeerClients,
    pub leases: LeaseKeeper,
    pub started: Instant,
    /// The cluster's join token; none for a cluster made before tokens existed.
    join_token: std::sync::Mutex<Option<String>>,
    /// Held by a leader transfer (`move_leader`): one at a time.
    transfer: tokio::sync::Mutex<()>,
    /// Nonces handed to joiners (join_token.rs).
    challenges: crate::member::join_token::Challenges,
    space: SpaceCheck,
    /// The index of the last applied log entry (the state machine's).
    applied_index: Arc<raftkv_storage::applied::AppliedIndex>,
    /// Read-index rounds and forwarded write batches (batching.rs).
    coalescer: crate::member::batching::Coalescer,
    /// What this member knows each member durably held (rollback_guard.rs).
    pub floors: crate::member::rollback_guard::FloorTable,
    /// While set, the peer service refuses Raft RPCs and the member does not stand for
    /// election: a restarted member until peers confirm its data dir is current.
    fenced: AtomicBool,
    /// This member's vote and log as they were when it restarted; none for a new one.
    pub restart_state: Option<crate::member::rollback_guard::LocalState>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the Raft log: {0}")]
    Wal(#[from] raftkv_storage::wal::WalError),
    #[error("the key space: {0}")]
    Store(#[from] raftkv_storage::StoreError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("{0}")]
    Config(String),
}

impl Node {
    /// Opens the data dir and starts openraft. Does not yet initialize or join: see
    /// `bootstrap`.
    pub async fn open(config: ServerConfig) -> Result<(Arc<Node>, Option<Identity>), StartError> {
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir)?;
        let existing = Identity::load(&data_dir)?;
        let flag_token = crate::member::join_token::from_flags(
            config.token.as_deref(),
            config.token_file.as_deref(),
        )
        .map_err(StartError::Config)?;
        let join_token = match (crate::member::join_token::load(&data_dir)?, flag_token) {
            (Some(stored), Some(given)) if stored != given => {
                tracing::warn!(
                    file = %crate::member::join_token::path(&data_dir).display(),
                    "--token/--token-file differs from the token this member keeps; keeping its own"
                );
                Some(stored)
            }
            (Some(stored), _) => Some(stored),
            (None, given) => given,
        };
        let peers = PeerClients::new(config.peer_tls().map_err(StartError::Config)?);
        let identity = match &existing {
            Some(id) => id.clone(),
            None => Identity {
                member_id: match &config.join {
                    Some(url) => reserved_id(&peers, url, &config).await?,
                    None => random_id(),
                },
                cluster_id: 0,
                name: config.name.clone(),
                joined: false,
            },
        };
        let purge_guard = Arc::new(AtomicU64::new(0));
        let (mut log, report) = RaftLogStore::open(
            &data_dir.join("wal"),
            WalOptions::default(),
            purge_guard.clone(),
        )?;
        if let Some((segment, offset, bytes)) = &report.torn_tail {
            tracing::warn!(segment = %segment.display(), offset, bytes, "raft log: a torn tail was cut");
        }
        let store = MvccStore::open(
            &data_dir.join("mvcc"),
            MvccOptions {
                cache_capacity_bytes: config.backend_cache_bytes,
                ..MvccOptions::default()
            },
        )?;
        let mut sm = StateMachine::open(store.clone(), &data_dir.join("snapshots"), purge_guard)?;
        {
            use openraft::storage::RaftStateMachine;
            let (applied, _) = sm
                .applied_state()
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?;
            log.purge_gap_covered_by(applied)
                .await
                .map_err(StartError::Raft)?;
        }
        if !sole_voter(&log, &mut sm, identity.member_id).await? {
            step_down_on_restart(&mut log, identity.member_id).await?;
        }
        let restart_state = match &existing {
            Some(identity) if identity.joined => Some(local_state(&mut log).await?),
            _ => None,
        };
        let applied_index = sm.applied_index();
        let raft_config = openraft::Config {
            cluster_name: "raftkv".into(),
            heartbeat_interval: config.heartbeat_interval_ms,
            election_timeout_min: config.election_timeout_ms,
            election_timeout_max: config.election_timeout_ms * 2,
            install_snapshot_timeout: 10_000,
            max_payload_entries: APPEND_BATCH_MAX_ENTRIES,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_interval_entries(
                config.snapshot_count,
                identity.member_id,
            )),
            // etcd's snapshotCatchUpEntries: a member down for a moment (a restart)
            // catches up from the log, not by a snapshot of the whole key space.
            max_in_snapshot_log_to_keep: MAX_CATCH_UP_ENTRIES,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
        let network = RaftNetworkImpl {
            clients: peers.clone(),
        };
        let raft = Raft::new(identity.member_id, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        if restart_state.is_some() {
            // Fenced until peers confirm the data dir is current (rollback_guard.rs).
            raft.runtime_config().elect(false);
        }
        raft.runtime_config().lease_read(!config.no_lease_reads);
        let node = Arc::new_cyclic(|weak| Node {
            id: identity.member_id,
            name: identity.name.clone(),
            cluster_id: AtomicU64::new(identity.cluster_id),
            raft,
            store,
            config,
            peers,
            leases: LeaseKeeper::default(),
            started: Instant::now(),
            join_token: std::sync::Mutex::new(join_token),
            transfer: tokio::sync::Mutex::new(()),
            challenges: crate::member::join_token::Challenges::default(),
            space: SpaceCheck::default(),
            applied_index,
            coalescer: crate::member::batching::Coalescer::start(weak.clone()),
            floors: crate::member::rollback_guard::FloorTable::open(&data_dir),
            fenced: AtomicBool::new(restart_state.is_some()),
            restart_state,
        });
        Ok((node, existing))
    }

    /// Whether the peer service must refuse Raft RPCs (rollback_guard.rs).
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    /// Peers confirmed the data dir: take part in Raft fully.
    pub fn lift_fence(&self) {
        self.fenced.store(false, Ordering::Release);
        self.raft.runtime_config().elect(true);
    }

    /// Makes this member part of a cluster, once: a data dir that already holds a joined
    /// member resumes as it is (--cluster-init and --join are then ignored).
    pub async fn bootstrap(self: &Arc<Node>, existing: Option<Identity>) -> Result<(), StartError> {
        let data_dir = self.config.data_dir.clone();
        if let Some(identity) = &existing {
            if identity.joined {
                if self.config.cluster_init || self.config.join.is_some() {
                    tracing::info!(member_id = %hex(self.id), "the data dir holds a member: --cluster-init and --join are ignored");
                }
                tracing::info!(member_id = %hex(self.id), cluster_id = %hex(identity.cluster_id), "resuming");
                return Ok(());
            }
        }
        let me = self.self_member();
        match self.config.join.clone() {
            Some(url) => self.join(&url, &data_dir).await,
            None => {
                let cluster_id = random_id();
                // Written before initializing, so that a crash in between restarts as
                // the same member.
                let identity = Identity {
                    member_id: self.id,
                    cluster_id,
                    name: self.name.clone(),
                    joined: true,
                };
                identity.store(&data_dir)?;
                let token = self
                    .join_token()
                    .unwrap_or_else(crate::member::join_token::generate);
                crate::member::join_token::store(&data_dir, &token)?;
                *self.join_token.lock().unwrap_or_else(|e| e.into_inner()) = Some(token);
                tracing::info!(
                    file = %crate::member::join_token::path(&data_dir).display(),
                    "join token kept here: start other members with --join <this member's peer URL> --token-file <a copy of it> (or --token)"
                );
                self.cluster_id.store(cluster_id, Ordering::SeqCst);
                let members = BTreeMap::from([(self.id, me)]);
                if let Err(e) = self.raft.initialize(members).await {
                    return Err(StartError::Raft(e.to_string()));
                }
                tracing::info!(member_id = %hex(self.id), cluster_id = %hex(cluster_id), "started a new cluster");
                Ok(())
            }
        }
    }

    async fn join(self: &Arc<Node>, url: &str, data_dir: &Path) -> Result<(), StartError> {
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
                        "{url} is not a raftkv peer URL: it answers gRPC but not raftkv's peer \
                         service (a client URL? members' peer URLs are their --listen-peer-urls, \
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

    fn join_token(&self) -> Option<String> {
        self.join_token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// One try at joining through `url`: a challenge (if this member has a token), then
    /// the join with the proof.
    async fn join_attempt(
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
    fn check_join_proof(
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

    /// How many voters the cluster has and how many of them it can lose, and a warning
    /// when the count is even (an even count tolerates no more failures than one less).
    pub fn fault_tolerance(&self) -> (usize, usize, Option<String>) {
        let voters = voter_count(&self.raft.server_metrics().borrow().membership_config);
        fault_tolerance_of(voters)
    }

    pub fn self_member(&self) -> Member {
        Member {
            name: self.name.clone(),
            peer_urls: vec![self.config.peer_advertise_url()],
            client_urls: self.config.client_advertise_urls(),
            stay_learner: self.config.learner,
        }
    }

    pub fn cluster_id(&self) -> u64 {
        self.cluster_id.load(Ordering::SeqCst)
    }

    /// The leader this member follows, if any. A leader that has not heard from a
    /// quorum for two election timeouts counts as none (etcd's CheckQuorum): a
    /// partitioned leader must not make `hasleader` requests wait.
    pub fn leader(&self) -> Option<NodeId> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.state == ServerState::Leader {
            let quorum_stale_ms = 2 * self.config.election_timeout_ms;
            let voters = voter_count(&m.membership_config);
            if voters > 1
                && m.millis_since_quorum_ack
                    .is_none_or(|ms| ms > quorum_stale_ms)
            {
                return None;
            }
        }
        m.current_leader
    }

    /// Resolves once this member has no leader (`leader` is None), checking every
    /// `LEADER_POLL_MS`. A `hasleader` read waiting on a read barrier races this.
    pub async fn leader_lost(&self) {
        while self.leader().is_some() {
            tokio::time::sleep(Duration::from_millis(LEADER_POLL_MS)).await;
        }
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// The members as Raft knows them: (id, member, is_learner).
    pub fn members(&self) -> Vec<(NodeId, Member, bool)> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, m)| (*id, m.clone(), !voters.contains(id)))
            .collect()
    }

    pub fn member(&self, id: NodeId) -> Option<Member> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config.membership().get_node(&id).cloned()
    }

    /// The header every response carries.
    pub fn header(&self) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id(),
            member_id: self.id,
            revision: self.store.revision(),
            raft_term: self.term(),
        }
    }

    /// Runs a write through Raft (via the leader) and returns what applying it answered,
    /// once this member has applied it too: as with etcd, a client reads its own writes
    /// from the member it wrote through, and response headers are never behind.
    pub async fn write(&self, command: Command) -> Result<CommandResponse, ApiError> {
        if command.needs_space() {
            self.check_space().await?;
        }
        let timeout = self.config.request_timeout();
        let started = Instant::now();
        let (result, index) = match self.leader() {
            // A follower sends its writes to the leader in batches.
            Some(leader) if leader != self.id => self.coalescer.forward_write(command).await?,
            _ => match self
                .on_leader(ForwardRequest::Write(command), timeout)
                .await?
            {
                ForwardResponse::Write(result, index) => (result, index),
                other => return Err(ApiError::Internal(format!("unexpected reply {other:?}"))),
            },
        };
        self.wait_applied(index, timeout.saturating_sub(started.elapsed()))
            .await?;
        Ok(result?)
    }

    /// Waits until this member has applied the log up to `index`.
    async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), ApiError> {
        let waited = tokio::time::timeout(timeout, self.applied_index.wait_for(index)).await;
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ApiError::Stopped),
            Err(_) => Err(ApiError::Timeout),
        }
    }

    /// etcd's quota check, before proposing a write that may grow the database: over the
    /// quota (or with the disk nearly full) the write is refused and the NOSPACE alarm is
    /// raised for this member, through Raft. While the alarm is raised every member's
    /// applier refuses such writes as well.
    async fn check_space(&self) -> Result<(), ApiError> {
        let store = &self.store;
        if store.has_alarm(AlarmType::NoSpace) {
            return Err(MvccError::NoSpace.into());
        }
        let now_ms = self.started.elapsed().as_millis() as u64 + 1;
        let checked_at_ms = self.space.checked_at_ms.load(Ordering::Relaxed);
        if checked_at_ms != 0 && now_ms.saturating_sub(checked_at_ms) < SPACE_CHECK_INTERVAL_MS {
            if self.space.out_of_space.load(Ordering::Relaxed) {
                return Err(MvccError::NoSpace.into());
            }
            return Ok(());
        }
        self.space.checked_at_ms.store(now_ms, Ordering::Relaxed);
        let db_bytes = store.size_on_disk_bytes().unwrap_or(0);
        let over_quota = self.config.quota_bytes().is_some_and(|q| db_bytes >= q);
        let free_bytes = crate::disk::free_bytes(&self.config.data_dir);
        let disk_full = free_bytes.is_some_and(|f| f < self.config.disk_reserve_bytes);
        self.space
            .out_of_space
            .store(over_quota || disk_full, Ordering::Relaxed);
        if !over_quota && !disk_full {
            return Ok(());
        }
        tracing::warn!(
            db_bytes,
            quota_bytes = self.config.quota_bytes(),
            free_bytes,
            reserve_bytes = self.config.disk_reserve_bytes,
            "out of space: raising the NOSPACE alarm; only reads, deletes and compactions are \
             taken until `etcdctl alarm disarm` (after compacting, or raising the quota, or \
             freeing disk space)"
        );
        let raise = Command::Alarm {
            activate: true,
            alarm: AlarmMember {
                member_id: self.id,
                alarm: AlarmType::NoSpace,
            },
        };
        // Boxed: raising goes through `write` again (an alarm needs no space).
        if let Err(e) = Box::pin(self.write(raise)).await {
            tracing::warn!(error = %e, "could not raise the NOSPACE alarm");
        }
        Err(MvccError::NoSpace.into())
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
        let deadline = Instant::now() + timeout;
        let is_write = matches!(
            request,
            ForwardRequest::Write(_) | ForwardRequest::Writes(_)
        );
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(if self.leader().is_none() {
                    ApiError::NoLeader
                } else {
                    ApiError::Timeout
                });
            }
            match self.leader() {
                Some(leader) if leader == self.id => {
                    match tokio::time::timeout(remaining, self.serve_forward(request.clone())).await
                    {
                        Ok(Ok(response)) => return Ok(response),
                        Ok(Err(ForwardError::NotLeader)) => {}
                        Ok(Err(ForwardError::Api(e))) => return Err(e),
                        Err(_) => return Err(ApiError::Timeout),
                    }
                }
                Some(leader) => {
                    let Some(url) = self
                        .member(leader)
                        .and_then(|m| m.peer_urls.first().cloned())
                    else {
                        return Err(ApiError::NoLeader);
                    };
                    match self.peers.forward(&url, &request, remaining).await {
                        Ok(Ok(response)) => return Ok(response),
                        Ok(Err(ForwardError::NotLeader)) => {}
                        Ok(Err(ForwardError::Api(e))) => return Err(e),
                        Err(status) => {
                            // A write that may have reached the leader must not be sent
                            // twice; one that never left (no connection) may.
                            let never_sent = status.code() == tonic::Code::Unavailable
                                && status.message().contains("connect");
                            if is_write && !never_sent {
                                tracing::warn!(leader = %hex(leader), error = %status.message(), "forwarded write: outcome unknown");
                                return Err(ApiError::TimeoutDueToLeaderFail);
                            }
                        }
                    }
                }
                None => {}
            }
            tokio::time::sleep(Duration::from_millis(LEADER_POLL_MS).min(remaining)).await;
        }
    }

    /// Executes a request that only the leader may serve. `NotLeader` means nothing was
    /// done and the sender should find the leader again.
    pub async fn serve_forward(&self, request: ForwardRequest) -> ForwardReply {
        match request {
            // A follower's batch: each write is served as if it came alone, all at once,
            // so they share the leader's next log flush.
            ForwardRequest::Writes(commands) => {
                let results =
                    futures::future::join_all(commands.into_iter().map(|c| self.serve_write(c)))
                        .await;
                Ok(ForwardResponse::Writes(results))
            }
            ForwardRequest::Write(command) => {
                let (result, index) = self.serve_write(command).await?;
                Ok(ForwardResponse::Write(result, index))
            }
            ForwardRequest::Floors(floors) => {
                self.floors.merge(&floors);
                Ok(ForwardResponse::FloorsTaken)
            }
            ForwardRequest::FloorOf { member } => {
                Ok(ForwardResponse::Floor(self.floors.get(member)))
            }
            ForwardRequest::ReadIndex => match self.raft.get_read_log_id().await {
                Ok((read, _)) => Ok(ForwardResponse::ReadIndex(read.map_or(0, |l| l.index))),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                    Err(ForwardError::NotLeader)
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                    Err(ForwardError::Api(ApiError::Timeout))
                }
                Err(RaftError::Fatal(_)) => Err(ForwardError::Api(ApiError::Stopped)),
            },
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
            ForwardRequest::Elect => electing(self.raft.trigger().elect().await),
            ForwardRequest::ElectInTerm { term } => {
                electing(self.raft.trigger().elect_in_term(term).await)
            }
        }
    }

    /// Proposes one client write and waits until the leader has applied it: what it
    /// answered and its log index. A follower's forwarded batch runs one of these per
    /// write, side by side.
    async fn serve_write(&self, command: Command) -> Result<(CommandResult, u64), ForwardError> {
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

    async fn serve_join(&self, id: NodeId, member: Member) -> ForwardReply {
        let clash = self.members().into_iter().find(|(other, m, _)| {
            *other != id && m.peer_urls.iter().any(|u| member.peer_urls.contains(u))
        });
        if let Some((existing, m, _)) = clash {
            return Err(ForwardError::Api(ApiError::RejoinWithLostState {
                existing: hex(existing),
                url: m.peer_urls.join(","),
            }));
        }
        let existing = self.members().into_iter().find(|(m, _, _)| *m == id);
        let already_voter = existing.as_ref().is_some_and(|(_, _, learner)| !learner);
        if !already_voter {
            let mut member = member;
            if let Some((_, reserved, _)) = &existing {
                // Added by MemberAdd: it starts now, with its name and client URLs.
                member.stay_learner |= reserved.stay_learner;
                tracing::info!(member_id = %hex(id), name = %member.name, "a member added by MemberAdd has started");
                if let Err(e) = self
                    .raft
                    .change_membership(
                        ChangeMembers::SetNodes(BTreeMap::from([(id, member.clone())])),
                        true,
                    )
                    .await
                {
                    return Err(raft_write_error(e));
                }
            } else {
                tracing::info!(member_id = %hex(id), name = %member.name, peer = ?member.peer_urls, "adding a member as a learner");
            }
            let stay_learner = member.stay_learner;
            // Returns once the learner has caught up with the leader's log.
            if let Err(e) = self.raft.add_learner(id, member, true).await {
                return Err(raft_write_error(e));
            }
            if stay_learner {
                tracing::info!(member_id = %hex(id), "the learner caught up; it stays a learner until promoted");
                return Ok(ForwardResponse::Join {
                    cluster_id: self.cluster_id(),
                });
            }
            tracing::info!(member_id = %hex(id), "the learner caught up; promoting it to voter");
            match self
                .raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
            {
                Ok(_) => {}
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                    return Err(ForwardError::NotLeader)
                }
                Err(e) => return Err(ForwardError::Api(ApiError::Internal(e.to_string()))),
            }
        }
        Ok(ForwardResponse::Join {
            cluster_id: self.cluster_id(),
        })
    }

    /// etcd's MemberAdd: reserves an id for a member that will start with `--join` and
    /// these peer URLs. It is a learner until it has started and caught up.
    async fn serve_add(&self, peer_urls: Vec<String>, learner: bool) -> ForwardReply {
        if peer_urls.is_empty() {
            return Err(ForwardError::Api(ApiError::InvalidArgument(
                "etcdserver: member peer URLs are missing".into(),
            )));
        }
        let clash = self
            .members()
            .into_iter()
            .any(|(_, m, _)| m.peer_urls.iter().any(|u| peer_urls.contains(u)));
        if clash {
            return Err(ForwardError::Api(ApiError::PeerUrlExists));
        }
        let id = random_id();
        let member = Member {
            name: String::new(),
            peer_urls,
            client_urls: Vec::new(),
            stay_learner: learner,
        };
        tracing::info!(member_id = %hex(id), peer = ?member.peer_urls, learner, "member added; waiting for it to start");
        if let Err(e) = self.raft.add_learner(id, member, false).await {
            return Err(raft_write_error(e));
        }
        Ok(ForwardResponse::MemberAdded {
            id,
            members: self.members(),
        })
    }

    /// etcd's MemberUpdate: new peer URLs for a member.
    async fn serve_update(&self, id: NodeId, peer_urls: Vec<String>) -> ForwardReply {
        let members = self.members();
        let Some((_, current, _)) = members.iter().find(|(m, _, _)| *m == id) else {
            return Err(ForwardError::Api(ApiError::MemberNotFound));
        };
        let clash = members
            .iter()
            .any(|(other, m, _)| *other != id && m.peer_urls.iter().any(|u| peer_urls.contains(u)));
        if clash {
            return Err(ForwardError::Api(ApiError::PeerUrlExists));
        }
        let mut member = current.clone();
        member.peer_urls = peer_urls;
        tracing::info!(member_id = %hex(id), peer = ?member.peer_urls, "updating a member's peer URLs");
        self.change_membership(ChangeMembers::SetNodes(BTreeMap::from([(id, member)])))
            .await
    }

    /// The id MemberAdd reserved for a member with one of these peer URLs, while that
    /// member has not started (its name is still empty).
    fn pending_member(&self, peer_urls: &[String]) -> Option<NodeId> {
        self.members().into_iter().find_map(|(id, m, _)| {
            (m.name.is_empty() && m.peer_urls.iter().any(|u| peer_urls.contains(u))).then_some(id)
        })
    }

    /// Removes a voter or a learner. Refuses to remove the last voter.
    async fn serve_remove(&self, id: NodeId) -> ForwardReply {
        let members = self.members();
        let Some((_, _, learner)) = members.iter().find(|(m, _, _)| *m == id) else {
            return Err(ForwardError::Api(ApiError::MemberNotFound));
        };
        let voters = members.iter().filter(|(_, _, l)| !l).count();
        let change = if *learner {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            if voters <= 1 {
                return Err(ForwardError::Api(ApiError::LastVoter));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        };
        tracing::info!(member_id = %hex(id), learner, "removing a member");
        self.change_membership(change).await
    }

    /// Promotes a learner to voter, once it has caught up with the leader.
    async fn serve_promote(&self, id: NodeId) -> ForwardReply {
        let members = self.members();
        let Some((_, _, learner)) = members.iter().find(|(m, _, _)| *m == id) else {
            return Err(ForwardError::Api(ApiError::MemberNotFound));
        };
        if !learner {
            return Err(ForwardError::Api(ApiError::MemberNotLearner));
        }
        let metrics = self.raft.metrics().borrow().clone();
        let caught_up = metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned())
            .flatten()
            .is_some_and(|matched| {
                metrics
                    .last_log_index
                    .unwrap_or(0)
                    .saturating_sub(matched.index)
                    <= LEARNER_READY_LAG_ENTRIES
            });
        if !caught_up {
            return Err(ForwardError::Api(ApiError::LearnerNotReady));
        }
        tracing::info!(member_id = %hex(id), "promoting a learner");
        self.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
            .await
    }

    async fn change_membership(&self, change: ChangeMembers<NodeId, Member>) -> ForwardReply {
        match self.raft.change_membership(change, false).await {
            Ok(_) => Ok(ForwardResponse::MembershipChanged(self.members())),
            Err(e) => Err(raft_write_error(e)),
        }
    }

    /// Hands leadership to `target` (etcd's MoveLeader). openraft 0.9 has no transfer:
    /// the leader stops its heartbeats until the followers' leader lease has run out,
    /// then asks the target to stand for election, which it wins before any other
    /// follower's own (longer) election timeout fires. Heartbeats are always restored.
    ///
    /// The transfer runs in a task of its own: a caller that gives up must not leave
    /// heartbeats and lease reads off.
    pub async fn move_leader(self: &Arc<Self>, target: NodeId) -> Result<(), ApiError> {
        let node = self.clone();
        tokio::spawn(async move { node.transfer_leadership(target).await })
            .await
            .unwrap_or_else(|e| Err(ApiError::Internal(format!("leader transfer: {e}"))))
    }

    async fn transfer_leadership(&self, target: NodeId) -> Result<(), ApiError> {
        // One transfer at a time: each turns lease reads off and back on. Taken first,
        // so that a transfer queued behind another sees who leads once it is over.
        let _one_at_a_time = self.transfer.lock().await;
        if !self.is_leader() {
            return Err(ApiError::NotLeader);
        }
        if target == self.id {
            return Ok(());
        }
        let members = self.members();
        let Some((_, member, false)) = members.iter().find(|(id, _, _)| *id == target) else {
            return Err(ApiError::BadLeaderTransferee);
        };
        let url = member
            .peer_urls
            .first()
            .cloned()
            .ok_or(ApiError::BadLeaderTransferee)?;
        // The target will campaign without waiting out the lease its acknowledgements
        // promised this leader: no lease reads from now on in this term (openraft
        // patch, PATCH.md "Lease reads"); reads meanwhile take a heartbeat round.
        self.raft
            .runtime_config()
            .no_lease_read_through_term(u64::MAX);
        // The followers' lease runs out 2× the election timeout after the last
        // heartbeat; their own timers fire 1× to 2× after that. The target stands for
        // election a third of the way into that window.
        let lease = Duration::from_millis(self.config.election_timeout_ms * 2);
        let margin = Duration::from_millis(self.config.election_timeout_ms / 3);
        self.raft.runtime_config().heartbeat(false);
        tokio::time::sleep(lease + margin).await;
        // The target campaigns only if its vote is still of this term.
        let term = self.term();
        let asked = self
            .peers
            .forward(&url, &ForwardRequest::ElectInTerm { term }, lease)
            .await;
        let moved = match asked {
            Ok(Ok(_)) => self
                .raft
                .wait(Some(lease * 3))
                .metrics(|m| m.current_leader == Some(target), "leader transfer")
                .await
                .is_ok(),
            _ => false,
        };
        self.raft.runtime_config().heartbeat(true);
        // Lease reads again from the next term on: in this one, a transfer that failed
        // may still have the target campaign.
        self.raft.runtime_config().no_lease_read_through_term(term);
        if moved {
            tracing::info!(to = %hex(target), "leadership moved");
            Ok(())
        } else {
            Err(ApiError::LeaderTransferTimeout)
        }
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        if let Err(e) = self.store.flush() {
            tracing::warn!(error = %e, "flushing the key space at shutdown");
        }
    }
}

/// The id a new member takes: the one MemberAdd reserved for its peer URL, if any, or
/// a new random one. An unreachable cluster is left for the join itself to report.
async fn reserved_id(
    peers: &PeerClients,
    url: &str,
    config: &ServerConfig,
) -> Result<NodeId, StartError> {
    let request = ForwardRequest::PendingMember {
        peer_urls: vec![config.peer_advertise_url()],
    };
    let timeout = Duration::from_millis(PENDING_MEMBER_TIMEOUT_MS);
    match peers.forward(url, &request, timeout).await {
        Ok(Ok(ForwardResponse::PendingMember { id: Some(id) })) => {
            tracing::info!(member_id = %hex(id), "taking the id that member add reserved for this peer URL");
            Ok(id)
        }
        Ok(_) => Ok(random_id()),
        Err(status) => {
            tracing::debug!(peer = url, error = %status.message(), "could not ask for a reserved member id");
            Ok(random_id())
        }
    }
}

/// A failed membership write as a forward error: not the leader (look again), or why.
fn raft_write_error(e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> ForwardError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => ForwardError::NotLeader,
        e => ForwardError::Api(ApiError::Internal(e.to_string())),
    }
}

/// A gRPC error that is a TLS handshake refusal (bad, foreign or expired certificate).
fn is_tls_refusal(status: &tonic::Status) -> bool {
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

/// Log entries kept behind a snapshot point for followers that fell a little behind
/// (etcd's snapshotCatchUpEntries); at 10k writes/s, half a second.
pub const MAX_CATCH_UP_ENTRIES: u64 = 5_000;

/// How many applied entries this member lets pass between Raft snapshot points:
/// `count` plus up to half again, by member id. Every member applies the same entries,
/// so with one count all of them would flush their engine (state_machine.rs) at the
/// same moment, and a quorum would be busy writing at once; spread out, at most one of
/// three flushes most of the time. (When every point exported the key space, all three
/// at once took paced puts after a 300 k-key load from p99 5 ms to 220 ms.)
pub fn snapshot_interval_entries(count: u64, member_id: NodeId) -> u64 {
    let spread = member_id % 1024;
    count
        .saturating_add((count / 2).saturating_mul(spread) / 1024)
        .max(1)
}

/// The vote and last log id a restarting member's log holds (rollback_guard.rs).
async fn local_state(
    log: &mut RaftLogStore,
) -> Result<crate::member::rollback_guard::LocalState, StartError> {
    use openraft::storage::RaftLogStorage;
    let state = log
        .get_log_state()
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    let vote = log
        .read_vote()
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    Ok(crate::member::rollback_guard::LocalState {
        vote_term: vote.map_or(0, |v| v.leader_id().term),
        last_log: state.last_log_id.map(|l| (l.leader_id.term, l.index)),
    })
}

/// Whether this member is the only voter (the newest membership in the log, else the
/// state machine's): then nothing is committed without its own fdatasync, and it may
/// resume leading at once after a restart.
async fn sole_voter(
    log: &RaftLogStore,
    sm: &mut StateMachine,
    id: NodeId,
) -> Result<bool, StartError> {
    use openraft::storage::RaftStateMachine;
    let voters: Vec<NodeId> = match log.last_membership_voters() {
        Some(voters) => voters,
        None => {
            let (_, stored) = sm
                .applied_state()
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?;
            stored.membership().voter_ids().collect()
        }
    };
    Ok(voters == [id])
}

/// What a member asked to stand for election answers.
fn electing(asked: Result<(), openraft::error::Fatal<NodeId>>) -> ForwardReply {
    match asked {
        Ok(()) => Ok(ForwardResponse::Electing),
        Err(_) => Err(ForwardError::Api(ApiError::Stopped)),
    }
}

/// A member that led before it stopped, with other voters, restarts as a candidate of
/// its old term, not as that term's leader (openraft 0.9 would resume leading at once).
///
/// The leader sends entries to followers before its own fdatasync completes (the
/// vendor/openraft patch), so a leader killed at the wrong moment restarts without
/// entries its followers hold — possibly committed. Leading the same term again it
/// would write different entries under the same log ids, and followers, which compare
/// log ids only, would keep theirs: the members' states would diverge. Stepping down
/// forces an election into a new term first, where the ordinary Raft rules (the most
/// up-to-date log wins, conflicting entries are replaced) hold. The vote for itself in
/// the old term stays, so it cannot vote for anyone else in that term.
async fn step_down_on_restart(log: &mut RaftLogStore, id: NodeId) -> Result<(), StartError> {
    use openraft::storage::RaftLogStorage;
    let vote = log
        .read_vote()
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    if let Some(vote) = vote {
        if vote.is_committed() && vote.leader_id().voted_for() == Some(id) {
            let candidate = openraft::Vote::new(vote.leader_id().term, id);
            log.save_vote(&candidate)
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?;
            tracing::info!(
                term = vote.leader_id().term,
                "led before the restart: standing for election again instead of resuming"
            );
        }
    }
    Ok(())
}

impl PeerHandler for Node {
    fn id(&self) -> NodeId {
        self.id
    }

    fn is_fenced(&self) -> bool {
        Node::is_fenced(self)
    }

    fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    async fn serve_peer_request(&self, request: ForwardRequest) -> ForwardReply {
        match request {
            // A member may join through any member: a follower passes the challenge and
            // the join on to the leader, which issues the nonce and checks the proof.
            request @ (ForwardRequest::JoinChallenge
            | ForwardRequest::Join { .. }
            | ForwardRequest::PendingMember { .. })
                if !self.is_leader() =>
            {
                // As long as the joiner itself waits: adding a learner waits for it to
                // catch up.
                let timeout = Duration::from_millis(JOIN_TIMEOUT_MS);
                self.on_leader(request, timeout)
                    .await
                    .map_err(ForwardError::Api)
            }
            request => self.serve_forward(request).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::snapshot_interval_entries;

    #[test]
    fn members_take_snapshots_at_different_points_within_half_again_the_count() {
        let count = 100_000;
        let ids = [
            0x2b1c_9a4f_7e03_5d11_u64,
            0x91fe_0042_c3a8_17b6,
            0x5c07_e1d9_3b62_a0f4,
        ];
        let intervals: Vec<u64> = ids
            .iter()
            .map(|&id| snapshot_interval_entries(count, id))
            .collect();
        for &interval in &intervals {
            assert!(
                (count..count + count / 2).contains(&interval),
                "{intervals:?}"
            );
        }
        let mut distinct = intervals.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "{intervals:?}");
        assert_eq!(snapshot_interval_entries(u64::MAX, u64::MAX), u64::MAX);
        assert_eq!(snapshot_interval_entries(0, 7), 1);
    }
}
