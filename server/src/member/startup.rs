//! Start-up: opening the data dir and openraft, then initializing a new cluster,
//! resuming, or joining; a restarted leader steps down (`step_down_on_restart`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{Raft, SnapshotPolicy};
use raftkv_storage::mvcc::{MvccOptions, MvccStore};
use raftkv_storage::raft_log::RaftLogStore;
use raftkv_storage::raft_types::NodeId;
use raftkv_storage::state_machine::StateMachine;
use raftkv_storage::wal::WalOptions;

use super::batching::Coalescer;
use super::leader_link::LeaderLink;
use super::node::{Node, StartError};
use super::quota::SpaceCheck;
use crate::config::ServerConfig;
use crate::ids::hex;
use crate::member::identity::{random_id, Identity};
use crate::member::lease_clocks::LeaseKeeper;
use crate::peer::network::RaftNetworkImpl;
use crate::peer::pool::PeerClients;
use crate::peer::{ForwardRequest, ForwardResponse};

/// How long a starting member waits to learn whether MemberAdd reserved its id.
const PENDING_MEMBER_TIMEOUT_MS: u64 = 5_000;

/// Log entries kept behind a snapshot point for followers that fell a little behind
/// (etcd's snapshotCatchUpEntries); at 10k writes/s, half a second.
pub const MAX_CATCH_UP_ENTRIES: u64 = 5_000;

/// The most entries one AppendEntries carries (openraft's `max_payload_entries`; the
/// bytes are bounded too, by `raft_log::APPEND_BATCH_MAX_BYTES`). openraft keeps one
/// append in flight per follower, so this caps how many writes one replication round
/// trip commits: at 64 the cluster's puts stopped at about 18k/s however many clients
/// wrote (the appends were full), at 1024 they follow the CPU (docs/decisions.md, "An
/// append carries up to 1024 entries"). A follower catching up after a restart gets its entries 1024 at a time.
pub(super) const APPEND_BATCH_MAX_ENTRIES: u64 = 1024;

