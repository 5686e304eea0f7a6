//! etcd's JSON gateway: the v3 API as JSON over HTTP under `/v3/` on every client URL
//! (HTTP/1.1 and h2c, plain and TLS, beside gRPC), for clients that speak only that
//! (Patroni, APISIX, etcd3gw, curl). Each route is the gRPC method etcd's gateway maps
//! it to, called in process through the same gRPC services a gRPC client reaches — so
//! checks, permissions, limits and errors are theirs, exactly.
//!
//! Owns: the route table (etcd 3.5's paths, POST only), the JSON mapping (`json.rs`)
//! and the streams (`stream.rs`). Never decides anything about a request itself.

pub mod json;
pub mod stream;

use std::future::Future;

use axum::body::{Body, Bytes};
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{post, MethodRouter};
use axum::Router;
use raftkv_proto::etcdserverpb::auth_client::AuthClient;
use raftkv_proto::etcdserverpb::cluster_client::ClusterClient;
use raftkv_proto::etcdserverpb::kv_client::KvClient;
use raftkv_proto::etcdserverpb::lease_client::LeaseClient;
use raftkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use raftkv_proto::etcdserverpb::watch_client::WatchClient;
use raftkv_proto::v3electionpb::election_client::ElectionClient;
use raftkv_proto::v3lockpb::lock_client::LockClient;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::service::Routes;
use tonic::Status;

/// etcd's answer to a gateway path asked with another method than POST.
const METHOD_NOT_ALLOWED_BODY: &str = "{\"code\":12, \"message\":\"Method Not Allowed\"}";

/// A unary call: the body's first JSON value as the request, the answer as JSON.
pub async fn unary<Req, Resp, F, Fut>(headers: HeaderMap, body: Bytes, call: F) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let message = match json::first_message::<Req>(&body) {
        Ok(m) => m,
        Err(status) => return json::error(&status),
    };
    match call(json::grpc_request(message, &headers)).await {
        Ok(response) => json::ok(response.get_ref()),
        Err(status) => json::error(&status),
    }
}

/// A route: `handler` for POST, 501 for any other method but OPTIONS (a browser's
/// preflight, answered with the CORS headers every gateway answer carries).
fn endpoint<H, T>(handler: H) -> MethodRouter
where
    H: axum::handler::Handler<T, ()>,
    T: 'static,
{
    post(handler)
        .options(|| async { StatusCode::OK })
        .fallback(|| async {
            json::respond(StatusCode::NOT_IMPLEMENTED, METHOD_NOT_ALLOWED_BODY, false)
        })
}

/// Each answer allows any origin, as etcd's default `--cors` does.
fn with_cors(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("accept, content-type, authorization"),
    );
    response
}

/// A route calling `$client`'s `$method` on the in-process services through `$call`
/// (`unary`, `stream::server` or `stream::bidi`), the body extracted as `$body`.
macro_rules! route {
    ($grpc:expr, $client:ident, $method:ident, $call:path, $body:ty) => {{
        let grpc = $grpc.clone();
        endpoint(move |headers: HeaderMap, body: $body| async move {
            $call(headers, body, |request| async move {
                $client::new(grpc)
                    .max_decoding_message_size(usize::MAX)
                    .$method(request)
                    .await
            })
            .await
        })
    }};
}

/// A unary route.
macro_rules! unary_route {
    ($grpc:expr, $client:ident, $method:ident) => {
        route!($grpc, $client, $method, unary, Bytes)
    };
}

/// A server-streaming route (one request, lines back).
macro_rules! server_stream_route {
    ($grpc:expr, $client:ident, $method:ident) => {
        route!($grpc, $client, $method, stream::server, Bytes)
    };
}

/// A client-and-server streaming route (messages in the body, lines back).
macro_rules! bidi_route {
    ($grpc:expr, $client:ident, $method:ident) => {
        route!($grpc, $client, $method, stream::bidi, Body)
    };
}

/// The gateway's routes over `grpc`, the client URL's gRPC services.
pub fn router(grpc: &Routes) -> Router {
    let g = grpc;
    Router::new()
        .route("/v3/kv/range", unary_route!(g, KvClient, range))
        .route("/v3/kv/put", unary_route!(g, KvClient, put))
        .route(
            "/v3/kv/deleterange",
            unary_route!(g, KvClient, delete_range),
        )
        .route("/v3/kv/txn", unary_route!(g, KvClient, txn))
        .route("/v3/kv/compaction", unary_route!(g, KvClient, compact))
        .route("/v3/watch", bidi_route!(g, WatchClient, watch))
        .merge(lease_routes(g))
        .merge(cluster_and_maintenance_routes(g))
        .merge(auth_routes(g))
        .route("/v3/lock/lock", unary_route!(g, LockClient, lock))
        .route("/v3/lock/unlock", unary_route!(g, LockClient, unlock))
        .route(
            "/v3/election/campaign",
            unary_route!(g, ElectionClient, campaign),
        )
        .route(
            "/v3/election/proclaim",
            unary_route!(g, ElectionClient, proclaim),
        )
        .route(
            "/v3/election/leader",
            unary_route!(g, ElectionClient, leader),
        )
        .route(
            "/v3/election/observe",
            server_stream_route!(g, ElectionClient, observe),
        )
        .route(
            "/v3/election/resign",
            unary_route!(g, ElectionClient, resign),
        )
        .layer(DefaultBodyLimit::max(stream::MAX_BUFFERED_BODY_BYTES))
        .layer(axum::middleware::map_response(|r: Response| async {
            with_cors(r)
        }))
}

