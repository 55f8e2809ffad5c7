//! Captures every log line (all targets, at the verbosity asked for) and
//! every panic message of a test process, so a test can assert that no
//! secret ever appears in them.

use std::io::Write;
use std::sync::{Arc, Mutex};

/// The captured output; install once per test binary, before anything logs.
#[derive(Clone)]
pub struct LogCapture {
    buf: Arc<Mutex<Vec<u8>>>,
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Installs the process-wide subscriber with `filter` (EnvFilter syntax)
    /// and a panic hook that records panic messages too.
    ///
    /// # Panics
    /// When a global subscriber is already installed: the capture would miss lines.
    pub fn install(filter: &str) -> LogCapture {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(false)
            .with_writer(move || Sink(writer.clone()))
            .try_init()
            .expect("the log capture is the first subscriber of this process");
        let panics = buf.clone();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = writeln!(Sink(panics.clone()), "PANIC: {info}");
            previous(info);
        }));
        LogCapture { buf }
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Panics naming each secret that appears in `text` (and the line it
    /// appears on, with the secret itself blanked out).
    pub fn assert_free_of(what: &str, text: &str, secrets: &[(String, String)]) {
        let mut leaks = Vec::new();
        for (name, secret) in secrets {
            assert!(secret.len() >= 8, "{name}: too short to search for");
            for line in text.lines().filter(|l| l.contains(secret.as_str())) {
                leaks.push(format!(
                    "{name} in {what}: {}",
                    line.replace(secret.as_str(), "<SECRET>")
                ));
            }
        }
        assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    }
}
