//! Whether a caller may apply a command, decided when the entry is applied, as etcd's
//! authApplierV3 decides it: every member reaches the same answer from the same log,
//! and a permission revoked while a request waited in the log is not used.
//!
//! Owns only the decision; it never changes the auth state or the key space. The
//! caller's name and the auth revision it authenticated at travel in the entry
//! (`Command::As`): an entry older than the last auth change is refused with etcd's
//! "revision of auth store is old", and the client authenticates again.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{AuthError, AuthState};
use crate::mvcc::types::{LeaseId, PutRequest, RequestOp, TxnRequest};
use crate::mvcc::Command;

/// Who sent a request: the user and the auth revision its token was issued at. An
/// empty name is a request that carried no credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub user: String,
    pub auth_revision: u64,
}

impl AuthState {
    /// etcd's isOpPermitted: a read (or write) of a key or range.
    pub fn check_op(
        &self,
        caller: &Caller,
        key: &[u8],
        range_end: &[u8],
        write: bool,
    ) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        if caller.auth_revision == 0 {
            return Err(AuthError::UserEmpty);
        }
        if caller.auth_revision < self.revision {
            return Err(AuthError::AuthOldRevision);
        }
        if self.permits(&caller.user, key, range_end, write) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// etcd's IsAdminPermitted: only a user with the root role (no revision check).
    pub fn check_admin(&self, caller: &Caller) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        if caller.user.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        if !self.users.contains_key(&caller.user) {
            return Err(AuthError::UserNotFound);
        }
        if !self.is_root(&caller.user) {
            return Err(AuthError::PermissionDenied);
        }
        Ok(())
    }

    /// Whether `caller` may apply `command`; `lease_keys` answers the keys attached to
    /// a lease (none for a lease that does not exist). Commands that no permission
    /// guards in etcd (a lease grant, a compaction, an alarm) pass.
    pub fn check_command(
        &self,
        caller: &Caller,
        command: &Command,
        lease_keys: &dyn Fn(LeaseId) -> Vec<Bytes>,
    ) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        match command {
            Command::Put(put) => self.check_put(caller, put, lease_keys),
            Command::DeleteRange(d) => {
                self.check_op(caller, &d.key, &d.range_end, true)?;
                if d.prev_kv {
                    self.check_op(caller, &d.key, &d.range_end, false)?;
                }
                Ok(())
            }
            Command::Txn(txn) => self.check_txn(caller, txn, lease_keys),
            Command::LeaseRevoke { id } => self.check_lease_keys(caller, *id, lease_keys),
            Command::Auth(_) => self.check_admin(caller),
            Command::As { .. } => Err(AuthError::InvalidAuthMgmt),
            Command::Compact { .. }
            | Command::LeaseGrant { .. }
            | Command::LeaseCheckpoint { .. }
            | Command::Alarm { .. } => Ok(()),
        }
    }

    fn check_put(
        &self,
        caller: &Caller,
        put: &PutRequest,
        lease_keys: &dyn Fn(LeaseId) -> Vec<Bytes>,
    ) -> Result<(), AuthError> {
        self.check_op(caller, &put.key, &[], true)?;
        // A lease that already holds a key this user may not write: attaching more to
        // it would let the user revoke what it could not delete.
        self.check_lease_keys(caller, put.lease, lease_keys)?;
        if put.prev_kv {
            self.check_op(caller, &put.key, &[], false)?;
        }
        Ok(())
    }

    /// etcd's checkTxnAuth: every compare is a read, then both branches' operations.
    fn check_txn(
        &self,
        caller: &Caller,
        txn: &TxnRequest,
        lease_keys: &dyn Fn(LeaseId) -> Vec<Bytes>,
    ) -> Result<(), AuthError> {
        for compare in &txn.compare {
            self.check_op(caller, &compare.key, &compare.range_end, false)?;
        }
        for op in txn.success.iter().chain(&txn.failure) {
            match op {
                RequestOp::Range(r) => self.check_op(caller, &r.key, &r.range_end, false)?,
                RequestOp::Put(put) => self.check_put(caller, put, lease_keys)?,
                RequestOp::DeleteRange(d) => {
                    if d.prev_kv {
                        self.check_op(caller, &d.key, &d.range_end, false)?;
                    }
                    self.check_op(caller, &d.key, &d.range_end, true)?;
                }
                RequestOp::Txn(nested) => self.check_txn(caller, nested, lease_keys)?,
            }
        }
        Ok(())
    }

    /// etcd's checkLeasePuts: a root user passes; anyone else must be able to write
    /// every key attached to the lease.
    fn check_lease_keys(
        &self,
        caller: &Caller,
        lease: LeaseId,
        lease_keys: &dyn Fn(LeaseId) -> Vec<Bytes>,
    ) -> Result<(), AuthError> {
        if lease == 0 || self.check_admin(caller).is_ok() {
            return Ok(());
        }
        for key in lease_keys(lease) {
            self.check_op(caller, &key, &[], true)?;
        }
        Ok(())
    }
}
