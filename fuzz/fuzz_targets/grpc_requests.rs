//! etcd's requests (and peer messages) as the handlers take them: decode, convert,
//! validate, apply to a store. Bad input is refused, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    raftkv_server::fuzzing::grpc_request(data);
});
