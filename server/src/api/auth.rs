//! etcd's Auth service: users, roles and their permissions, kept by every member
//! through the Raft log (`raftkv_storage::auth` holds the rules and etcd's errors).
//!
//! Changes are proposed as `Command::Auth` with passwords already hashed
//! (`auth/password.rs`); reads are linearizable, as etcd's (which go through Raft).
//! Turning authentication on is refused until every request is checked against it:
//! a cluster that said it was protected and was not would be worse than one that says
//! it cannot be.

use std::sync::Arc;

use base64::Engine;
use raftkv_proto::authpb;
use raftkv_proto::etcdserverpb as pb;
use raftkv_proto::etcdserverpb::auth_server::Auth;
use raftkv_storage::auth::{AuthCommand, AuthState, PermKind, Permission};
use raftkv_storage::mvcc::{Command, CommandResponse};
use tonic::{Request, Response, Status};

use crate::auth::password;
use crate::errors::ApiError;
use crate::member::node::Node;

pub struct AuthService {
    pub node: Arc<Node>,
}

impl AuthService {
    /// Proposes one change and answers with the header after it was applied here.
    async fn change(&self, change: AuthCommand) -> Result<pb::ResponseHeader, Status> {
        match self.node.write(Command::Auth(change)).await? {
            CommandResponse::Auth { .. } => Ok(self.node.header()),
            other => Err(ApiError::Internal(format!("unexpected reply {other:?}")).status()),
        }
    }

    /// The auth state as of a linearizable read.
    async fn read(&self) -> Result<Arc<AuthState>, Status> {
        self.node.read_barrier().await?;
        Ok(self.node.store.auth())
    }

    fn bcrypt_cost(&self) -> u32 {
        self.node.config.bcrypt_cost
    }
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
        _r: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        Err(ApiError::Unsupported(
            "authentication is not supported yet: raftkv keeps users and roles but does \
             not check requests against them; use client certificates"
                .into(),
        )
        .status())
    }

    async fn auth_disable(
        &self,
        _r: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        let header = self.change(AuthCommand::Disable).await?;
        Ok(Response::new(pb::AuthDisableResponse {
            header: Some(header),
        }))
    }

    async fn auth_status(
        &self,
        _r: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        let auth = self.read().await?;
        Ok(Response::new(pb::AuthStatusResponse {
            header: Some(self.node.header()),
            enabled: auth.enabled,
            auth_revision: auth.revision,
        }))
    }

    async fn authenticate(
        &self,
        _r: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        self.read().await?;
        Err(ApiError::AuthNotEnabled.status())
    }

    async fn user_add(
        &self,
        r: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        let r = r.into_inner();
        let no_password = r.options.is_some_and(|o| o.no_password);
        // As etcd: a password user's password is hashed here, whatever hash came along.
        let password_hash = if no_password {
            Vec::new()
        } else {
            password::hash_off_runtime(r.password, self.bcrypt_cost()).await?
        };
        let header = self
            .change(AuthCommand::UserAdd {
                name: r.name,
                password_hash,
                no_password,
            })
            .await?;
        Ok(Response::new(pb::AuthUserAddResponse {
            header: Some(header),
        }))
    }

    async fn user_get(
        &self,
        r: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        let auth = self.read().await?;
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
        _r: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        let auth = self.read().await?;
        Ok(Response::new(pb::AuthUserListResponse {
            header: Some(self.node.header()),
            users: auth.users.keys().cloned().collect(),
        }))
    }

    async fn user_delete(
        &self,
        r: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        let name = r.into_inner().name;
        let header = self.change(AuthCommand::UserDelete { name }).await?;
        Ok(Response::new(pb::AuthUserDeleteResponse {
            header: Some(header),
        }))
    }

    async fn user_change_password(
        &self,
        r: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
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
            .change(AuthCommand::UserChangePassword {
                name: r.name,
                password_hash,
            })
            .await?;
        Ok(Response::new(pb::AuthUserChangePasswordResponse {
            header: Some(header),
        }))
    }

    async fn user_grant_role(
        &self,
        r: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        let r = r.into_inner();
        let header = self
            .change(AuthCommand::UserGrantRole {
                user: r.user,
                role: r.role,
            })
            .await?;
        Ok(Response::new(pb::AuthUserGrantRoleResponse {
            header: Some(header),
        }))
    }

    async fn user_revoke_role(
        &self,
        r: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        let r = r.into_inner();
        let header = self
            .change(AuthCommand::UserRevokeRole {
                name: r.name,
                role: r.role,
            })
            .await?;
        Ok(Response::new(pb::AuthUserRevokeRoleResponse {
            header: Some(header),
        }))
    }

    async fn role_add(
        &self,
        r: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        let name = r.into_inner().name;
        let header = self.change(AuthCommand::RoleAdd { name }).await?;
        Ok(Response::new(pb::AuthRoleAddResponse {
            header: Some(header),
        }))
    }

    async fn role_get(
        &self,
        r: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        let auth = self.read().await?;
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
        _r: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        let auth = self.read().await?;
        Ok(Response::new(pb::AuthRoleListResponse {
            header: Some(self.node.header()),
            roles: auth.roles.keys().cloned().collect(),
        }))
    }

    async fn role_delete(
        &self,
        r: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        let name = r.into_inner().role;
        let header = self.change(AuthCommand::RoleDelete { name }).await?;
        Ok(Response::new(pb::AuthRoleDeleteResponse {
            header: Some(header),
        }))
    }

    async fn role_grant_permission(
        &self,
        r: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        let r = r.into_inner();
        let header = self
            .change(AuthCommand::RoleGrantPermission {
                name: r.name,
                perm: r.perm.map(perm_from_pb),
            })
            .await?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse {
            header: Some(header),
        }))
    }

    async fn role_revoke_permission(
        &self,
        r: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        let r = r.into_inner();
        let header = self
            .change(AuthCommand::RoleRevokePermission {
                role: r.role,
                key: r.key.to_vec(),
                range_end: r.range_end.to_vec(),
            })
            .await?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse {
            header: Some(header),
        }))
    }
}
