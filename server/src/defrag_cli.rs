//! `raftkv defrag --endpoints …`: asks each member to give the space of deleted and
//! compacted data back (Maintenance.Defragment, which returns at once: the engine merges
//! in the background while everything goes on) and shows the db size shrinking until
//! it settles. It only asks and watches; it never stops a member.

use std::io::Write;
use std::time::{Duration, Instant};

use raftkv_proto::etcdserverpb as pb;
use raftkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;

use crate::cli_client::{connect, ClientTls, ConnectError};

/// How often the db size is read while the engine merges.
const POLL_MS: u64 = 500;
/// The size is taken as settled after this many equal readings in a row.
const SETTLED_READINGS: u32 = 4;
/// Watching one member stops after this long (the merge goes on regardless).
const WATCH_MAX_MS: u64 = 120_000;

#[derive(Debug, thiserror::Error)]
pub enum DefragCliError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{endpoint}: {message}")]
    Refused { endpoint: String, message: String },
}

async fn db_size(
    client: &mut MaintenanceClient<tonic::transport::Channel>,
) -> Result<i64, tonic::Status> {
    Ok(client
        .status(pb::StatusRequest {})
        .await?
        .into_inner()
        .db_size)
}

/// Defragments every endpoint in `endpoints`, one after another; returns the summary.
pub async fn run(endpoints: &str, tls: &ClientTls) -> Result<String, DefragCliError> {
    let mut summary = String::new();
    for endpoint in endpoints
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let refused = |s: tonic::Status| DefragCliError::Refused {
            endpoint: endpoint.to_string(),
            message: s.message().to_string(),
        };
        let mut client = MaintenanceClient::new(connect(endpoint, tls).await?);
        let before = db_size(&mut client).await.map_err(refused)?;
        client
            .defragment(pb::DefragmentRequest {})
            .await
            .map_err(refused)?;
        let started = Instant::now();
        let mut last = before;
        let mut equal = 0;
        while equal < SETTLED_READINGS && started.elapsed() < Duration::from_millis(WATCH_MAX_MS) {
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
            let size = db_size(&mut client).await.map_err(refused)?;
            equal = if size == last { equal + 1 } else { 0 };
            last = size;
            eprint!(
                "\rdefrag {endpoint}: {:.1} MB (was {:.1} MB)",
                size as f64 / 1e6,
                before as f64 / 1e6
            );
            let _ = std::io::stderr().flush();
        }
        eprintln!();
        summary.push_str(&format!(
            "Finished defragmenting raftkv member[{endpoint}]: {:.1} MB -> {:.1} MB\n",
            before as f64 / 1e6,
            last as f64 / 1e6
        ));
    }
    Ok(summary)
}
