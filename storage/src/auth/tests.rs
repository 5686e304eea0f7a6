use super::*;

fn add_user(s: &mut AuthState, name: &str) {
    s.apply(&AuthCommand::UserAdd {
        name: name.into(),
        password_hash: b"$2a$10$hash".to_vec(),
        no_password: false,
    })
    .unwrap();
}

fn grant_role(s: &mut AuthState, user: &str, role: &str) -> Result<(), AuthError> {
    s.apply(&AuthCommand::UserGrantRole {
        user: user.into(),
        role: role.into(),
    })
}

fn grant(s: &mut AuthState, role: &str, kind: PermKind, key: &[u8], end: &[u8]) {
    s.apply(&AuthCommand::RoleGrantPermission {
        name: role.into(),
        perm: Some(Permission {
            kind,
            key: key.to_vec(),
            range_end: end.to_vec(),
        }),
    })
    .unwrap();
}

/// A state with auth enabled: root (root role) and `alice` with role `r`.
fn enabled() -> AuthState {
    let mut s = AuthState::default();
    add_user(&mut s, ROOT);
    grant_role(&mut s, ROOT, ROOT).unwrap();
    s.apply(&AuthCommand::RoleAdd { name: "r".into() }).unwrap();
    add_user(&mut s, "alice");
    grant_role(&mut s, "alice", "r").unwrap();
    s.apply(&AuthCommand::Enable).unwrap();
    s
}

#[test]
fn enabling_needs_a_root_user_with_the_root_role() {
    let mut s = AuthState::default();
    assert_eq!(s.revision, 1, "a fresh store is at revision 1, as etcd's");
    assert_eq!(
        s.apply(&AuthCommand::Enable),
        Err(AuthError::RootUserNotExist)
    );
    add_user(&mut s, ROOT);
    assert_eq!(
        s.apply(&AuthCommand::Enable),
        Err(AuthError::RootRoleNotExist)
    );
    grant_role(&mut s, ROOT, ROOT).unwrap();
    let before = s.revision;
    assert_eq!(s.apply(&AuthCommand::Enable), Ok(()));
    assert!(s.enabled);
    assert_eq!(s.revision, before, "enabling does not raise the revision");
    assert_eq!(
        s.apply(&AuthCommand::Enable),
        Ok(()),
        "enabled twice is fine"
    );
    s.apply(&AuthCommand::Disable).unwrap();
    assert!(!s.enabled);
    assert_eq!(s.revision, before + 1, "disabling raises it");
    s.apply(&AuthCommand::Disable).unwrap();
    assert_eq!(
        s.revision,
        before + 1,
        "disabling a disabled store changes nothing"
    );
}

#[test]
fn each_change_raises_the_revision_and_a_refused_one_changes_nothing() {
    let mut s = AuthState::default();
    add_user(&mut s, "u");
    assert_eq!(s.revision, 2);
    let before = s.clone();
    let refused = [
        AuthCommand::UserAdd {
            name: "u".into(),
            password_hash: vec![],
            no_password: false,
        },
        AuthCommand::UserAdd {
            name: String::new(),
            password_hash: vec![],
            no_password: false,
        },
        AuthCommand::UserDelete { name: "x".into() },
        AuthCommand::RoleAdd {
            name: String::new(),
        },
        AuthCommand::RoleDelete { name: "x".into() },
        AuthCommand::UserGrantRole {
            user: "u".into(),
            role: "x".into(),
        },
        AuthCommand::UserGrantRole {
            user: "x".into(),
            role: ROOT.into(),
        },
        AuthCommand::UserRevokeRole {
            name: "u".into(),
            role: "x".into(),
        },
        AuthCommand::RoleGrantPermission {
            name: "x".into(),
            perm: None,
        },
    ];
    let errors: Vec<AuthError> = refused
        .iter()
        .map(|c| s.apply(c).expect_err("refused"))
        .collect();
    assert_eq!(
        errors,
        [
            AuthError::UserAlreadyExist,
            AuthError::UserEmpty,
            AuthError::UserNotFound,
            AuthError::RoleEmpty,
            AuthError::RoleNotFound,
            AuthError::RoleNotFound,
            AuthError::UserNotFound,
            AuthError::RoleNotGranted,
            AuthError::PermissionNotGiven,
        ]
    );
    assert_eq!(s, before);
    s.apply(&AuthCommand::RoleAdd { name: "r".into() }).unwrap();
    grant_role(&mut s, "u", "r").unwrap();
    let granted = s.revision;
    grant_role(&mut s, "u", "r").unwrap();
    assert_eq!(s.revision, granted, "a role granted twice is granted once");
}

