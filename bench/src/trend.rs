//! Trends of a soak run's samples: least-squares slopes, with and without the number of
//! active sessions held equal, and the tolerances that call a series flat.
//!
//! A gateway's descriptors and tasks rise and fall with its open sessions, and churn makes
//! that count wander from sample to sample. Fitting `value = a + b·t + c·sessions` takes
//! the sessions' share out, so `b` is the drift at an equal number of active sessions:
//! the leak, if there is one.

use serde::Serialize;

/// A slope with its standard error, both per second.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Slope {
    pub per_second: f64,
    /// Standard error of `per_second` (0 with fewer than four points).
    pub std_error: f64,
}

/// The least-squares slope of `y` over `t`; `None` with fewer than two distinct times.
pub fn slope(t: &[f64], y: &[f64]) -> Option<Slope> {
    let n = t.len().min(y.len());
    if n < 2 {
        return None;
    }
    let (t, y) = (&t[..n], &y[..n]);
    let (mt, my) = (mean(t), mean(y));
    let (mut stt, mut sty) = (0.0, 0.0);
    for (ti, yi) in t.iter().zip(y) {
        stt += (ti - mt) * (ti - mt);
        sty += (ti - mt) * (yi - my);
    }
    if stt <= f64::EPSILON {
        return None;
    }
    let b = sty / stt;
    let residual: f64 = t
        .iter()
        .zip(y)
        .map(|(ti, yi)| {
            let e = yi - my - b * (ti - mt);
            e * e
        })
        .sum();
    let std_error = if n > 2 {
        (residual / (n - 2) as f64 / stt).sqrt()
    } else {
        0.0
    };
    Some(Slope {
        per_second: b,
        std_error,
    })
}

/// The slope of `y` over `t` with `sessions` held equal: `b` of `y = a + b·t + c·sessions`.
/// Falls back to [`slope`] when the session count does not vary (or varies in step with
/// time, so the two cannot be told apart). Also returns `c`, the value per session.
pub fn slope_at_equal_sessions(t: &[f64], sessions: &[f64], y: &[f64]) -> Option<(Slope, f64)> {
    let n = t.len().min(sessions.len()).min(y.len());
    if n < 2 {
        return None;
    }
    let (t, sessions, y) = (&t[..n], &sessions[..n], &y[..n]);
    let (mt, ms, my) = (mean(t), mean(sessions), mean(y));
    let (mut stt, mut sss, mut sts, mut sty, mut ssy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let points = || {
        t.iter()
            .zip(sessions)
            .zip(y)
            .map(|((t, s), y)| (t - mt, s - ms, y - my))
    };
    for (dt, ds, dy) in points() {
        stt += dt * dt;
        sss += ds * ds;
        sts += dt * ds;
        sty += dt * dy;
        ssy += ds * dy;
    }
    let det = stt * sss - sts * sts;
    // Collinear or constant sessions: the plain slope is all there is to know.
    if n < 4 || sss <= f64::EPSILON || det <= 1e-9 * stt * sss {
        return slope(t, y).map(|s| (s, 0.0));
    }
    let b = (sss * sty - sts * ssy) / det;
    let c = (stt * ssy - sts * sty) / det;
    let residual: f64 = points()
        .map(|(dt, ds, dy)| {
            let e = dy - b * dt - c * ds;
            e * e
        })
        .sum();
    let std_error = (residual / (n - 3) as f64 * sss / det).sqrt();
    Some((
        Slope {
            per_second: b,
            std_error,
        },
        c,
    ))
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// How much change still counts as flat: the larger of an absolute amount and a share of
/// the baseline value.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Tolerance {
    pub absolute: f64,
    pub relative: f64,
}

impl Tolerance {
    /// The largest change allowed around `baseline`.
    pub fn limit(&self, baseline: f64) -> f64 {
        self.absolute.max(self.relative * baseline.abs())
    }

    /// Whether `change` (either sign) is within the limit around `baseline`.
    pub fn allows(&self, change: f64, baseline: f64) -> bool {
        change.abs() <= self.limit(baseline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_slope_of_a_line_and_of_noise() {
        let t: Vec<f64> = (0..10).map(f64::from).collect();
        let y: Vec<f64> = t.iter().map(|x| 3.0 + 0.5 * x).collect();
        let s = slope(&t, &y).unwrap();
        assert!((s.per_second - 0.5).abs() < 1e-12);
        assert!(s.std_error < 1e-9);
        let flat: Vec<f64> = (0..10).map(|i| [1.0, -1.0][i % 2]).collect();
        let s = slope(&t, &flat).unwrap();
        assert!(s.per_second.abs() < 0.25 && s.std_error > 0.0);
        assert_eq!(slope(&[1.0], &[1.0]), None);
        assert_eq!(slope(&[2.0, 2.0], &[1.0, 5.0]), None);
    }

    #[test]
    fn sessions_held_equal_remove_their_share() {
        // Two descriptors per session, a steady leak of 0.1 per second, sessions wandering.
        let t: Vec<f64> = (0..40).map(|i| f64::from(i) * 5.0).collect();
        let sessions: Vec<f64> = (0..40).map(|i| f64::from((i * 7) % 13 + 20)).collect();
        let fds: Vec<f64> = t
            .iter()
            .zip(&sessions)
            .map(|(t, s)| 50.0 + 0.1 * t + 2.0 * s)
            .collect();
        let (b, c) = slope_at_equal_sessions(&t, &sessions, &fds).unwrap();
        assert!((b.per_second - 0.1).abs() < 1e-9, "{b:?}");
        assert!((c - 2.0).abs() < 1e-9, "{c}");
        // No leak: the wandering sessions alone give no drift.
        let level: Vec<f64> = sessions.iter().map(|s| 50.0 + 2.0 * s).collect();
        let (b, _) = slope_at_equal_sessions(&t, &sessions, &level).unwrap();
        assert!(b.per_second.abs() < 1e-9, "{b:?}");
    }

    #[test]
    fn constant_sessions_fall_back_to_the_plain_slope() {
        let t = [0.0, 1.0, 2.0, 3.0, 4.0];
        let y = [1.0, 2.0, 3.0, 4.0, 5.0];
        let (b, c) = slope_at_equal_sessions(&t, &[3.0; 5], &y).unwrap();
        assert!((b.per_second - 1.0).abs() < 1e-12);
        assert_eq!(c, 0.0);
    }

    #[test]
    fn tolerance_takes_the_larger_allowance() {
        let rss = Tolerance {
            absolute: 1024.0,
            relative: 0.02,
        };
        assert!(rss.allows(-1000.0, 10_000.0));
        assert!(rss.allows(1900.0, 100_000.0));
        assert!(!rss.allows(2100.0, 100_000.0));
        let fds = Tolerance {
            absolute: 2.0,
            relative: 0.0,
        };
        assert!(fds.allows(2.0, 500.0) && !fds.allows(3.0, 500.0));
    }
}
