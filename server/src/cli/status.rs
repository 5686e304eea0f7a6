//! `raftkv status`: the state of the whole cluster at a glance — every member with its
//! role, Raft term and index, applied index, db size and health, and what the cluster
//! can still lose, in words. `-w json` prints the same for scripts. It asks the members
//! list of the first endpoint that answers, then every member's own client URL, each
//! with a short timeout: an unreachable member is shown as such, never waited on.
//! This module only reads; it never changes the cluster.

use std::time::Duration;

use raftkv_proto::etcdserverpb as pb;
use raftkv_proto::etcdserverpb::cluster_client::ClusterClient;
use raftkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use serde::Serialize;

use crate::cli::client::{connect_as, Access, ConnectError};
use crate::ids::hex;

/// How long one member may take to answer its status.
const MEMBER_STATUS_TIMEOUT_MS: u64 = 3_000;

#[derive(Debug, thiserror::Error)]
pub enum StatusCliError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{0}")]
    Refused(String),
    #[error("unknown output format {0:?} (table or json)")]
    BadFormat(String),
}

/// One member's row.
#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub id: String,
    pub name: String,
    pub endpoint: String,
    /// leader, follower, learner, or unreachable
    pub role: String,
    pub raft_term: u64,
    pub raft_index: u64,
    pub raft_applied_index: u64,
    pub db_size_bytes: i64,
    pub version: String,
    /// "ok", or what is wrong (unreachable, no leader, raised alarms, warnings).
    pub health: String,
}

/// The cluster as a whole.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub cluster_id: String,
    pub leader: Option<String>,
    pub voters: usize,
    pub voters_up: usize,
    /// How many more voters may fail with the cluster still writable.
    pub can_lose: usize,
    pub summary: String,
    pub members: Vec<MemberStatus>,
}

/// Collects the status of every member reachable from `endpoints`.
pub async fn collect(endpoints: &str, access: &Access) -> Result<ClusterStatus, StatusCliError> {
    let channel = connect_as(endpoints, access).await?;
    let list = ClusterClient::new(channel)
        .member_list(pb::MemberListRequest {
            linearizable: false,
        })
        .await
        .map_err(|s| StatusCliError::Refused(s.message().to_string()))?
        .into_inner();
    let cluster_id = list.header.as_ref().map_or(0, |h| h.cluster_id);
    let mut rows = Vec::new();
    let mut leader = None;
    for m in &list.members {
        let (row, seen_leader) = member_row(m, access).await;
        leader = seen_leader.or(leader);
        rows.push(row);
    }
    let voters = list.members.iter().filter(|m| !m.is_learner).count();
    let voters_up = list
        .members
        .iter()
        .zip(&rows)
        .filter(|(m, r)| !m.is_learner && r.role != "unreachable" && r.role != "unstarted")
        .count();
    let quorum = voters / 2 + 1;
    let can_lose = voters_up.saturating_sub(quorum);
    let leader_name = leader.and_then(|id| {
        list.members
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.name.clone())
    });
    let summary = if voters_up < quorum || leader.is_none() {
        format!(
            "NOT WRITABLE: {voters_up} of {voters} voters answer, {quorum} are needed for a quorum"
        )
    } else {
        let mut s = format!(
            "healthy: leader {}; {voters_up} of {voters} voters up; can lose {can_lose} of {voters}",
            leader_name.clone().unwrap_or_default()
        );
        if voters % 2 == 0 {
            s.push_str(&format!(
                " (an even count: {voters} voters tolerate no more failures than {})",
                voters - 1
            ));
        }
        s
    };
    Ok(ClusterStatus {
        cluster_id: hex(cluster_id),
        leader: leader_name,
        voters,
        voters_up,
        can_lose,
        summary,
        members: rows,
    })
}

/// One member's row, asking it for its status; the leader it names, if any.
async fn member_row(m: &pb::Member, access: &Access) -> (MemberStatus, Option<u64>) {
    let endpoint = m.client_ur_ls.first().cloned().unwrap_or_default();
    let mut row = MemberStatus {
        id: hex(m.id),
        name: if m.name.is_empty() {
            "(unstarted)".into()
        } else {
            m.name.clone()
        },
        endpoint: endpoint.clone(),
        role: "unreachable".into(),
        raft_term: 0,
        raft_index: 0,
        raft_applied_index: 0,
        db_size_bytes: 0,
        version: String::new(),
        health: "unreachable".into(),
    };
    let Some(status) = member_status(&endpoint, access).await else {
        if m.name.is_empty() {
            row.role = "unstarted".into();
            row.health = "not started yet".into();
        }
        return (row, None);
    };
    row.role = if m.is_learner {
        "learner"
    } else if status.leader == m.id {
        "leader"
    } else {
        "follower"
    }
    .into();
    row.raft_term = status.raft_term;
    row.raft_index = status.raft_index;
    row.raft_applied_index = status.raft_applied_index;
    row.db_size_bytes = status.db_size;
    row.version = status.version.clone();
    let mut problems: Vec<String> = Vec::new();
    if status.leader == 0 {
        problems.push("no leader".into());
    }
    problems.extend(status.errors.iter().map(|e| e.trim().to_string()));
    row.health = if problems.is_empty() {
        "ok".into()
    } else {
        problems.join("; ")
    };
    (row, (status.leader != 0).then_some(status.leader))
}

/// One member's Maintenance.Status, or None if it does not answer in time.
async fn member_status(endpoint: &str, access: &Access) -> Option<pb::StatusResponse> {
    if endpoint.is_empty() {
        return None;
    }
    let timeout = Duration::from_millis(MEMBER_STATUS_TIMEOUT_MS);
    let ask = async {
        let channel = connect_as(endpoint, access).await.ok()?;
        MaintenanceClient::new(channel)
            .status(pb::StatusRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    };
    tokio::time::timeout(timeout, ask).await.ok().flatten()
}

/// `raftkv status`: the text to print, as a table or JSON.
pub async fn run(endpoints: &str, access: &Access, format: &str) -> Result<String, StatusCliError> {
    if format != "table" && format != "json" {
        return Err(StatusCliError::BadFormat(format.into()));
    }
    let status = collect(endpoints, access).await?;
    if format == "json" {
        return serde_json::to_string_pretty(&status)
            .map(|s| s + "\n")
            .map_err(|e| StatusCliError::Refused(e.to_string()));
    }
    let mut rows = vec![[
        "NAME", "ID", "ENDPOINT", "ROLE", "TERM", "INDEX", "APPLIED", "DB SIZE", "HEALTH",
    ]
    .map(String::from)
    .to_vec()];
    for m in &status.members {
        rows.push(vec![
            m.name.clone(),
            m.id.clone(),
            m.endpoint.clone(),
            m.role.clone(),
            m.raft_term.to_string(),
            m.raft_index.to_string(),
            m.raft_applied_index.to_string(),
            human_bytes(m.db_size_bytes),
            m.health.clone(),
        ]);
    }
    Ok(format!(
        "cluster {}: {}\n\n{}",
        status.cluster_id,
        status.summary,
        crate::cli::client::aligned(&rows)
    ))
}

fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut value = n.max(0) as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
