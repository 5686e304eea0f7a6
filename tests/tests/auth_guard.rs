//! Requests under authentication against real etcd: the same users, roles and keys are
//! set up on etcd and on raftkv, authentication is turned on, and a seeded random
//! sequence of requests from several users (with their tokens, with none, with a
//! forged one) — reads, writes, transactions, leases, watches, maintenance, and root's
//! changes of permissions and passwords in between — is sent to both. Every response
//! is compared, headers' member ids and terms and tokens' text aside, errors by gRPC
//! code and message.
//!
//! RAFTKV_DIFF_SEED=<n> replays one seed; RAFTKV_DIFF_OPS=<n> sets the length.

use std::collections::BTreeMap;

use raftkv_proto::authpb;
use raftkv_proto::etcdserverpb as pb;
use raftkv_proto::etcdserverpb::auth_client::AuthClient;
use raftkv_proto::etcdserverpb::kv_client::KvClient;
use raftkv_proto::etcdserverpb::lease_client::LeaseClient;
use raftkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use raftkv_proto::etcdserverpb::watch_client::WatchClient;
use raftkv_tests::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

/// Who sends a request: a user with its token, nobody, or a forged token.
const CALLERS: &[&str] = &["root", "alice", "bob", "", "forged"];
const PASSWORDS: &[(&str, &str)] = &[("root", "r00t"), ("alice", "a1ice"), ("bob", "b0b")];
const KEYS: &[&str] = &["a/1", "a/2", "b", "c"];
const FORGED_TOKEN: &str = "AAAAAAAAAAAAAAAA.3";

struct Side {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    watch: WatchClient<Channel>,
    auth: AuthClient<Channel>,
    maintenance: MaintenanceClient<Channel>,
    tokens: BTreeMap<String, String>,
}

impl Side {
    async fn connect(url: String) -> Side {
        let channel = Channel::from_shared(url)
            .expect("url")
            .connect()
            .await
            .expect("connects");
        Side {
            kv: KvClient::new(channel.clone()),
            lease: LeaseClient::new(channel.clone()),
            watch: WatchClient::new(channel.clone()),
            auth: AuthClient::new(channel.clone()),
            maintenance: MaintenanceClient::new(channel),
            tokens: BTreeMap::new(),
        }
    }

    /// `message` with the caller's credentials.
    fn as_caller<T>(&self, caller: &str, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        let token = match caller {
            "" => None,
            "forged" => Some(FORGED_TOKEN.to_string()),
            user => self.tokens.get(user).cloned(),
        };
        if let Some(t) = token {
            r.metadata_mut()
                .insert("token", t.parse().expect("ascii token"));
        }
        r
    }
}

type Outcome = Result<String, (tonic::Code, String)>;

fn outcome<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    normalize: impl FnOnce(&mut T),
) -> Outcome {
    r.map(|r| {
        let mut x = r.into_inner();
        normalize(&mut x);
        format!("{x:?}")
    })
    .map_err(|s| (s.code(), s.message().to_string()))
}

#[derive(Debug, Clone)]
enum Op {
    Range(pb::RangeRequest),
    Put(pb::PutRequest),
    Delete(pb::DeleteRangeRequest),
    Txn(pb::TxnRequest),
    LeaseGrant(i64),
    LeaseRevoke(i64),
    LeaseTimeToLive(i64),
    LeaseLeases,
    Watch(pb::WatchCreateRequest),
    Grant(pb::AuthRoleGrantPermissionRequest),
    Revoke(pb::AuthRoleRevokePermissionRequest),
    UserGet(String),
    RoleGet(String),
    AuthStatus,
    Authenticate(String, String),
    ChangePassword(String, String),
    Status,
}

struct Gen {
    rng: StdRng,
    next_lease: i64,
}

