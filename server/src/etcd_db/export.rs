//! A raftkv key space written as etcd's snapshot file — a bbolt database with etcd's
//! buckets and the SHA-256 trailer `etcdctl snapshot save` appends — which `etcdutl
//! snapshot status` reads and `etcdutl snapshot restore` turns into an etcd data dir:
//! the way back to etcd. Keys keep their revisions, versions and leases; the compacted
//! revision, the history after it, the leases, users (with their password hashes),
//! roles and the auth switch come along. Members stay behind: etcdutl's restore writes
//! the new cluster's. Only reads the store.

use std::io::{Read, Write};
use std::path::Path;

use prost::Message;
use raftkv_proto::{authpb, mvccpb};
use raftkv_storage::auth::{AuthState, PermKind};
use raftkv_storage::mvcc::import::HistoryEntry;
use raftkv_storage::mvcc::snapshot::{ExportPin, SnapshotPoint};
use raftkv_storage::mvcc::MvccStore;

use super::bbolt_writer::{WriteError, Writer};
use super::{EtcdFileError, LeasePb};

/// The cluster version etcd records (its API level, major.minor.0).
const CLUSTER_VERSION: &[u8] = b"3.5.0";

/// What an export wrote, for the caller to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    pub revision: i64,
    pub history_entries: u64,
    pub bytes: u64,
}

impl From<WriteError> for EtcdFileError {
    fn from(e: WriteError) -> Self {
        EtcdFileError::Bad(e.to_string())
    }
}

/// etcd's name for a key bucket entry: revision u64 BE, '_', sub-revision u64 BE, and
/// 't' after a delete's.
fn revision_name(revision: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let mut name = revision.to_be_bytes().to_vec();
    name.push(b'_');
    name.extend_from_slice(&sub.to_be_bytes());
    if tombstone {
        name.push(b't');
    }
    name
}

/// etcd's value for a key bucket entry: the KeyValue, only its key for a delete.
fn key_value(e: &HistoryEntry) -> Vec<u8> {
    let kv = if e.tombstone {
        mvccpb::KeyValue {
            key: e.key.clone(),
            ..Default::default()
        }
    } else {
        mvccpb::KeyValue {
            key: e.key.clone(),
            create_revision: e.create_revision,
            mod_revision: e.revision,
            version: e.version,
            value: e.value.clone(),
            lease: e.lease,
        }
    };
    kv.encode_to_vec()
}

/// Writes the key space as it stands, with etcd's SHA-256 trailer, to `out` (through a
/// `.part` file renamed at the end).
pub fn write_etcd_file(store: &MvccStore, out: &Path) -> Result<Exported, EtcdFileError> {
    let part = out.with_extension("part");
    let _ = std::fs::remove_file(&part);
    let pin = store.pin_for_export();
    let point = pin.point()?;
    let (db_bytes, history_entries) = write_etcd_db(&pin, &point, &part)?;
    drop(pin);
    append_sha256(&part, db_bytes)?;
    std::fs::rename(&part, out).map_err(super::bbolt::BboltError::Io)?;
    Ok(Exported {
        revision: point.revision,
        history_entries,
        bytes: db_bytes + 32,
    })
}

/// Writes the key space at `point` (taken under `pin`) as etcd's database, without the
/// trailer, to the new file `path`; returns its length and the history entries written.
pub fn write_etcd_db(
    pin: &ExportPin,
    point: &SnapshotPoint,
    path: &Path,
) -> Result<(u64, u64), EtcdFileError> {
    let mut w = Writer::create(path)?;
    for empty in [&b"alarm"[..], b"members", b"members_removed"] {
        w.bucket(empty).finish()?;
    }
    write_auth(&mut w, point.auth.clone().unwrap_or_default())?;
    let mut cluster = w.bucket(b"cluster");
    cluster.put(b"clusterVersion".to_vec(), CLUSTER_VERSION.to_vec())?;
    cluster.finish()?;
    let mut keys = w.bucket(b"key");
    let mut entries = 0u64;
    let mut failed = None;
    pin.walk_etcd_history(point, &mut |e| {
        if let Err(err) = keys.put(revision_name(e.revision, e.sub, e.tombstone), key_value(&e)) {
            failed.get_or_insert(err);
        }
        entries += 1;
        Ok(())
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    keys.finish()?;
    let mut leases = point.leases.clone();
    leases.sort_by_key(|l| l.id as u64);
    let mut bucket = w.bucket(b"lease");
    for l in leases {
        let value = LeasePb {
            id: l.id,
            ttl: l.ttl_s,
            remaining_ttl: l.remaining_ttl_s,
        };
        bucket.put((l.id as u64).to_be_bytes().to_vec(), value.encode_to_vec())?;
    }
    bucket.finish()?;
    write_meta(&mut w, point.revision, point.compact_revision)?;
    Ok((w.finish()?, entries))
}

fn write_auth(w: &mut Writer, auth: AuthState) -> Result<(), EtcdFileError> {
    let mut bucket = w.bucket(b"auth");
    bucket.put(b"authEnabled".to_vec(), vec![u8::from(auth.enabled)])?;
    bucket.put(
        b"authRevision".to_vec(),
        auth.revision.to_be_bytes().to_vec(),
    )?;
    bucket.finish()?;
    let mut roles = w.bucket(b"authRoles");
    for (name, role) in &auth.roles {
        let key_permission = role
            .perms
            .iter()
            .map(|p| authpb::Permission {
                perm_type: match p.kind {
                    PermKind::Read => 0,
                    PermKind::Write => 1,
                    PermKind::ReadWrite => 2,
                },
                key: p.key.clone().into(),
                range_end: p.range_end.clone().into(),
            })
            .collect();
        let value = authpb::Role {
            name: name.clone().into_bytes().into(),
            key_permission,
        };
        roles.put(name.as_bytes().to_vec(), value.encode_to_vec())?;
    }
    roles.finish()?;
    let mut users = w.bucket(b"authUsers");
    for (name, user) in &auth.users {
        let value = authpb::User {
            name: name.clone().into_bytes().into(),
            password: user.password_hash.clone().into(),
            roles: user.roles.clone(),
            options: Some(authpb::UserAddOptions {
                no_password: user.no_password,
            }),
        };
        users.put(name.as_bytes().to_vec(), value.encode_to_vec())?;
    }
    users.finish()?;
    Ok(())
}

/// The meta bucket: the compaction (finished), and an applied index and term, which
/// etcdutl's restore replaces with the new cluster's.
fn write_meta(w: &mut Writer, revision: i64, compacted: i64) -> Result<(), EtcdFileError> {
    let mut meta = w.bucket(b"meta");
    meta.put(
        b"consistent_index".to_vec(),
        (revision as u64).to_be_bytes().to_vec(),
    )?;
    if compacted > 0 {
        let name = revision_name(compacted, 0, false);
        meta.put(b"finishedCompactRev".to_vec(), name.clone())?;
        meta.put(b"scheduledCompactRev".to_vec(), name)?;
    }
    meta.put(b"term".to_vec(), 1u64.to_be_bytes().to_vec())?;
    meta.finish()?;
    Ok(())
}

/// Appends the SHA-256 of the file's first `db_bytes`, as etcdctl does.
fn append_sha256(path: &Path, db_bytes: u64) -> Result<(), EtcdFileError> {
    use sha2::Digest;
    let io = super::bbolt::BboltError::Io;
    let mut hasher = sha2::Sha256::new();
    let mut file = std::fs::File::options()
        .read(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    std::io::copy(&mut (&mut file).take(db_bytes), &mut hasher).map_err(io)?;
    file.write_all(&hasher.finalize()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(())
}
