//! etcd's data file — `etcdctl snapshot save`'s output, a k3s etcd snapshot
//! (`/var/lib/rancher/k3s/server/db/snapshots/…`), an etcd member's `member/snap/db` —
//! read into a raftkv snapshot image that `raftkv snapshot restore` installs: the key
//! space with etcd's revisions, versions, leases and compacted revision, the leases,
//! and the users and roles with their password hashes and the auth switch. Members,
//! alarms and cluster ids are etcd's own and stay behind: a restore makes a new
//! cluster, as `etcdutl snapshot restore` does.
//!
//! Only reads the file (`bbolt.rs`). A value that does not decode is an error, never a
//! guess; the trailing SHA-256 `etcdctl snapshot save` appends is checked when present.
//! The other way, `export.rs` writes a key space as such a file (`bbolt_writer.rs`).

pub mod bbolt;
pub mod bbolt_writer;
pub mod export;

use std::path::Path;

use bytes::Bytes;
use prost::Message;
use raftkv_proto::{authpb, mvccpb};
use raftkv_storage::auth::{AuthState, PermKind, Permission, Role, User};
use raftkv_storage::mvcc::import::{HistoryEntry, ImageBuilder};
use raftkv_storage::mvcc::snapshot::SnapshotPoint;
use raftkv_storage::mvcc::Lease;

use bbolt::{BboltError, Db};

/// etcd's snapshot files end with the SHA-256 of the database, whose length is a whole
/// number of pages (a multiple of 512).
const SHA256_BYTES: u64 = 32;
const PAGE_MULTIPLE_BYTES: u64 = 512;
/// A key bucket entry's name: revision u64 BE, '_', sub-revision u64 BE, then 't' for
/// a delete.
const REVISION_BYTES: usize = 17;

#[derive(Debug, thiserror::Error)]
pub enum EtcdFileError {
    #[error(transparent)]
    Bbolt(#[from] BboltError),
    #[error("the file's SHA-256 does not match its contents: it is damaged or was cut short")]
    Hash,
    #[error("not an etcd data file: {0}")]
    NotEtcd(String),
    #[error("etcd data file: {0}")]
    Bad(String),
    #[error("building the snapshot: {0}")]
    Image(#[from] raftkv_storage::mvcc::snapshot::SnapshotError),
    #[error("reading the key space: {0}")]
    Store(#[from] raftkv_storage::StoreError),
}

fn bad(what: impl Into<String>) -> EtcdFileError {
    EtcdFileError::Bad(what.into())
}

/// What an etcd file held, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    pub revision: i64,
    pub compact_revision: i64,
    pub entries: u64,
    pub leases: usize,
    pub users: usize,
}

/// Whether `path` starts as a bbolt file does (its first meta page's magic).
pub fn is_etcd_file(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 20];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head[16..20] == [0xed, 0xda, 0x0c, 0xed])
}