impl Gen {
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.rng.random_range(0..from.len())]
    }

    /// A key, or the prefix `a/`, or every key from one on.
    fn range(&mut self) -> (Vec<u8>, Vec<u8>) {
        match self.rng.random_range(0..4) {
            0 => (b"a/".to_vec(), b"a0".to_vec()),
            1 => (self.pick(KEYS).into(), vec![0]),
            _ => (self.pick(KEYS).into(), Vec::new()),
        }
    }

    fn lease(&mut self) -> i64 {
        if self.next_lease == 1 {
            return 1;
        }
        self.rng.random_range(1..self.next_lease)
    }

    fn op(&mut self) -> Op {
        match self.rng.random_range(0..20) {
            0..=2 => {
                let (key, range_end) = self.range();
                Op::Range(pb::RangeRequest {
                    key: key.into(),
                    range_end: range_end.into(),
                    ..Default::default()
                })
            }
            3..=5 => Op::Put(pb::PutRequest {
                key: self.pick(KEYS).as_bytes().to_vec().into(),
                value: format!("v{}", self.rng.random_range(0..100))
                    .into_bytes()
                    .into(),
                prev_kv: self.rng.random_bool(0.3),
                lease: if self.rng.random_bool(0.2) {
                    self.lease()
                } else {
                    0
                },
                ..Default::default()
            }),
            6 => {
                let (key, range_end) = self.range();
                Op::Delete(pb::DeleteRangeRequest {
                    key: key.into(),
                    range_end: range_end.into(),
                    prev_kv: self.rng.random_bool(0.3),
                })
            }
            7 => Op::Txn(self.txn()),
            8 => {
                self.next_lease += 1;
                Op::LeaseGrant(self.next_lease - 1)
            }
            9 => Op::LeaseRevoke(self.lease()),
            10 => Op::LeaseTimeToLive(self.lease()),
            11 => Op::LeaseLeases,
            12 => {
                let (key, range_end) = self.range();
                Op::Watch(pb::WatchCreateRequest {
                    key: key.into(),
                    range_end: range_end.into(),
                    ..Default::default()
                })
            }
            13 => {
                let (key, range_end) = self.range();
                Op::Grant(pb::AuthRoleGrantPermissionRequest {
                    name: self.pick(&["reader", "writer"]).into(),
                    perm: Some(authpb::Permission {
                        perm_type: self.rng.random_range(0..3),
                        key: key.into(),
                        range_end: range_end.into(),
                    }),
                })
            }
            14 => {
                let (key, range_end) = self.range();
                Op::Revoke(pb::AuthRoleRevokePermissionRequest {
                    role: self.pick(&["reader", "writer"]).into(),
                    key: key.into(),
                    range_end: range_end.into(),
                })
            }
            15 => match self.rng.random_range(0..3) {
                0 => Op::UserGet(self.pick(&["root", "alice", "bob", "nobody"]).into()),
                1 => Op::RoleGet(self.pick(&["root", "reader", "writer"]).into()),
                _ => Op::AuthStatus,
            },
            16 | 17 => {
                let user = self.pick(&["root", "alice", "bob", "carol", "nobody"]);
                let password = PASSWORDS
                    .iter()
                    .find(|(u, _)| *u == user)
                    .map_or("x", |(_, p)| p);
                let password = if self.rng.random_bool(0.8) {
                    password
                } else {
                    "wrong"
                };
                Op::Authenticate(user.into(), password.into())
            }
            18 => {
                let user = self.pick(&["alice", "bob"]);
                let password = PASSWORDS.iter().find(|(u, _)| *u == user).unwrap().1;
                Op::ChangePassword(user.into(), password.into())
            }
            _ => Op::Status,
        }
    }

    fn txn(&mut self) -> pb::TxnRequest {
        use pb::request_op::Request;
        let compare = pb::Compare {
            result: pb::compare::CompareResult::Equal as i32,
            target: pb::compare::CompareTarget::Version as i32,
            key: self.pick(KEYS).as_bytes().to_vec().into(),
            target_union: Some(pb::compare::TargetUnion::Version(0)),
            ..Default::default()
        };
        let put = Request::RequestPut(pb::PutRequest {
            key: self.pick(KEYS).as_bytes().to_vec().into(),
            value: b"t".to_vec().into(),
            ..Default::default()
        });
        let (key, range_end) = self.range();
        let range = Request::RequestRange(pb::RangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            ..Default::default()
        });
        pb::TxnRequest {
            compare: vec![compare],
            success: vec![pb::RequestOp { request: Some(put) }],
            failure: vec![pb::RequestOp {
                request: Some(range),
            }],
        }
    }
}

