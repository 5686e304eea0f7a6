//! When this member stands for election: only after it heard from no leader for an
//! election timeout *and* a quorum of voters says it would vote for it (etcd's PreVote).
//!
//! openraft 0.9 has no pre-vote: a follower that missed heartbeats for a moment — its
//! process stalled (a slow disk holding the only runtime thread, swapping, SIGSTOP), or
//! the leader was backing off from it after it restarted — stood for election in a new
//! term, and the healthy leader stepped down on seeing that term in the follower's next
//! answer: one stalled follower cost the whole cluster a leader change. So openraft's own
//! election timer stays off (startup.rs) and this module decides, asking first.
//!
//! Owns the election keeper (one task per member) and the answer to a peer's pre-vote.
//! It never changes a vote or a term by itself: the election it starts is openraft's,
//! and a pre-vote answer changes nothing on the member that gives it.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use raftkv_storage::raft_types::NodeId;

use super::node::Node;
use crate::peer::{ForwardRequest, ForwardResponse};

/// A peer's answer to a pre-vote may take this long before it counts as a "no".
const PRE_VOTE_TIMEOUT_MS: u64 = 500;

/// What the keeper and a pre-vote answer look at, read from openraft in one go.
#[derive(Debug, Clone)]
struct View {
    state: ServerState,
    /// Time since the vote last changed or was confirmed by a leader's message (a
    /// heartbeat, an append, a snapshot), or since this member granted a vote.
    quiet: Duration,
    /// The vote is a leader's that a quorum granted: this member followed a leader.
    followed_leader: bool,
    last_log: Option<(u64, u64)>,
    voters: Vec<NodeId>,
}

async fn view_of(node: &Node) -> Option<View> {
    let (vote, quiet) = node
        .raft
        .with_raft_state(|s| {
            let quiet = s.vote_last_modified().map(|t| t.elapsed());
            (*s.vote_ref(), quiet)
        })
        .await
        .ok()?;
    let (state, voters) = {
        let metrics = node.raft.metrics();
        let m = metrics.borrow();
        (
            m.state,
            m.membership_config.membership().voter_ids().collect(),
        )
    };
    let last_log = node
        .raft
        .data_metrics()
        .borrow()
        .last_log
        .map(|id| (id.leader_id.term, id.index));
    Some(View {
        state,
        quiet: quiet.unwrap_or(Duration::MAX),
        followed_leader: vote.is_committed(),
        last_log,
        voters,
    })
}

fn is_voter(node: &Node) -> bool {
    let metrics = node.raft.metrics();
    let m = metrics.borrow();
    m.membership_config
        .membership()
        .voter_ids()
        .any(|id| id == node.id)
}

/// How long this member waits without a leader's message before it asks: as openraft's
/// own timer did, the followers' leader lease (twice the election timeout, during
/// which they refuse to vote for anyone else) when it followed a leader, plus a random
/// one to two election timeouts, so that members do not all ask at once.
fn patience(election_timeout_ms: u64, followed_leader: bool) -> Duration {
    let lease_ms = if followed_leader {
        2 * election_timeout_ms
    } else {
        0
    };
    let own_ms = rand::random_range(election_timeout_ms..=2 * election_timeout_ms);
    Duration::from_millis(lease_ms + own_ms)
}

/// Runs for the member's life: checks when the election timeout could have passed
/// (a follower hearing its leader asks RaftCore a few times a second, not at every
/// heartbeat), and starts an election once a quorum would vote for this member.
pub async fn run_keeper(node: Arc<Node>) {
    let election_timeout_ms = node.config.election_timeout_ms;
    let mut keeper = Keeper {
        tick: Duration::from_millis((node.config.heartbeat_interval_ms / 2).max(10)),
        wait: patience(election_timeout_ms, true),
        last_quiet: Duration::MAX,
        election_timeout_ms,
        node,
    };
    while let Some(pause) = keeper.step().await {
        tokio::time::sleep(pause).await;
    }
}

struct Keeper {
    node: Arc<Node>,
    election_timeout_ms: u64,
    /// The shortest pause between checks.
    tick: Duration,
    /// How long without a leader's message before asking (`patience`).
    wait: Duration,
    /// The quiet time seen at the last check: a shorter one now means a message came.
    last_quiet: Duration,
}

