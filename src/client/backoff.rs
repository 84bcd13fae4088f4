//! How long to wait before reconnecting.

use std::time::Duration;

/// The wait before the next attempt after `failures` failed attempts in a row (0 right after
/// a session that reached connected): `base × min(10, 1.1^failures)`.
pub(crate) fn backoff(base: Duration, failures: u32) -> Duration {
    let factor = 1.1f64.powi(failures.min(64) as i32).min(10.0);
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_a_tenth_per_failure_up_to_ten_times_the_base() {
        let base = Duration::from_millis(500);
        assert_eq!(backoff(base, 0), Duration::from_millis(500));
        assert_eq!(backoff(base, 1), Duration::from_millis(550));
        let two = backoff(base, 2).as_secs_f64();
        assert!((two - 0.605).abs() < 1e-9, "{two}");
        // 1.1^24 < 10 < 1.1^25
        assert!(backoff(base, 24) < Duration::from_secs(5));
        assert_eq!(backoff(base, 25), Duration::from_secs(5));
        assert_eq!(backoff(base, u32::MAX), Duration::from_secs(5));
        for n in 0..40 {
            assert!(backoff(base, n) <= backoff(base, n + 1));
        }
    }
}
