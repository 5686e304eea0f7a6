//! Who is asking: the caller a request names when authentication is on, found as
//! etcd's AuthInfoFromCtx finds it — a simple token in the `token` metadata (or
//! `authorization`, the gateway's name for it); without one, with `--client-cert-auth`,
//! the Common Name of the client's verified certificate; else nobody (an empty user,
//! which every permission check refuses with "user name is empty").
//!
//! Owns reading credentials and etcd's checks made before a request reaches the log
//! (admin-only calls, reads, watch creation). It never decides a write: writes travel
//! as `Command::As` and are decided when applied (storage's auth/guard.rs), so that a
//! permission revoked while the write waited in the log is not used.

use std::time::Duration;

use raftkv_storage::auth::{tokens, AuthError, AuthState, Caller};
use raftkv_storage::mvcc::Command;
use raftkv_storage::MvccError;
use tonic::Request;

use crate::auth::jwt::TokenKind;
use crate::errors::ApiError;
use crate::member::node::Node;
use crate::net::tls::ClientTlsInfo;

/// The metadata keys etcd's clients put a token under.
const TOKEN_KEYS: [&str; 2] = ["token", "authorization"];

/// What a request carries that may name its caller.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    token: Option<String>,
    /// The Common Name of the client's verified certificate (TLS with
    /// `--client-cert-auth` only: without it no certificate is asked for).
    common_name: Option<String>,
}

impl Credentials {
    pub fn of<T>(req: &Request<T>) -> Credentials {
        let metadata = req.metadata();
        let token = TOKEN_KEYS
            .iter()
            .find_map(|k| metadata.get(*k).and_then(|v| v.to_str().ok()))
            .map(str::to_string);
        let common_name = req
            .extensions()
            .get::<ClientTlsInfo>()
            .and_then(|info| info.common_name.clone());
        Credentials { token, common_name }
    }
}

/// The caller a request names, or None when authentication is off (nothing is
/// checked then). A token this member does not know, once it has applied the entry
/// the token names, is "invalid auth token".
pub async fn caller<T>(node: &Node, req: &Request<T>) -> Result<Option<Caller>, ApiError> {
    // Checked first: with authentication off, a request's metadata is not even read.
    if !node.store.auth().enabled {
        return Ok(None);
    }
    caller_with(node, &Credentials::of(req)).await
}

/// `caller` for credentials read before (a stream's, checked at each watch created).
pub async fn caller_with(
    node: &Node,
    credentials: &Credentials,
) -> Result<Option<Caller>, ApiError> {
    let auth = node.store.auth();
    if !auth.enabled {
        return Ok(None);
    }
    let Some(token) = credentials.token.as_deref() else {
        // etcd: a certificate's Common Name stands for the user, at the current auth
        // revision, when no token came.
        return Ok(Some(match &credentials.common_name {
            Some(cn) => Caller {
                user: cn.clone(),
                auth_revision: auth.revision,
            },
            None => nobody(),
        }));
    };
    if let TokenKind::Jwt(jwt) = &node.tokens {
        let (user, auth_revision) = jwt.check(token).ok_or(ApiError::InvalidAuthToken)?;
        return Ok(Some(Caller {
            user,
            auth_revision,
        }));
    }
    let index = tokens::token_index(token).ok_or(ApiError::InvalidAuthToken)?;
    // A token handed out through another member is known here once this member has
    // applied its entry; etcd waits for that as long as the request may.
    let timeout = Duration::from_millis(node.config.request_timeout_ms);
    node.wait_applied(index, timeout)
        .await
        .map_err(|_| ApiError::InvalidAuthToken)?;
    let user = node
        .store
        .token_user(token)
        .ok_or(ApiError::InvalidAuthToken)?;
    Ok(Some(Caller {
        user,
        // A simple token stands for its user as of now (etcd's tokenSimple.info).
        auth_revision: node.store.auth().revision,
    }))
}

/// A request without credentials.
fn nobody() -> Caller {
    Caller {
        user: String::new(),
        auth_revision: 0,
    }
}

fn refused(e: AuthError) -> ApiError {
    ApiError::Mvcc(MvccError::Auth(e))
}

/// `command` as it goes into the log, on behalf of its caller: with authentication off
/// here, on behalf of nobody, so that a write applied after an AuthEnable ahead of it
/// in the log is refused there as etcd refuses it ("user name is empty"); while
/// authentication stays off the check at apply lets it through.
pub fn on_behalf(caller: Option<Caller>, command: Command) -> Command {
    Command::As {
        caller: caller.unwrap_or_else(nobody),
        command: Box::new(command),
    }
}

/// etcd's IsAdminPermitted, at the edge: a user holding the root role.
pub fn require_admin(node: &Node, caller: &Option<Caller>) -> Result<(), ApiError> {
    match caller {
        Some(caller) => node.store.auth().check_admin(caller).map_err(refused),
        None => Ok(()),
    }
}

/// etcd's requireAuthInfo: any credentials at all (a lease grant, a lease list).
pub fn require_someone(caller: &Option<Caller>) -> Result<(), ApiError> {
    match caller {
        Some(c) if c.user.is_empty() => Err(refused(AuthError::UserEmpty)),
        _ => Ok(()),
    }
}

/// etcd's doSerialize: a read checked before it is served and refused after it if the
/// auth state changed meanwhile (the permission it was served under may be gone).
pub struct ReadCheck {
    caller: Option<Caller>,
}

impl ReadCheck {
    /// Checks a read of `key`..`range_end`.
    pub fn range(
        node: &Node,
        caller: Option<Caller>,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<ReadCheck, ApiError> {
        if let Some(c) = &caller {
            node.store
                .auth()
                .check_op(c, key, range_end, false)
                .map_err(refused)?;
        }
        Ok(ReadCheck { caller })
    }

    /// After the read: "revision of auth store is old" if users or roles changed.
    pub fn still_valid(&self, node: &Node) -> Result<(), ApiError> {
        match &self.caller {
            Some(c) if c.auth_revision != 0 && c.auth_revision != node.store.auth().revision => {
                Err(refused(AuthError::AuthOldRevision))
            }
            _ => Ok(()),
        }
    }
}

/// etcd's checks on the keys attached to leases (LeaseTimeToLive with keys,
/// LeaseLeases): a root user sees all; anyone else must be able to read each key.
/// `keys` reads them from the engine, so only when a check needs them.
pub fn check_lease_keys(
    auth: &AuthState,
    caller: &Option<Caller>,
    keys: impl FnOnce() -> Vec<bytes::Bytes>,
) -> Result<(), ApiError> {
    let Some(c) = caller else {
        return Ok(());
    };
    if c.user.is_empty() {
        return Err(refused(AuthError::UserEmpty));
    }
    if auth.check_admin(c).is_ok() {
        return Ok(());
    }
    for key in keys() {
        auth.check_op(c, &key, &[], false).map_err(refused)?;
    }
    Ok(())
}
