//! The Raft log's replay of one segment: raw bytes or records framed with valid
//! checksums (raftkv_storage::fuzzing::segment_from). Opens or refuses, never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let segment = raftkv_storage::fuzzing::segment_from(data);
    raftkv_storage::fuzzing::log_replay(&segment);
});