/// Sends `op` as `caller`; a successful authentication keeps the user's new token.
async fn run(s: &mut Side, caller: &str, op: &Op) -> Outcome {
    use normalize::header;
    match op.clone() {
        Op::Range(r) => outcome(s.kv.range(s.as_caller(caller, r)).await, |x| {
            header(&mut x.header)
        }),
        Op::Put(r) => outcome(s.kv.put(s.as_caller(caller, r)).await, |x| {
            header(&mut x.header)
        }),
        Op::Delete(r) => outcome(s.kv.delete_range(s.as_caller(caller, r)).await, |x| {
            header(&mut x.header)
        }),
        Op::Txn(r) => outcome(s.kv.txn(s.as_caller(caller, r)).await, normalize::txn),
        Op::LeaseGrant(id) => {
            let r = pb::LeaseGrantRequest { ttl: 600, id };
            outcome(s.lease.lease_grant(s.as_caller(caller, r)).await, |x| {
                header(&mut x.header)
            })
        }
        Op::LeaseRevoke(id) => {
            let r = pb::LeaseRevokeRequest { id };
            outcome(s.lease.lease_revoke(s.as_caller(caller, r)).await, |x| {
                header(&mut x.header)
            })
        }
        Op::LeaseTimeToLive(id) => {
            let r = pb::LeaseTimeToLiveRequest { id, keys: true };
            outcome(
                s.lease.lease_time_to_live(s.as_caller(caller, r)).await,
                |x| {
                    // The leader's clock: etcd answers no header revision here.
                    x.header = None;
                    x.ttl = i64::from(x.ttl > 0);
                },
            )
        }
        Op::LeaseLeases => {
            let r = pb::LeaseLeasesRequest {};
            outcome(s.lease.lease_leases(s.as_caller(caller, r)).await, |x| {
                header(&mut x.header);
                x.leases.sort_by_key(|l| l.id);
            })
        }
        Op::Watch(create) => watch_created(s, caller, create).await,
        Op::Grant(r) => outcome(
            s.auth.role_grant_permission(s.as_caller(caller, r)).await,
            |x| header(&mut x.header),
        ),
        Op::Revoke(r) => outcome(
            s.auth.role_revoke_permission(s.as_caller(caller, r)).await,
            |x| header(&mut x.header),
        ),
        Op::UserGet(name) => {
            let r = pb::AuthUserGetRequest { name };
            outcome(s.auth.user_get(s.as_caller(caller, r)).await, |x| {
                header(&mut x.header)
            })
        }
        Op::RoleGet(role) => {
            let r = pb::AuthRoleGetRequest { role };
            outcome(s.auth.role_get(s.as_caller(caller, r)).await, |x| {
                header(&mut x.header)
            })
        }
        Op::AuthStatus => {
            let r = pb::AuthStatusRequest {};
            outcome(s.auth.auth_status(s.as_caller(caller, r)).await, |x| {
                header(&mut x.header)
            })
        }
        Op::Authenticate(name, password) => {
            let r = pb::AuthenticateRequest {
                name: name.clone(),
                password,
            };
            let answer = s.auth.authenticate(r).await;
            if let Ok(a) = &answer {
                s.tokens.insert(name, a.get_ref().token.clone());
            }
            outcome(answer, |x| {
                header(&mut x.header);
                x.token = "<token>".into();
            })
        }
        Op::ChangePassword(name, password) => {
            let r = pb::AuthUserChangePasswordRequest {
                name,
                password,
                hashed_password: String::new(),
            };
            outcome(
                s.auth.user_change_password(s.as_caller(caller, r)).await,
                |x| header(&mut x.header),
            )
        }
        Op::Status => {
            let r = pb::StatusRequest {};
            // Sizes, indexes and versions differ by design: whether it is allowed.
            outcome(s.maintenance.status(s.as_caller(caller, r)).await, |x| {
                *x = pb::StatusResponse::default()
            })
        }
    }
}

