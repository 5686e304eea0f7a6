//! Wire messages (proto/) to the storage crate's plain types and back.
//!
//! Pure functions, no I/O. Enum values a client sends that etcd does not know are
//! treated as etcd's proto3 decoding does: as the zero value.

use raftkv_proto::etcdserverpb as pb;
use raftkv_proto::mvccpb;
use raftkv_storage::mvcc as m;

pub fn kv_to_pb(kv: m::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

pub fn event_to_pb(ev: m::Event) -> mvccpb::Event {
    mvccpb::Event {
        r#type: match ev.kind {
            m::EventKind::Put => mvccpb::event::EventType::Put as i32,
            m::EventKind::Delete => mvccpb::event::EventType::Delete as i32,
        },
        kv: Some(kv_to_pb(ev.kv)),
        prev_kv: ev.prev_kv.map(kv_to_pb),
    }
}

pub fn range_from_pb(r: pb::RangeRequest) -> m::RangeRequest {
    use pb::range_request::{SortOrder, SortTarget};
    m::RangeRequest {
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        sort_order: match SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None) {
            SortOrder::None => m::SortOrder::None,
            SortOrder::Ascend => m::SortOrder::Ascend,
            SortOrder::Descend => m::SortOrder::Descend,
        },
        sort_target: match SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key) {
            SortTarget::Key => m::SortTarget::Key,
            SortTarget::Version => m::SortTarget::Version,
            SortTarget::Create => m::SortTarget::Create,
            SortTarget::Mod => m::SortTarget::Mod,
            SortTarget::Value => m::SortTarget::Value,
        },
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    }
}

/// A copy of `b` in a buffer of its own. Decoded requests slice their bytes out of the
/// connection's receive buffer; a write keeps them for as long as its log entry stays
/// in memory (up to --snapshot-count entries), so without the copy each 256-byte value
/// kept a whole receive buffer alive (measured: ~6 KB per entry).
fn own(b: bytes::Bytes) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(&b)
}

pub fn put_from_pb(r: pb::PutRequest) -> m::PutRequest {
    m::PutRequest {
        key: own(r.key),
        value: own(r.value),
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

pub fn delete_from_pb(r: pb::DeleteRangeRequest) -> m::DeleteRangeRequest {
    m::DeleteRangeRequest {
        key: own(r.key),
        range_end: own(r.range_end),
        prev_kv: r.prev_kv,
    }
}

fn compare_from_pb(c: pb::Compare) -> m::Compare {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    m::Compare {
        result: match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
            CompareResult::Equal => m::CompareResult::Equal,
            CompareResult::Greater => m::CompareResult::Greater,
            CompareResult::Less => m::CompareResult::Less,
            CompareResult::NotEqual => m::CompareResult::NotEqual,
        },
        target: match CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version) {
            CompareTarget::Version => m::CompareTarget::Version,
            CompareTarget::Create => m::CompareTarget::Create,
            CompareTarget::Mod => m::CompareTarget::Mod,
            CompareTarget::Value => m::CompareTarget::Value,
            CompareTarget::Lease => m::CompareTarget::Lease,
        },
        key: own(c.key),
        range_end: own(c.range_end),
        operand: c.target_union.map(|t| match t {
            TargetUnion::Version(v) => m::CompareOperand::Version(v),
            TargetUnion::CreateRevision(v) => m::CompareOperand::CreateRevision(v),
            TargetUnion::ModRevision(v) => m::CompareOperand::ModRevision(v),
            TargetUnion::Value(v) => m::CompareOperand::Value(own(v)),
            TargetUnion::Lease(v) => m::CompareOperand::Lease(v),
        }),
    }
}

/// etcd rejects a RequestOp with no request set as an empty key access.
fn op_from_pb(op: pb::RequestOp) -> Result<m::RequestOp, raftkv_storage::MvccError> {
    use pb::request_op::Request;
    match op.request {
        Some(Request::RequestRange(r)) => {
            let mut range = range_from_pb(r);
            range.key = own(range.key);
            range.range_end = own(range.range_end);
            Ok(m::RequestOp::Range(range))
        }
        Some(Request::RequestPut(r)) => Ok(m::RequestOp::Put(put_from_pb(r))),
        Some(Request::RequestDeleteRange(r)) => Ok(m::RequestOp::DeleteRange(delete_from_pb(r))),
        Some(Request::RequestTxn(r)) => Ok(m::RequestOp::Txn(txn_from_pb(r)?)),
        None => Err(raftkv_storage::MvccError::EmptyKey),
    }
}

pub fn txn_from_pb(r: pb::TxnRequest) -> Result<m::TxnRequest, raftkv_storage::MvccError> {
    Ok(m::TxnRequest {
        compare: r.compare.into_iter().map(compare_from_pb).collect(),
        success: r
            .success
            .into_iter()
            .map(op_from_pb)
            .collect::<Result<_, _>>()?,
        failure: r
            .failure
            .into_iter()
            .map(op_from_pb)
            .collect::<Result<_, _>>()?,
    })
}

pub fn range_to_pb(r: m::RangeResponse, header: pb::ResponseHeader) -> pb::RangeResponse {
    pb::RangeResponse {
        header: Some(pb::ResponseHeader {
            revision: r.revision,
            ..header
        }),
        kvs: r.kvs.into_iter().map(kv_to_pb).collect(),
        more: r.more,
        count: r.count,
    }
}

pub fn put_to_pb(r: m::PutResponse, header: pb::ResponseHeader) -> pb::PutResponse {
    pb::PutResponse {
        header: Some(pb::ResponseHeader {
            revision: r.revision,
            ..header
        }),
        prev_kv: r.prev_kv.map(kv_to_pb),
    }
}

pub fn delete_to_pb(
    r: m::DeleteRangeResponse,
    header: pb::ResponseHeader,
) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: Some(pb::ResponseHeader {
            revision: r.revision,
            ..header
        }),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(kv_to_pb).collect(),
    }
}

/// Responses inside a Txn carry only their revision in their header: etcd fills cluster,
/// member and term in the top-level header alone.
pub fn txn_to_pb(r: m::TxnResponse, header: pb::ResponseHeader) -> pb::TxnResponse {
    use pb::response_op::Response;
    let sub = pb::ResponseHeader::default;
    let responses = r
        .responses
        .into_iter()
        .map(|op| pb::ResponseOp {
            response: Some(match op {
                m::ResponseOp::Range(x) => Response::ResponseRange(range_to_pb(x, sub())),
                m::ResponseOp::Put(x) => Response::ResponsePut(put_to_pb(x, sub())),
                m::ResponseOp::DeleteRange(x) => {
                    Response::ResponseDeleteRange(delete_to_pb(x, sub()))
                }
                m::ResponseOp::Txn(x) => Response::ResponseTxn(txn_to_pb(x, sub())),
            }),
        })
        .collect();
    pb::TxnResponse {
        header: Some(pb::ResponseHeader {
            revision: r.revision,
            ..header
        }),
        succeeded: r.succeeded,
        responses,
    }
}
