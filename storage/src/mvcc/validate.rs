//! Request checks that etcd makes before a request is proposed (etcd's v3rpc key.go):
//! empty keys, flag conflicts, the operation limit of a Txn and its duplicate-key rule.
//!
//! The server calls these before proposing so that a bad request never enters the log;
//! the write path calls them again so that applying any entry is safe.

use bytes::Bytes;

use super::types::*;
use crate::error::MvccError;

/// etcd's default --max-txn-ops.
pub const MAX_TXN_OPS: usize = 128;

pub fn range(req: &RangeRequest) -> Result<(), MvccError> {
    if req.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    Ok(())
}

pub fn put(req: &PutRequest) -> Result<(), MvccError> {
    if req.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(MvccError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(MvccError::LeaseProvided);
    }
    Ok(())
}

pub fn delete(req: &DeleteRangeRequest) -> Result<(), MvccError> {
    if req.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    Ok(())
}

/// etcd's checkTxnRequest followed by checkIntervals on both branches.
pub fn txn(req: &TxnRequest, max_ops: usize) -> Result<(), MvccError> {
    shape(req, max_ops)?;
    intervals(&req.success)?;
    intervals(&req.failure)?;
    Ok(())
}

fn shape(req: &TxnRequest, max_ops: usize) -> Result<(), MvccError> {
    let ops = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if ops > max_ops {
        return Err(MvccError::TooManyOps);
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(MvccError::EmptyKey);
    }
    for op in req.success.iter().chain(&req.failure) {
        match op {
            RequestOp::Range(r) => range(r)?,
            RequestOp::Put(p) => put(p)?,
            RequestOp::DeleteRange(d) => delete(d)?,
            RequestOp::Txn(t) => shape(t, max_ops)?,
        }
    }
    Ok(())
}

/// A delete's interval as etcd's adt sees it: [key, range_end), or the point `key`.
struct Interval {
    start: Bytes,
    /// None: the single point `start`.
    end: Option<Bytes>,
}

impl Interval {
    fn covers(&self, key: &[u8]) -> bool {
        match &self.end {
            None => self.start.as_ref() == key,
            // String comparison as etcd does it; note that a "\0" end covers nothing.
            Some(end) => self.start.as_ref() <= key && key < end.as_ref(),
        }
    }
}

/// etcd's checkIntervals: no key may be put twice, nor put and deleted, in one
/// branch, nested transactions included (their then/else branches exclude each other).
fn intervals(ops: &[RequestOp]) -> Result<(Vec<Bytes>, Vec<Interval>), MvccError> {
    let mut dels: Vec<Interval> = ops
        .iter()
        .filter_map(|op| match op {
            RequestOp::DeleteRange(d) => Some(Interval {
                start: d.key.clone(),
                end: (!d.range_end.is_empty()).then(|| d.range_end.clone()),
            }),
            _ => None,
        })
        .collect();
    let mut puts: Vec<Bytes> = Vec::new();
    let covered = |dels: &[Interval], key: &[u8]| dels.iter().any(|d| d.covers(key));
    for op in ops {
        let RequestOp::Txn(nested) = op else { continue };
        let (puts_then, dels_then) = intervals(&nested.success)?;
        let (puts_else, dels_else) = intervals(&nested.failure)?;
        for key in &puts_then {
            if puts.contains(key) || covered(&dels, key) {
                return Err(MvccError::DuplicateKey);
            }
            puts.push(key.clone());
        }
        for key in &puts_else {
            if puts.contains(key) && !puts_then.contains(key) {
                return Err(MvccError::DuplicateKey);
            }
            if covered(&dels, key) {
                return Err(MvccError::DuplicateKey);
            }
            puts.push(key.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let RequestOp::Put(p) = op else { continue };
        if puts.contains(&p.key) || covered(&dels, &p.key) {
            return Err(MvccError::DuplicateKey);
        }
        puts.push(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(key: &str) -> RequestOp {
        RequestOp::Put(PutRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            ..Default::default()
        })
    }

    fn del_op(key: &str, end: &str) -> RequestOp {
        RequestOp::DeleteRange(DeleteRangeRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            range_end: Bytes::copy_from_slice(end.as_bytes()),
            prev_kv: false,
        })
    }

    fn txn_of(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }

    #[test]
    fn duplicate_rules_match_etcd() {
        let dup = Err(MvccError::DuplicateKey);
        assert_eq!(
            txn(&txn_of(vec![put_op("a"), put_op("a")], vec![]), 128),
            dup
        );
        assert_eq!(
            txn(&txn_of(vec![put_op("b"), del_op("a", "c")], vec![]), 128),
            dup
        );
        assert_eq!(
            txn(&txn_of(vec![put_op("a"), del_op("a", "")], vec![]), 128),
            dup
        );
        // Deletes may overlap each other; a "\0" end covers nothing in etcd's check.
        assert_eq!(
            txn(
                &txn_of(vec![del_op("a", "c"), del_op("b", "d")], vec![]),
                128
            ),
            Ok(())
        );
        assert_eq!(
            txn(&txn_of(vec![put_op("b"), del_op("a", "\0")], vec![]), 128),
            Ok(())
        );
        // The same key in both branches of a nested txn is fine; with an outer put it is not.
        let nested = RequestOp::Txn(txn_of(vec![put_op("k")], vec![put_op("k")]));
        assert_eq!(txn(&txn_of(vec![nested.clone()], vec![]), 128), Ok(()));
        assert_eq!(txn(&txn_of(vec![nested, put_op("k")], vec![]), 128), dup);
        // Success and failure of the top level are checked separately.
        assert_eq!(
            txn(&txn_of(vec![put_op("a")], vec![put_op("a")]), 128),
            Ok(())
        );
    }

    #[test]
    fn op_limit_and_empty_keys() {
        let many: Vec<RequestOp> = (0..129).map(|i| put_op(&format!("k{i}"))).collect();
        assert_eq!(txn(&txn_of(many, vec![]), 128), Err(MvccError::TooManyOps));
        assert_eq!(
            txn(&txn_of(vec![put_op("")], vec![]), 128),
            Err(MvccError::EmptyKey)
        );
    }
}
