//! How the key space is laid out in one engine tree. Every write of one Raft entry is one
//! engine batch on this tree, so it lands atomically with the applied log id.
//!
//! ```text
//! 'k' enc(key) be(!rev)          -> KvRecord     every version of every key, newest first
//! 'r' be(rev) be(sub)            -> ChangeRecord the change log: what revision rev changed,
//!                                                 the version it superseded, put or delete
//! 'l' be(lease id)               -> Lease        granted leases
//! 'a' be(lease id) key           -> ()           keys attached to a lease
//! 'm' name                       -> bytes        meta: revision, compaction, applied log id
//! ```
//!
//! `enc` escapes 0x00 as 0x00 0xff and ends with 0x00 0x00: it keeps the byte order of
//! keys and no encoded key is a prefix of another, so a key's versions sit together and
//! [start, end) of user keys maps onto [enc(start), enc(end)) of stored keys.

use bytes::Bytes;

pub const KV: u8 = b'k';
pub const CHANGE: u8 = b'r';
pub const LEASE: u8 = b'l';
pub const ATTACH: u8 = b'a';
pub const META: u8 = b'm';

pub const META_REVISION: &[u8] = b"mrevision";
pub const META_COMPACT: &[u8] = b"mcompact";
pub const META_COMPACT_DONE: &[u8] = b"mcompact_done";
pub const META_APPLIED: &[u8] = b"mapplied";
pub const META_MEMBERSHIP: &[u8] = b"mmembership";
/// The raised alarms (postcard list of `AlarmMember`).
pub const META_ALARMS: &[u8] = b"malarms";
/// Users, roles and the auth switch (postcard `auth::AuthState`); absent: etcd's fresh
/// auth store.
pub const META_AUTH: &[u8] = b"mauth";

/// 'k' enc(key), the prefix of every version of `key`.
pub fn kv_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 11);
    out.push(KV);
    escape_into(&mut out, key);
    out
}

fn escape_into(out: &mut Vec<u8>, key: &[u8]) {
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

/// The stored key of `key` at `rev`.
pub fn kv_key(key: &[u8], rev: i64) -> Vec<u8> {
    let mut out = kv_prefix(key);
    out.extend_from_slice(&rev_desc(rev));
    out
}

/// Revisions are stored inverted so that a key's newest version comes first.
pub fn rev_desc(rev: i64) -> [u8; 8] {
    (!(rev as u64)).to_be_bytes()
}

/// Splits a 'k' stored key into (prefix 'k' enc(key), revision).
pub fn split_kv_key(stored_key: &[u8]) -> Option<(&[u8], i64)> {
    if stored_key.len() < 11 || stored_key[0] != KV {
        return None;
    }
    let (prefix, rev) = stored_key.split_at(stored_key.len() - 8);
    let rev = !u64::from_be_bytes(rev.try_into().ok()?);
    Some((prefix, rev as i64))
}

/// The user key of a 'k' prefix (the output of `kv_prefix`).
pub fn decode_prefix(prefix: &[u8]) -> Option<Bytes> {
    let body = prefix.get(1..prefix.len().checked_sub(2)?)?;
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        out.push(body[i]);
        if body[i] == 0 {
            if body.get(i + 1) != Some(&0xff) {
                return None;
            }
            i += 1;
        }
        i += 1;
    }
    Some(Bytes::from(out))
}

pub fn change_key(rev: i64, sub: u32) -> [u8; 13] {
    let mut out = [0u8; 13];
    out[0] = CHANGE;
    out[1..9].copy_from_slice(&(rev as u64).to_be_bytes());
    out[9..13].copy_from_slice(&sub.to_be_bytes());
    out
}

pub fn split_change_key(stored_key: &[u8]) -> Option<(i64, u32)> {
    if stored_key.len() != 13 || stored_key[0] != CHANGE {
        return None;
    }
    let rev = u64::from_be_bytes(stored_key[1..9].try_into().ok()?) as i64;
    let sub = u32::from_be_bytes(stored_key[9..13].try_into().ok()?);
    Some((rev, sub))
}

pub fn lease_key(id: i64) -> [u8; 9] {
    let mut out = [0u8; 9];
    out[0] = LEASE;
    out[1..9].copy_from_slice(&(id as u64).to_be_bytes());
    out
}

pub fn attach_prefix(id: i64) -> [u8; 9] {
    let mut out = lease_key(id);
    out[0] = ATTACH;
    out
}

pub fn attach_key(id: i64, key: &[u8]) -> Vec<u8> {
    let mut out = attach_prefix(id).to_vec();
    out.extend_from_slice(key);
    out
}

