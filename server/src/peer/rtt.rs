//! Round trips of Raft messages to each peer, recorded by the network as they happen
//! and rendered by ops/metrics.rs. Bounded: at most `MAX_PEERS_TRACKED` peers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftkv_storage::stats::DurationHistogram;

/// Round trips of Raft messages to each peer, by peer member id.
pub static PEER_RTT: Mutex<BTreeMap<u64, Arc<DurationHistogram>>> = Mutex::new(BTreeMap::new());
/// Peers tracked at most (members come and go; ids are never reused).
const MAX_PEERS_TRACKED: usize = 64;

/// Records one Raft message round trip to `peer`.
pub fn observe_peer_rtt(peer: u64, elapsed: Duration) {
    let histogram = {
        let mut map = PEER_RTT.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(&peer) && map.len() >= MAX_PEERS_TRACKED {
            return;
        }
        map.entry(peer)
            .or_insert_with(|| Arc::new(DurationHistogram::new()))
            .clone()
    };
    histogram.observe(elapsed);
}
