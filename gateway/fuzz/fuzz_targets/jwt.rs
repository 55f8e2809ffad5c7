#![no_main]
//! Fuzz target: see `labgate_gateway::fuzzing::jwt`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    labgate_gateway::fuzzing::jwt(data);
});
