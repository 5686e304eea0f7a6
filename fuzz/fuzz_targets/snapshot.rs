//! Snapshot install: a snapshot installs whole or changes nothing, never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    raftkv_storage::fuzzing::snapshot_install(data);
});
