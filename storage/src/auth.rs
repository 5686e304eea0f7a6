//! The auth store's state, as etcd 3.5 keeps it: users (a bcrypt hash or no password,
//! granted roles), roles (key permissions), whether authentication is enabled, and the
//! auth revision that every change raises.
//!
//! Owns the rules of each administrative change (`AuthCommand`, applied from the Raft
//! log, so every member reaches the same state) and the permission check on a key or
//! range; `tokens.rs` keeps the simple tokens those entries hand out. It must never
//! see a password in the clear, hash one, or know of gRPC: the server hashes
//! passwords before proposing, checks them before authenticating, and reads tokens
//! from requests at the edge.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod guard;
pub mod tokens;
pub use guard::Caller;

/// etcd's superuser and superrole: the root role bypasses every permission check.
pub const ROOT: &str = "root";

/// A permission's kind, as etcd's authpb numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermKind {
    Read = 0,
    Write = 1,
    ReadWrite = 2,
}

/// One key permission of a role: `range_end` empty is the single key, `[0]` every key
/// from `key` on, otherwise the range [key, range_end) (etcd's rules b1–b3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub kind: PermKind,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct User {
    /// bcrypt hash; empty for a user added with no password (certificate users).
    pub password_hash: Vec<u8>,
    pub no_password: bool,
    /// Granted roles, sorted.
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Role {
    /// Sorted by key.
    pub perms: Vec<Permission>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    pub enabled: bool,
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
}

impl Default for AuthState {
    /// A fresh etcd's auth store: disabled, at revision 1, empty.
    fn default() -> Self {
        AuthState {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
        }
    }
}

/// An administrative change, as it travels in the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthCommand {
    Enable,
    Disable,
    UserAdd {
        name: String,
        password_hash: Vec<u8>,
        no_password: bool,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password_hash: Vec<u8>,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        name: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        name: String,
        perm: Option<Permission>,
    },
    RoleRevokePermission {
        role: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
    /// Hands `name` a simple token `<token_prefix>.<index of this entry>` on every
    /// member (tokens.rs); none with an empty prefix (JWTs are signed at the edge).
    /// The password was checked by the member that proposed it; the entry carries
    /// none. Changes nothing and raises no revision.
    Authenticate {
        name: String,
        token_prefix: String,
    },
}

/// etcd's auth errors, with its messages; `class` gives the gRPC code etcd answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum AuthError {
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
}

impl AuthError {
    pub fn class(&self) -> crate::error::ErrorClass {
        use crate::error::ErrorClass;
        match self {
            AuthError::UserEmpty
            | AuthError::RoleEmpty
            | AuthError::PermissionNotGiven
            | AuthError::InvalidAuthMgmt
            | AuthError::AuthOldRevision
            | AuthError::AuthFailed => ErrorClass::InvalidArgument,
            AuthError::PermissionDenied => ErrorClass::PermissionDenied,
            _ => ErrorClass::FailedPrecondition,
        }
    }
}

impl AuthState {
    /// Applies one change as etcd's auth store does; a refused change leaves the state
    /// as it was. Every change that alters users or roles raises the revision, and so
    /// does disabling; enabling does not, nor does granting a role already granted.
    pub fn apply(&mut self, command: &AuthCommand) -> Result<(), AuthError> {
        let revision_before = self.revision;
        let result = match command {
            AuthCommand::Enable => self.enable(),
            AuthCommand::Disable => {
                if self.enabled {
                    self.enabled = false;
                    self.revision += 1;
                }
                Ok(())
            }
            AuthCommand::UserAdd {
                name,
                password_hash,
                no_password,
            } => self.user_add(name, password_hash, *no_password),
            AuthCommand::UserDelete { name } => self.user_delete(name),
            AuthCommand::UserChangePassword {
                name,
                password_hash,
            } => self.user_change_password(name, password_hash),
            AuthCommand::UserGrantRole { user, role } => self.user_grant_role(user, role),
            AuthCommand::UserRevokeRole { name, role } => self.user_revoke_role(name, role),
            AuthCommand::RoleAdd { name } => self.role_add(name),
            AuthCommand::RoleDelete { name } => self.role_delete(name),
            AuthCommand::RoleGrantPermission { name, perm } => {
                self.role_grant_permission(name, perm.as_ref())
            }
            AuthCommand::RoleRevokePermission {
                role,
                key,
                range_end,
            } => self.role_revoke_permission(role, key, range_end),
            AuthCommand::Authenticate { name, .. } => self.may_authenticate(name),
        };
        debug_assert!(
            self.revision >= revision_before,
            "the auth revision never falls"
        );
        debug_assert!(
            result.is_ok() || self.revision == revision_before,
            "a refused change raises nothing"
        );
        result
    }

