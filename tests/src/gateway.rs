//! A JSON gateway client for tests, as curl uses etcd's gateway: one HTTP/1.1 POST per
//! call on a fresh connection, the body read whole (unary) or line by line from its
//! chunks (streams).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

/// How long a test waits for an answer or the next line of a stream.
const READ_TIMEOUT_MS: u64 = 10_000;

/// An answer: HTTP status, lower-cased head, body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{}: ", name.to_ascii_lowercase());
        self.head
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
    }
}

fn send(port: u16, method: &str, path: &str, body: &str, token: Option<&str>) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connects for HTTP");
    stream
        .set_read_timeout(Some(Duration::from_millis(READ_TIMEOUT_MS)))
        .expect("timeout");
    let auth = token.map_or(String::new(), |t| format!("Authorization: {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         {auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("request");
    stream
}

/// A call with `method` (the gateway's routes take POST).
pub fn call(port: u16, method: &str, path: &str, body: &str, token: Option<&str>) -> Answer {
    let mut stream = send(port, method, path, body, token);
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("response");
    let (status, head, mut body) = crate::split_response(&raw);
    let head = head.to_ascii_lowercase();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Answer { status, head, body }
}

/// A unary POST.
pub fn post(port: u16, path: &str, body: &str, token: Option<&str>) -> Answer {
    call(port, "POST", path, body, token)
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..end]).unwrap_or("0").trim();
        let n = usize::from_str_radix(size, 16).unwrap_or(0);
        let data = &raw[end + 2..];
        if n == 0 || data.len() < n {
            break;
        }
        out.extend_from_slice(&data[..n]);
        raw = data[n..].strip_prefix(b"\r\n").unwrap_or(&data[n..]);
    }
    out
}

/// A streamed answer, read one JSON line at a time as it comes.
pub struct Lines {
    pub status: u16,
    reader: BufReader<TcpStream>,
    chunked: bool,
    pending: Vec<u8>,
}

impl Lines {
    /// POSTs `body` (any number of JSON requests) to a streaming route.
    pub fn open(port: u16, path: &str, body: &str, token: Option<&str>) -> Lines {
        let mut reader = BufReader::new(send(port, "POST", path, body, token));
        let mut status_line = String::new();
        reader.read_line(&mut status_line).expect("status line");
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut chunked = false;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("head");
            if line.trim().is_empty() {
                break;
            }
            chunked |= line
                .trim_end()
                .eq_ignore_ascii_case("transfer-encoding: chunked");
        }
        Lines {
            status,
            reader,
            chunked,
            pending: Vec::new(),
        }
    }

    fn read_more(&mut self) -> bool {
        if !self.chunked {
            let mut buf = [0u8; 4096];
            let n = self.reader.read(&mut buf).unwrap_or(0);
            self.pending.extend_from_slice(&buf[..n]);
            return n > 0;
        }
        let mut size = String::new();
        if self.reader.read_line(&mut size).unwrap_or(0) == 0 {
            return false;
        }
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            return false;
        }
        let mut data = vec![0u8; n + 2];
        self.reader.read_exact(&mut data).expect("chunk");
        self.pending.extend_from_slice(&data[..n]);
        true
    }
}

/// The stream's lines as JSON, until it ends.
impl Iterator for Lines {
    type Item = Value;

    /// The next line as JSON; None when the stream ended.
    fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(serde_json::from_slice(&line).expect("a JSON line"));
            }
            if !self.read_more() {
                if self.pending.iter().all(u8::is_ascii_whitespace) {
                    return None;
                }
                let rest = std::mem::take(&mut self.pending);
                return Some(serde_json::from_slice(&rest).expect("a JSON line"));
            }
        }
    }
}

/// base64 of `text`, as the gateway's bytes fields want it.
pub fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}
