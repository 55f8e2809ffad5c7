//! How long the watches wait before retrying after an error.
//!
//! kube-runtime's default backoff waits 0.8 s (growing to 30 s) after every
//! error, and a 410 Expired or a watch that could not be re-opened is an
//! error to it. After a 410 the relist is all the work there is, so waiting
//! only delays acting on the changes made meanwhile (measured 3.4–4.1 s
//! before this). [`RelistBackoff`] retries the first error after a success
//! at once, and only a run of errors (the API server really failing) backs
//! off: 100 ms doubling to 0.5 s, with jitter so replicas do not retry in
//! step. The watch streams reset it on every item they yield.

use std::time::Duration;

use kube::runtime::utils::Backoff;

/// Delay before the second retry in a row.
const FIRST_STEP: Duration = Duration::from_millis(100);
/// Longest delay between retries.
pub const MAX_STEP: Duration = Duration::from_millis(500);

/// Retry at once after an isolated error; back off on a run of them.
#[derive(Debug, Default)]
pub struct RelistBackoff {
    /// Errors since the last successful item.
    failures: u32,
}

impl RelistBackoff {
    /// A fresh backoff (next error retries at once).
    pub fn new() -> RelistBackoff {
        RelistBackoff::default()
    }

    /// The delay for the `failures`-th error in a row, before jitter.
    fn step(failures: u32) -> Duration {
        match failures {
            0 | 1 => Duration::ZERO,
            n => FIRST_STEP.saturating_mul(1 << (n - 2).min(8)).min(MAX_STEP),
        }
    }
}

impl Iterator for RelistBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.failures = self.failures.saturating_add(1);
        let step = RelistBackoff::step(self.failures);
        // Between half and all of the step.
        Some(step.mul_f64(0.5 + rand::random::<f64>() / 2.0))
    }
}

impl Backoff for RelistBackoff {
    fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_isolated_error_retries_at_once_a_run_backs_off_to_the_cap() {
        let mut b = RelistBackoff::new();
        assert_eq!(b.next(), Some(Duration::ZERO));
        let second = b.next().unwrap();
        assert!(
            second >= FIRST_STEP / 2 && second <= FIRST_STEP,
            "{second:?}"
        );
        let later: Vec<Duration> = (0..20).map(|_| b.next().unwrap()).collect();
        assert!(later.iter().all(|d| *d <= MAX_STEP), "{later:?}");
        assert!(later.last().unwrap() >= &(MAX_STEP / 2));
        b.reset();
        assert_eq!(b.next(), Some(Duration::ZERO), "a success resets the run");
    }
}