#[test]
fn root_is_protected_only_while_auth_is_enabled() {
    let mut s = enabled();
    for c in [
        AuthCommand::UserDelete { name: ROOT.into() },
        AuthCommand::RoleDelete { name: ROOT.into() },
        AuthCommand::UserRevokeRole {
            name: ROOT.into(),
            role: ROOT.into(),
        },
    ] {
        assert_eq!(s.apply(&c), Err(AuthError::InvalidAuthMgmt), "{c:?}");
    }
    s.apply(&AuthCommand::Disable).unwrap();
    s.apply(&AuthCommand::UserRevokeRole {
        name: ROOT.into(),
        role: ROOT.into(),
    })
    .unwrap();
    s.apply(&AuthCommand::UserDelete { name: ROOT.into() })
        .unwrap();
    assert!(!s.users.contains_key(ROOT));
}

#[test]
fn roles_stay_sorted_and_a_deleted_role_leaves_every_user() {
    let mut s = AuthState::default();
    add_user(&mut s, "u");
    for r in ["b", "a", "c"] {
        s.apply(&AuthCommand::RoleAdd { name: r.into() }).unwrap();
        grant_role(&mut s, "u", r).unwrap();
    }
    assert_eq!(s.users["u"].roles, ["a", "b", "c"]);
    s.apply(&AuthCommand::RoleDelete { name: "b".into() })
        .unwrap();
    assert_eq!(s.users["u"].roles, ["a", "c"]);
    assert_eq!(
        s.apply(&AuthCommand::RoleAdd { name: "a".into() }),
        Err(AuthError::RoleAlreadyExist)
    );
}

#[test]
fn a_user_without_a_password_keeps_none() {
    let mut s = AuthState::default();
    s.apply(&AuthCommand::UserAdd {
        name: "cert".into(),
        password_hash: b"ignored".to_vec(),
        no_password: true,
    })
    .unwrap();
    s.apply(&AuthCommand::UserChangePassword {
        name: "cert".into(),
        password_hash: b"new".to_vec(),
    })
    .unwrap();
    assert!(s.users["cert"].password_hash.is_empty());
    assert!(s.users["cert"].no_password);
}

#[test]
fn permissions_are_validated_replaced_on_the_same_range_and_revoked_exactly() {
    let mut s = enabled();
    for (key, end) in [(&b""[..], &b""[..]), (b"b", b"a"), (b"b", b"b")] {
        let c = AuthCommand::RoleGrantPermission {
            name: "r".into(),
            perm: Some(Permission {
                kind: PermKind::Read,
                key: key.to_vec(),
                range_end: end.to_vec(),
            }),
        };
        assert_eq!(
            s.apply(&c),
            Err(AuthError::InvalidAuthMgmt),
            "{key:?}..{end:?}"
        );
    }
    grant(&mut s, "r", PermKind::Read, b"k", b"l");
    grant(&mut s, "r", PermKind::Write, b"a", b"");
    grant(&mut s, "r", PermKind::ReadWrite, b"k", b"l");
    grant(&mut s, "r", PermKind::Read, b"k", &[0]);
    grant(&mut s, "r", PermKind::Write, b"k", b"");
    let ends: Vec<&[u8]> = s.roles["r"].perms[1..]
        .iter()
        .map(|p| p.range_end.as_slice())
        .collect();
    assert_eq!(
        ends,
        [&b"l"[..], &[0], b""],
        "same key: in the order granted"
    );
    grant(&mut s, "r", PermKind::Write, b"k", &[0]);
    assert_eq!(
        s.roles["r"].perms[2].kind,
        PermKind::Read,
        "only the first permission on a key is compared, as etcd does"
    );
    assert_eq!(s.roles["r"].perms.len(), 5);
    for end in [&[0][..], b""] {
        s.apply(&AuthCommand::RoleRevokePermission {
            role: "r".into(),
            key: b"k".to_vec(),
            range_end: end.to_vec(),
        })
        .unwrap();
    }
    let perms = &s.roles["r"].perms;
    assert_eq!(perms.len(), 2);
    assert_eq!(
        (perms[0].key.as_slice(), perms[0].kind),
        (&b"a"[..], PermKind::Write)
    );
    assert_eq!(
        perms[1].kind,
        PermKind::ReadWrite,
        "same range: kind replaced"
    );
    let revoke = |key: &[u8], end: &[u8]| AuthCommand::RoleRevokePermission {
        role: "r".into(),
        key: key.to_vec(),
        range_end: end.to_vec(),
    };
    assert_eq!(
        s.apply(&revoke(b"k", b"")),
        Err(AuthError::PermissionNotGranted)
    );
    s.apply(&revoke(b"k", b"l")).unwrap();
    assert_eq!(s.roles["r"].perms.len(), 1);
}

