//! Does a bad action input stall the server? (Results in BENCHMARKS.md.)
//!
//! `cargo bench --bench action_input` (flags after `--`: `--mb M` body size, default 1;
//! `--calls N` calls of each kind, default 10)
//!
//! The server runs on a runtime of one async worker, with a mutation whose input is a list
//! of numbers. A client on its own thread posts N bodies of ~M MiB whose every item is
//! wrong (`[{},{},...]`, a 422 with a problem per item), then N of the same size that are
//! all right. A task on the server's worker wakes every millisecond and records how late it
//! ran: the longest delay is how long one request held the worker, which every other
//! request and sync connection on it waits for too.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use epicenter_server::server::actions::{ActionContext, Actions};
use epicenter_server::server::{create_server, ApiError, ServerOptions};
use epicenter_server::workspace::{id, WorkspaceDefinition};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

async fn sum(_: ActionContext, input: Vec<u32>) -> Result<u64, ApiError> {
    Ok(input.iter().map(|&n| u64::from(n)).sum())
}

fn flag(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let (mb, calls) = (flag("--mb", 1), flag("--calls", 10));
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (server, addr) = server_rt.block_on(async {
        let definition = WorkspaceDefinition::builder("blog")
            .table("posts", [("id", id())])
            .build()
            .unwrap();
        let client = definition.in_memory().create().await.unwrap();
        let options = ServerOptions::default().port(0).body_limit((mb + 1) << 20);
        let mut server = create_server([client], options).unwrap();
        server
            .actions("blog", Actions::new().mutation("sum", "Adds numbers.", sum))
            .unwrap();
        let addr = server.start().await.unwrap();
        (server, addr)
    });
    // The worker's lateness: each tick, how much later than asked it woke.
    let late: Arc<Mutex<Duration>> = Arc::default();
    let ticker = {
        let late = late.clone();
        server_rt.spawn(async move {
            loop {
                let asked = Instant::now() + Duration::from_millis(1);
                tokio::time::sleep_until(asked.into()).await;
                let mut max = late.lock().unwrap();
                *max = (*max).max(Instant::now().saturating_duration_since(asked));
            }
        })
    };
    let items = (mb << 20) / 3;
    let bad = format!("[{}{{}}]", "{},".repeat(items - 1));
    let good = format!("[{}1]", "1,".repeat(items - 1));
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/workspaces/blog/actions/sum");
    println!(
        "{calls} calls of each, {} bytes each, one async worker",
        bad.len()
    );
    for (name, body, expected) in [("every item wrong", &bad, 422), ("all right", &good, 200)] {
        // Per call: how long it took to answer, and the longest the worker was held.
        let mut answers = Vec::new();
        let mut held = Vec::new();
        for _ in 0..calls {
            *late.lock().unwrap() = Duration::ZERO;
            let started = Instant::now();
            let status = client_rt.block_on(async {
                let response = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                response.bytes().await.unwrap();
                status
            });
            assert_eq!(status, expected);
            answers.push(started.elapsed());
            held.push(*late.lock().unwrap());
        }
        let ms = |mut v: Vec<Duration>| {
            v.sort();
            let at = |i: usize| v[i].as_secs_f64() * 1e3;
            format!(
                "median {:>6.1} ms, max {:>6.1} ms",
                at(v.len() / 2),
                at(v.len() - 1)
            )
        };
        println!(
            "{name:>16}: answered in {}; worker held {}",
            ms(answers),
            ms(held)
        );
    }
    ticker.abort();
    server_rt.block_on(server.destroy()).unwrap();
}