    /// etcd's authStore.Authenticate when applied: auth on, the user there, and not a
    /// user without a password (those authenticate by certificate only).
    pub fn may_authenticate(&self, name: &str) -> Result<(), AuthError> {
        if !self.enabled {
            return Err(AuthError::AuthNotEnabled);
        }
        match self.users.get(name) {
            Some(user) if !user.no_password => Ok(()),
            _ => Err(AuthError::AuthFailed),
        }
    }

    fn enable(&mut self) -> Result<(), AuthError> {
        if self.enabled {
            return Ok(());
        }
        let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
        if !root.roles.iter().any(|r| r == ROOT) {
            return Err(AuthError::RootRoleNotExist);
        }
        self.enabled = true;
        Ok(())
    }

    fn user_add(
        &mut self,
        name: &str,
        password_hash: &[u8],
        no_password: bool,
    ) -> Result<(), AuthError> {
        if name.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        if self.users.contains_key(name) {
            return Err(AuthError::UserAlreadyExist);
        }
        let user = User {
            password_hash: if no_password {
                Vec::new()
            } else {
                password_hash.to_vec()
            },
            no_password,
            roles: Vec::new(),
        };
        self.users.insert(name.to_string(), user);
        self.revision += 1;
        Ok(())
    }

    fn user_delete(&mut self, name: &str) -> Result<(), AuthError> {
        if self.enabled && name == ROOT {
            return Err(AuthError::InvalidAuthMgmt);
        }
        self.users.remove(name).ok_or(AuthError::UserNotFound)?;
        self.revision += 1;
        Ok(())
    }

    fn user_change_password(&mut self, name: &str, password_hash: &[u8]) -> Result<(), AuthError> {
        let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
        // A user without a password keeps none (etcd ignores the new one).
        user.password_hash = if user.no_password {
            Vec::new()
        } else {
            password_hash.to_vec()
        };
        self.revision += 1;
        Ok(())
    }

    fn user_grant_role(&mut self, name: &str, role: &str) -> Result<(), AuthError> {
        if !self.users.contains_key(name) {
            return Err(AuthError::UserNotFound);
        }
        // The root role may be granted before it exists as a role.
        if role != ROOT && !self.roles.contains_key(role) {
            return Err(AuthError::RoleNotFound);
        }
        let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
        match user.roles.binary_search_by(|r| r.as_str().cmp(role)) {
            Ok(_) => Ok(()),
            Err(at) => {
                user.roles.insert(at, role.to_string());
                self.revision += 1;
                Ok(())
            }
        }
    }

    fn user_revoke_role(&mut self, name: &str, role: &str) -> Result<(), AuthError> {
        if self.enabled && name == ROOT && role == ROOT {
            return Err(AuthError::InvalidAuthMgmt);
        }
        let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
        let before = user.roles.len();
        user.roles.retain(|r| r != role);
        if user.roles.len() == before {
            return Err(AuthError::RoleNotGranted);
        }
        self.revision += 1;
        Ok(())
    }

    fn role_add(&mut self, name: &str) -> Result<(), AuthError> {
        if name.is_empty() {
            return Err(AuthError::RoleEmpty);
        }
        if self.roles.contains_key(name) {
            return Err(AuthError::RoleAlreadyExist);
        }
        self.roles.insert(name.to_string(), Role::default());
        self.revision += 1;
        Ok(())
    }

    fn role_delete(&mut self, name: &str) -> Result<(), AuthError> {
        if self.enabled && name == ROOT {
            return Err(AuthError::InvalidAuthMgmt);
        }
        self.roles.remove(name).ok_or(AuthError::RoleNotFound)?;
        for user in self.users.values_mut() {
            user.roles.retain(|r| r != name);
        }
        self.revision += 1;
        Ok(())
    }

