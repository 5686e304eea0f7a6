//! The write path: one Raft entry becomes one write transaction and one engine batch.
//!
//! A transaction reads the committed tree at its begin revision plus its own pending
//! writes (the overlay), records changes, and commits them together with the applied
//! log id in a single atomic `apply_batch`. Every change of one transaction shares the
//! revision begin + 1; a transaction that changes nothing leaves the revision alone.
//! After the batch lands, the events are published to the watch feed.
//!
//! It must never fail half-way: a client error (lease not found, ...) is detected before
//! any change is recorded, and the applied log id is written either way.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::keys::{self, ChangeRecord, KvRecord};
use super::kvstore::{AppliedMeta, MvccStore};
use super::publish::{publish, Change, Committed};
use super::range::{self, KeyRange, Overlay, View};
use super::reader::{to_kv, version_at};
use super::types::*;
use super::{validate, Command, CommandResponse, CommandResult};
use crate::auth::{AuthCommand, AuthState};
use crate::error::{MvccError, StoreError};

/// etcd's MaxLeaseTTL: 9,000,000,000 seconds.
pub const MAX_LEASE_TTL_S: i64 = 9_000_000_000;

struct WriteTxn<'a> {
    store: &'a MvccStore,
    tree: &'a super::engine::Tree,
    begin_rev: Revision,
    overlay: Overlay,
    changes: Vec<Change>,
    events: Vec<Event>,
    /// Lease table edits: Some to write, None to remove.
    leases: BTreeMap<LeaseId, Option<Lease>>,
    /// Attachment edits: (lease, key) -> attach (true) or detach (false).
    attachments: BTreeMap<(LeaseId, Bytes), bool>,
    compact: Option<Revision>,
    /// The whole alarm set after this transaction, when it changed.
    alarms: Option<BTreeSet<AlarmMember>>,
    /// The whole auth state after this transaction, when it changed.
    auth: Option<AuthState>,
    /// The log index of the entry being applied (a simple token names it).
    index: u64,
}

impl MvccStore {
    /// Applies one command, writing `meta` in the same atomic batch. A client error
    /// (lease not found, say) is a normal result: the entry is applied all the same.
    pub fn apply(
        &self,
        command: &Command,
        meta: &AppliedMeta,
    ) -> Result<CommandResult, StoreError> {
        apply(self, Some(command), meta)
    }

    /// Records an entry that changes no key (a blank or membership entry).
    pub fn apply_meta(&self, meta: &AppliedMeta) -> Result<(), StoreError> {
        apply(self, None, meta).map(|_| ())
    }
}

pub(crate) fn apply(
    store: &MvccStore,
    command: Option<&Command>,
    meta: &AppliedMeta,
) -> Result<CommandResult, StoreError> {
    let _writer = store
        .inner
        .apply_lock
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let tree = store.tree();
    let mut txn = WriteTxn {
        store,
        tree: &tree,
        begin_rev: store.revision(),
        overlay: Overlay::new(),
        changes: Vec::new(),
        events: Vec::new(),
        leases: BTreeMap::new(),
        attachments: BTreeMap::new(),
        compact: None,
        alarms: None,
        auth: None,
        index: meta.index,
    };
    let result = match command {
        None => Ok(CommandResponse::Applied),
        Some(command) => txn.execute(command)?,
    };
    let committed = txn.commit(meta)?;
    publish(&store.inner, committed);
    Ok(result)
}

/// etcd's checkRequests runs twice over a txn's chosen path: puts, then ranges, so a
/// put's error wins over a range's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckPass {
    Puts,
    Ranges,
}

