//! Several nodes under load: nodes in this process over a PostgreSQL and a Redis server of
//! their own (started here, as the cluster tests do). Results in BENCHMARKS.md.
//!
//! ```sh
//! cargo bench --features postgres,redis --bench cluster_throughput -- [section] [--flag value]...
//! ```
//!
//! Sections (default: all, one after the other; each takes under a minute):
//! - `roundtrip`: an update then SYNC_STATUS, waiting for the echo, one at a time
//!   (`--count`, default 2,000): Postgres, then SQLite and memory storage for comparison.
//! - `writers`: 64 sync clients (`--writers`) each keep `--window` (8) batches of `--batch`
//!   (1) updates in flight, each batch followed by SYNC_STATUS; an update counts once its
//!   batch's echo arrives. One doc and 64 docs, on one node and spread over two; SQLite for
//!   comparison. `--seconds` (6) measured after 2 s of warm-up; `--pool` (16) Postgres
//!   connections per node; `--only <text>` runs the cases whose name holds it.
//! - `coldjoin`: a ~`--mb` (20) MB doc written through node A; an empty client joins it on
//!   node B, which never loaded it.
//! - `catchup`: a writer on node A at `--rate` (500/s), a reader on node B; Redis is killed
//!   after 4 s and started again, empty, `--outage` (3) s later.
//! - `observers`: `--clients` (1,500) sync clients over 3 nodes observe one doc that one
//!   writer updates at `--rate` (50/s) for `--seconds` (10). Each node runs on a runtime
//!   of its own (`--own-runtimes 0`: all on one, as the other sections).
//! - `breakdown`: where a cross-node update's time goes at `--rate` (1,000/s) for
//!   `--seconds` (5), from a Redis tap beside node B; with the default 1 s catch-up check
//!   and with it out of the way. `--settle` ms between the reader's join and the first
//!   update (default 0, as in cluster_latency).

#[path = "../../tests/support/services.rs"]
mod services;
#[path = "../../tests/support/ws.rs"]
mod ws;

mod breakdown;
mod catchup;
mod coldjoin;
mod common;
mod observers;
mod probe;
mod rest;
mod roundtrip;
mod writers;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;

/// The section to run and its `--flag value` pairs.
pub struct Args {
    section: String,
    flags: HashMap<String, String>,
}

impl Args {
    fn parse() -> Args {
        let mut section = "all".to_string();
        let mut flags = HashMap::new();
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            if arg == "--bench" {
                continue;
            }
            match arg.strip_prefix("--") {
                Some(flag) => {
                    let value = args
                        .next()
                        .unwrap_or_else(|| panic!("--{flag} needs a value"));
                    flags.insert(flag.to_string(), value);
                }
                None => section = arg,
            }
        }
        Args { section, flags }
    }

    /// The value of `--name`, or `default`.
    pub fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.flags.get(name) {
            Some(v) => v
                .parse()
                .unwrap_or_else(|_| panic!("--{name}: not a number: {v}")),
            None => default,
        }
    }
}

fn main() {
    let args = Args::parse();
    // One worker per core, as `#[tokio::main]` gives: servers and clients share them.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let sections: Vec<&str> = match args.section.as_str() {
        "all" => vec![
            "roundtrip",
            "writers",
            "coldjoin",
            "catchup",
            "breakdown",
            "observers",
            "rest",
        ],
        one => vec![one],
    };
    common::conditions();
    for section in sections {
        let started = std::time::Instant::now();
        match section {
            "roundtrip" => runtime.block_on(roundtrip::run(&args)),
            "writers" => runtime.block_on(writers::run(&args)),
            "coldjoin" => runtime.block_on(coldjoin::run(&args)),
            "catchup" => runtime.block_on(catchup::run(&args)),
            "observers" => runtime.block_on(observers::run(&args)),
            "breakdown" => runtime.block_on(breakdown::run(&args)),
            "rest" => runtime.block_on(rest::run(&args)),
            other => panic!(
                "unknown section {other}: roundtrip, writers, coldjoin, catchup, observers, breakdown, rest or all"
            ),
        }
        eprintln!("{section}: {:.1} s", started.elapsed().as_secs_f64());
    }
}