/// The first answer of a watch stream to one create request.
async fn watch_created(s: &mut Side, caller: &str, create: pb::WatchCreateRequest) -> Outcome {
    let request = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(request).await.expect("queued");
    let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut stream = match s.watch.watch(s.as_caller(caller, outbound)).await {
        Ok(r) => r.into_inner(),
        Err(e) => return Err((e.code(), e.message().to_string())),
    };
    let first = stream.message().await;
    drop(tx);
    match first {
        Ok(Some(mut r)) => {
            normalize::header(&mut r.header);
            Ok(format!("{r:?}"))
        }
        Ok(None) => Ok("ended".into()),
        Err(e) => Err((e.code(), e.message().to_string())),
    }
}

/// Users, roles and keys, then authentication on, the same on both sides.
async fn set_up(s: &mut Side) {
    use pb::AuthRoleGrantPermissionRequest as Grant;
    let perm = |t: authpb::permission::Type, key: &str, end: &[u8]| authpb::Permission {
        perm_type: t as i32,
        key: key.as_bytes().to_vec().into(),
        range_end: end.to_vec().into(),
    };
    for (key, value) in [("a/1", "1"), ("b", "2"), ("c", "3")] {
        s.kv.put(pb::PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            ..Default::default()
        })
        .await
        .expect("put");
    }
    for (name, password) in PASSWORDS {
        s.auth
            .user_add(pb::AuthUserAddRequest {
                name: name.to_string(),
                password: password.to_string(),
                ..Default::default()
            })
            .await
            .expect("user add");
    }
    s.auth
        .user_add(pb::AuthUserAddRequest {
            name: "carol".into(),
            options: Some(authpb::UserAddOptions { no_password: true }),
            ..Default::default()
        })
        .await
        .expect("user add");
    for role in ["root", "reader", "writer"] {
        s.auth
            .role_add(pb::AuthRoleAddRequest { name: role.into() })
            .await
            .expect("role add");
    }
    use authpb::permission::Type;
    let grants = [
        ("reader", perm(Type::Read, "a/", b"a0")),
        ("writer", perm(Type::Write, "a/", b"a0")),
        ("writer", perm(Type::Readwrite, "b", b"")),
    ];
    for (role, perm) in grants {
        s.auth
            .role_grant_permission(Grant {
                name: role.into(),
                perm: Some(perm),
            })
            .await
            .expect("grant");
    }
    for (user, role) in [("root", "root"), ("alice", "reader"), ("bob", "writer")] {
        s.auth
            .user_grant_role(pb::AuthUserGrantRoleRequest {
                user: user.into(),
                role: role.into(),
            })
            .await
            .expect("grant role");
    }
    s.auth
        .auth_enable(pb::AuthEnableRequest {})
        .await
        .expect("auth enable");
    for (name, password) in PASSWORDS {
        let r = s
            .auth
            .authenticate(pb::AuthenticateRequest {
                name: name.to_string(),
                password: password.to_string(),
            })
            .await
            .expect("authenticate");
        s.tokens.insert(name.to_string(), r.into_inner().token);
    }
}

