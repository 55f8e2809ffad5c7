//! Errors seen by many concurrent sessions: counted, with the first few kept for the report.

use std::fmt::Display;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

/// How many error samples a report keeps.
const SAMPLES: usize = 5;

/// A shared error counter for one scenario.
#[derive(Default)]
pub struct Errors {
    count: AtomicU64,
    samples: Mutex<Vec<String>>,
}

impl Errors {
    /// Counts one error, keeping its text if it is among the first few.
    pub fn record(&self, what: impl Display) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() < SAMPLES {
            samples.push(format!("{what:#}"));
        }
    }

    /// Errors counted so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The kept samples, as a JSON array.
    pub fn json(&self) -> Value {
        json!(*self.samples.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_error_and_keeps_the_first_few() {
        let errors = Errors::default();
        for i in 0..8 {
            errors.record(format!("error {i}"));
        }
        assert_eq!(errors.count(), 8);
        assert_eq!(
            errors.json(),
            json!(["error 0", "error 1", "error 2", "error 3", "error 4"])
        );
    }
}
