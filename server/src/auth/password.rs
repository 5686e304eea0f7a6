//! Users' passwords: hashed with bcrypt at `--bcrypt-cost` before a user change is
//! proposed, so the Raft log, snapshots and backups hold only hashes (as etcd's log
//! does), and checked against the stored hash when a user authenticates.
//!
//! Hashing costs tens of milliseconds of CPU at etcd's cost: callers run it off the
//! async threads (`hash_off_runtime`). Nothing here keeps a password.

use crate::errors::ApiError;

/// etcd's `--bcrypt-cost` default (Go's bcrypt.DefaultCost) and its accepted range.
pub const DEFAULT_BCRYPT_COST: u32 = 10;
pub const MIN_BCRYPT_COST: u32 = 4;
pub const MAX_BCRYPT_COST: u32 = 31;

/// The bcrypt hash of `password`, in the `$2a$` form etcd's Go bcrypt writes, so that
/// hashes move between etcd and raftkv unchanged.
pub fn hash(password: &str, cost: u32) -> Result<Vec<u8>, ApiError> {
    debug_assert!((MIN_BCRYPT_COST..=MAX_BCRYPT_COST).contains(&cost));
    let parts = bcrypt::hash_with_result(password, cost)
        .map_err(|e| ApiError::Internal(format!("bcrypt: {e}")))?;
    Ok(parts.format_for_version(bcrypt::Version::TwoA).into_bytes())
}

/// `hash` on a blocking thread.
pub async fn hash_off_runtime(password: String, cost: u32) -> Result<Vec<u8>, ApiError> {
    tokio::task::spawn_blocking(move || hash(&password, cost))
        .await
        .map_err(|e| ApiError::Internal(format!("bcrypt: {e}")))?
}

/// Whether `password` matches `stored` (any bcrypt version etcd or raftkv wrote); an
/// unreadable hash matches nothing.
pub fn matches(password: &str, stored: &[u8]) -> bool {
    std::str::from_utf8(stored)
        .ok()
        .and_then(|h| bcrypt::verify(password, h).ok())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only_and_reads_as_etcds() {
        let h = hash("s3cret", MIN_BCRYPT_COST).unwrap();
        assert!(
            h.starts_with(b"$2a$04$"),
            "{:?}",
            String::from_utf8_lossy(&h)
        );
        assert!(matches("s3cret", &h));
        assert!(!matches("s3cret!", &h));
        assert!(!matches("s3cret", b"not a hash"));
        // A published $2a$ test vector (crypt_blowfish's), as any bcrypt writes it.
        assert!(matches(
            "U*U",
            b"$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"
        ));
    }
}
