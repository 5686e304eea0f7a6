//! The fuzz targets' entry points (storage/src/fuzzing.rs, run long with cargo fuzz
//! in fuzz/) on seeds and a few thousand mutations of them: valid seeds open, nothing
//! panics, and corrupt input is refused.

use openraft::{CommittedLeaderId, EntryPayload, LogId};
use raftkv_storage::fuzzing::{
    check_seed, log_replay, sample_snapshot, segment_from, snapshot_install, Mutator,
};
use raftkv_storage::raft_types::{Entry, Vote};

/// Framed-shape fuzz input (see `segment_from`) for the given records.
fn framed(records: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut input = vec![1u8];
    for (kind, payload) in records {
        input.push(*kind);
        input.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        input.extend_from_slice(payload);
    }
    input
}

fn entry_record(index: u64) -> (u8, Vec<u8>) {
    let entry = Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Blank,
    };
    let mut payload = index.to_le_bytes().to_vec();
    payload.extend(postcard::to_allocvec(&entry).expect("encode"));
    (1, payload)
}

fn log_seed() -> Vec<u8> {
    let vote = postcard::to_allocvec(&Vote::new(1, 1)).expect("encode");
    framed(&[(2, vote), entry_record(1), entry_record(2), entry_record(3)])
}

#[test]
fn log_records_open_or_are_refused_never_a_panic() {
    assert!(log_replay(&segment_from(&log_seed())), "the seed opens");
    // A purge record shorter than its index prefix is refused...
    assert!(!log_replay(&segment_from(&framed(&[(5, vec![1, 2, 3])]))));
    // ...and so is one inside a segment header (vote, committed, purge: postcard
    // options), which reached the replay unchecked and panicked.
    let header = vec![0, 0, 1, 3, 1, 2, 3];
    assert!(!log_replay(&segment_from(&framed(&[(6, header)]))));
    let mut m = Mutator(0x1234_5678_9abc_def1);
    let (mut opened, mut refused) = (0, 0);
    for i in 0..2_000 {
        let seed = log_seed();
        let mut input = m.mutate(&seed);
        if i % 2 == 0 {
            input[0] = 0; // raw shape: the checksums themselves get hit
        }
        if log_replay(&segment_from(&input)) {
            opened += 1;
        } else {
            refused += 1;
        }
    }
    assert!(
        opened > 0 && refused > 0,
        "{opened} opened, {refused} refused"
    );
}

#[test]
fn snapshots_install_whole_or_change_nothing() {
    let seed = sample_snapshot();
    assert!(snapshot_install(&seed), "the seed installs");
    let mut m = Mutator(0x0fed_cba9_8765_4321);
    let mut refused = 0;
    for _ in 0..2_000 {
        if !snapshot_install(&m.mutate(&seed)) {
            refused += 1;
        }
    }
    assert!(
        refused > 1_000,
        "only {refused} of 2000 corrupt snapshots refused"
    );
}

/// The committed seeds in fuzz/seeds/ (where the fuzz targets start) are the ones
/// above; `RAFTKV_WRITE_SEEDS=1 cargo test -p raftkv-storage --test fuzz_smoke`
/// rewrites them after a format change.
#[test]
fn the_committed_seeds_are_current() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    check_seed(&root.join("wal_records/framed"), &log_seed());
    check_seed(&root.join("snapshot/sample"), &sample_snapshot());
}
