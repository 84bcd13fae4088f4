//! Process-wide storage counters (commits, their latency, failures), read by the server's
//! `/metrics` route. Plain atomics: the storage layer knows nothing of HTTP.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the commit latency histogram's buckets.
pub const COMMIT_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Storage commits and failures since the process started.
#[derive(Debug)]
pub struct CommitStats {
    commits: AtomicU64,
    failures: AtomicU64,
    /// Total commit time, in microseconds.
    micros: AtomicU64,
    /// Commits per bucket (not cumulative); the last one counts those above every bound.
    buckets: [AtomicU64; COMMIT_BUCKETS.len() + 1],
}

/// A snapshot of [`CommitStats`].
#[derive(Debug, Clone, PartialEq)]
pub struct CommitSnapshot {
    /// Commits that succeeded.
    pub commits: u64,
    /// Commits that failed.
    pub failures: u64,
    /// Total time of the successful commits, in seconds.
    pub seconds: f64,
    /// Cumulative counts per bucket bound, as Prometheus wants them, ending with `+Inf`
    /// (`f64::MAX`).
    pub buckets: Vec<(f64, u64)>,
}

/// The process's storage counters.
pub static COMMITS: CommitStats = CommitStats {
    commits: AtomicU64::new(0),
    failures: AtomicU64::new(0),
    micros: AtomicU64::new(0),
    buckets: [const { AtomicU64::new(0) }; COMMIT_BUCKETS.len() + 1],
};

impl CommitStats {
    /// Records a successful commit that took `took`.
    pub fn committed(&self, took: Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        let seconds = took.as_secs_f64();
        let bucket = COMMIT_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(COMMIT_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// Records a failed commit.
    pub fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> CommitSnapshot {
        let mut cumulative = 0;
        let mut buckets: Vec<(f64, u64)> = COMMIT_BUCKETS
            .iter()
            .enumerate()
            .map(|(i, bound)| {
                cumulative += self.buckets[i].load(Ordering::Relaxed);
                (*bound, cumulative)
            })
            .collect();
        cumulative += self.buckets[COMMIT_BUCKETS.len()].load(Ordering::Relaxed);
        // The `+Inf` bucket (the encoder writes `f64::MAX` as `+Inf`).
        buckets.push((f64::MAX, cumulative));
        CommitSnapshot {
            commits: cumulative,
            failures: self.failures.load(Ordering::Relaxed),
            seconds: self.micros.load(Ordering::Relaxed) as f64 / 1e6,
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_the_sum_adds_up() {
        let stats = CommitStats {
            commits: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            micros: AtomicU64::new(0),
            buckets: [const { AtomicU64::new(0) }; COMMIT_BUCKETS.len() + 1],
        };
        stats.committed(Duration::from_micros(300));
        stats.committed(Duration::from_millis(3));
        stats.committed(Duration::from_secs(10));
        stats.failed();
        let s = stats.snapshot();
        assert_eq!((s.commits, s.failures), (3, 1));
        assert!((s.seconds - 10.0033).abs() < 1e-9);
        assert_eq!(s.buckets[0], (0.0005, 1));
        assert_eq!(s.buckets[3], (0.005, 2));
        assert_eq!(
            s.buckets[COMMIT_BUCKETS.len() - 1],
            (2.5, 2),
            "10 s is above every bound"
        );
        assert_eq!(s.buckets.last(), Some(&(f64::MAX, 3)));
    }
}
