//! 10,000 invalid requests against a running three-member cluster — random bytes as
//! gRPC messages to every read and write method, well-formed requests with invalid
//! fields, and frames over the size limit — leave it serving, consistent (every member
//! answers the same HashKV) and within its memory.

use std::time::Duration;

use bytes::{Buf, BufMut};
use raftkv_proto::etcdserverpb as pb;
use raftkv_proto::etcdserverpb::kv_client::KvClient;
use raftkv_proto::etcdserverpb::lease_client::LeaseClient;
use raftkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use raftkv_tests::Cluster;
use rand::{Rng, SeedableRng};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::Status;

const REQUESTS: usize = 10_000;
/// A member above this resident size after the run has leaked.
const MAX_RSS_BYTES: u64 = 512 << 20;

/// Methods random bytes are sent to. Membership, leadership and auth changes are left
/// out: random bytes can decode into a valid MemberAdd, which would really change the
/// cluster.
const METHODS: [&str; 11] = [
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.KV/Put",
    "/etcdserverpb.KV/DeleteRange",
    "/etcdserverpb.KV/Txn",
    "/etcdserverpb.KV/Compact",
    "/etcdserverpb.Lease/LeaseGrant",
    "/etcdserverpb.Lease/LeaseRevoke",
    "/etcdserverpb.Lease/LeaseTimeToLive",
    "/etcdserverpb.Lease/LeaseLeases",
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.Maintenance/HashKV",
];

/// Sends and receives raw message bytes (the gRPC framing is tonic's).
#[derive(Clone, Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

async fn raw_call(channel: Channel, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(|r| r.into_inner())
}

/// Random bytes; half the time shaped like protobuf (a field tag, then junk).
fn junk(rng: &mut impl Rng) -> Vec<u8> {
    let len = rng.random_range(0..512);
    let mut body: Vec<u8> = (0..len).map(|_| rng.random()).collect();
    if rng.random_bool(0.5) && !body.is_empty() {
        body[0] = (rng.random_range(1u8..16) << 3) | rng.random_range(0u8..6);
    }
    body
}

/// A well-formed request with fields no valid client sends.
fn invalid_request(rng: &mut impl Rng, i: usize) -> (&'static str, Vec<u8>) {
    use prost::Message;
    let key = |rng: &mut dyn rand::RngCore| -> Vec<u8> {
        match rng.next_u32() % 4 {
            0 => Vec::new(),
            1 => vec![0],
            2 => vec![0xff; 300],
            _ => format!("bad/{}", rng.next_u32() % 100).into_bytes(),
        }
    };
    match i % 6 {
        0 => (
            "/etcdserverpb.KV/Range",
            pb::RangeRequest {
                key: key(rng).into(),
                range_end: key(rng).into(),
                limit: rng.random_range(-5..5),
                revision: rng.random_range(-10..1_000_000_000),
                sort_order: rng.random_range(-3..7),
                sort_target: rng.random_range(-3..9),
                min_mod_revision: rng.random_range(-5..5),
                max_create_revision: rng.random_range(-5..5),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        1 => (
            "/etcdserverpb.KV/Put",
            pb::PutRequest {
                key: key(rng).into(),
                value: vec![1; rng.random_range(0..4096)].into(),
                lease: rng.random_range(-3..1_000_000),
                ignore_value: rng.random_bool(0.3),
                ignore_lease: rng.random_bool(0.3),
                prev_kv: rng.random_bool(0.5),
            }
            .encode_to_vec(),
        ),
        2 => {
            // Deep nesting and too many operations (etcd's limits: 128 ops).
            let mut txn = pb::TxnRequest::default();
            for _ in 0..rng.random_range(0..200) {
                txn.success.push(pb::RequestOp {
                    request: if rng.random_bool(0.2) {
                        None
                    } else {
                        Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                            key: key(rng).into(),
                            ..Default::default()
                        }))
                    },
                });
            }
            for _ in 0..rng.random_range(0..10) {
                txn.compare.push(pb::Compare {
                    result: rng.random_range(-2..6),
                    target: rng.random_range(-2..7),
                    key: key(rng).into(),
                    ..Default::default()
                });
            }
            ("/etcdserverpb.KV/Txn", txn.encode_to_vec())
        }
        3 => (
            "/etcdserverpb.KV/Compact",
            pb::CompactionRequest {
                revision: rng.random_range(-10..1_000_000_000),
                physical: rng.random_bool(0.5),
            }
            .encode_to_vec(),
        ),
        4 => (
            "/etcdserverpb.Lease/LeaseGrant",
            pb::LeaseGrantRequest {
                ttl: rng.random_range(-10..20_000_000_000),
                id: rng.random_range(-5..5),
            }
            .encode_to_vec(),
        ),
        _ => (
            "/etcdserverpb.Lease/LeaseRevoke",
            pb::LeaseRevokeRequest {
                id: rng.random_range(-5..1_000_000),
            }
            .encode_to_vec(),
        ),
    }
}

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