    fn role_grant_permission(
        &mut self,
        name: &str,
        perm: Option<&Permission>,
    ) -> Result<(), AuthError> {
        let perm = perm.ok_or(AuthError::PermissionNotGiven)?;
        if !valid_permission_range(&perm.key, &perm.range_end) {
            return Err(AuthError::InvalidAuthMgmt);
        }
        let role = self.roles.get_mut(name).ok_or(AuthError::RoleNotFound)?;
        // As etcd: only the first permission at or after the key is compared (a
        // permission on that same range has its kind replaced); a new one goes after
        // every permission on a key not above its own (etcd appends, then sorts by key
        // with an insertion sort).
        let first = role
            .perms
            .partition_point(|p| p.key.as_slice() < perm.key.as_slice());
        match role.perms.get_mut(first) {
            Some(p) if p.key == perm.key && p.range_end == perm.range_end => p.kind = perm.kind,
            _ => {
                let after = role
                    .perms
                    .partition_point(|p| p.key.as_slice() <= perm.key.as_slice());
                role.perms.insert(after, perm.clone());
            }
        }
        self.revision += 1;
        Ok(())
    }

    fn role_revoke_permission(
        &mut self,
        name: &str,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        let role = self.roles.get_mut(name).ok_or(AuthError::RoleNotFound)?;
        let before = role.perms.len();
        role.perms
            .retain(|p| !(p.key == key && p.range_end == range_end));
        if role.perms.len() == before {
            return Err(AuthError::PermissionNotGranted);
        }
        self.revision += 1;
        Ok(())
    }

    /// Whether `user` holds the root role (and so passes every check).
    pub fn is_root(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == ROOT))
    }

    /// Whether `user` may read (or write, `write`) the key `key` (`range_end` empty) or
    /// the range [key, range_end) (`[0]`: every key from `key` on), as etcd decides:
    /// a key needs one permission covering it, a range the union of the user's
    /// permissions of that kind covering all of it without a gap.
    pub fn permits(&self, user: &str, key: &[u8], range_end: &[u8], write: bool) -> bool {
        let Some(u) = self.users.get(user) else {
            return false;
        };
        if u.roles.iter().any(|r| r == ROOT) {
            return true;
        }
        let wanted = Interval::of(key, range_end);
        let mut granted: Vec<Interval> = u
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.perms.iter())
            .filter(|p| match p.kind {
                PermKind::ReadWrite => true,
                PermKind::Read => !write,
                PermKind::Write => write,
            })
            .map(|p| Interval::of(&p.key, &p.range_end))
            .filter(|g| g.overlaps(&wanted))
            .collect();
        granted.sort_by(|a, b| a.begin.cmp(&b.begin));
        covers(&granted, &wanted)
    }
}

/// etcd's `isValidPermissionRange`: a key, and no end (one key), an end after the key,
/// or `[0]` (open-ended).
fn valid_permission_range(key: &[u8], range_end: &[u8]) -> bool {
    !key.is_empty() && (range_end.is_empty() || key < range_end || range_end == [0])
}

/// [begin, end) over keys; `end` None is past every key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Interval {
    begin: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    /// A single key is [key, key + "\0"); an end of `[0]` is open.
    fn of(key: &[u8], range_end: &[u8]) -> Interval {
        let end = match range_end {
            [] => {
                let mut next = key.to_vec();
                next.push(0);
                Some(next)
            }
            [0] => None,
            end => Some(end.to_vec()),
        };
        Interval {
            begin: key.to_vec(),
            end,
        }
    }

    fn ends_after(&self, at: &[u8]) -> bool {
        self.end.as_deref().is_none_or(|end| end > at)
    }

    fn overlaps(&self, other: &Interval) -> bool {
        self.ends_after(&other.begin) && other.ends_after(&self.begin)
    }
}

/// Whether `granted` (overlapping `wanted`, sorted by begin) covers `wanted` without a
/// gap; touching intervals join.
fn covers(granted: &[Interval], wanted: &Interval) -> bool {
    let Some(first) = granted.first() else {
        return false;
    };
    if first.begin > wanted.begin {
        return false;
    }
    let mut reached: Option<&[u8]> = first.end.as_deref();
    for g in &granted[1..] {
        let Some(at) = reached else {
            return true;
        };
        if g.begin.as_slice() > at {
            return false;
        }
        reached = match (&g.end, at) {
            (None, _) => None,
            (Some(end), at) => Some(if end.as_slice() > at { end } else { at }),
        };
    }
    match (reached, &wanted.end) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(at), Some(end)) => at >= end.as_slice(),
    }
}

#[cfg(test)]
mod tests;
