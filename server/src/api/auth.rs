//! etcd's Auth service: users, roles and their permissions, kept by every member
//! through the Raft log (`raftkv_storage::auth` holds the rules and etcd's errors).
//!
//! Changes are proposed as `Command::Auth` with passwords already hashed
//! (`auth/password.rs`), on behalf of the caller once authentication is on, so that
//! only a root user's change applies (storage's auth/guard.rs). Reads are
//! linearizable, as etcd's (which go through Raft), and checked after the barrier:
//! the lists and AuthStatus are root's; a user may read itself and its roles.
//! Authenticate checks the password here and proposes only the user's name and a
//! token prefix; every member then knows the token (storage's auth/tokens.rs).

use std::sync::Arc;

use base64::Engine;
use raftkv_proto::authpb;
use raftkv_proto::etcdserverpb as pb;
use raftkv_proto::etcdserverpb::auth_server::Auth;
use raftkv_storage::auth::{AuthCommand, AuthState, PermKind, Permission};
use raftkv_storage::auth::{AuthError, Caller};
use raftkv_storage::mvcc::{Command, CommandResponse};
use raftkv_storage::MvccError;
use tonic::{Request, Response, Status};

use crate::api::credentials::{self, on_behalf};
use crate::auth::jwt::TokenKind;
use crate::auth::password;
use crate::errors::ApiError;
use crate::member::node::Node;

/// Letters of a simple token's random part (etcd's alphabet and length).
const TOKEN_LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const TOKEN_PREFIX_LETTERS: usize = 16;
/// Authentications retried when an auth change lands between the password check and
/// the token: each retry checks the password again.
const AUTHENTICATE_ATTEMPTS: usize = 3;

pub struct AuthService {
    pub node: Arc<Node>,
}

impl AuthService {
    async fn caller<T>(&self, req: &Request<T>) -> Result<Option<Caller>, Status> {
        Ok(credentials::caller(&self.node, req).await?)
    }

    /// Proposes one change on behalf of the caller and answers with the header after
    /// it was applied here.
    async fn change(
        &self,
        caller: Option<Caller>,
        change: AuthCommand,
    ) -> Result<pb::ResponseHeader, Status> {
        match self
            .node
            .write(on_behalf(caller, Command::Auth(change)))
            .await?
        {
            CommandResponse::Auth { .. } => Ok(self.node.header()),
            other => Err(ApiError::Internal(format!("unexpected reply {other:?}")).status()),
        }
    }

    /// The auth state as of a linearizable read, for a root caller.
    async fn read<T>(&self, req: &Request<T>) -> Result<Arc<AuthState>, Status> {
        self.read_unless(req, |_, _| false).await
    }

    /// The auth state as of a linearizable read, for a root caller or one that
    /// `allowed` lets in (etcd's UserGet of oneself, RoleGet of one's own role).
    async fn read_unless<T>(
        &self,
        req: &Request<T>,
        allowed: impl Fn(&AuthState, &Caller) -> bool,
    ) -> Result<Arc<AuthState>, Status> {
        // After the barrier: an auth change acknowledged before this call applies to it.
        self.node.read_barrier().await?;
        let caller = self.caller(req).await?;
        let auth = self.node.store.auth();
        if let Some(c) = &caller {
            if let Err(e) = auth.check_admin(c) {
                if !allowed(&auth, c) {
                    return Err(ApiError::Mvcc(MvccError::Auth(e)).status());
                }
            }
        }
        Ok(auth)
    }

    /// etcd's CheckPassword: the auth revision the password was checked at.
    async fn check_password(&self, name: &str, password: String) -> Result<u64, Status> {
        let auth = self.node.store.auth();
        if !auth.enabled {
            return Err(ApiError::AuthNotEnabled.status());
        }
        let user = auth.users.get(name).ok_or_else(auth_failed)?;
        if user.no_password {
            return Err(ApiError::NoPasswordUser.status());
        }
        let hash = user.password_hash.clone();
        let matched = tokio::task::spawn_blocking(move || password::matches(&password, &hash))
            .await
            .map_err(|e| ApiError::Internal(format!("bcrypt: {e}")).status())?;
        if !matched {
            tracing::info!(user = name, "invalid password");
            return Err(auth_failed());
        }
        Ok(auth.revision)
    }

    fn bcrypt_cost(&self) -> u32 {
        self.node.config.bcrypt_cost
    }
}

