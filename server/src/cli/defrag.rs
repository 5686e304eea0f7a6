//! `raftkv defrag --endpoints …`: asks each member in turn to give the space of deleted
//! and compacted data back (Maintenance.Defragment, which answers once the engine has
//! merged its files; reads and writes go on meanwhile) and shows the db size before and
//! after. One member at a time, never all at once; it never stops a member. While a
//! member works, a terminal shows a spinner (cli/progress.rs); a pipe gets the summary
//! only.

use std::time::Instant;

use raftkv_proto::etcdserverpb as pb;
use raftkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;

use crate::cli::client::{connect_as, Access, Authed, ConnectError};
use crate::cli::progress::Progress;

#[derive(Debug, thiserror::Error)]
pub enum DefragCliError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{endpoint}: {message}")]
    Refused { endpoint: String, message: String },
}

async fn db_size(client: &mut MaintenanceClient<Authed>) -> Result<i64, tonic::Status> {
    Ok(client
        .status(pb::StatusRequest {})
        .await?
        .into_inner()
        .db_size)
}

/// Defragments every endpoint in `endpoints`, one after another; returns the summary.
pub async fn run(endpoints: &str, access: &Access) -> Result<String, DefragCliError> {
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
        let mut client = MaintenanceClient::new(connect_as(endpoint, access).await?);
        let before = db_size(&mut client).await.map_err(refused)?;
        let progress = Progress::spinner(&format!(
            "defrag {endpoint}: merging {:.1} MB",
            before as f64 / 1e6
        ));
        let started = Instant::now();
        // Answers once the member's engine has merged its files (or after the
        // member's own bound; the merge then goes on).
        client
            .defragment(pb::DefragmentRequest {})
            .await
            .map_err(refused)?;
        let took_ms = started.elapsed().as_millis();
        let last = db_size(&mut client).await.map_err(refused)?;
        progress.finish_with(format!("defrag {endpoint}: done in {took_ms} ms"));
        summary.push_str(&format!(
            "Finished defragmenting raftkv member[{endpoint}]: {:.1} MB -> {:.1} MB\n",
            before as f64 / 1e6,
            last as f64 / 1e6
        ));
    }
    Ok(summary)
}
