//! The JSON side of the gateway: request bodies to messages and metadata, messages and
//! errors to HTTP responses, as etcd's gateway writes them (proto3's JSON mapping with
//! proto field names; `{"error","code","message"}` bodies with grpc-gateway's HTTP
//! status for each gRPC code). It never looks into a message: what a request means is
//! the gRPC service's business.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::{Code, Status};

/// Headers a client sends with this prefix reach the service as gRPC metadata without
/// it (grpc-gateway's convention: `Grpc-Metadata-Hasleader: true`).
const METADATA_HEADER_PREFIX: &str = "grpc-metadata-";

/// The first JSON value of `body`, or the empty message for an empty body: etcd's gateway
/// reads one value and ignores anything after it.
pub fn first_message<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Status> {
    let mut values = serde_json::Deserializer::from_slice(body).into_iter::<T>();
    match values.next() {
        None => Ok(T::default()),
        Some(Ok(message)) => Ok(message),
        Some(Err(e)) => Err(decode_error(&e)),
    }
}

/// A body that is not the message it should be: InvalidArgument, as etcd's gateway.
pub fn decode_error(e: &serde_json::Error) -> Status {
    if e.is_eof() {
        return Status::invalid_argument("unexpected EOF");
    }
    Status::invalid_argument(e.to_string())
}

/// The gRPC request the gateway makes for an HTTP request: the message, with the
/// client's token (`Authorization`) and `Grpc-Metadata-*` headers as metadata. A TLS
/// client certificate does not reach the service (etcd's gateway does not pass it).
pub fn grpc_request<T>(message: T, headers: &HeaderMap) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for (name, value) in headers {
        let key = if name == header::AUTHORIZATION {
            Some("authorization")
        } else {
            name.as_str().strip_prefix(METADATA_HEADER_PREFIX)
        };
        let Some(key) = key else { continue };
        let (Ok(key), Ok(value)) = (
            AsciiMetadataKey::from_bytes(key.as_bytes()),
            AsciiMetadataValue::try_from(value.as_bytes()),
        ) else {
            continue;
        };
        request.metadata_mut().append(key, value);
    }
    request
}

/// grpc-gateway's HTTP status for a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A message's JSON. Serializing generated messages cannot fail; should it, the
/// client gets an Internal error body rather than a broken one.
pub fn to_json<T: Serialize>(message: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(message).map_err(|e| Status::internal(e.to_string()))
}

/// A unary answer: 200 with the message's JSON.
pub fn ok<T: Serialize>(message: &T) -> Response {
    match to_json(message) {
        Ok(body) => respond(StatusCode::OK, body, true),
        Err(status) => error(&status),
    }
}

/// A failed call: grpc-gateway's status for the code and its error body. etcd 3.5.1
/// sends `error`, `code` and `message`, later 3.5 releases `code` and `message`; both
/// are sent, so that clients written against either find what they read.
pub fn error(status: &Status) -> Response {
    let body = serde_json::json!({
        "error": status.message(),
        "code": status.code() as i32,
        "message": status.message(),
    });
    respond(
        http_status(status.code()),
        body.to_string().into_bytes(),
        false,
    )
}

/// A streamed answer's closing error, one line: etcd 3.5.1's fields (`grpc_code`,
/// `http_code`, `message`, `http_status`) and later releases' (`code`, `message`).
pub fn stream_error_line(status: &Status) -> Vec<u8> {
    let http = http_status(status.code());
    let body = serde_json::json!({
        "error": {
            "grpc_code": status.code() as i32,
            "http_code": http.as_u16(),
            "message": status.message(),
            "http_status": http.canonical_reason().unwrap_or(""),
            "code": status.code() as i32,
        }
    });
    let mut line = body.to_string().into_bytes();
    line.push(b'\n');
    line
}

/// One message of a streamed answer: `{"result": …}` and a newline.
pub fn stream_result_line<T: Serialize>(message: &T) -> Result<Vec<u8>, Status> {
    let mut line = b"{\"result\":".to_vec();
    line.extend_from_slice(&to_json(message)?);
    line.extend_from_slice(b"}\n");
    Ok(line)
}

/// A JSON response. Answers that came from the service carry the gRPC content type as
/// metadata, as etcd's gateway forwards it.
pub fn respond(status: StatusCode, body: impl Into<Body>, from_service: bool) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if from_service {
        headers.insert(
            "grpc-metadata-content-type",
            HeaderValue::from_static("application/grpc"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftkv_proto::etcdserverpb as pb;

    #[test]
    fn a_body_is_its_first_value_and_an_empty_body_the_empty_message() {
        let r: pb::RangeRequest = first_message(br#"{"key":"Zm9v"} trailing"#).unwrap();
        assert_eq!(&r.key[..], b"foo");
        let r: pb::RangeRequest = first_message(b"  ").unwrap();
        assert_eq!(r, pb::RangeRequest::default());
        let e = first_message::<pb::RangeRequest>(br#"{"key":"Zm9v""#).unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (Code::InvalidArgument, "unexpected EOF")
        );
        assert!(first_message::<pb::RangeRequest>(br#"{"limit":"x"}"#).is_err());
    }

    #[test]
    fn the_token_and_metadata_headers_become_metadata() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("tok.1"));
        headers.insert("grpc-metadata-hasleader", HeaderValue::from_static("true"));
        headers.insert("user-agent", HeaderValue::from_static("curl"));
        let request = grpc_request((), &headers);
        let md = request.metadata();
        assert_eq!(md.get("authorization").unwrap(), "tok.1");
        assert_eq!(md.get("hasleader").unwrap(), "true");
        assert!(md.get("user-agent").is_none());
    }

    #[test]
    fn errors_carry_grpc_gateways_status_and_both_bodies() {
        let status = Status::invalid_argument("etcdserver: key is not provided");
        assert_eq!(error(&status).status(), StatusCode::BAD_REQUEST);
        let line: serde_json::Value =
            serde_json::from_slice(&stream_error_line(&Status::unauthenticated("x"))).unwrap();
        assert_eq!(line["error"]["http_code"], 401);
        assert_eq!(line["error"]["grpc_code"], line["error"]["code"]);
    }
}