impl WriteTxn<'_> {
    /// Forgets every write of this transaction: it will commit nothing but the applied
    /// log id, and the revision does not move.
    fn discard(&mut self) {
        self.overlay = Overlay::new();
        self.changes.clear();
        self.events.clear();
        self.leases.clear();
        self.attachments.clear();
        self.compact = None;
        self.alarms = None;
        self.auth = None;
    }

    /// The revision this transaction writes at.
    fn write_rev(&self) -> Revision {
        self.begin_rev + 1
    }

    /// The revision reads inside the transaction see: begin, or begin + 1 once it wrote.
    fn read_rev(&self) -> Revision {
        self.begin_rev + i64::from(!self.changes.is_empty())
    }

    fn view(&self) -> View<'_> {
        View {
            tree: self.tree,
            rev: self.read_rev(),
            overlay: (!self.changes.is_empty()).then_some(&self.overlay),
            latest: &self.store.inner.latest,
        }
    }

    fn begin_view(&self) -> View<'_> {
        View::committed(self.tree, &self.store.inner.latest, self.begin_rev)
    }

    /// The key's newest stored version (tombstones included) as of the begin revision:
    /// from the cache of newest versions, else from the engine, caching what it found.
    /// Under the apply lock the begin revision is the newest, so what the engine says
    /// is the key's newest version and may be cached (`latest.rs`).
    fn newest(&self, key: &Bytes) -> Result<Option<(Revision, KvRecord)>, StoreError> {
        let latest = &self.store.inner.latest;
        if let Some(hit) = latest.get_at(key, self.begin_rev) {
            return Ok(Some(hit));
        }
        let found = version_at(self.tree, key, self.begin_rev)?;
        if let Some((rev, record)) = &found {
            if !record.tombstone {
                latest.set(key, *rev, record);
            }
        }
        Ok(found)
    }

    fn execute(&mut self, command: &Command) -> Result<CommandResult, StoreError> {
        if command.needs_space() && self.store.has_alarm(AlarmType::NoSpace) {
            return Ok(Err(MvccError::NoSpace));
        }
        Ok(match command {
            Command::Put(req) => self.standalone_put(req)?.map(CommandResponse::Put),
            Command::DeleteRange(req) => match validate::delete(req) {
                Err(e) => Err(e),
                Ok(()) => Ok(CommandResponse::DeleteRange(self.delete_range(req)?)),
            },
            Command::Txn(req) => self.top_txn(req)?.map(CommandResponse::Txn),
            Command::Compact { revision } => self
                .compact(*revision)
                .map(|revision| CommandResponse::Compact { revision }),
            Command::LeaseGrant { id, ttl_s } => self.lease_grant(*id, *ttl_s),
            Command::LeaseRevoke { id } => self.lease_revoke(*id)?,
            Command::LeaseCheckpoint {
                id,
                remaining_ttl_s,
            } => self.lease_checkpoint(*id, *remaining_ttl_s),
            Command::Alarm { activate, alarm } => Ok(self.alarm(*activate, *alarm)),
            Command::Auth(change) => self.auth(change),
            Command::As { caller, command } => {
                let store = self.store;
                let lease_keys = |id| store.lease_keys(id).unwrap_or_default();
                match self
                    .store
                    .auth()
                    .check_command(caller, command, &lease_keys)
                {
                    Ok(()) => return self.execute(command),
                    Err(e) => Err(MvccError::Auth(e)),
                }
            }
        })
    }

    /// etcd's auth store: a change applied to a copy, kept if it was allowed. Changes
    /// no key and so no revision. Tokens follow the change on every member: an
    /// authentication hands one out, a deleted user or a new password ends the user's,
    /// turning auth off ends all (tokens.rs; memory only, so not part of the batch).
    fn auth(&mut self, change: &AuthCommand) -> CommandResult {
        let mut auth = (*self.store.auth()).clone();
        auth.apply(change)?;
        let mut tokens = self
            .store
            .inner
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match change {
            AuthCommand::Authenticate { name, token_prefix } => {
                // An empty prefix asks for no simple token (the server signs a JWT).
                let token = if token_prefix.is_empty() {
                    String::new()
                } else {
                    let now = std::time::Instant::now();
                    tokens.assign(token_prefix, self.index, name, now)
                };
                return Ok(CommandResponse::Authenticated {
                    token,
                    auth_revision: auth.revision,
                });
            }
            AuthCommand::UserDelete { name } | AuthCommand::UserChangePassword { name, .. } => {
                tokens.invalidate_user(name)
            }
            AuthCommand::Disable => tokens.clear(),
            _ => {}
        }
        drop(tokens);
        let auth_revision = auth.revision;
        self.auth = Some(auth);
        Ok(CommandResponse::Auth {
            revision: self.begin_rev,
            auth_revision,
        })
    }

    /// etcd's alarm store: activating adds the alarm (answering it), deactivating removes
    /// it (answering it if it was there). Alarms survive restarts and snapshots.
    fn alarm(&mut self, activate: bool, alarm: AlarmMember) -> CommandResponse {
        let mut alarms: BTreeSet<AlarmMember> = self.store.alarms().into_iter().collect();
        let changed = if activate {
            alarms.insert(alarm)
        } else {
            alarms.remove(&alarm)
        };
        let answered = if activate || changed {
            vec![alarm]
        } else {
            Vec::new()
        };
        if changed {
            self.alarms = Some(alarms);
        }
        CommandResponse::Alarm { alarms: answered }
    }

    fn lease_exists(&self, id: LeaseId) -> bool {
        match self.leases.get(&id) {
            Some(edit) => edit.is_some(),
            None => self.store.lease(id).is_some(),
        }
    }

    /// The live version of `key` as this transaction sees it.
    fn live(&self, key: &Bytes) -> Result<Option<KeyValue>, StoreError> {
        match self.overlay.get(key) {
            Some(pending) => Ok(pending.clone()),
            None => self.before_txn(key),
        }
    }

    /// The key's live version before this transaction: what etcd's watch reports as an
    /// event's prev_kv (it reads the key at the event's revision - 1).
    fn before_txn(&self, key: &Bytes) -> Result<Option<KeyValue>, StoreError> {
        Ok(live_of(key, self.newest(key)?))
    }

    /// The revision of the key's newest stored version, tombstones included.
    fn stored_revision(&self, key: &Bytes) -> Result<Revision, StoreError> {
        Ok(self.newest(key)?.map_or(0, |(rev, _)| rev))
    }

    fn standalone_put(
        &mut self,
        req: &PutRequest,
    ) -> Result<Result<PutResponse, MvccError>, StoreError> {
        if let Err(e) = validate::put(req) {
            return Ok(Err(e));
        }
        if req.lease != 0 && !self.lease_exists(req.lease) {
            return Ok(Err(MvccError::LeaseNotFound));
        }
        self.put(req)
    }

    fn put(&mut self, req: &PutRequest) -> Result<Result<PutResponse, MvccError>, StoreError> {
        // One lookup of the stored key serves both the live version and the revision
        // the change record points back to (a new key misses the cache: an engine scan).
        let stored = self.newest(&req.key)?;
        let prev_revision = stored.as_ref().map_or(0, |(rev, _)| *rev);
        let prev = match self.overlay.get(&req.key) {
            Some(pending) => pending.clone(),
            None => live_of(&req.key, stored),
        };
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Ok(Err(MvccError::KeyNotFound));
        }
        let value = match (&prev, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => req.value.clone(),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        };
        let rev = self.write_rev();
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease,
        };
        let old_lease = prev.as_ref().map_or(0, |p| p.lease);
        if old_lease != lease {
            if old_lease != 0 {
                self.attachments.insert((old_lease, req.key.clone()), false);
            }
            if lease != 0 {
                self.attachments.insert((lease, req.key.clone()), true);
            }
        }
        self.changes.push(Change {
            key: req.key.clone(),
            record: KvRecord {
                tombstone: false,
                create_revision: kv.create_revision,
                version: kv.version,
                lease,
                value: kv.value.clone(),
            },
            prev_revision,
        });
        self.overlay.insert(req.key.clone(), Some(kv.clone()));
        // etcd gives a create event no prev_kv, and any other the version before the txn.
        let event_prev = if kv.create_revision == rev {
            None
        } else if self.changes.len() == 1 {
            prev.clone()
        } else {
            self.before_txn(&req.key)?
        };
        self.events.push(Event {
            kind: EventKind::Put,
            kv,
            prev_kv: event_prev,
        });
        Ok(Ok(PutResponse {
            revision: rev,
            prev_kv: if req.prev_kv { prev } else { None },
        }))
    }

    fn delete_range(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, StoreError> {
        let mut doomed = Vec::new();
        self.view()
            .for_each(&KeyRange::new(&req.key, &req.range_end), true, |kv| {
                doomed.push(kv);
                true
            })?;
        let rev = self.write_rev();
        for prev in &doomed {
            if prev.lease != 0 {
                self.attachments
                    .insert((prev.lease, prev.key.clone()), false);
            }
            let prev_revision = self.stored_revision(&prev.key)?;
            self.changes.push(Change {
                key: prev.key.clone(),
                record: KvRecord {
                    tombstone: true,
                    create_revision: 0,
                    version: 0,
                    lease: 0,
                    value: Bytes::new(),
                },
                prev_revision,
            });
            self.overlay.insert(prev.key.clone(), None);
            // etcd's prev_kv for the event is the version before the txn: none if the
            // key was created earlier in this same txn.
            let event_prev = if prev.mod_revision == rev {
                self.before_txn(&prev.key)?
            } else {
                Some(prev.clone())
            };
            self.events.push(Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: prev.key.clone(),
                    mod_revision: rev,
                    ..KeyValue::default()
                },
                prev_kv: event_prev,
            });
        }
        let revision = if self.changes.is_empty() {
            self.begin_rev
        } else {
            rev
        };
        Ok(DeleteRangeResponse {
            revision,
            deleted: doomed.len() as i64,
            prev_kvs: if req.prev_kv { doomed } else { Vec::new() },
        })
    }

    fn range_in_txn(&self, req: &RangeRequest) -> Result<RangeResponse, StoreError> {
        let mut response = if req.revision > 0 {
            range::execute(
                &View::committed(self.tree, &self.store.inner.latest, req.revision),
                req,
            )?
        } else {
            range::execute(&self.view(), req)?
        };
        response.revision = self.read_rev();
        Ok(response)
    }

    fn top_txn(&mut self, req: &TxnRequest) -> Result<Result<TxnResponse, MvccError>, StoreError> {
        if let Err(e) = validate::txn(req, validate::MAX_TXN_OPS) {
            return Ok(Err(e));
        }
        let mut path = Vec::new();
        compare_to_path(&self.begin_view(), req, &mut path)?;
        // etcd checks every put of the chosen path first, then every range.
        for pass in [CheckPass::Puts, CheckPass::Ranges] {
            if let Err(e) = self.check_txn(req, &path, pass)? {
                return Ok(Err(e));
            }
        }
        let (mut response, _) = match self.execute_txn(req, &path)? {
            Ok(done) => done,
            Err(e) => {
                self.discard();
                return Ok(Err(e));
            }
        };
        response.revision = self.read_rev();
        Ok(Ok(response))
    }

    /// etcd's checkTxn: the chosen branches' ranges must be readable and their puts
    /// possible. Returns how many nested transactions of `path` it walked.
    fn check_txn(
        &self,
        req: &TxnRequest,
        path: &[bool],
        pass: CheckPass,
    ) -> Result<Result<usize, MvccError>, StoreError> {
        let Some((&taken, mut rest)) = path.split_first() else {
            return Err(StoreError::Corrupt("txn path shorter than the txn".into()));
        };
        let ops = if taken { &req.success } else { &req.failure };
        let mut walked = 0;
        for op in ops {
            let outcome = match op {
                RequestOp::Range(r) if pass == CheckPass::Ranges => self.check_range(r),
                RequestOp::Put(p) if pass == CheckPass::Puts => self.check_put(p)?,
                RequestOp::Range(_) | RequestOp::Put(_) | RequestOp::DeleteRange(_) => Ok(()),
                RequestOp::Txn(t) => match self.check_txn(t, rest, pass)? {
                    Ok(n) => {
                        walked += n + 1;
                        rest = rest.get(n + 1..).unwrap_or_default();
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = outcome {
                return Ok(Err(e));
            }
        }
        Ok(Ok(walked))
    }

    fn check_range(&self, req: &RangeRequest) -> Result<(), MvccError> {
        if req.revision == 0 {
            Ok(())
        } else if req.revision > self.begin_rev {
            Err(MvccError::FutureRevision)
        } else if req.revision < self.store.compact_revision() {
            Err(MvccError::Compacted)
        } else {
            Ok(())
        }
    }

    fn check_put(&self, req: &PutRequest) -> Result<Result<(), MvccError>, StoreError> {
        if (req.ignore_value || req.ignore_lease) && self.live(&req.key)?.is_none() {
            return Ok(Err(MvccError::KeyNotFound));
        }
        if req.lease != 0 && !self.lease_exists(req.lease) {
            return Ok(Err(MvccError::LeaseNotFound));
        }
        Ok(Ok(()))
    }

    /// Runs the branches `path` chose; returns the response and the nested count walked.
    fn execute_txn(
        &mut self,
        req: &TxnRequest,
        path: &[bool],
    ) -> Result<Result<(TxnResponse, usize), MvccError>, StoreError> {
        let Some((&taken, mut rest)) = path.split_first() else {
            return Err(StoreError::Corrupt("txn path shorter than the txn".into()));
        };
        let ops = if taken { &req.success } else { &req.failure };
        let mut responses = Vec::with_capacity(ops.len());
        let mut walked = 0;
        for op in ops {
            let response = match op {
                RequestOp::Range(r) => ResponseOp::Range(self.range_in_txn(r)?),
                RequestOp::Put(p) => match self.put(p)? {
                    Ok(r) => ResponseOp::Put(r),
                    // A put with ignore_value or ignore_lease whose key an earlier
                    // operation of this txn deleted: etcd panics here; raftkv refuses
                    // the whole txn (the caller discards what it wrote) on every member.
                    Err(e) => return Ok(Err(e)),
                },
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.delete_range(d)?),
                RequestOp::Txn(t) => {
                    let (nested, n) = match self.execute_txn(t, rest)? {
                        Ok(done) => done,
                        Err(e) => return Ok(Err(e)),
                    };
                    walked += n + 1;
                    rest = rest.get(n + 1..).unwrap_or_default();
                    ResponseOp::Txn(nested)
                }
            };
            responses.push(response);
        }
        Ok(Ok((
            TxnResponse {
                // etcd fills the header revision of the outermost response only.
                revision: 0,
                succeeded: taken,
                responses,
            },
            walked,
        )))
    }

    fn compact(&mut self, revision: Revision) -> Result<Revision, MvccError> {
        if revision <= self.store.compact_revision() {
            return Err(MvccError::Compacted);
        }
        if revision > self.begin_rev {
            return Err(MvccError::FutureRevision);
        }
        self.compact = Some(revision);
        Ok(self.begin_rev)
    }

    fn lease_grant(&mut self, id: LeaseId, ttl_s: i64) -> CommandResult {
        if id == 0 {
            return Err(MvccError::LeaseNotFound);
        }
        if ttl_s > MAX_LEASE_TTL_S {
            return Err(MvccError::LeaseTtlTooLarge);
        }
        if self.lease_exists(id) {
            return Err(MvccError::LeaseExists);
        }
        self.leases.insert(
            id,
            Some(Lease {
                id,
                ttl_s,
                remaining_ttl_s: 0,
            }),
        );
        Ok(CommandResponse::LeaseGrant {
            revision: self.begin_rev,
            id,
            ttl_s,
        })
    }

    fn lease_revoke(&mut self, id: LeaseId) -> Result<CommandResult, StoreError> {
        if !self.lease_exists(id) {
            return Ok(Err(MvccError::LeaseNotFound));
        }
        for key in self.store.lease_keys(id)? {
            self.delete_range(&DeleteRangeRequest {
                key,
                range_end: Bytes::new(),
                prev_kv: false,
            })?;
        }
        self.leases.insert(id, None);
        Ok(Ok(CommandResponse::LeaseRevoke {
            revision: self.read_rev(),
        }))
    }

    fn lease_checkpoint(&mut self, id: LeaseId, remaining_ttl_s: i64) -> CommandResult {
        let Some(mut lease) = self.store.lease(id) else {
            return Err(MvccError::LeaseNotFound);
        };
        lease.remaining_ttl_s = remaining_ttl_s;
        self.leases.insert(id, Some(lease));
        Ok(CommandResponse::LeaseCheckpoint {
            revision: self.begin_rev,
        })
    }

    /// Writes the transaction into the engine as one batch, with `meta`; what readers
    /// and watchers see moves only when the caller publishes what this returns.
    fn commit(self, meta: &AppliedMeta) -> Result<Committed, StoreError> {
        let rev = self.write_rev();
        let mut batch = super::engine::Batch::default();
        for (sub, change) in self.changes.iter().enumerate() {
            let sub = u32::try_from(sub)
                .map_err(|_| StoreError::Corrupt("too many changes in one revision".into()))?;
            batch.insert(keys::kv_key(&change.key, rev), change.record.encode());
            // A later change of this txn to the same key overwrites (key, rev): keep
            // this one's record in its change record for history.
            let overwritten = self.changes[sub as usize + 1..]
                .iter()
                .any(|later| later.key == change.key);
            let record = ChangeRecord {
                prev_revision: change.prev_revision,
                tombstone: change.record.tombstone,
                key: change.key.clone(),
                shadowed: (overwritten && !change.record.tombstone).then(|| change.record.clone()),
            };
            batch.insert(&keys::change_key(rev, sub)[..], record.encode());
        }
        for ((lease, key), attach) in &self.attachments {
            let k = keys::attach_key(*lease, key);
            if *attach {
                batch.insert(k, &[][..]);
            } else {
                batch.remove(k);
            }
        }
        for (id, lease) in &self.leases {
            match lease {
                Some(lease) => {
                    let bytes = postcard::to_allocvec(lease)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    batch.insert(&keys::lease_key(*id)[..], bytes);
                }
                None => batch.remove(&keys::lease_key(*id)[..]),
            }
        }
        // No META_REVISION: the revision is that of the newest change record
        // (kvstore.rs, `current_revision`).
        if let Some(compact) = self.compact {
            batch.insert(keys::META_COMPACT, &compact.to_be_bytes()[..]);
        }
        if let Some(alarms) = &self.alarms {
            let list: Vec<AlarmMember> = alarms.iter().copied().collect();
            let bytes =
                postcard::to_allocvec(&list).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            batch.insert(keys::META_ALARMS, bytes);
        }
        if let Some(auth) = &self.auth {
            let bytes =
                postcard::to_allocvec(auth).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            batch.insert(keys::META_AUTH, bytes);
        }
        if !meta.applied.is_empty() {
            // Rewritten by every entry: written into the memtable only when it is
            // sealed, where it then names the last entry the memtable holds.
            batch.insert_deferred(keys::META_APPLIED, meta.applied.as_slice());
        }
        if let Some(membership) = &meta.membership {
            batch.insert(keys::META_MEMBERSHIP, membership.as_slice());
        }
        let started = std::time::Instant::now();
        let writes = batch.len();
        self.tree.apply_batch(batch)?;
        let elapsed = started.elapsed();
        if crate::stats::BACKEND_COMMIT.observe_slow(elapsed, crate::stats::SLOW_APPLY_WARN) {
            tracing::warn!(
                took_ms = elapsed.as_millis() as u64,
                expected_ms = crate::stats::SLOW_APPLY_WARN.as_millis() as u64,
                revision = rev,
                writes,
                "mvcc: apply took too long"
            );
        }

        Ok(Committed {
            revision: rev,
            changes: self.changes,
            events: self.events,
            leases: self.leases,
            compact: self.compact,
            alarms: self.alarms,
            auth: self.auth,
        })
    }
}

/// The live key-value of a stored version: none for no version or a tombstone.
fn live_of(key: &Bytes, stored: Option<(Revision, KvRecord)>) -> Option<KeyValue> {
    match stored {
        Some((rev, record)) if !record.tombstone => Some(to_kv(key.clone(), rev, record, true)),
        _ => None,
    }
}

/// etcd's compareToPath: every compare of the whole tree is evaluated against the state
/// before the transaction, depth first; `path` gets one bool per transaction.
fn compare_to_path(
    view: &View<'_>,
    req: &TxnRequest,
    path: &mut Vec<bool>,
) -> Result<(), StoreError> {
    let mut ok = true;
    for compare in &req.compare {
        if !apply_compare(view, compare)? {
            ok = false;
            break;
        }
    }
    path.push(ok);
    let ops = if ok { &req.success } else { &req.failure };
    for op in ops {
        if let RequestOp::Txn(nested) = op {
            compare_to_path(view, nested, path)?;
        }
    }
    Ok(())
}

fn apply_compare(view: &View<'_>, compare: &Compare) -> Result<bool, StoreError> {
    let mut kvs = Vec::new();
    view.for_each(
        &KeyRange::new(&compare.key, &compare.range_end),
        compare.target == CompareTarget::Value,
        |kv| {
            kvs.push(kv);
            true
        },
    )?;
    if kvs.is_empty() {
        if compare.target == CompareTarget::Value {
            // A missing key has no value to compare: always false, as in etcd.
            return Ok(false);
        }
        return Ok(compare_kv(compare, &KeyValue::default()));
    }
    Ok(kvs.iter().all(|kv| compare_kv(compare, kv)))
}

fn compare_kv(compare: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering as O;
    let operand = compare.operand.as_ref();
    let ordering = match compare.target {
        CompareTarget::Value => {
            let wanted: &[u8] = match operand {
                Some(CompareOperand::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_ref().cmp(wanted)
        }
        CompareTarget::Create => kv.create_revision.cmp(match operand {
            Some(CompareOperand::CreateRevision(r)) => r,
            _ => &0,
        }),
        CompareTarget::Mod => kv.mod_revision.cmp(match operand {
            Some(CompareOperand::ModRevision(r)) => r,
            _ => &0,
        }),
        CompareTarget::Version => kv.version.cmp(match operand {
            Some(CompareOperand::Version(v)) => v,
            _ => &0,
        }),
        CompareTarget::Lease => kv.lease.cmp(match operand {
            Some(CompareOperand::Lease(l)) => l,
            _ => &0,
        }),
    };
    match compare.result {
        CompareResult::Equal => ordering == O::Equal,
        CompareResult::NotEqual => ordering != O::Equal,
        CompareResult::Greater => ordering == O::Greater,
        CompareResult::Less => ordering == O::Less,
    }
}