/// The smallest byte string greater than every string starting with `prefix`.
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last < 0xff {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

/// One version of one key as stored under 'k'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvRecord {
    pub tombstone: bool,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub value: Bytes,
}

const KV_HEADER_BYTES: usize = 25;

impl KvRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(KV_HEADER_BYTES + self.value.len());
        out.push(self.tombstone as u8);
        out.extend_from_slice(&self.create_revision.to_be_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.lease.to_be_bytes());
        out.extend_from_slice(&self.value);
        out
    }

    pub fn decode(bytes: &[u8], with_value: bool) -> Option<KvRecord> {
        if bytes.len() < KV_HEADER_BYTES || bytes[0] > 1 {
            return None;
        }
        let int = |at: usize| i64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        Some(KvRecord {
            tombstone: bytes[0] == 1,
            create_revision: int(1),
            version: int(9),
            lease: int(17),
            value: if with_value {
                Bytes::copy_from_slice(&bytes[KV_HEADER_BYTES..])
            } else {
                Bytes::new()
            },
        })
    }
}

/// What one revision changed, as stored under 'r': enough to rebuild the event and to
/// compact the version it superseded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRecord {
    /// The key's version before this change, 0 if it had none.
    pub prev_revision: i64,
    /// The change is a delete (its version is a tombstone).
    pub tombstone: bool,
    pub key: Bytes,
    /// A put whose stored version a later change of the same txn overwrote (etcd lets a
    /// txn put a key in one nested txn and delete it in a later one): its record, kept
    /// here so a watch from history can still report it.
    pub shadowed: Option<KvRecord>,
}

const CHANGE_TOMBSTONE: u8 = 1;
const CHANGE_SHADOWED: u8 = 2;

impl ChangeRecord {
    /// `prev_revision u64 | flags u8 | key` or, with a shadowed put,
    /// `prev_revision | flags | key_len u32 | key | KvRecord`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.key.len());
        out.extend_from_slice(&self.prev_revision.to_be_bytes());
        let mut flags = 0;
        if self.tombstone {
            flags |= CHANGE_TOMBSTONE;
        }
        match &self.shadowed {
            None => {
                out.push(flags);
                out.extend_from_slice(&self.key);
            }
            Some(record) => {
                out.push(flags | CHANGE_SHADOWED);
                out.extend_from_slice(&(self.key.len() as u32).to_be_bytes());
                out.extend_from_slice(&self.key);
                out.extend_from_slice(&record.encode());
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<ChangeRecord> {
        let prev = i64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let flags = *bytes.get(8)?;
        if flags & !(CHANGE_TOMBSTONE | CHANGE_SHADOWED) != 0 {
            return None;
        }
        let tombstone = flags & CHANGE_TOMBSTONE != 0;
        if flags & CHANGE_SHADOWED == 0 {
            return Some(ChangeRecord {
                prev_revision: prev,
                tombstone,
                key: Bytes::copy_from_slice(&bytes[9..]),
                shadowed: None,
            });
        }
        let key_len = u32::from_be_bytes(bytes.get(9..13)?.try_into().ok()?) as usize;
        let key = bytes.get(13..13usize.checked_add(key_len)?)?;
        let record = KvRecord::decode(bytes.get(13 + key_len..)?, true)?;
        Some(ChangeRecord {
            prev_revision: prev,
            tombstone,
            key: Bytes::copy_from_slice(key),
            shadowed: Some(record),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_keeps_key_order_and_groups_versions() {
        let keys: Vec<&[u8]> = vec![
            b"",
            b"\x00",
            b"\x00\x00",
            b"\x00\x01",
            b"a",
            b"a\x00",
            b"a\x00b",
            b"ab",
            b"b",
            b"\xff",
        ];
        for pair in keys.windows(2) {
            // Every version of the smaller key sorts before every version of the larger.
            assert!(kv_key(pair[0], 1) < kv_key(pair[1], i64::MAX), "{pair:?}");
            assert!(kv_key(pair[0], i64::MAX) < kv_key(pair[1], 1), "{pair:?}");
        }
        for key in keys {
            assert!(kv_key(key, 9) < kv_key(key, 3), "newest first");
            let stored_key = kv_key(key, 42);
            let (prefix, rev) = split_kv_key(&stored_key).expect("splits");
            assert_eq!(rev, 42);
            assert_eq!(
                decode_prefix(prefix).expect("decodes"),
                Bytes::copy_from_slice(key)
            );
        }
    }
}