#[test]
fn ten_thousand_invalid_requests_leave_the_cluster_serving_and_consistent() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut cluster = Cluster::start(3, &[]);
    let seed: u64 = std::env::var("RAFTKV_BAD_INPUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let endpoints = cluster.endpoints();
    let (answered, refused) = rt.block_on(async {
        let mut channels = Vec::new();
        for e in &endpoints {
            channels.push(
                Channel::from_shared(format!("http://{e}"))
                    .expect("url")
                    .connect()
                    .await
                    .expect("connect"),
            );
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (mut answered, mut refused) = (0usize, 0usize);
        let mut batch = Vec::new();
        for i in 0..REQUESTS {
            let channel = channels[i % channels.len()].clone();
            let (path, body) = match i % 3 {
                1 => invalid_request(&mut rng, i),
                // Over the 2 MiB request limit: must be refused, not buffered forever.
                2 if i % 500 == 2 => ("/etcdserverpb.KV/Put", vec![0x0a; 3 << 20]),
                _ => (METHODS[rng.random_range(0..METHODS.len())], junk(&mut rng)),
            };
            batch.push(tokio::spawn(raw_call(channel, path, body)));
            // 32 in flight at a time.
            if batch.len() == 32 || i + 1 == REQUESTS {
                for t in batch.drain(..) {
                    match tokio::time::timeout(Duration::from_secs(30), t).await {
                        Ok(Ok(Ok(_))) => answered += 1,
                        Ok(Ok(Err(status))) => {
                            assert_ne!(
                                status.code(),
                                tonic::Code::Unavailable,
                                "a member became unavailable: {status}"
                            );
                            refused += 1;
                        }
                        other => panic!("a request did not finish: {other:?}"),
                    }
                }
            }
        }
        (answered, refused)
    });
    assert_eq!(answered + refused, REQUESTS);
    assert!(
        refused > REQUESTS / 10,
        "only {refused} refused: were they invalid?"
    );

    // Every member is alive, within its memory, and serves reads and writes.
    for m in cluster.members.iter_mut() {
        assert!(m.is_running(), "{} died:\n{}", m.name, m.log());
    }
    rt.block_on(async {
        let mut kv = KvClient::connect(format!("http://{}", endpoints[0]))
            .await
            .expect("connect");
        let put = kv
            .put(pb::PutRequest {
                key: b"after/bad-input".to_vec().into(),
                value: b"ok".to_vec().into(),
                ..Default::default()
            })
            .await
            .expect("a put after the bad input");
        let revision = put.into_inner().header.expect("header").revision;
        let mut lease = LeaseClient::connect(format!("http://{}", endpoints[1]))
            .await
            .expect("connect");
        lease
            .lease_leases(pb::LeaseLeasesRequest {})
            .await
            .expect("lease list");
        // Consistent: every member has the same key space at that revision.
        let mut hashes = Vec::new();
        for e in &endpoints {
            let mut m = MaintenanceClient::connect(format!("http://{e}"))
                .await
                .expect("connect");
            let mut hash = None;
            for _ in 0..50 {
                match m.hash_kv(pb::HashKvRequest { revision }).await {
                    Ok(r) => {
                        hash = Some(r.into_inner().hash);
                        break;
                    }
                    // A member may not have applied `revision` yet.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            hashes.push(hash.expect("HashKV at the put's revision"));
        }
        assert!(
            hashes.windows(2).all(|w| w[0] == w[1]),
            "members differ after the bad input: {hashes:?}"
        );
    });
    for m in &cluster.members {
        let pid = m.pid().expect("running");
        let rss = rss_bytes(pid);
        assert!(
            rss > 0 && rss < MAX_RSS_BYTES,
            "{} uses {} MiB after the bad input",
            m.name,
            rss >> 20
        );
    }
    eprintln!(
        "{answered} invalid requests answered, {refused} refused with an error; cluster consistent"
    );
}