impl Keeper {
    /// One check; the pause until the next, or None once openraft has stopped.
    async fn step(&mut self) -> Option<Duration> {
        let node = &self.node;
        // A leader, a learner or a fenced member only looks again an election timeout
        // later: nothing it could do sooner, and an idle member wakes less.
        let idle_pause = Duration::from_millis(self.election_timeout_ms);
        if node.is_fenced() {
            return Some(idle_pause.min(self.tick));
        }
        if node.is_leader() || !is_voter(node) {
            // From the metrics alone: a leader or a learner does not ask RaftCore.
            node.link.set_leaderless(false);
            return Some(idle_pause);
        }
        let view = view_of(node).await?;
        if view.voters.len() == 1 {
            // The only voter needs nobody's vote: at once, as openraft's timer did.
            if view.state != ServerState::Candidate {
                node.raft.trigger().elect().await.ok()?;
            }
            return Some(self.tick);
        }
        if view.quiet < self.last_quiet {
            // A leader's message or a vote came in: a new random span from it.
            self.wait = patience(self.election_timeout_ms, view.followed_leader);
            node.link.set_leaderless(false);
        }
        self.last_quiet = view.quiet;
        if view.quiet < self.wait {
            return Some((self.wait - view.quiet).max(self.tick));
        }
        if !node.link.set_leaderless(true) {
            tracing::info!(
                quiet_ms = view.quiet.as_millis() as u64,
                "lost leader: heard from none for the election timeout"
            );
        }
        self.campaign(&view).await?;
        // Whatever came of it, the next attempt is a new random span away, measured
        // from the election's vote (or from now, when no quorum agreed).
        self.wait = view
            .quiet
            .saturating_add(patience(self.election_timeout_ms, false));
        Some(self.tick)
    }

    /// Asks for a pre-vote and, granted, starts openraft's election.
    async fn campaign(&self, view: &View) -> Option<()> {
        let node = &self.node;
        let granted = pre_vote(node, view).await;
        // A leader may have been heard from (or a vote granted) while the peers
        // answered: then that leader stands.
        let still_quiet = view_of(node).await?.quiet >= view.quiet;
        if granted && still_quiet {
            tracing::info!(
                quiet_ms = view.quiet.as_millis() as u64,
                "heard from no leader and a quorum would vote for this member: standing for election"
            );
            node.raft.trigger().elect().await.ok()?;
        }
        Some(())
    }
}

/// Asks the other voters whether they would vote for this member now; true as soon as
/// a quorum (counting this member) says yes, without waiting for a voter that is down
/// or cut off to time out.
async fn pre_vote(node: &Arc<Node>, view: &View) -> bool {
    use futures::StreamExt;
    let quorum = view.voters.len() / 2 + 1;
    let members = node.members();
    let request = ForwardRequest::PreVote {
        candidate: node.id,
        last_log: view.last_log,
    };
    let asks = members
        .iter()
        .filter(|(id, _, learner)| *id != node.id && !learner)
        .filter_map(|(_, m, _)| m.peer_urls.first().cloned())
        .map(|url| {
            let request = &request;
            async move {
                let timeout = Duration::from_millis(PRE_VOTE_TIMEOUT_MS);
                matches!(
                    node.peers.forward(&url, request, timeout).await,
                    Ok(Ok(ForwardResponse::PreVote { granted: true }))
                )
            }
        });
    let mut answers: futures::stream::FuturesUnordered<_> = asks.collect();
    let mut granted = 1; // this member's own
    while granted < quorum {
        match answers.next().await {
            Some(true) => granted += 1,
            Some(false) => {}
            None => return false,
        }
    }
    true
}

/// This member's answer to `candidate`'s pre-vote: yes when it would grant the vote
/// now — it does not lead and has heard from no leader within the followers' leader
/// lease, and the candidate's log is at least as up to date as its own (Raft's
/// election restriction).
pub async fn answer_pre_vote(
    node: &Node,
    candidate: NodeId,
    candidate_last_log: Option<(u64, u64)>,
) -> bool {
    if node.is_fenced() {
        return false;
    }
    let Some(view) = view_of(node).await else {
        return false;
    };
    // A leader never agrees: it is the leader the candidate has not heard from. Where it
    // cannot reach a quorum, the others answer without it.
    let lease = Duration::from_millis(2 * node.config.election_timeout_ms);
    let leader_alive =
        view.state == ServerState::Leader || (view.followed_leader && view.quiet < lease);
    let granted =
        !leader_alive && view.voters.contains(&candidate) && candidate_last_log >= view.last_log;
    tracing::debug!(candidate, granted, leader_alive, "pre-vote");
    granted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_waits_out_the_lease_and_members_wait_different_spans() {
        let spans: Vec<Duration> = (0..50).map(|_| patience(150, true)).collect();
        assert!(spans.iter().all(|d| *d >= Duration::from_millis(450)));
        assert!(spans.iter().all(|d| *d <= Duration::from_millis(600)));
        assert!(spans.iter().any(|d| *d != spans[0]));
        let without_leader = patience(150, false);
        assert!(without_leader >= Duration::from_millis(150));
        assert!(without_leader <= Duration::from_millis(300));
    }
}