/// The raftkv snapshot image of the etcd file at `path`.
pub fn to_image(path: &Path) -> Result<(Vec<u8>, Imported), EtcdFileError> {
    let db = Db::open(path, database_bytes(path)?)?;
    if !db.has_bucket(b"key")? || !db.has_bucket(b"meta")? {
        return Err(EtcdFileError::NotEtcd(
            "a bbolt file without etcd's key and meta buckets".into(),
        ));
    }
    // Entries are named by revision, big-endian: the last one holds the newest.
    let last_revision = db
        .last_key(b"key")?
        .map_or(0, |k| revision_of(&k).map_or(0, |(rev, _, _)| rev));
    let compact_revision = compacted(&db)?;
    let leases = leases(&db)?;
    let auth = auth(&db)?;
    let point = SnapshotPoint {
        revision: last_revision.max(compact_revision).max(1),
        compact_revision,
        applied: Vec::new(),
        membership: Vec::new(),
        leases,
        alarms: Vec::new(),
        auth: (auth != AuthState::default()).then_some(auth),
    };
    let mut image = Vec::new();
    let mut builder = ImageBuilder::start(&mut image, &point)?;
    let mut entries = 0u64;
    let mut failed = None;
    db.for_each(b"key", &mut |k, v| {
        if failed.is_some() {
            return;
        }
        match history_entry(k, v) {
            Ok(entry) => match builder.add(entry) {
                Ok(()) => entries += 1,
                Err(e) => failed = Some(EtcdFileError::Image(e)),
            },
            Err(e) => failed = Some(e),
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    builder.finish()?;
    let imported = Imported {
        revision: point.revision,
        compact_revision,
        entries,
        leases: point.leases.len(),
        users: point.auth.as_ref().map_or(0, |a| a.users.len()),
    };
    Ok((image, imported))
}

/// How many bytes of the file are the database: all of them, or all but the SHA-256
/// trailer, which must then match.
fn database_bytes(path: &Path) -> Result<u64, EtcdFileError> {
    use sha2::Digest;
    use std::io::Read;
    let size = std::fs::metadata(path).map_err(BboltError::Io)?.len();
    if size % PAGE_MULTIPLE_BYTES != SHA256_BYTES {
        return Ok(size);
    }
    let db_bytes = size - SHA256_BYTES;
    let mut file = std::fs::File::open(path).map_err(BboltError::Io)?;
    let mut hasher = sha2::Sha256::new();
    let mut body = (&mut file).take(db_bytes);
    std::io::copy(&mut body, &mut hasher).map_err(BboltError::Io)?;
    let mut stored = [0u8; SHA256_BYTES as usize];
    file.read_exact(&mut stored).map_err(BboltError::Io)?;
    if hasher.finalize()[..] != stored[..] {
        return Err(EtcdFileError::Hash);
    }
    Ok(db_bytes)
}

/// (revision, sub-revision, delete) of a key bucket entry's name.
fn revision_of(name: &[u8]) -> Option<(i64, i64, bool)> {
    let tombstone = match name.len() {
        REVISION_BYTES => false,
        n if n == REVISION_BYTES + 1 && name[REVISION_BYTES] == b't' => true,
        _ => return None,
    };
    if name[8] != b'_' {
        return None;
    }
    let main = i64::from_be_bytes(name[..8].try_into().ok()?);
    let sub = i64::from_be_bytes(name[9..17].try_into().ok()?);
    Some((main, sub, tombstone))
}

fn history_entry(name: &[u8], value: &[u8]) -> Result<HistoryEntry, EtcdFileError> {
    let (revision, sub, tombstone) =
        revision_of(name).ok_or_else(|| bad(format!("key bucket entry {name:02x?}")))?;
    let kv = mvccpb::KeyValue::decode(value)
        .map_err(|e| bad(format!("the value at revision {revision}.{sub}: {e}")))?;
    if kv.key.is_empty() {
        return Err(bad(format!("revision {revision}.{sub} has no key")));
    }
    if tombstone {
        return Ok(HistoryEntry {
            revision,
            sub,
            key: kv.key,
            tombstone,
            create_revision: 0,
            version: 0,
            lease: 0,
            value: Bytes::new(),
        });
    }
    Ok(HistoryEntry {
        revision,
        sub,
        key: kv.key,
        tombstone,
        create_revision: kv.create_revision,
        version: kv.version,
        lease: kv.lease,
        value: kv.value,
    })
}

/// The compacted revision: etcd's scheduled compaction, finished or to be finished at
/// its next start (-1: never compacted).
fn compacted(db: &Db) -> Result<i64, EtcdFileError> {
    let mut compact = -1i64;
    let mut malformed = false;
    db.for_each(b"meta", &mut |k, v| {
        if k == b"finishedCompactRev" || k == b"scheduledCompactRev" {
            match revision_of(v) {
                Some((rev, _, false)) => compact = compact.max(rev),
                _ => malformed = true,
            }
        }
    })?;
    if malformed {
        return Err(bad("its compacted revision does not decode"));
    }
    Ok(compact)
}

/// etcd's leasepb.Lease.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct LeasePb {
    #[prost(int64, tag = "1")]
    pub(super) id: i64,
    #[prost(int64, tag = "2")]
    pub(super) ttl: i64,
    #[prost(int64, tag = "3")]
    pub(super) remaining_ttl: i64,
}

fn leases(db: &Db) -> Result<Vec<Lease>, EtcdFileError> {
    let mut leases = Vec::new();
    let mut failed = None;
    db.for_each(b"lease", &mut |_, v| match LeasePb::decode(v) {
        Ok(l) => leases.push(Lease {
            id: l.id,
            ttl_s: l.ttl,
            remaining_ttl_s: l.remaining_ttl,
        }),
        Err(e) => failed = Some(bad(format!("a lease: {e}"))),
    })?;
    failed.map_or(Ok(leases), Err)
}

fn auth(db: &Db) -> Result<AuthState, EtcdFileError> {
    let mut state = AuthState::default();
    let mut failed: Option<EtcdFileError> = None;
    db.for_each(b"auth", &mut |k, v| match k {
        b"authEnabled" => state.enabled = v == [1],
        b"authRevision" => match <[u8; 8]>::try_from(v) {
            Ok(b) => state.revision = u64::from_be_bytes(b),
            Err(_) => failed = Some(bad("the auth revision")),
        },
        _ => {}
    })?;
    db.for_each(b"authUsers", &mut |_, v| match authpb::User::decode(v) {
        Ok(u) => {
            let mut roles = u.roles;
            roles.sort();
            let user = User {
                password_hash: u.password.to_vec(),
                no_password: u.options.is_some_and(|o| o.no_password),
                roles,
            };
            state
                .users
                .insert(String::from_utf8_lossy(&u.name).into_owned(), user);
        }
        Err(e) => failed = Some(bad(format!("a user: {e}"))),
    })?;
    db.for_each(b"authRoles", &mut |_, v| match authpb::Role::decode(v)
        .map_err(|e| e.to_string())
        .and_then(role)
    {
        Ok((name, role)) => {
            state.roles.insert(name, role);
        }
        Err(e) => failed = Some(bad(format!("a role: {e}"))),
    })?;
    failed.map_or(Ok(state), Err)
}

fn role(r: authpb::Role) -> Result<(String, Role), String> {
    let mut perms = r
        .key_permission
        .into_iter()
        .map(|p| {
            let kind = match p.perm_type {
                0 => PermKind::Read,
                1 => PermKind::Write,
                2 => PermKind::ReadWrite,
                other => return Err(format!("permission type {other}")),
            };
            Ok(Permission {
                kind,
                key: p.key.to_vec(),
                range_end: p.range_end.to_vec(),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    perms.sort_by(|a, b| a.key.cmp(&b.key));
    let name = String::from_utf8_lossy(&r.name).into_owned();
    Ok((name, Role { perms }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_decode_as_etcd_writes_them() {
        let mut name = 7i64.to_be_bytes().to_vec();
        name.push(b'_');
        name.extend_from_slice(&2i64.to_be_bytes());
        assert_eq!(revision_of(&name), Some((7, 2, false)));
        name.push(b't');
        assert_eq!(revision_of(&name), Some((7, 2, true)));
        name.push(b't');
        assert_eq!(revision_of(&name), None);
        assert_eq!(revision_of(b"short"), None);
    }
}