#[test]
fn a_range_is_permitted_only_when_the_grants_cover_it_without_a_gap() {
    let mut s = enabled();
    grant(&mut s, "r", PermKind::Read, b"a", b"c");
    grant(&mut s, "r", PermKind::Read, b"c", b"e");
    grant(&mut s, "r", PermKind::Write, b"w", b"");
    grant(&mut s, "r", PermKind::ReadWrite, b"p/", b"p0");
    grant(&mut s, "r", PermKind::Read, b"x", &[0]);
    let read = |k: &[u8], e: &[u8]| s.permits("alice", k, e, false);
    let write = |k: &[u8], e: &[u8]| s.permits("alice", k, e, true);
    assert!(read(b"b", b""));
    assert!(read(b"a", b"e"), "two touching grants join");
    assert!(!read(b"a", b"f"), "past the end");
    assert!(!read(b"0", b"b"), "before the start");
    assert!(!write(b"b", b""), "read is not write");
    assert!(write(b"w", b""));
    assert!(!write(b"w0", b""), "a key grant is that key only");
    assert!(!read(b"w", b""));
    assert!(read(b"p/a", b"") && write(b"p/a", b""), "readwrite is both");
    assert!(read(b"p/", b"p0"));
    assert!(read(b"x", &[0]) && read(b"zz", b""), "open-ended");
    assert!(!read(b"a", &[0]), "an open range needs an open grant");
    assert!(s.permits(ROOT, b"anything", &[0], true), "root passes");
    assert!(!s.permits("nobody", b"b", b"", false));
    s.apply(&AuthCommand::UserRevokeRole {
        name: "alice".into(),
        role: "r".into(),
    })
    .unwrap();
    assert!(
        !s.permits("alice", b"b", b"", false),
        "revoked with the role"
    );
}

mod guard {
    use super::*;
    use crate::mvcc::types::{
        Compare, CompareResult, CompareTarget, DeleteRangeRequest, PutRequest, RangeRequest,
        RequestOp, TxnRequest,
    };
    use crate::mvcc::Command;
    use bytes::Bytes;

    fn alice(s: &AuthState) -> Caller {
        Caller {
            user: "alice".into(),
            auth_revision: s.revision,
        }
    }

