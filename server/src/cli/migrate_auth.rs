//! The users and roles part of `raftkv migrate`: every role with its permissions and
//! every user with its roles, read through etcd's Auth API and added to raftkv.
//!
//! etcd's API never returns a password or its hash, so a copied user gets a random
//! password nobody knows: it cannot log in until an operator sets one (`etcdctl user
//! passwd`), and authentication is left off on raftkv for the operator to turn on once
//! they have. This module only reads the source.

use raftkv_proto::etcdserverpb as pb;
use raftkv_proto::etcdserverpb::auth_client::AuthClient;
use rand::Rng;

use super::client::Authed;
use super::migrate::{source_err, MigrateError};

/// Users or roles a migration carries, at most.
const AUTH_ENTRIES_MAX: usize = 100_000;
/// Letters of the random password a copied user gets.
const UNKNOWN_PASSWORD_LETTERS: usize = 32;

/// What was copied of users and roles.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthCopied {
    pub users: usize,
    pub roles: usize,
    /// Whether the source checked requests against them.
    pub enabled_at_source: bool,
}

fn dest_err(s: tonic::Status) -> MigrateError {
    MigrateError::Destination(s.message().to_string())
}

/// Copies every role, then every user with its roles.
pub async fn copy(src: Authed, dst: Authed) -> Result<AuthCopied, MigrateError> {
    let mut src = AuthClient::new(src);
    let mut dst = AuthClient::new(dst);
    let status = match src.auth_status(pb::AuthStatusRequest {}).await {
        Ok(r) => r.into_inner(),
        // kine (k3s over SQL) has no users or roles.
        Err(s) if s.code() == tonic::Code::Unimplemented => return Ok(AuthCopied::default()),
        Err(s) => return Err(source_err(s)),
    };
    let roles = src
        .role_list(pb::AuthRoleListRequest {})
        .await
        .map_err(source_err)?
        .into_inner()
        .roles;
    let users = src
        .user_list(pb::AuthUserListRequest {})
        .await
        .map_err(source_err)?
        .into_inner()
        .users;
    if roles.len() > AUTH_ENTRIES_MAX || users.len() > AUTH_ENTRIES_MAX {
        return Err(MigrateError::Source(format!(
            "{} users and {} roles: more than {AUTH_ENTRIES_MAX}",
            users.len(),
            roles.len()
        )));
    }
    for role in &roles {
        copy_role(&mut src, &mut dst, role).await?;
    }
    for user in &users {
        copy_user(&mut src, &mut dst, user).await?;
    }
    Ok(AuthCopied {
        users: users.len(),
        roles: roles.len(),
        enabled_at_source: status.enabled,
    })
}

async fn copy_role(
    src: &mut AuthClient<Authed>,
    dst: &mut AuthClient<Authed>,
    role: &str,
) -> Result<(), MigrateError> {
    let perms = src
        .role_get(pb::AuthRoleGetRequest { role: role.into() })
        .await
        .map_err(source_err)?
        .into_inner()
        .perm;
    dst.role_add(pb::AuthRoleAddRequest { name: role.into() })
        .await
        .map_err(dest_err)?;
    for perm in perms {
        dst.role_grant_permission(pb::AuthRoleGrantPermissionRequest {
            name: role.into(),
            perm: Some(perm),
        })
        .await
        .map_err(dest_err)?;
    }
    Ok(())
}

async fn copy_user(
    src: &mut AuthClient<Authed>,
    dst: &mut AuthClient<Authed>,
    user: &str,
) -> Result<(), MigrateError> {
    let roles = src
        .user_get(pb::AuthUserGetRequest { name: user.into() })
        .await
        .map_err(source_err)?
        .into_inner()
        .roles;
    dst.user_add(pb::AuthUserAddRequest {
        name: user.into(),
        password: unknown_password(),
        ..Default::default()
    })
    .await
    .map_err(dest_err)?;
    for role in roles {
        dst.user_grant_role(pb::AuthUserGrantRoleRequest {
            user: user.into(),
            role,
        })
        .await
        .map_err(dest_err)?;
    }
    Ok(())
}

/// A password nobody knows, never shown.
fn unknown_password() -> String {
    let mut rng = rand::rng();
    (0..UNKNOWN_PASSWORD_LETTERS)
        .map(|_| rng.random_range(b'a'..=b'z') as char)
        .collect()
}
