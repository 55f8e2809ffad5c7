//! Replays the committed fuzz corpus (`gateway/fuzz/corpus/`) through the
//! same entry points the fuzz targets call, on the stable toolchain, so CI
//! checks every input the fuzzers kept without needing nightly.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            panic!("{} fails: {}", target, path.display());
        }
        inputs += 1;
    }
    assert!(inputs > 0, "no corpus for {target}");
}

#[test]
fn route_and_credentials_corpus() {
    replay(
        "route_credentials",
        labgate_gateway::fuzzing::route_and_credentials,
    );
}

#[test]
fn jwt_corpus() {
    replay("jwt", labgate_gateway::fuzzing::jwt);
}

#[test]
fn frames_corpus() {
    replay("frames", labgate_gateway::fuzzing::frames);
}

#[test]
fn index_events_corpus() {
    replay("index_events", labgate_gateway::fuzzing::index_events);
}
