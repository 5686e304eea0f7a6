//! Users and roles against real etcd: seeded random sequences of auth administration
//! (users, roles, permissions, status) are sent to etcd and to raftkv, and every
//! response is compared, headers' member ids and terms aside, errors by gRPC code and
//! message — against etcd 3.5.1 and the newest etcd Debian ships.
//!
//! RAFTKV_DIFF_SEED=<n> replays one seed; RAFTKV_DIFF_OPS=<n> sets the length.

use raftkv_proto::authpb;
use raftkv_proto::etcdserverpb as pb;
use raftkv_proto::etcdserverpb::auth_client::AuthClient;
use raftkv_tests::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

const USERS: &[&str] = &["root", "alice", "bob", ""];
const ROLES: &[&str] = &["root", "reader", "writer", ""];
const KEYS: &[&[u8]] = &[b"a", b"a/", b"b", b"\0", b""];

#[derive(Debug, Clone)]
enum Op {
    UserAdd(pb::AuthUserAddRequest),
    UserGet(pb::AuthUserGetRequest),
    UserList,
    UserDelete(pb::AuthUserDeleteRequest),
    UserChangePassword(pb::AuthUserChangePasswordRequest),
    UserGrantRole(pb::AuthUserGrantRoleRequest),
    UserRevokeRole(pb::AuthUserRevokeRoleRequest),
    RoleAdd(pb::AuthRoleAddRequest),
    RoleGet(pb::AuthRoleGetRequest),
    RoleList,
    RoleDelete(pb::AuthRoleDeleteRequest),
    RoleGrantPermission(pb::AuthRoleGrantPermissionRequest),
    RoleRevokePermission(pb::AuthRoleRevokePermissionRequest),
    Status,
    Disable,
    Authenticate(pb::AuthenticateRequest),
}

struct Gen {
    rng: StdRng,
    /// Only permission ranges every 3.5 accepts: 3.5.1 took empty ones (a key of "",
    /// an end not after the key), which 3.5.8 on refuse, as raftkv does.
    valid_ranges_only: bool,
    /// Permissions a role may reach (`perms_of`).
    max_perms: usize,
}

impl Gen {
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.rng.random_range(0..from.len())]
    }

    fn user(&mut self) -> String {
        self.pick(USERS).to_string()
    }

    fn role(&mut self) -> String {
        self.pick(ROLES).to_string()
    }

    /// A permission's end: none (one key), open (`\0`), the key's prefix end, or any.
    fn range_end(&mut self, key: &[u8]) -> Vec<u8> {
        match self.rng.random_range(0..4) {
            0 => Vec::new(),
            1 => vec![0],
            2 => {
                let mut end = key.to_vec();
                if let Some(last) = end.last_mut() {
                    *last += 1;
                }
                end
            }
            _ => self.pick(KEYS).to_vec(),
        }
    }

    /// A permission's key and end.
    fn range(&mut self) -> (Vec<u8>, Vec<u8>) {
        loop {
            let key = self.pick(KEYS).to_vec();
            let end = self.range_end(&key);
            let valid = !key.is_empty() && (end.is_empty() || end == [0] || key < end);
            if valid || !self.valid_ranges_only {
                return (key, end);
            }
        }
    }

    fn op(&mut self) -> Op {
        match self.rng.random_range(0..16) {
            0 | 1 => Op::UserAdd(pb::AuthUserAddRequest {
                name: self.user(),
                password: format!("pw{}", self.rng.random_range(0..3)),
                options: self.rng.random_bool(0.5).then(|| authpb::UserAddOptions {
                    no_password: self.rng.random_bool(0.5),
                }),
                hashed_password: String::new(),
            }),
            2 => Op::UserGet(pb::AuthUserGetRequest { name: self.user() }),
            3 => Op::UserList,
            4 => Op::UserDelete(pb::AuthUserDeleteRequest { name: self.user() }),
            5 => Op::UserChangePassword(pb::AuthUserChangePasswordRequest {
                name: self.user(),
                password: "new".into(),
                hashed_password: String::new(),
            }),
            6 | 7 => Op::UserGrantRole(pb::AuthUserGrantRoleRequest {
                user: self.user(),
                role: self.role(),
            }),
            8 => Op::UserRevokeRole(pb::AuthUserRevokeRoleRequest {
                name: self.user(),
                role: self.role(),
            }),
            9 => Op::RoleAdd(pb::AuthRoleAddRequest { name: self.role() }),
            10 => Op::RoleGet(pb::AuthRoleGetRequest { role: self.role() }),
            11 => match self.rng.random_range(0..3) {
                0 => Op::RoleList,
                1 => Op::Status,
                _ => Op::RoleDelete(pb::AuthRoleDeleteRequest { role: self.role() }),
            },
            12 | 13 => {
                let (key, end) = self.range();
                let perm = authpb::Permission {
                    perm_type: self.rng.random_range(0..3),
                    range_end: end.into(),
                    key: key.into(),
                };
                Op::RoleGrantPermission(pb::AuthRoleGrantPermissionRequest {
                    name: self.role(),
                    perm: self.rng.random_bool(0.95).then_some(perm),
                })
            }
            14 => {
                let (key, end) = self.range();
                Op::RoleRevokePermission(pb::AuthRoleRevokePermissionRequest {
                    role: self.role(),
                    range_end: end.into(),
                    key: key.into(),
                })
            }
            _ => match self.rng.random_range(0..2) {
                0 => Op::Disable,
                _ => Op::Authenticate(pb::AuthenticateRequest {
                    name: self.user(),
                    password: "pw0".into(),
                }),
            },
        }
    }
}

type Outcome = Result<String, (tonic::Code, String)>;

