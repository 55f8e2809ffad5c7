//! Replays the committed fuzz corpus (`admission/fuzz/corpus/`) through the
//! entry point the fuzz target calls, on the stable toolchain, so CI checks
//! every input the fuzzer kept without needing nightly.

use std::path::Path;

#[test]
fn review_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/review");
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        if std::panic::catch_unwind(|| labgate_admission::fuzzing::review(&data)).is_err() {
            panic!("review fails: {}", path.display());
        }
        inputs += 1;
    }
    assert!(inputs > 0, "no corpus for review");
}
