//! `raftkv migrate --from <etcd endpoints> --endpoints <raftkv endpoints>`: copies every
//! key of any etcd v3 server (k3s's embedded etcd, kine in front of SQLite or MariaDB,
//! etcd itself) into an empty raftkv cluster, all read at one revision of the source so
//! the copy is consistent. Leases come along with their remaining TTLs and keys stay
//! attached to them. The copy is checked by counting keys on both sides at the end.
//!
//! Revisions are not copied (raftkv numbers its own): clients such as the Kubernetes
//! API server must start fresh against the copy, as k3s does when it is restarted with
//! --datastore-endpoint. This module only reads the source; it never writes to it.

use std::collections::HashSet;

use raftkv_proto::etcdserverpb as pb;
use raftkv_proto::etcdserverpb::kv_client::KvClient;
use raftkv_proto::etcdserverpb::lease_client::LeaseClient;
use raftkv_proto::mvccpb;

use crate::cli::client::{connect, login, Authed, ConnectError};
use crate::cli::migrate_auth;
use crate::net::tls::ClientTls;

/// Keys read from the source per page.
const PAGE_KEYS: i64 = 500;
/// Puts per transaction on the destination (etcd's limit is 128 operations).
const TXN_PUTS_MAX: usize = 64;
/// Bytes of values per transaction on the destination, under the 1.5 MiB request limit.
const TXN_BYTES_MAX: usize = 1 << 20;
/// The most leases a migration carries over.
const LEASES_MAX: usize = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("reading the source: {0}")]
    Source(String),
    #[error("writing raftkv: {0}")]
    Destination(String),
    #[error("raftkv already holds {0} keys: migrate into an empty cluster")]
    NotEmpty(i64),
    #[error("the copy does not match: the source has {source_keys} keys at revision {revision}, raftkv {copied_keys}")]
    CountMismatch {
        source_keys: i64,
        copied_keys: i64,
        revision: i64,
    },
}

/// What was copied.
#[derive(Debug, Clone, Copy, Default)]
pub struct Copied {
    pub revision: i64,
    pub keys: i64,
    pub leases: usize,
    pub auth: migrate_auth::AuthCopied,
}

/// A source's refusal; one that comes from its authentication says what to give.
pub(crate) fn source_err(s: tonic::Status) -> MigrateError {
    let hint = match s.code() {
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => true,
        tonic::Code::InvalidArgument => s.message().contains("user name is empty"),
        _ => false,
    };
    let hint = if hint {
        " (the source has authentication on, and reading everything is root's: give --user root:PASSWORD)"
    } else {
        ""
    };
    MigrateError::Source(format!("{}{hint}", s.message()))
}

fn dest_err(s: tonic::Status) -> MigrateError {
    MigrateError::Destination(s.message().to_string())
}

