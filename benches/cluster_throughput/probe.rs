//! Evidence for the breakdown: Postgres's own log of slow statements, when slow commits
//! ended (from the process's commit counters), and runs of slow updates in time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use epicenter_server::storage::COMMITS;

use crate::services::Postgres;

/// Turns on Postgres's logging of statements over 5 ms (and of autovacuum and
/// checkpoints); returns the log file's path and its length now.
pub async fn log_slow_statements(pg: &Postgres) -> (std::path::PathBuf, u64) {
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    for setting in [
        "log_min_duration_statement = 5",
        "log_autovacuum_min_duration = 0",
        "log_checkpoints = on",
    ] {
        client
            .batch_execute(&format!("ALTER SYSTEM SET {setting}"))
            .await
            .unwrap();
    }
    client
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    let data: String = client
        .query_one("SHOW data_directory", &[])
        .await
        .unwrap()
        .get(0);
    // The services helper logs to `log` beside the data directory.
    let log = std::path::Path::new(&data).parent().unwrap().join("log");
    let len = std::fs::metadata(&log).map_or(0, |m| m.len());
    (log, len)
}

/// What Postgres logged after `from`: slow statements by kind (count, max ms), and
/// autovacuum or checkpoint lines.
pub fn slow_statements((log, from): &(std::path::PathBuf, u64)) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[(*from as usize).min(text.len())..]).to_string();
    let mut kinds: Vec<(String, usize, f64)> = Vec::new();
    let mut other = 0;
    for line in text.lines() {
        if let Some(rest) = line.split("duration: ").nth(1) {
            let ms: f64 = rest.split(' ').next().unwrap_or("0").parse().unwrap_or(0.0);
            let what = rest.split_once(": ").map_or("?", |(_, s)| s);
            let kind: String = what
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            match kinds.iter_mut().find(|(k, _, _)| *k == kind) {
                Some(k) => {
                    k.1 += 1;
                    k.2 = k.2.max(ms);
                }
                None => kinds.push((kind, 1, ms)),
            }
        } else if line.contains("automatic") || line.contains("checkpoint") {
            other += 1;
        }
    }
    let parts: Vec<String> = kinds
        .iter()
        .map(|(k, n, max)| {
            format!(
                "\"{}\":{{\"count\":{n},\"max_ms\":{max:.1}}}",
                k.replace('"', "")
            )
        })
        .collect();
    format!(
        "{{\"slow_statements\":{{{}}},\"autovacuum_or_checkpoint_lines\":{other}}}",
        parts.join(",")
    )
}

/// Watches the process's commit counters every millisecond; records when a commit over
/// 10 ms was counted (ms after `base`).
pub fn slow_commit_times(base: Instant) -> (Arc<AtomicBool>, std::thread::JoinHandle<Vec<f64>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let handle = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let over = || {
                let s = COMMITS.snapshot();
                let total = s.buckets.last().unwrap().1;
                total - s.buckets.iter().find(|(b, _)| *b >= 0.01).unwrap().1
            };
            let mut last = over();
            let times = Mutex::new(Vec::new());
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
                let now = over();
                for _ in last..now {
                    times
                        .lock()
                        .unwrap()
                        .push(base.elapsed().as_secs_f64() * 1e3);
                }
                last = now;
            }
            times.into_inner().unwrap()
        })
    };
    (stop, handle)
}

/// Runs of consecutive updates slower than `threshold_ms` in one stage: (ms after `base`
/// the run's first update was sent, updates in it, slowest), the longest runs first.
pub fn slow_runs(
    base: Instant,
    sent: &[Option<Instant>],
    took: &[Option<f64>],
    threshold_ms: f64,
) -> String {
    let mut runs: Vec<(f64, usize, f64)> = Vec::new();
    let mut last_slow: Option<usize> = None;
    for (i, t) in took.iter().enumerate() {
        let Some(t) = t.filter(|t| *t > threshold_ms) else {
            continue;
        };
        match (last_slow, runs.last_mut()) {
            (Some(j), Some(run)) if i - j <= 5 => {
                run.1 += 1;
                run.2 = run.2.max(t);
            }
            _ => {
                let at = sent[i].map_or(0.0, |s| s.duration_since(base).as_secs_f64() * 1e3);
                runs.push((at, 1, t));
            }
        }
        last_slow = Some(i);
    }
    runs.sort_by_key(|r| std::cmp::Reverse(r.1));
    let parts: Vec<String> = runs
        .iter()
        .take(8)
        .map(|(at, n, max)| format!("[{at:.0},{n},{max:.1}]"))
        .collect();
    format!(
        "{{\"runs\":{},\"longest\":[{}]}}",
        runs.len(),
        parts.join(",")
    )
}