fn auth_failed() -> Status {
    ApiError::Mvcc(MvccError::Auth(AuthError::AuthFailed)).status()
}

fn token_prefix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..TOKEN_PREFIX_LETTERS)
        .map(|_| TOKEN_LETTERS[rng.random_range(0..TOKEN_LETTERS.len())] as char)
        .collect()
}

fn perm_from_pb(p: authpb::Permission) -> Permission {
    let kind = match authpb::permission::Type::try_from(p.perm_type) {
        Ok(authpb::permission::Type::Write) => PermKind::Write,
        Ok(authpb::permission::Type::Readwrite) => PermKind::ReadWrite,
        // etcd stores whatever number it was sent and treats an unknown one as READ.
        _ => PermKind::Read,
    };
    Permission {
        kind,
        key: p.key.to_vec(),
        range_end: p.range_end.to_vec(),
    }
}

fn perm_to_pb(p: &Permission) -> authpb::Permission {
    authpb::Permission {
        perm_type: p.kind as i32,
        key: p.key.clone().into(),
        range_end: p.range_end.clone().into(),
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        r: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        let caller = self.caller(&r).await?;
        let header = self.change(caller, AuthCommand::Enable).await?;
        Ok(Response::new(pb::AuthEnableResponse {
            header: Some(header),
        }))
    }

    async fn auth_disable(
        &self,
        r: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        let caller = self.caller(&r).await?;
        let header = self.change(caller, AuthCommand::Disable).await?;
        Ok(Response::new(pb::AuthDisableResponse {
            header: Some(header),
        }))
    }

    async fn auth_status(
        &self,
        r: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        let auth = self.read(&r).await?;
        Ok(Response::new(pb::AuthStatusResponse {
            header: Some(self.node.header()),
            enabled: auth.enabled,
            auth_revision: auth.revision,
        }))
    }

    async fn authenticate(
        &self,
        r: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        self.node.read_barrier().await?;
        let r = r.into_inner();
        for _ in 0..AUTHENTICATE_ATTEMPTS {
            let checked = self.check_password(&r.name, r.password.clone()).await?;
            let jwt = match &self.node.tokens {
                TokenKind::Jwt(jwt) => Some(jwt),
                TokenKind::Simple => None,
            };
            let command = Command::Auth(AuthCommand::Authenticate {
                name: r.name.clone(),
                token_prefix: if jwt.is_some() {
                    String::new()
                } else {
                    token_prefix()
                },
            });
            let token = match self.node.write(command).await? {
                CommandResponse::Authenticated {
                    token,
                    auth_revision,
                } => match jwt {
                    Some(jwt) => jwt.sign(&r.name, auth_revision)?,
                    None => token,
                },
                other => {
                    return Err(ApiError::Internal(format!("unexpected reply {other:?}")).status())
                }
            };
            if self.node.store.auth().revision == checked {
                return Ok(Response::new(pb::AuthenticateResponse {
                    header: Some(self.node.header()),
                    token,
                }));
            }
            tracing::info!(
                user = r.name,
                "users or roles changed while authenticating; again"
            );
        }
        Err(ApiError::Mvcc(MvccError::Auth(AuthError::AuthOldRevision)).status())
    }

    async fn user_add(
        &self,
        r: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        let caller = self.caller(&r).await?;
        let r = r.into_inner();
        let no_password = r.options.is_some_and(|o| o.no_password);
        // As etcd: a password user's password is hashed here, whatever hash came along.
        let password_hash = if no_password {
            Vec::new()
        } else {
            password::hash_off_runtime(r.password, self.bcrypt_cost()).await?
        };
        let header = self
            .change(
                caller,
                AuthCommand::UserAdd {
                    name: r.name,
                    password_hash,
                    no_password,
                },
            )
            .await?;
        Ok(Response::new(pb::AuthUserAddResponse {
            header: Some(header),
        }))
    }

    async fn user_get(
        &self,
        r: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        let name = &r.get_ref().name;
        let auth = self.read_unless(&r, |_, c| &c.user == name).await?;
        let user = auth
            .users
            .get(&r.get_ref().name)
            .ok_or_else(|| ApiError::UserNotFound.status())?;
        Ok(Response::new(pb::AuthUserGetResponse {
            header: Some(self.node.header()),
            roles: user.roles.clone(),
        }))
    }

    async fn user_list(
        &self,
        r: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        let auth = self.read(&r).await?;
        Ok(Response::new(pb::AuthUserListResponse {
            header: Some(self.node.header()),
            users: auth.users.keys().cloned().collect(),
        }))
    }

    async fn user_delete(
        &self,
        r: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        let caller = self.caller(&r).await?;
        let name = r.into_inner().name;
        let header = self
            .change(caller, AuthCommand::UserDelete { name })
            .await?;
        Ok(Response::new(pb::AuthUserDeleteResponse {
            header: Some(header),
        }))
    }

    async fn user_change_password(
        &self,
        r: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        let caller = self.caller(&r).await?;
        let r = r.into_inner();
        // As etcd: a new password is hashed here; without one, the client's own hash
        // (base64) is taken as it is.
        let password_hash = if r.password.is_empty() {
            base64::engine::general_purpose::STANDARD
                .decode(r.hashed_password.as_bytes())
                .map_err(|_| {
                    ApiError::InvalidArgument("hashed password is not base64".into()).status()
                })?
        } else {
            password::hash_off_runtime(r.password, self.bcrypt_cost()).await?
        };
        let header = self
            .change(
                caller,
                AuthCommand::UserChangePassword {
                    name: r.name,
                    password_hash,
                },
            )
            .await?;
        Ok(Response::new(pb::AuthUserChangePasswordResponse {
            header: Some(header),
        }))
    }

    async fn user_grant_role(
        &self,
        r: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        let caller = self.caller(&r).await?;
        let r = r.into_inner();
        let header = self
            .change(
                caller,
                AuthCommand::UserGrantRole {
                    user: r.user,
                    role: r.role,
                },
            )
            .await?;
        Ok(Response::new(pb::AuthUserGrantRoleResponse {
            header: Some(header),
        }))
    }

    async fn user_revoke_role(
        &self,
        r: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        let caller = self.caller(&r).await?;
        let r = r.into_inner();
        let header = self
            .change(
                caller,
                AuthCommand::UserRevokeRole {
                    name: r.name,
                    role: r.role,
                },
            )
            .await?;
        Ok(Response::new(pb::AuthUserRevokeRoleResponse {
            header: Some(header),
        }))
    }

    async fn role_add(
        &self,
        r: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        let caller = self.caller(&r).await?;
        let name = r.into_inner().name;
        let header = self.change(caller, AuthCommand::RoleAdd { name }).await?;
        Ok(Response::new(pb::AuthRoleAddResponse {
            header: Some(header),
        }))
    }

    async fn role_get(
        &self,
        r: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        let role = &r.get_ref().role;
        let auth = self
            .read_unless(&r, |auth, c| {
                auth.users
                    .get(&c.user)
                    .is_some_and(|u| u.roles.contains(role))
            })
            .await?;
        let role = auth
            .roles
            .get(&r.get_ref().role)
            .ok_or_else(|| ApiError::RoleNotFound.status())?;
        Ok(Response::new(pb::AuthRoleGetResponse {
            header: Some(self.node.header()),
            perm: role.perms.iter().map(perm_to_pb).collect(),
        }))
    }

    async fn role_list(
        &self,
        r: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        let auth = self.read(&r).await?;
        Ok(Response::new(pb::AuthRoleListResponse {
            header: Some(self.node.header()),
            roles: auth.roles.keys().cloned().collect(),
        }))
    }

    async fn role_delete(
        &self,
        r: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        let caller = self.caller(&r).await?;
        let name = r.into_inner().role;
        let header = self
            .change(caller, AuthCommand::RoleDelete { name })
            .await?;
        Ok(Response::new(pb::AuthRoleDeleteResponse {
            header: Some(header),
        }))
    }

    async fn role_grant_permission(
        &self,
        r: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        let caller = self.caller(&r).await?;
        let r = r.into_inner();
        let header = self
            .change(
                caller,
                AuthCommand::RoleGrantPermission {
                    name: r.name,
                    perm: r.perm.map(perm_from_pb),
                },
            )
            .await?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse {
            header: Some(header),
        }))
    }

    async fn role_revoke_permission(
        &self,
        r: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        let caller = self.caller(&r).await?;
        let r = r.into_inner();
        let header = self
            .change(
                caller,
                AuthCommand::RoleRevokePermission {
                    role: r.role,
                    key: r.key.to_vec(),
                    range_end: r.range_end.to_vec(),
                },
            )
            .await?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse {
            header: Some(header),
        }))
    }
}