impl Node {
    /// Opens the data dir and starts openraft. Does not yet initialize or join: see
    /// `bootstrap`.
    pub async fn open(config: ServerConfig) -> Result<(Arc<Node>, Option<Identity>), StartError> {
        let data_dir = config.data_dir.clone();
        raftkv_storage::durable::create_dir_all(&data_dir)?;
        let existing = Identity::load(&data_dir)?;
        let join_token = join_token_of(&config)?;
        let tokens =
            crate::auth::jwt::TokenKind::parse(&config.auth_token).map_err(StartError::Config)?;
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
        let (mut log, mut sm, store) = open_storage(&config, identity.member_id).await?;
        let restart_state = match &existing {
            Some(identity) if identity.joined => Some(local_state(&mut log, &mut sm).await?),
            _ => None,
        };
        let applied_index = sm.applied_index();
        let network = RaftNetworkImpl {
            clients: peers.clone(),
        };
        let raft_config = Arc::new(raft_config(&config, identity.member_id)?);
        let raft = Raft::new(identity.member_id, raft_config, network, log, sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        // Elections are started by the keeper after a pre-vote (election.rs), never by
        // openraft's own timer; a restarted member is fenced until peers confirm its
        // data dir is current (rollback_guard.rs), and the keeper waits for that too.
        raft.runtime_config().elect(false);
        raft.runtime_config().lease_read(!config.no_lease_reads);
        let link = LeaderLink::new(
            identity.member_id,
            raft.clone(),
            peers.clone(),
            config.election_timeout_ms,
        );
        let coalescer = Coalescer::start(link.clone(), config.request_timeout());
        let node = Arc::new(Node {
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
            link,
            coalescer,
            floors: crate::member::rollback_guard::FloorTable::open(&data_dir),
            fenced: AtomicBool::new(restart_state.is_some()),
            restart_state,
            tokens,
        });
        Ok((node, existing))
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
}

/// The cluster's join token: the one this member keeps, else the flags' (the kept one
/// wins, with a warning, when they differ); none for a cluster made before tokens.
fn join_token_of(config: &ServerConfig) -> Result<Option<String>, StartError> {
    let data_dir = &config.data_dir;
    let flag_token = crate::member::join_token::from_flags(
        config.token.as_deref(),
        config.token_file.as_deref(),
    )
    .map_err(StartError::Config)?;
    Ok(
        match (crate::member::join_token::load(data_dir)?, flag_token) {
            (Some(stored), Some(given)) if stored != given => {
                tracing::warn!(
                    file = %crate::member::join_token::path(data_dir).display(),
                    "--token/--token-file differs from the token this member keeps; keeping its own"
                );
                Some(stored)
            }
            (Some(stored), _) => Some(stored),
            (None, given) => given,
        },
    )
}

/// Opens the Raft log, the key space and the state machine over it, then makes the
/// log consistent with what the engine holds: a gap an interrupted snapshot install
/// left is purged, and a member that led (with other voters) steps down.
async fn open_storage(
    config: &ServerConfig,
    member_id: NodeId,
) -> Result<(RaftLogStore, StateMachine, MvccStore), StartError> {
    let data_dir = &config.data_dir;
    let purge_guard = Arc::new(AtomicU64::new(0));
    let damaged = |detail: String| StartError::Damaged {
        detail,
        member_id: crate::ids::hex(member_id),
        data_dir: data_dir.display().to_string(),
    };
    let (mut log, report) = RaftLogStore::open(
        &data_dir.join("wal"),
        WalOptions::default(),
        purge_guard.clone(),
    )
    .map_err(|e| match e {
        e @ raftkv_storage::wal::WalError::Corrupt { .. } => damaged(e.to_string()),
        e => StartError::Wal(e),
    })?;
    if let Some((segment, offset, bytes)) = &report.torn_tail {
        tracing::warn!(segment = %segment.display(), offset, bytes, "raft log: a torn tail was cut");
    }
    let store = MvccStore::open(
        &data_dir.join("mvcc"),
        MvccOptions {
            cache_capacity_bytes: config.backend_cache_bytes,
            token_ttl_s: config.auth_token_ttl_s,
            ..MvccOptions::default()
        },
    )
    .map_err(|e| match e {
        e @ raftkv_storage::StoreError::Corrupt(_) => damaged(format!("the key space: {e}")),
        e => StartError::Store(e),
    })?;
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
    if !sole_voter(&log, &mut sm, member_id).await? {
        step_down_on_restart(&mut log, member_id).await?;
    }
    Ok((log, sm, store))
}

/// openraft's configuration from the flags.
fn raft_config(config: &ServerConfig, member_id: NodeId) -> Result<openraft::Config, StartError> {
    openraft::Config {
        cluster_name: "raftkv".into(),
        heartbeat_interval: config.heartbeat_interval_ms,
        election_timeout_min: config.election_timeout_ms,
        election_timeout_max: config.election_timeout_ms * 2,
        install_snapshot_timeout: 10_000,
        max_payload_entries: APPEND_BATCH_MAX_ENTRIES,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_interval_entries(
            config.snapshot_count,
            member_id,
        )),
        // etcd's snapshotCatchUpEntries: a member down for a moment (a restart) catches
        // up from the log, not by a snapshot of the whole key space.
        max_in_snapshot_log_to_keep: MAX_CATCH_UP_ENTRIES,
        ..Default::default()
    }
    .validate()
    .map_err(|e| StartError::Config(e.to_string()))
}

/// The id a new member takes: the one MemberAdd reserved for its peer URL, if any, or
/// a new random one. An unreachable cluster is left for the join itself to report.
pub(super) async fn reserved_id(
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

/// The vote a restarting member holds, and the last log id it holds durably: in its
/// log, or in its key space (rollback_guard.rs). A member that installed a snapshot
/// holds the snapshot's entries in the key space while its log may still end before
/// them (the log is purged only once the engine has flushed); counting the log alone,
/// a power cut right after an install made it look older than what it acknowledged.
pub(super) async fn local_state(
    log: &mut RaftLogStore,
    sm: &mut StateMachine,
) -> Result<crate::member::rollback_guard::LocalState, StartError> {
    use openraft::storage::{RaftLogStorage, RaftStateMachine};
    let state = log
        .get_log_state()
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    let vote = log
        .read_vote()
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    let (applied, _) = sm
        .applied_state()
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    let held = state.last_log_id.max(applied);
    Ok(crate::member::rollback_guard::LocalState {
        vote_term: vote.map_or(0, |v| v.leader_id().term),
        last_log: held.map(|l| (l.leader_id.term, l.index)),
    })
}

/// Whether this member is the only voter (the newest membership in the log, else the
/// state machine's): then nothing is committed without its own fdatasync, and it may
/// resume leading at once after a restart.
pub(super) async fn sole_voter(
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
pub(super) async fn step_down_on_restart(
    log: &mut RaftLogStore,
    id: NodeId,
) -> Result<(), StartError> {
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

#[cfg(test)]
mod tests {
    use super::snapshot_interval_entries;

    #[test]
    pub(super) fn members_take_snapshots_at_different_points_within_half_again_the_count() {
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
