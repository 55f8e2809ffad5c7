//! Checking a Prometheus exposition with the real `promtool check metrics`.

use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `promtool check metrics` on `exposition`.
///
/// # Panics
/// When promtool is not installed (Debian package `prometheus` ships
/// `/usr/bin/promtool`), or when it finds a problem: the message holds
/// promtool's output and the exposition.
pub fn assert_clean(exposition: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found on PATH: install the Debian package `prometheus`");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(exposition.as_bytes())
        .expect("writing to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{exposition}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