    fn put(key: &str, prev_kv: bool, lease: i64) -> PutRequest {
        PutRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from_static(b"v"),
            lease,
            prev_kv,
            ..Default::default()
        }
    }

    fn no_leases(_: i64) -> Vec<Bytes> {
        Vec::new()
    }

    /// alice may write under w/ and read under r/ (and write r/own).
    fn state() -> AuthState {
        let mut s = enabled();
        grant(&mut s, "r", PermKind::Write, b"w/", b"w0");
        grant(&mut s, "r", PermKind::Read, b"r/", b"r0");
        grant(&mut s, "r", PermKind::Write, b"r/own", b"");
        s
    }

    #[test]
    fn an_op_needs_a_user_a_current_revision_and_a_permission() {
        let s = state();
        let caller = alice(&s);
        assert_eq!(s.check_op(&caller, b"w/1", b"", true), Ok(()));
        assert_eq!(
            s.check_op(&caller, b"r/1", b"", true),
            Err(AuthError::PermissionDenied)
        );
        let anonymous = Caller {
            user: String::new(),
            auth_revision: 0,
        };
        assert_eq!(
            s.check_op(&anonymous, b"w/1", b"", true),
            Err(AuthError::UserEmpty)
        );
        let stale = Caller {
            auth_revision: s.revision - 1,
            ..caller.clone()
        };
        assert_eq!(
            s.check_op(&stale, b"w/1", b"", true),
            Err(AuthError::AuthOldRevision)
        );
        assert_eq!(s.check_admin(&caller), Err(AuthError::PermissionDenied));
        assert_eq!(s.check_admin(&anonymous), Err(AuthError::UserEmpty));
        let ghost = Caller {
            user: "ghost".into(),
            auth_revision: s.revision,
        };
        assert_eq!(s.check_admin(&ghost), Err(AuthError::UserNotFound));
        let root = Caller {
            user: ROOT.into(),
            auth_revision: 0,
        };
        assert_eq!(s.check_admin(&root), Ok(()), "no revision check for admin");
        let mut off = s.clone();
        off.apply(&AuthCommand::Disable).unwrap();
        assert_eq!(off.check_op(&anonymous, b"x", b"", true), Ok(()));
        assert_eq!(off.check_admin(&anonymous), Ok(()));
    }

    #[test]
    fn puts_deletes_and_txns_are_checked_as_etcd_checks_them() {
        let s = state();
        let c = alice(&s);
        let check = |command: Command| s.check_command(&c, &command, &no_leases);
        assert_eq!(check(Command::Put(put("w/1", false, 0))), Ok(()));
        assert_eq!(
            check(Command::Put(put("w/1", true, 0))),
            Err(AuthError::PermissionDenied),
            "prev_kv reads too"
        );
        assert_eq!(check(Command::Put(put("r/own", true, 0))), Ok(()));
        let delete = |key: &str, end: &str, prev_kv| {
            Command::DeleteRange(DeleteRangeRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                range_end: Bytes::copy_from_slice(end.as_bytes()),
                prev_kv,
            })
        };
        assert_eq!(check(delete("w/", "w0", false)), Ok(()));
        assert_eq!(
            check(delete("w/", "w0", true)),
            Err(AuthError::PermissionDenied)
        );
        let read_w = RequestOp::Range(RangeRequest {
            key: Bytes::from_static(b"w/1"),
            ..Default::default()
        });
        let compare_on = |key: &'static [u8]| Compare {
            result: CompareResult::Equal,
            target: CompareTarget::Version,
            key: Bytes::from_static(key),
            range_end: Bytes::new(),
            operand: None,
        };
        let txn = |compare, success, failure| {
            Command::Txn(TxnRequest {
                compare,
                success,
                failure,
            })
        };
        let write_w = RequestOp::Put(put("w/2", false, 0));
        assert_eq!(
            check(txn(vec![compare_on(b"r/1")], vec![write_w.clone()], vec![])),
            Ok(())
        );
        assert_eq!(
            check(txn(vec![compare_on(b"w/1")], vec![], vec![])),
            Err(AuthError::PermissionDenied),
            "a compare is a read"
        );
        assert_eq!(
            check(txn(vec![], vec![write_w.clone()], vec![read_w.clone()])),
            Err(AuthError::PermissionDenied),
            "the branch not taken is checked too"
        );
        let nested = RequestOp::Txn(TxnRequest {
            compare: vec![],
            success: vec![read_w],
            failure: vec![],
        });
        assert_eq!(
            check(txn(vec![], vec![write_w], vec![nested])),
            Err(AuthError::PermissionDenied),
            "nested txns too"
        );
        assert_eq!(
            check(Command::Auth(AuthCommand::RoleAdd { name: "x".into() })),
            Err(AuthError::PermissionDenied),
            "administration is root's"
        );
        assert_eq!(check(Command::Compact { revision: 5 }), Ok(()));
        assert_eq!(check(Command::LeaseGrant { id: 1, ttl_s: 5 }), Ok(()));
    }

    #[test]
    fn a_lease_holding_a_key_the_user_may_not_write_is_out_of_its_reach() {
        let s = state();
        let c = alice(&s);
        let keys = |id: i64| match id {
            7 => vec![Bytes::from_static(b"w/1")],
            8 => vec![Bytes::from_static(b"w/1"), Bytes::from_static(b"r/1")],
            _ => Vec::new(),
        };
        let check = |command: Command| s.check_command(&c, &command, &keys);
        assert_eq!(check(Command::LeaseRevoke { id: 7 }), Ok(()));
        assert_eq!(
            check(Command::LeaseRevoke { id: 8 }),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(check(Command::Put(put("w/2", false, 7))), Ok(()));
        assert_eq!(
            check(Command::Put(put("w/2", false, 8))),
            Err(AuthError::PermissionDenied)
        );
        let root = Caller {
            user: ROOT.into(),
            auth_revision: s.revision,
        };
        assert_eq!(
            s.check_command(&root, &Command::LeaseRevoke { id: 8 }, &keys),
            Ok(())
        );
    }
}