async fn count(kv: &mut KvClient<Authed>, revision: i64) -> Result<(i64, i64), tonic::Status> {
    let r = kv
        .range(pb::RangeRequest {
            key: bytes::Bytes::from_static(&[0]),
            range_end: bytes::Bytes::from_static(&[0]),
            revision,
            count_only: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok((r.count, r.header.map_or(0, |h| h.revision)))
}

/// Copies everything from `from` (as `from_user`, `NAME:PASSWORD`, when its
/// authentication is on) into `to`, printing progress to stderr.
pub async fn run(
    from: &str,
    from_tls: &ClientTls,
    from_user: Option<&str>,
    to: &str,
    to_tls: &ClientTls,
) -> Result<Copied, MigrateError> {
    // One connection to each side.
    let src_channel = login(connect(from, from_tls).await?, from_user)
        .await
        .map_err(MigrateError::Source)?;
    let mut src = KvClient::new(src_channel.clone()).max_decoding_message_size(usize::MAX);
    let mut src_leases = LeaseClient::new(src_channel.clone());
    let dst_channel = login(connect(to, to_tls).await?, None)
        .await
        .map_err(MigrateError::Destination)?;
    let mut dst = KvClient::new(dst_channel.clone());
    let mut dst_leases = LeaseClient::new(dst_channel.clone());

    let (existing, _) = count(&mut dst, 0).await.map_err(dest_err)?;
    if existing > 0 {
        return Err(MigrateError::NotEmpty(existing));
    }
    // One revision for everything: the source's current one.
    let (total, revision) = count(&mut src, 0).await.map_err(source_err)?;
    eprintln!("raftkv migrate: {total} keys at revision {revision} of {from}");

    // Leases first, with what is left of their TTLs, under the same ids.
    let granted = copy_leases(&mut src_leases, &mut dst_leases).await?;
    let (copied, skipped) = copy_keys(&mut src, &mut dst, revision, total, &granted).await?;

    // The check: every key of the source's revision is in raftkv.
    let (copied_keys, _) = count(&mut dst, 0).await.map_err(dest_err)?;
    let (source_keys, _) = count(&mut src, revision).await.map_err(source_err)?;
    if copied_keys != copied || copied + skipped != source_keys {
        return Err(MigrateError::CountMismatch {
            source_keys,
            copied_keys,
            revision,
        });
    }
    if skipped > 0 {
        eprintln!(
            "raftkv migrate: {skipped} keys on leases that expired during the copy were left out"
        );
    }
    let auth = migrate_auth::copy(src_channel, dst_channel).await?;
    Ok(Copied {
        revision,
        keys: copied_keys,
        leases: granted.len(),
        auth,
    })
}

/// Grants every live lease of the source on the destination, under its id, with what
/// is left of its TTL; the ids granted (a lease expired meanwhile is not).
async fn copy_leases(
    src: &mut LeaseClient<Authed>,
    dst: &mut LeaseClient<Authed>,
) -> Result<HashSet<i64>, MigrateError> {
    let leases = src
        .lease_leases(pb::LeaseLeasesRequest {})
        .await
        .map_err(source_err)?
        .into_inner()
        .leases;
    let mut granted = HashSet::new();
    for lease in leases.iter().take(LEASES_MAX) {
        let ttl = src
            .lease_time_to_live(pb::LeaseTimeToLiveRequest {
                id: lease.id,
                keys: false,
            })
            .await
            .map_err(source_err)?
            .into_inner();
        if ttl.ttl <= 0 {
            continue; // expired meanwhile: its keys go with it
        }
        dst.lease_grant(pb::LeaseGrantRequest {
            ttl: ttl.ttl,
            id: lease.id,
        })
        .await
        .map_err(dest_err)?;
        granted.insert(lease.id);
    }
    Ok(granted)
}

/// Copies every key of the source at `revision`, a page at a time, showing progress;
/// the keys copied, and those left out because their lease expired during the copy.
async fn copy_keys(
    src: &mut KvClient<Authed>,
    dst: &mut KvClient<Authed>,
    revision: i64,
    total: i64,
    granted: &HashSet<i64>,
) -> Result<(i64, i64), MigrateError> {
    let (mut copied, mut skipped) = (0i64, 0i64);
    let mut from_key = vec![0u8];
    let progress = crate::cli::progress::Progress::items("raftkv migrate", total.max(0) as u64);
    loop {
        let page = src
            .range(pb::RangeRequest {
                key: bytes::Bytes::from(from_key.clone()),
                range_end: bytes::Bytes::from_static(&[0]),
                revision,
                limit: PAGE_KEYS,
                ..Default::default()
            })
            .await
            .map_err(source_err)?
            .into_inner();
        let Some(last) = page.kvs.last() else { break };
        from_key = last.key.to_vec();
        from_key.push(0);
        let (page_copied, page_skipped) = copy_page(dst, &page.kvs, granted).await?;
        copied += page_copied;
        skipped += page_skipped;
        progress.set((copied + skipped).max(0) as u64);
        if !page.more {
            break;
        }
    }
    progress.finish();
    Ok((copied, skipped))
}

/// Writes one page of keys in transactions of at most `TXN_PUTS_MAX` puts and
/// `TXN_BYTES_MAX` bytes. A key on a lease that has expired since is not copied (etcd
/// would have deleted it by now).
async fn copy_page(
    dst: &mut KvClient<Authed>,
    kvs: &[mvccpb::KeyValue],
    granted: &HashSet<i64>,
) -> Result<(i64, i64), MigrateError> {
    let (mut copied, mut skipped) = (0i64, 0i64);
    let mut puts = Vec::new();
    let mut bytes = 0usize;
    for kv in kvs {
        if kv.lease != 0 && !granted.contains(&kv.lease) {
            skipped += 1;
            continue;
        }
        if !puts.is_empty()
            && (puts.len() == TXN_PUTS_MAX || bytes + kv.value.len() > TXN_BYTES_MAX)
        {
            write_batch(dst, std::mem::take(&mut puts)).await?;
            bytes = 0;
        }
        bytes += kv.key.len() + kv.value.len();
        puts.push(pb::PutRequest {
            key: kv.key.clone(),
            value: kv.value.clone(),
            lease: kv.lease,
            ..Default::default()
        });
        copied += 1;
    }
    if !puts.is_empty() {
        write_batch(dst, puts).await?;
    }
    Ok((copied, skipped))
}

async fn write_batch(
    dst: &mut KvClient<Authed>,
    puts: Vec<pb::PutRequest>,
) -> Result<(), MigrateError> {
    let txn = pb::TxnRequest {
        compare: Vec::new(),
        success: puts
            .into_iter()
            .map(|p| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(p)),
            })
            .collect(),
        failure: Vec::new(),
    };
    dst.txn(txn).await.map_err(dest_err)?;
    Ok(())
}