/// What etcd 3.5.1 answers differently from later 3.5 releases, which fixed it: Status,
/// LeaseLeases and LeaseTimeToLive's keys unchecked, lease calls without credentials
/// let through, and a refused watch answered with watch id 0. The sequences for 3.5.1
/// leave those out.
fn fixed_since_3_5_1(caller: &str, op: &Op) -> bool {
    let unnamed = caller.is_empty() || caller == "forged";
    matches!(
        op,
        Op::Status | Op::LeaseTimeToLive(_) | Op::LeaseLeases | Op::Watch(_)
    ) || (unnamed && matches!(op, Op::LeaseGrant(_) | Op::LeaseRevoke(_)))
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
        let mut etcd = Side::connect(etcd_url).await;
        let mut raftkv = Side::connect(raftkv_url).await;
        set_up(&mut etcd).await;
        set_up(&mut raftkv).await;
        // The same kind of token: a simple one has two parts, a JWT three.
        let parts = |s: &Side| s.tokens["root"].split('.').count();
        assert_eq!(
            parts(&etcd),
            parts(&raftkv),
            "{:?} {:?}",
            etcd.tokens,
            raftkv.tokens
        );
        let mut gen = Gen {
            rng: StdRng::seed_from_u64(seed),
            next_lease: 1,
        };
        let mut history: Vec<String> = Vec::new();
        let (mut allowed, mut refused) = (0, 0);
        for i in 0..ops {
            let (op, caller) = loop {
                let (op, caller) = (gen.op(), gen.pick(CALLERS));
                if !(old_etcd && fixed_since_3_5_1(caller, &op)) {
                    break (op, caller);
                }
            };
            let want = run(&mut etcd, caller, &op).await;
            let got = run(&mut raftkv, caller, &op).await;
            history.push(format!("#{i} as {caller:?}: {op:?}\n    => {want:?}"));
            if want != got {
                let detail = format!(
                    "as:     {caller:?}\n op:     {op:?}\n etcd:   {want:?}\n raftkv: {got:?}"
                );
                return Err(divergence(seed, i, &detail, &history[..i]));
            }
            match &want {
                Ok(_) => allowed += 1,
                Err(_) => refused += 1,
            }
        }
        // Not vacuous: permissions both let requests through and stop them.
        assert!(
            allowed > ops / 5 && refused > ops / 5,
            "seed {seed}: {allowed} allowed, {refused} refused of {ops}"
        );
        Ok(())
    })
}

fn against(etcd: Etcd, member_name: &str, member_args: &[String], old_etcd: bool) {
    let root = tempfile::tempdir().expect("temp dir");
    let mut member = Member::new(root.path(), member_name);
    let mut args = vec!["--cluster-init".to_string()];
    args.extend_from_slice(member_args);
    member.start(&args);
    let (seed, ops) = diff_seed_and_ops("auth guard differential", 300);
    let result = run_seed(seed, ops, etcd.client_url(), member.client_url(), old_etcd);
    if let Err(report) = result {
        panic!("{report}\nraftkv's log:\n{}", member.log());
    }
}

#[test]
fn requests_under_authentication_match_the_newest_etcd() {
    against(Etcd::start_newest(), "guardnew", &[], false);
}

#[test]
fn requests_under_authentication_match_etcd_3_5_1() {
    against(Etcd::start(), "guard351", &[], true);
}

/// The same with JWTs signed by one RSA key on both sides: a token names the auth
/// revision it was issued at, so every auth change makes the tokens before it stale.
#[test]
fn requests_with_jwt_tokens_match_the_newest_etcd() {
    let keys = tempfile::tempdir().expect("temp dir");
    let private = keys.path().join("jwt.key");
    let public = keys.path().join("jwt.pub");
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    openssl(&["genrsa", "-out", private.to_str().unwrap(), "2048"]);
    openssl(&[
        "rsa",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    let option = format!(
        "jwt,pub-key={},priv-key={},sign-method=RS256,ttl=10m",
        public.display(),
        private.display()
    );
    let flags = ["--auth-token".to_string(), option];
    let etcd = Etcd::start_with_args(&etcd_newest_dir().join("etcd"), &flags);
    against(etcd, "guardjwt", &flags, false);
}
