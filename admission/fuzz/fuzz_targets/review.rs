#![no_main]
//! Fuzz target: see `labgate_admission::fuzzing::review`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    labgate_admission::fuzzing::review(data);
});
