//! Bytes of Raft messages exchanged with each peer and sends that failed, recorded as
//! they happen (network.rs for what this member sends and the replies, service.rs for
//! what it is sent and answers) and rendered by ops/metrics.rs with etcd's names.
//! Forwarded client requests are not counted: their sender is not named on the wire.
//! Bounded: at most `MAX_PEERS_TRACKED` peers.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Peers tracked at most (members come and go; ids are never reused).
const MAX_PEERS_TRACKED: usize = 64;

/// One peer's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub sent_failures: u64,
}

static TRAFFIC: Mutex<BTreeMap<u64, Traffic>> = Mutex::new(BTreeMap::new());

fn update(peer: u64, change: impl FnOnce(&mut Traffic)) {
    let mut map = TRAFFIC.lock().unwrap_or_else(|e| e.into_inner());
    if !map.contains_key(&peer) && map.len() >= MAX_PEERS_TRACKED {
        return;
    }
    change(map.entry(peer).or_default());
}

pub fn sent(peer: u64, bytes: usize) {
    update(peer, |t| t.sent_bytes += bytes as u64);
}

pub fn received(peer: u64, bytes: usize) {
    update(peer, |t| t.received_bytes += bytes as u64);
}

/// A message to `peer` that got no answer (no connection, or none in time).
pub fn send_failed(peer: u64) {
    update(peer, |t| t.sent_failures += 1);
}

/// Every tracked peer's counters, by member id.
pub fn snapshot() -> Vec<(u64, Traffic)> {
    let map = TRAFFIC.lock().unwrap_or_else(|e| e.into_inner());
    map.iter().map(|(id, t)| (*id, *t)).collect()
}