/// A response as text with its header's member, cluster and term cleared.
fn outcome<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    header: impl FnOnce(&mut T) -> &mut Option<pb::ResponseHeader>,
) -> Outcome {
    r.map(|r| {
        let mut x = r.into_inner();
        normalize::header(header(&mut x));
        format!("{x:?}")
    })
    .map_err(|s| (s.code(), s.message().to_string()))
}

async fn run(c: &mut AuthClient<Channel>, op: &Op) -> Outcome {
    match op.clone() {
        Op::UserAdd(r) => outcome(c.user_add(r).await, |x| &mut x.header),
        Op::UserGet(r) => outcome(c.user_get(r).await, |x| &mut x.header),
        Op::UserList => outcome(c.user_list(pb::AuthUserListRequest {}).await, |x| {
            &mut x.header
        }),
        Op::UserDelete(r) => outcome(c.user_delete(r).await, |x| &mut x.header),
        Op::UserChangePassword(r) => outcome(c.user_change_password(r).await, |x| &mut x.header),
        Op::UserGrantRole(r) => outcome(c.user_grant_role(r).await, |x| &mut x.header),
        Op::UserRevokeRole(r) => outcome(c.user_revoke_role(r).await, |x| &mut x.header),
        Op::RoleAdd(r) => outcome(c.role_add(r).await, |x| &mut x.header),
        Op::RoleGet(r) => outcome(c.role_get(r).await, |x| &mut x.header),
        Op::RoleList => outcome(c.role_list(pb::AuthRoleListRequest {}).await, |x| {
            &mut x.header
        }),
        Op::RoleDelete(r) => outcome(c.role_delete(r).await, |x| &mut x.header),
        Op::RoleGrantPermission(r) => outcome(c.role_grant_permission(r).await, |x| &mut x.header),
        Op::RoleRevokePermission(r) => {
            outcome(c.role_revoke_permission(r).await, |x| &mut x.header)
        }
        Op::Status => outcome(c.auth_status(pb::AuthStatusRequest {}).await, |x| {
            &mut x.header
        }),
        Op::Disable => outcome(c.auth_disable(pb::AuthDisableRequest {}).await, |x| {
            &mut x.header
        }),
        Op::Authenticate(r) => outcome(c.authenticate(r).await, |x| &mut x.header),
    }
}

/// etcd keeps a role's permissions sorted by key with Go's sort.Sort. Up to some length
/// that is an insertion sort, which puts a new permission after those on the same key
/// (as raftkv places it); beyond, the order among permissions on one key depends on the
/// Go release etcd was built with: go1.19's pdqsort sorts 12 elements by insertion
/// (3.5.30), go1.16's quicksort does a gap-6 shell pass first on 7 to 12 (3.5.1). The
/// sequences grant no more to a role that has `max_perms` (12 or 6).
/// How many permissions etcd's `role` has (0 if it has none or does not exist).
async fn perms_of(etcd: &mut AuthClient<Channel>, role: &str) -> usize {
    etcd.role_get(pb::AuthRoleGetRequest { role: role.into() })
        .await
        .map(|r| r.into_inner().perm.len())
        .unwrap_or(0)
}

fn run_seed(
    seed: u64,
    ops: usize,
    etcd_url: String,
    raftkv_url: String,
    old_etcd: bool,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let connect = |url: String| async move {
            AuthClient::new(
                Channel::from_shared(url)
                    .expect("url")
                    .connect()
                    .await
                    .expect("connects"),
            )
        };
        let mut etcd = connect(etcd_url).await;
        let mut raftkv = connect(raftkv_url).await;
        let mut gen = Gen {
            rng: StdRng::seed_from_u64(seed),
            valid_ranges_only: old_etcd,
            max_perms: if old_etcd { 6 } else { 12 },
        };
        let mut history: Vec<String> = Vec::new();
        let mut answered_ok = 0;
        for i in 0..ops {
            let op = loop {
                let op = gen.op();
                if let Op::RoleGrantPermission(r) = &op {
                    if perms_of(&mut etcd, &r.name).await >= gen.max_perms {
                        continue;
                    }
                }
                break op;
            };
            let want = run(&mut etcd, &op).await;
            let got = run(&mut raftkv, &op).await;
            history.push(format!("#{i} {op:?}\n    => {want:?}"));
            if want != got {
                let detail = format!("op:     {op:?}\n etcd:   {want:?}\n raftkv: {got:?}");
                return Err(divergence(seed, i, &detail, &history[..i]));
            }
            answered_ok += usize::from(want.is_ok());
        }
        // Not vacuous: most sequences both succeed and fail.
        assert!(
            answered_ok > ops / 5 && answered_ok < ops,
            "seed {seed}: {answered_ok} of {ops} operations succeeded"
        );
        Ok(())
    })
}

/// `old_etcd`: etcd 3.5.1, whose known differences from the newest the sequences avoid.
fn against(etcd: Etcd, member_name: &str, old_etcd: bool) {
    let root = tempfile::tempdir().expect("temp dir");
    let mut member = Member::new(root.path(), member_name);
    // etcd's lowest cost: the sequences add users by the hundred.
    member.start(&[
        "--cluster-init".to_string(),
        "--bcrypt-cost".to_string(),
        "4".to_string(),
    ]);
    let (seed, ops) = diff_seed_and_ops("auth differential", 400);
    let result = run_seed(seed, ops, etcd.client_url(), member.client_url(), old_etcd);
    if let Err(report) = result {
        panic!("{report}\nraftkv's log:\n{}", member.log());
    }
}

#[test]
fn random_auth_administration_matches_etcd_3_5_1() {
    against(Etcd::start(), "auth351", true);
}

#[test]
fn random_auth_administration_matches_the_newest_etcd() {
    against(Etcd::start_newest(), "authnew", false);
}
