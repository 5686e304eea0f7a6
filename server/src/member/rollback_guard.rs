//! The rollback guard: a member restarted with an older copy of its data dir (a backup
//! of the folder, a VM snapshot, a disk image) must never vote or acknowledge with the
//! state it lost — it could elect a leader that lacks acknowledged writes, or vote
//! twice in one term.
//!
//! A copy is self-consistent, so the member cannot tell by itself; its peers can. This
//! module owns what members remember of each other and the check at restart:
//! - The leader, every `GOSSIP_INTERVAL_MS`, records for each member the log id it has
//!   durably (openraft's matched log id: a follower's acknowledged, the leader's own
//!   flushed) and the term it did so in (its vote was at least that term), and sends
//!   the table to every follower.
//!   Every member keeps the table merged (maxima) in `<data-dir>/peer_floors.json`,
//!   written at most every `PERSIST_INTERVAL_MS`, off the runtime's threads: losing an
//!   update (a power cut before the write) only makes the check weaker, never wrong.
//! - A member that restarts with a data dir that already took part in a cluster starts
//!   fenced: it does not stand for election and the peer service refuses its Raft RPCs
//!   (votes, appends, snapshots). It asks the voters what they know of it, and lifts the
//!   fence once a quorum minus itself has answered and nobody knows of a newer state.
//!   If someone does, it stops with an error that says how to re-add it.
//!
//! What it cannot see: state lost within the last gossip interval (about a second),
//! and a copy restored while no peer that saw the newer state is reachable is held
//! fenced until one is (it could not form a quorum without them anyway).
//! It must never fence a member whose state is merely behind because it was down: every
//! floor is a lower bound of what the member durably held, compared as Raft orders
//! votes and logs (see `regression`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftkv_storage::raft_types::NodeId;

use crate::ids::hex;
use crate::member::node::Node;
use crate::peer::{Floor, Floors};
use crate::peer::{ForwardRequest, ForwardResponse};

/// How often the leader records and sends what followers hold.
pub const GOSSIP_INTERVAL_MS: u64 = 1_000;
/// How often the table is written to disk at most (when it changed).
pub const PERSIST_INTERVAL_MS: u64 = 5_000;
/// How long one question to a peer may take.
const ASK_TIMEOUT_MS: u64 = 1_000;
/// The pause between rounds of questions while answers are missing.
const ASK_RETRY_MS: u64 = 300;
/// Members a table may hold (bounds what a peer's message can make us keep).
const MAX_MEMBERS: usize = 1_024;
pub const FILE_NAME: &str = "peer_floors.json";

/// What this member holds after a restart: its vote's term and its last log id
/// (including what was purged into a snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalState {
    pub vote_term: u64,
    pub last_log: Option<(u64, u64)>,
}

/// Why `local` is older than what a peer saw, if it is.
///
/// - A vote term below the floor's term: the member voted (or followed a leader) in a
///   later term than its data dir remembers, so it could vote twice in that term.
/// - With the vote still in the term of the matched log id, a last log id below it: no
///   leader of a later term can have truncated the log since (truncating needs a newer
///   leader, which raises the vote first), so the log lost acknowledged entries.
pub fn regression(local: LocalState, floor: &Floor) -> Option<String> {
    if local.vote_term < floor.term {
        return Some(format!(
            "its vote is for term {} but it was already following term {}",
            local.vote_term, floor.term
        ));
    }
    if let Some(matched) = floor.matched {
        if local.vote_term == matched.0 && local.last_log < Some(matched) {
            return Some(format!(
                "its log ends at {} but it had acknowledged up to {}",
                show(local.last_log),
                show(Some(matched))
            ));
        }
    }
    None
}