fn lease_routes(g: &Routes) -> Router {
    Router::new()
        .route("/v3/lease/grant", unary_route!(g, LeaseClient, lease_grant))
        .route(
            "/v3/lease/revoke",
            unary_route!(g, LeaseClient, lease_revoke),
        )
        .route(
            "/v3/kv/lease/revoke",
            unary_route!(g, LeaseClient, lease_revoke),
        )
        .route(
            "/v3/lease/keepalive",
            bidi_route!(g, LeaseClient, lease_keep_alive),
        )
        .route(
            "/v3/lease/timetolive",
            unary_route!(g, LeaseClient, lease_time_to_live),
        )
        .route(
            "/v3/kv/lease/timetolive",
            unary_route!(g, LeaseClient, lease_time_to_live),
        )
        .route(
            "/v3/lease/leases",
            unary_route!(g, LeaseClient, lease_leases),
        )
        .route(
            "/v3/kv/lease/leases",
            unary_route!(g, LeaseClient, lease_leases),
        )
}

fn cluster_and_maintenance_routes(g: &Routes) -> Router {
    Router::new()
        .route(
            "/v3/cluster/member/add",
            unary_route!(g, ClusterClient, member_add),
        )
        .route(
            "/v3/cluster/member/remove",
            unary_route!(g, ClusterClient, member_remove),
        )
        .route(
            "/v3/cluster/member/update",
            unary_route!(g, ClusterClient, member_update),
        )
        .route(
            "/v3/cluster/member/list",
            unary_route!(g, ClusterClient, member_list),
        )
        .route(
            "/v3/cluster/member/promote",
            unary_route!(g, ClusterClient, member_promote),
        )
        .route(
            "/v3/maintenance/alarm",
            unary_route!(g, MaintenanceClient, alarm),
        )
        .route(
            "/v3/maintenance/status",
            unary_route!(g, MaintenanceClient, status),
        )
        .route(
            "/v3/maintenance/defragment",
            unary_route!(g, MaintenanceClient, defragment),
        )
        .route(
            "/v3/maintenance/hash",
            unary_route!(g, MaintenanceClient, hash),
        )
        .route(
            "/v3/maintenance/hashkv",
            unary_route!(g, MaintenanceClient, hash_kv),
        )
        .route(
            "/v3/maintenance/snapshot",
            server_stream_route!(g, MaintenanceClient, snapshot),
        )
        .route(
            "/v3/maintenance/transfer-leadership",
            unary_route!(g, MaintenanceClient, move_leader),
        )
        .route(
            "/v3/maintenance/downgrade",
            unary_route!(g, MaintenanceClient, downgrade),
        )
}

fn auth_routes(g: &Routes) -> Router {
    Router::new()
        .route("/v3/auth/enable", unary_route!(g, AuthClient, auth_enable))
        .route(
            "/v3/auth/disable",
            unary_route!(g, AuthClient, auth_disable),
        )
        .route("/v3/auth/status", unary_route!(g, AuthClient, auth_status))
        .route(
            "/v3/auth/authenticate",
            unary_route!(g, AuthClient, authenticate),
        )
        .route("/v3/auth/user/add", unary_route!(g, AuthClient, user_add))
        .route("/v3/auth/user/get", unary_route!(g, AuthClient, user_get))
        .route("/v3/auth/user/list", unary_route!(g, AuthClient, user_list))
        .route(
            "/v3/auth/user/delete",
            unary_route!(g, AuthClient, user_delete),
        )
        .route(
            "/v3/auth/user/changepw",
            unary_route!(g, AuthClient, user_change_password),
        )
        .route(
            "/v3/auth/user/grant",
            unary_route!(g, AuthClient, user_grant_role),
        )
        .route(
            "/v3/auth/user/revoke",
            unary_route!(g, AuthClient, user_revoke_role),
        )
        .route("/v3/auth/role/add", unary_route!(g, AuthClient, role_add))
        .route("/v3/auth/role/get", unary_route!(g, AuthClient, role_get))
        .route("/v3/auth/role/list", unary_route!(g, AuthClient, role_list))
        .route(
            "/v3/auth/role/delete",
            unary_route!(g, AuthClient, role_delete),
        )
        .route(
            "/v3/auth/role/grant",
            unary_route!(g, AuthClient, role_grant_permission),
        )
        .route(
            "/v3/auth/role/revoke",
            unary_route!(g, AuthClient, role_revoke_permission),
        )
}
