//! The monotonic millisecond clock behind last-write-wins timestamps.
//!
//! `next()` is `max(now_ms, last + 1)`, so two writes from one process never share a
//! timestamp even within a millisecond, and `observe(ts)` moves `last` up to timestamps seen
//! in remote entries, so a local write always beats what this process has already seen, even
//! when a peer's clock runs ahead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Largest integer a float64 holds exactly; timestamps beyond it are ignored.
const MAX_TS: u64 = (1 << 53) - 1;

/// A monotonic millisecond clock shared by all handles of one workspace.
#[derive(Debug, Default)]
pub struct Clock {
    last: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Clock {
    /// A clock that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next timestamp: `max(now_ms, last + 1)`.
    pub fn next(&self) -> f64 {
        self.next_at(now_ms())
    }

    pub(crate) fn next_at(&self, now: u64) -> f64 {
        self.run_at(now, 1).next().unwrap_or(MAX_TS as f64)
    }

    /// The next `n` timestamps at once, as `n` calls of [`Clock::next`] within one
    /// millisecond give them (`max(now_ms, last + 1)`, then one more each), reading the
    /// wall clock once: a batch takes one per entry.
    pub(crate) fn run(&self, n: usize) -> impl Iterator<Item = f64> {
        self.run_at(now_ms(), n)
    }

    pub(crate) fn run_at(&self, now: u64, n: usize) -> impl Iterator<Item = f64> {
        let mut last = self.last.load(Ordering::Relaxed);
        let first = if n == 0 {
            0 // nothing taken: the clock stays where it is
        } else {
            loop {
                let first = now.max(last + 1).min(MAX_TS);
                let end = first.saturating_add(n.saturating_sub(1) as u64).min(MAX_TS);
                match self.last.compare_exchange_weak(
                    last,
                    end,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break first,
                    Err(actual) => last = actual,
                }
            }
        };
        (0..n as u64).map(move |i| first.saturating_add(i).min(MAX_TS) as f64)
    }

    /// Adopts a timestamp seen in a remote entry, so later local writes beat it.
    pub fn observe(&self, ts: f64) {
        if ts.is_finite() && ts > 0.0 {
            let ts = (ts.ceil() as u64).min(MAX_TS);
            self.last.fetch_max(ts, Ordering::AcqRel);
        }
    }

    /// The last timestamp handed out or observed.
    pub fn last(&self) -> f64 {
        self.last.load(Ordering::Acquire) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictly_increasing_within_one_millisecond() {
        let c = Clock::new();
        let a = c.next_at(1000);
        let b = c.next_at(1000);
        let d = c.next_at(999);
        assert_eq!((a, b, d), (1000.0, 1001.0, 1002.0));
    }

    #[test]
    fn follows_wall_clock_when_it_is_ahead() {
        let c = Clock::new();
        c.next_at(1000);
        assert_eq!(c.next_at(5000), 5000.0);
    }

    #[test]
    fn adopts_remote_timestamps() {
        let c = Clock::new();
        c.next_at(1000);
        c.observe(9000.0);
        assert_eq!(c.next_at(1001), 9001.0);
        c.observe(10.0); // older: ignored
        c.observe(f64::NAN);
        c.observe(-5.0);
        assert_eq!(c.next_at(1001), 9002.0);
    }

    #[test]
    fn a_run_is_what_single_calls_give() {
        let (one, many) = (Clock::new(), Clock::new());
        one.next_at(1000);
        many.next_at(1000);
        let singles: Vec<f64> = (0..5).map(|_| one.next_at(1000)).collect();
        let run: Vec<f64> = many.run_at(1000, 5).collect();
        assert_eq!(run, singles);
        assert_eq!(many.last(), one.last());
        // The wall clock ahead: the run starts there.
        assert_eq!(
            many.run_at(9000, 2).collect::<Vec<_>>(),
            vec![9000.0, 9001.0]
        );
        assert_eq!(many.next_at(9000), 9002.0);
        // At the largest exact integer, timestamps stay there.
        many.observe(MAX_TS as f64 - 1.0);
        let top: Vec<f64> = many.run_at(0, 3).collect();
        assert_eq!(top, vec![MAX_TS as f64; 3]);
        assert_eq!(many.run_at(0, 0).count(), 0);
        assert_eq!(many.last(), MAX_TS as f64);
    }

    #[test]
    fn real_clock_is_monotonic() {
        let c = Clock::new();
        let mut prev = 0.0;
        for _ in 0..1000 {
            let t = c.next();
            assert!(t > prev);
            prev = t;
        }
    }
}
