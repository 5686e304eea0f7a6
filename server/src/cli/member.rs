//! `raftkv member list|add|remove|promote|update`: the etcd Cluster API from raftkv's
//! own command line, for people who do not have etcdctl. Ids are shown and taken in
//! hex, as etcdctl does. This module only talks to a member; it never opens a data dir.

use raftkv_proto::etcdserverpb as pb;
use raftkv_proto::etcdserverpb::cluster_client::ClusterClient;

use crate::cli::client::{connect_as, Access, ConnectError};
use crate::ids::hex;

#[derive(Debug, thiserror::Error)]
pub enum MemberCliError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The member's answer, with etcd's message ("etcdserver: member not found", …).
    #[error("{0}")]
    Refused(String),
    #[error("{0:?} is not a member id (ids are hex, as `raftkv member list` shows them)")]
    BadId(String),
}

/// What to do.
#[derive(Debug, Clone)]
pub enum MemberAction {
    List,
    /// Reserve an id for a member that will start with `--join` and this peer URL.
    Add {
        name: String,
        peer_urls: Vec<String>,
        learner: bool,
    },
    Remove {
        id: String,
    },
    Promote {
        id: String,
    },
    Update {
        id: String,
        peer_urls: Vec<String>,
    },
}

fn parse_id(id: &str) -> Result<u64, MemberCliError> {
    u64::from_str_radix(id.trim_start_matches("0x"), 16)
        .map_err(|_| MemberCliError::BadId(id.into()))
}

fn refused(status: tonic::Status) -> MemberCliError {
    MemberCliError::Refused(status.message().to_string())
}

/// Runs `action` against the first reachable of `endpoints`; returns what to print.
pub async fn run(
    endpoints: &str,
    access: &Access,
    action: MemberAction,
) -> Result<String, MemberCliError> {
    let mut client = ClusterClient::new(connect_as(endpoints, access).await?);
    match action {
        MemberAction::List => {
            let reply = client
                .member_list(pb::MemberListRequest { linearizable: true })
                .await
                .map_err(refused)?
                .into_inner();
            Ok(table(&reply.members))
        }
        MemberAction::Add {
            name,
            peer_urls,
            learner,
        } => {
            let reply = client
                .member_add(pb::MemberAddRequest {
                    peer_ur_ls: peer_urls.clone(),
                    is_learner: learner,
                })
                .await
                .map_err(refused)?
                .into_inner();
            let id = reply.member.map_or(0, |m| m.id);
            let role = if learner {
                "learner (it stays one until promoted)"
            } else {
                "member (a voter once it has caught up)"
            };
            Ok(format!(
                "Member {} added as a {role}.\nStart it with: raftkv --name {name} --listen-peer-urls {} \
                 --join <a member's peer URL> --token-file <the cluster's token file> (and an empty data dir)\n\n{}",
                hex(id),
                peer_urls.join(","),
                table(&reply.members)
            ))
        }
        MemberAction::Remove { id } => {
            let id = parse_id(&id)?;
            let reply = client
                .member_remove(pb::MemberRemoveRequest { id })
                .await
                .map_err(refused)?
                .into_inner();
            Ok(format!(
                "Member {} removed.\n\n{}",
                hex(id),
                table(&reply.members)
            ))
        }
        MemberAction::Promote { id } => {
            let id = parse_id(&id)?;
            let reply = client
                .member_promote(pb::MemberPromoteRequest { id })
                .await
                .map_err(refused)?
                .into_inner();
            Ok(format!(
                "Member {} promoted to voter.\n\n{}",
                hex(id),
                table(&reply.members)
            ))
        }
        MemberAction::Update { id, peer_urls } => {
            let id = parse_id(&id)?;
            let reply = client
                .member_update(pb::MemberUpdateRequest {
                    id,
                    peer_ur_ls: peer_urls,
                })
                .await
                .map_err(refused)?
                .into_inner();
            Ok(format!(
                "Member {} updated.\n\n{}",
                hex(id),
                table(&reply.members)
            ))
        }
    }
}

/// Members as an aligned table: id, status, name, peer URLs, client URLs, role.
pub fn table(members: &[pb::Member]) -> String {
    let mut rows = vec![
        ["ID", "STATUS", "NAME", "PEER ADDRS", "CLIENT ADDRS", "ROLE"]
            .map(String::from)
            .to_vec(),
    ];
    for m in members {
        rows.push(vec![
            hex(m.id),
            if m.name.is_empty() {
                "unstarted"
            } else {
                "started"
            }
            .into(),
            m.name.clone(),
            m.peer_ur_ls.join(","),
            m.client_ur_ls.join(","),
            if m.is_learner { "learner" } else { "voter" }.into(),
        ]);
    }
    crate::cli::client::aligned(&rows)
}