fn show(log_id: Option<(u64, u64)>) -> String {
    match log_id {
        Some((term, index)) => format!("index {index} (term {term})"),
        None => "nothing".to_string(),
    }
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// The table kept in the data dir; an unreadable or missing file is an empty table.
pub fn load(data_dir: &Path) -> Floors {
    std::fs::read(path(data_dir))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn store(data_dir: &Path, floors: &Floors) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(floors).map_err(std::io::Error::other)?;
    raftkv_storage::durable::replace_file(&path(data_dir), &bytes, 0o644)
}

/// Merges `other` into `floors`; true if anything grew. Ignores members beyond
/// `MAX_MEMBERS`.
pub fn merge(floors: &mut Floors, other: &Floors) -> bool {
    let mut grew = false;
    for (id, floor) in other {
        if !floors.contains_key(id) && floors.len() >= MAX_MEMBERS {
            continue;
        }
        grew |= floors.entry(*id).or_default().merge(floor);
    }
    grew
}

/// A member's table of floors, shared by the keeper, the peer service and the check.
#[derive(Default)]
pub struct FloorTable {
    floors: std::sync::Mutex<Floors>,
    /// The table grew since it was last written to disk.
    dirty: std::sync::atomic::AtomicBool,
}

impl FloorTable {
    /// The table kept in `data_dir` (see `load`).
    pub fn open(data_dir: &Path) -> FloorTable {
        FloorTable {
            floors: std::sync::Mutex::new(load(data_dir)),
            dirty: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Floors> {
        self.floors.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn merge(&self, other: &Floors) {
        if merge(&mut self.lock(), other) {
            self.dirty.store(true, Ordering::Release);
        }
    }

    pub fn get(&self, member: NodeId) -> Option<Floor> {
        self.lock().get(&member).copied()
    }

    fn snapshot(&self) -> Floors {
        self.lock().clone()
    }
}

/// The leader's view of its followers now, or nothing when this member does not lead.
fn leader_view(node: &Node) -> Option<Floors> {
    let watch = node.raft.metrics();
    let metrics = watch.borrow();
    if metrics.current_leader != Some(node.id) {
        return None;
    }
    let term = metrics.current_term;
    Some(
        // The leader's own entry is what it has flushed itself.
        metrics
            .replication
            .as_ref()?
            .iter()
            .filter_map(|(id, matched)| {
                let matched = matched.as_ref()?;
                Some((
                    *id,
                    Floor {
                        term,
                        matched: Some((matched.leader_id.term, matched.index)),
                    },
                ))
            })
            .collect(),
    )
}

/// Runs for the member's life: the leader's gossip, and the table's writes to disk.
pub async fn run_keeper(node: Arc<Node>) {
    let mut last_store = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(GOSSIP_INTERVAL_MS));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Some(view) = leader_view(&node) {
            node.floors.merge(&view);
            let table = node.floors.snapshot();
            let followers: Vec<String> = node
                .members()
                .into_iter()
                .filter(|(id, _, _)| *id != node.id)
                .filter_map(|(_, m, _)| m.peer_urls.first().cloned())
                .collect();
            for url in followers {
                let node = node.clone();
                let request = ForwardRequest::Floors(table.clone());
                tokio::spawn(async move {
                    let timeout = Duration::from_millis(ASK_TIMEOUT_MS);
                    let _ = node.peers.forward(&url, &request, timeout).await;
                });
            }
        }
        if last_store.elapsed() >= Duration::from_millis(PERSIST_INTERVAL_MS)
            && node.floors.dirty.swap(false, Ordering::AcqRel)
        {
            last_store = Instant::now();
            // Off the runtime's threads: the write syncs, and a sync can wait seconds
            // behind other writes to the disk (a snapshot being exported), which on a
            // one-worker runtime would stall the heartbeats too.
            let data_dir = node.config.data_dir.clone();
            let floors = node.floors.snapshot();
            let stored = tokio::task::spawn_blocking(move || store(&data_dir, &floors)).await;
            if let Err(e) = stored.map_err(std::io::Error::other).and_then(|r| r) {
                tracing::warn!(error = %e, file = %path(&node.config.data_dir).display(), "could not keep what peers hold");
            }
        }
    }
}

/// The check at restart: asks the voters what they know of this member until a quorum
/// minus itself has answered. Ok when nothing newer is known (the caller lifts the
/// fence); Err with the message to stop with otherwise.
pub async fn check_at_restart(node: Arc<Node>, local: LocalState) -> Result<(), String> {
    let started = Instant::now();
    let mut answered: BTreeSet<NodeId> = BTreeSet::new();
    let mut last_log_at = Instant::now();
    loop {
        let members = node.members();
        let voters: Vec<(NodeId, String)> = members
            .iter()
            .filter(|(_, _, learner)| !learner)
            .filter_map(|(id, m, _)| Some((*id, m.peer_urls.first()?.clone())))
            .collect();
        if voters.is_empty() {
            // openraft has not published the membership it loaded yet.
            tokio::time::sleep(Duration::from_millis(ASK_RETRY_MS)).await;
            continue;
        }
        if !voters.iter().any(|(id, _)| *id == node.id) {
            // A learner's answers are not counted by anyone: nothing to guard.
            return Ok(());
        }
        let needed = voters.len() / 2; // a quorum minus this member
        if answered.len() >= needed {
            tracing::info!(
                answered = answered.len(),
                waited_ms = started.elapsed().as_millis() as u64,
                "peers confirm this data dir is not older than what they saw"
            );
            return Ok(());
        }
        let asks = voters
            .iter()
            .filter(|(id, _)| *id != node.id && !answered.contains(id))
            .map(|(id, url)| {
                let node = node.clone();
                let (id, url) = (*id, url.clone());
                async move {
                    let request = ForwardRequest::FloorOf { member: node.id };
                    let timeout = Duration::from_millis(ASK_TIMEOUT_MS);
                    match node.peers.forward(&url, &request, timeout).await {
                        Ok(Ok(ForwardResponse::Floor(floor))) => Some((id, floor)),
                        _ => None,
                    }
                }
            });
        for (peer, floor) in futures::future::join_all(asks).await.into_iter().flatten() {
            if let Some(why) = floor.as_ref().and_then(|f| regression(local, f)) {
                return Err(format!(
                    "this data dir is older than what member {} saw of member {}: {why}. \
                     It was restored from an older copy (or lost writes); it must not vote or \
                     acknowledge. Remove the member (`etcdctl member remove {}`), empty the \
                     data dir, and start it again to re-join",
                    hex(peer),
                    hex(node.id),
                    hex(node.id)
                ));
            }
            answered.insert(peer);
        }
        if last_log_at.elapsed() >= Duration::from_secs(5) {
            last_log_at = Instant::now();
            tracing::warn!(
                answered = answered.len(),
                needed,
                "fenced: waiting for peers to confirm this data dir is current before voting"
            );
        }
        if answered.len() < needed {
            tokio::time::sleep(Duration::from_millis(ASK_RETRY_MS)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(vote_term: u64, last_log: Option<(u64, u64)>) -> LocalState {
        LocalState {
            vote_term,
            last_log,
        }
    }

    #[test]
    fn an_older_copy_is_caught_by_its_log_or_its_vote() {
        let floor = Floor {
            term: 5,
            matched: Some((5, 120)),
        };
        // Log behind in the same term: entries it acknowledged are gone.
        assert!(regression(local(5, Some((5, 100))), &floor).is_some());
        assert!(regression(local(5, None), &floor).is_some());
        // Vote behind: it could vote again in a term it already voted in.
        assert!(regression(local(4, Some((4, 200))), &floor).is_some());
    }

    #[test]
    fn a_member_that_was_merely_down_or_truncated_is_not_fenced() {
        let floor = Floor {
            term: 5,
            matched: Some((5, 120)),
        };
        assert_eq!(regression(local(5, Some((5, 120))), &floor), None);
        assert_eq!(regression(local(5, Some((5, 300))), &floor), None);
        // A later leader truncated entries of term 5 and the member crashed before the
        // new ones: its vote moved on, its log is legitimately shorter.
        assert_eq!(regression(local(6, Some((5, 110))), &floor), None);
        assert_eq!(regression(local(6, Some((6, 90))), &floor), None);
        // Nothing known.
        assert_eq!(regression(local(1, None), &Floor::default()), None);
    }

    #[test]
    fn merging_keeps_the_maxima_and_a_bounded_table() {
        let mut floors = Floors::new();
        let a = Floors::from([(
            1,
            Floor {
                term: 3,
                matched: Some((3, 10)),
            },
        )]);
        let b = Floors::from([(
            1,
            Floor {
                term: 4,
                matched: Some((3, 8)),
            },
        )]);
        assert!(merge(&mut floors, &a));
        assert!(merge(&mut floors, &b));
        assert!(!merge(&mut floors, &a));
        assert_eq!(
            floors[&1],
            Floor {
                term: 4,
                matched: Some((3, 10))
            }
        );
        let many: Floors = (0..(MAX_MEMBERS as u64 + 10))
            .map(|id| (id, Floor::default()))
            .collect();
        merge(&mut floors, &many);
        assert_eq!(floors.len(), MAX_MEMBERS);
    }
}
