#![no_main]
//! Fuzz target: see `labgate_gateway::fuzzing::route_and_credentials`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    labgate_gateway::fuzzing::route_and_credentials(data);
});
