//! The gateway's streams: a request body of concatenated JSON values read one message at
//! a time into a client stream (Watch, LeaseKeepAlive), and a gRPC response stream
//! written as one `{"result": …}` line per message, flushed as each arrives (Watch,
//! LeaseKeepAlive, Snapshot, Observe). A client that goes away drops the stream, which
//! ends the gRPC call. Bounded: at most `MAX_BUFFERED_BODY_BYTES` of a request body
//! waits for its value to complete, at most `REQUESTS_QUEUED` decoded messages wait.

use std::future::Future;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::gateway::json;

/// The most of a request body held while a JSON value is incomplete: one request at
/// etcd's largest, base64 and all.
pub const MAX_BUFFERED_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Decoded requests waiting for the gRPC call to take them.
const REQUESTS_QUEUED: usize = 16;

/// A request body as a sequence of JSON messages.
struct JsonValues {
    body: axum::body::BodyDataStream,
    buffered: Vec<u8>,
    body_ended: bool,
}

impl JsonValues {
    fn new(body: Body) -> JsonValues {
        JsonValues {
            body: body.into_data_stream(),
            buffered: Vec::new(),
            body_ended: false,
        }
    }

    /// The next message; None once the body has ended.
    async fn next<T: DeserializeOwned>(&mut self) -> Option<Result<T, Status>> {
        loop {
            let mut values = serde_json::Deserializer::from_slice(&self.buffered).into_iter();
            match values.next() {
                Some(Ok(message)) => {
                    let used = values.byte_offset();
                    self.buffered.drain(..used);
                    return Some(Ok(message));
                }
                Some(Err(e)) if !e.is_eof() || self.body_ended => {
                    return Some(Err(json::decode_error(&e)))
                }
                None if self.body_ended => return None,
                _ => {}
            }
            match self.body.next().await {
                Some(Ok(chunk)) if self.buffered.len() + chunk.len() > MAX_BUFFERED_BODY_BYTES => {
                    return Some(Err(Status::resource_exhausted(
                        "request body value too large",
                    )))
                }
                Some(Ok(chunk)) => self.buffered.extend_from_slice(&chunk),
                Some(Err(_)) | None => self.body_ended = true,
            }
        }
    }
}

/// A client-and-server streaming call: the body's messages go to the call as they are
/// read; the call's messages come back as lines. A body whose first value does not
/// parse is refused with an error body; a later one ends the requests (the call goes on
/// with what it has, as etcd's gateway does).
pub async fn bidi<Req, Resp, F, Fut>(headers: HeaderMap, body: Body, call: F) -> Response
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: FnOnce(tonic::Request<ReceiverStream<Req>>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<tonic::Streaming<Resp>>, Status>>,
{
    let mut values = JsonValues::new(body);
    let (tx, rx) = mpsc::channel(REQUESTS_QUEUED);
    match values.next::<Req>().await {
        Some(Ok(first)) => {
            let _ = tx.send(first).await;
            tokio::spawn(async move {
                while let Some(Ok(message)) = values.next::<Req>().await {
                    if tx.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
        Some(Err(status)) => return json::error(&status),
        None => drop(tx),
    }
    let request = json::grpc_request(ReceiverStream::new(rx), &headers);
    respond(call(request).await).await
}

/// A server streaming call (Snapshot, Observe): one JSON request, lines back.
pub async fn server<Req, Resp, F, Fut>(headers: HeaderMap, body: Bytes, call: F) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize + Send + 'static,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<tonic::Streaming<Resp>>, Status>>,
{
    let message = match json::first_message::<Req>(&body) {
        Ok(m) => m,
        Err(status) => return json::error(&status),
    };
    respond(call(json::grpc_request(message, &headers)).await).await
}

/// The call's messages as lines. The answer's status waits for the first message, as
/// etcd's gateway's does: a call that fails before sending anything answers with the
/// error's HTTP status; one that fails later ends its lines with an error line.
async fn respond<Resp: Serialize + Send + 'static>(
    call: Result<tonic::Response<tonic::Streaming<Resp>>, Status>,
) -> Response {
    let mut inbound = match call {
        Ok(response) => response.into_inner(),
        Err(status) => return error_only(&status),
    };
    let first = match inbound.message().await {
        Ok(Some(message)) => message,
        Ok(None) => return json::respond(StatusCode::OK, Body::empty(), true),
        Err(status) => return error_only(&status),
    };
    let first_line = json::stream_result_line(&first);
    let lines = futures::stream::unfold(Some((Some(first_line), inbound)), |state| async move {
        let (pending, mut inbound) = state?;
        let line = match pending {
            Some(line) => line,
            None => match inbound.message().await {
                Ok(Some(message)) => json::stream_result_line(&message),
                Ok(None) => return None,
                Err(status) => Err(status),
            },
        };
        match line {
            Ok(line) => Some((
                Ok::<_, std::convert::Infallible>(line),
                Some((None, inbound)),
            )),
            Err(status) => Some((Ok(json::stream_error_line(&status)), None)),
        }
    });
    json::respond(StatusCode::OK, Body::from_stream(lines), true)
}

fn error_only(status: &Status) -> Response {
    json::respond(
        json::http_status(status.code()),
        json::stream_error_line(status),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftkv_proto::etcdserverpb as pb;

    fn chunked(parts: &[&'static str]) -> Body {
        let chunks: Vec<Result<&'static str, std::convert::Infallible>> =
            parts.iter().map(|p| Ok(*p)).collect();
        Body::from_stream(futures::stream::iter(chunks))
    }

    #[tokio::test]
    async fn values_split_across_chunks_are_read_whole_and_in_order() {
        let mut values = JsonValues::new(chunked(&[r#"{"ID":"1"}{"I"#, r#"D":"2"}  "#, "\n"]));
        let ids: Vec<i64> = [
            values.next::<pb::LeaseKeepAliveRequest>().await,
            values.next::<pb::LeaseKeepAliveRequest>().await,
        ]
        .into_iter()
        .map(|m| m.unwrap().unwrap().id)
        .collect();
        assert_eq!(ids, [1, 2]);
        assert!(values.next::<pb::LeaseKeepAliveRequest>().await.is_none());
    }

    #[tokio::test]
    async fn a_cut_value_is_an_error_and_a_huge_one_is_refused() {
        let mut values = JsonValues::new(chunked(&[r#"{"ID":"#]));
        let e = values.next::<pb::LeaseKeepAliveRequest>().await.unwrap();
        assert_eq!(e.unwrap_err().message(), "unexpected EOF");
        let huge: &'static str = Box::leak(
            format!("{{\"ID\":\"{}", "1".repeat(MAX_BUFFERED_BODY_BYTES)).into_boxed_str(),
        );
        let mut values = JsonValues::new(chunked(&[huge]));
        let e = values.next::<pb::LeaseKeepAliveRequest>().await.unwrap();
        assert_eq!(e.unwrap_err().code(), tonic::Code::ResourceExhausted);
    }
}
