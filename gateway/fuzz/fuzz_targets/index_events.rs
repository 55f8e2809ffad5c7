#![no_main]
//! Fuzz target: see `labgate_gateway::fuzzing::index_events`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    labgate_gateway::fuzzing::index_events(data);
});
