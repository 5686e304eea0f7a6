//! How raftkv's own client commands (`raftkv snapshot save`, `raftkv member …`) reach a
//! running member: endpoint parsing and TLS as etcdctl does them (--endpoints,
//! --cacert, --cert, --key). It must never hold more than one connection per command.

use crate::net::tls::ClientTls;
use std::path::PathBuf;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Why a command could not reach a member.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach {endpoint}: {reason}")]
pub struct ConnectError {
    pub endpoint: String,
    pub reason: String,
}

/// "host:port" becomes "http://host:port"; URLs are kept as they are.
pub fn url_of(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

fn endpoint(url: &str, tls: &ClientTls) -> Result<Endpoint, ConnectError> {
    let fail = |reason: String| ConnectError {
        endpoint: url.to_string(),
        reason,
    };
    let read =
        |path: &PathBuf| std::fs::read(path).map_err(|e| fail(format!("{}: {e}", path.display())));
    let mut endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| fail(e.to_string()))?;
    if url.starts_with("https://") {
        let mut config = ClientTlsConfig::new();
        if let Some(ca) = &tls.cacert {
            config = config.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(read(cert)?, read(key)?))
            }
            (None, None) => {}
            _ => return Err(fail("--cert and --key go together".into())),
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| fail(e.to_string()))?;
    }
    Ok(endpoint)
}

/// Connects to the first of the comma-separated `endpoints` that answers.
pub async fn connect(endpoints: &str, tls: &ClientTls) -> Result<Channel, ConnectError> {
    let mut last = ConnectError {
        endpoint: endpoints.to_string(),
        reason: "no endpoint given".into(),
    };
    for one in endpoints
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let url = url_of(one);
        match endpoint(&url, tls)?.connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) => {
                last = ConnectError {
                    endpoint: url,
                    reason: match std::error::Error::source(&e) {
                        Some(source) => format!("{e}: {source}"),
                        None => e.to_string(),
                    },
                }
            }
        }
    }
    Err(last)
}

/// Rows as columns aligned with two spaces between them (the first row is the header).
pub fn aligned(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Where and as whom a command reaches members: etcdctl's TLS flags and `--user`.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub tls: ClientTls,
    /// `NAME:PASSWORD`, for members with authentication on.
    pub user: Option<String>,
}

/// `connect`, then `login` as `access.user`.
pub async fn connect_as(endpoints: &str, access: &Access) -> Result<Authed, ConnectError> {
    let channel = connect(endpoints, &access.tls).await?;
    login(channel, access.user.as_deref())
        .await
        .map_err(|reason| ConnectError {
            endpoint: endpoints.to_string(),
            reason,
        })
}

/// A channel whose every request carries a user's token once `login` succeeded, as
/// etcdctl's `--user NAME:PASSWORD` does.
pub type Authed = tonic::service::interceptor::InterceptedService<Channel, Token>;

/// The token a command's requests carry (none: no `--user`).
#[derive(Clone, Default)]
pub struct Token(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            r.metadata_mut().insert("token", t.clone());
        }
        Ok(r)
    }
}

/// Authenticates as `user` (`NAME:PASSWORD`, etcdctl's form; None: no credentials) and
/// wraps `channel` so that every request carries the token.
pub async fn login(channel: Channel, user: Option<&str>) -> Result<Authed, String> {
    use raftkv_proto::etcdserverpb as pb;
    let Some(user) = user else {
        return Ok(Authed::new(channel, Token::default()));
    };
    let (name, password) = user
        .split_once(':')
        .ok_or_else(|| format!("--user {user:?}: want NAME:PASSWORD"))?;
    let mut auth = pb::auth_client::AuthClient::new(channel.clone());
    let token = auth
        .authenticate(pb::AuthenticateRequest {
            name: name.to_string(),
            password: password.to_string(),
        })
        .await
        .map_err(|s| format!("authenticating as {name}: {}", s.message()))?
        .into_inner()
        .token;
    let token = token
        .parse()
        .map_err(|_| format!("authenticating as {name}: an unreadable token"))?;
    Ok(Authed::new(channel, Token(Some(token))))
}
