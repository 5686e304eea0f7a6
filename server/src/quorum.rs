//! Quorum arithmetic: how many voters a membership has and how many it can lose.
//! Imports nothing of the crate.

use raftkv_storage::raft_types::{Member, NodeId};

/// How many voters a membership has (learners do not count toward a quorum).
pub fn voter_count(membership: &openraft::StoredMembership<NodeId, Member>) -> usize {
    membership.membership().voter_ids().count()
}

/// How many of `voters` the cluster can lose, and a warning when the count is even (an
/// even count tolerates no more failures than one less).
pub fn fault_tolerance_of(voters: usize) -> (usize, usize, Option<String>) {
    let tolerated = voters.saturating_sub(1) / 2;
    let warning = (voters > 0 && voters.is_multiple_of(2)).then(|| {
        format!(
            "{voters} voters tolerate {tolerated} failure{}: run an odd number (3 tolerate 1)",
            if tolerated == 1 { "" } else { "s" }
        )
    });
    (voters, tolerated, warning)
}
