//! Where a cross-node update's time goes. Two nodes; a writer on node 0 sends updates at
//! a fixed rate, each followed by SYNC_STATUS; a reader on node 1 records arrivals; a Redis
//! tap in this process reads the doc's stream as node 1's bus does. Per update:
//! - sent → echo: the commit in Postgres as the writer sees it (the echo waits for it);
//! - sent → tap: committed and published to Redis;
//! - tap → node 1's reader: the other node's bus read, apply and fan-out.
//!
//! Run with the default catch-up check (every 1 s) and with it out of the way (1 h).

use std::time::{Duration, Instant};

use epicenter_server::storage::COMMITS;
use futures_util::{SinkExt, StreamExt};
use redis::streams::StreamReadReply;
use tokio_tungstenite::tungstenite::Message as Ws;

use crate::common::{self, echoed, markers, status, Lat, Writer};
use crate::probe;
use crate::{ws, Args};

const ROOM: &str = "breakdown";

fn ms(from: Option<Instant>, to: Option<Instant>) -> Option<f64> {
    let (from, to) = (from?, to?);
    Some(to.saturating_duration_since(from).as_secs_f64() * 1e3)
}

/// Arrival time of each key in a stream of frames, until every key arrived or 30 s.
async fn arrivals(mut socket: ws::Socket, total: usize) -> Vec<Option<Instant>> {
    let mut arrived = vec![None; total];
    let mut count = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while count < total {
        let frame = match tokio::time::timeout_at(deadline, socket.next()).await {
            Ok(Some(Ok(Ws::Binary(b)))) => b,
            Ok(Some(Ok(_))) => continue,
            _ => break,
        };
        let now = Instant::now();
        for i in markers(&frame) {
            if let Some(slot @ None) = arrived.get_mut(i as usize) {
                *slot = Some(now);
                count += 1;
            }
        }
    }
    arrived
}

/// [`tap`] on a thread and runtime of its own, so busy clients do not delay it.
pub fn tap_thread(
    url: String,
    room: &'static str,
    total: usize,
) -> std::thread::JoinHandle<Vec<Option<Instant>>> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(tap(url, room, total))
    })
}

/// When each key showed up in the Redis stream of doc `room`, read with XREAD BLOCK.
async fn tap(url: String, room: &str, total: usize) -> Vec<Option<Instant>> {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("epicenter:{{{room}}}:u");
    let mut last = "0".to_string();
    let mut seen = vec![None; total];
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while count < total && Instant::now() < deadline {
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(500)
            .arg("STREAMS")
            .arg(&key)
            .arg(&last)
            .query_async(&mut c)
            .await
            .unwrap();
        let now = Instant::now();
        for stream in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in stream.ids {
                last = entry.id.clone();
                let Some(update) = entry.get::<Vec<u8>>("u") else {
                    continue;
                };
                for i in markers(&update) {
                    if let Some(slot @ None) = seen.get_mut(i as usize) {
                        *slot = Some(now);
                        count += 1;
                    }
                }
            }
        }
    }
    seen
}

async fn once(args: &Args, catch_up: Duration) {
    let rate: u64 = args.num("rate", 1000);
    let total = (rate * args.num::<u64>("seconds", 5)) as usize;
    let Some((pg, redis)) = common::services() else {
        return;
    };
    let (n0, addr0) = common::pg_node(&pg, &redis, "n0", Some(catch_up)).await;
    let (n1, addr1) = common::pg_node(&pg, &redis, "n1", Some(catch_up)).await;
    let writer = common::client(addr0, ROOM).await;
    let reader = tokio::spawn(arrivals(common::client(addr1, ROOM).await, total));
    let tapped = tap_thread(redis.url(), ROOM, total);
    let (mut sink, stream) = writer.split();
    let echoes = tokio::spawn(async move {
        let mut acked = vec![None; total];
        let mut stream = stream;
        let mut count = 0;
        while count < total {
            let next = tokio::time::timeout(Duration::from_secs(30), stream.next()).await;
            let Ok(Some(Ok(Ws::Binary(frame)))) = next else {
                break;
            };
            if let Some(seq) = echoed(&frame) {
                acked[seq as usize] = Some(Instant::now());
                count += 1;
            }
        }
        acked
    });
    // `--settle` ms between the reader's join and the first update (cluster_latency: 0).
    tokio::time::sleep(Duration::from_millis(args.num("settle", 0))).await;
    let log = probe::log_slow_statements(&pg).await;
    let pressure = common::cpu_pressure_us();
    let base = Instant::now();
    let (stop, slow_commits_at) = probe::slow_commit_times(base);
    let commits = COMMITS.snapshot();
    let doc = Writer::new();
    let mut sent = Vec::with_capacity(total);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    for i in 0..total {
        tick.tick().await;
        let update = doc.update(i as u32);
        sent.push(Some(Instant::now()));
        sink.feed(Ws::Binary(update.into())).await.unwrap();
        sink.send(Ws::Binary(status(i as u64).into()))
            .await
            .unwrap();
    }
    let (acked, tapped, received) = (
        echoes.await.unwrap(),
        tokio::task::block_in_place(|| tapped.join().unwrap()),
        reader.await.unwrap(),
    );
    let after = COMMITS.snapshot();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let slow_commits_at: Vec<String> = slow_commits_at
        .join()
        .unwrap()
        .iter()
        .map(|ms| format!("{ms:.0}"))
        .collect();
    let took = |from: &[Option<Instant>], to: &[Option<Instant>]| -> Vec<Option<f64>> {
        (0..total).map(|i| ms(from[i], to[i])).collect()
    };
    println!(
        "{{\"section\":\"breakdown\",\"catch_up_ms\":{},\"cpu_pressure_pct\":{:.1},\"slow_commits_ended_at_ms\":[{}],\"slow_sent_to_echo\":{},\"slow_tap_to_node1\":{},\"postgres_log\":{}}}",
        catch_up.as_millis(),
        (common::cpu_pressure_us() - pressure) as f64 / 1e4 / base.elapsed().as_secs_f64(),
        slow_commits_at.join(","),
        probe::slow_runs(base, &sent, &took(&sent, &acked), 10.0),
        probe::slow_runs(base, &tapped, &took(&tapped, &received), 10.0),
        probe::slow_statements(&log),
    );
    let stage = |from: &[Option<Instant>], to: &[Option<Instant>]| -> Vec<f64> {
        (0..total).filter_map(|i| ms(from[i], to[i])).collect()
    };
    let end_to_end = stage(&sent, &received);
    // Past the first second: once the other node's bus reads the doc's stream.
    let settled = |from: &[Option<Instant>], to: &[Option<Instant>]| -> Vec<f64> {
        (0..total)
            .filter(|&i| sent[i].is_some_and(|s| s >= base + Duration::from_secs(1)))
            .filter_map(|i| ms(from[i], to[i]))
            .collect()
    };
    // The slowest 1 % end to end, and how their time splits.
    let mut order: Vec<usize> = (0..total).filter(|&i| received[i].is_some()).collect();
    let e2e = |i: usize| ms(sent[i], received[i]).unwrap_or(0.0);
    order.sort_by(|&x, &y| e2e(y).total_cmp(&e2e(x)));
    let slow: Vec<usize> = order.iter().take(total / 100).copied().collect();
    let mean = |from: &[Option<Instant>], to: &[Option<Instant>]| {
        let v: Vec<f64> = slow.iter().filter_map(|&i| ms(from[i], to[i])).collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let commits_n = after.commits - commits.commits;
    let slow_commits: u64 = {
        // Commits over 10 ms (bucket bounds: 0.005, 0.01, ...).
        let over = |s: &epicenter_server::storage::CommitSnapshot| {
            let total = s.buckets.last().unwrap().1;
            let upto = s.buckets.iter().find(|(b, _)| *b >= 0.01).unwrap().1;
            total - upto
        };
        over(&after) - over(&commits)
    };
    println!(
        "{{\"section\":\"breakdown\",\"catch_up_ms\":{},\"rate\":{rate},\"updates\":{total},\"end_to_end\":{},\"sent_to_echo\":{},\"sent_to_tap\":{},\"tap_to_node1\":{},\"after_1s\":{{\"end_to_end\":{},\"tap_to_node1\":{}}},\"slowest_1pct_mean_ms\":{{\"end_to_end\":{:.2},\"sent_to_echo\":{:.2},\"sent_to_tap\":{:.2},\"tap_to_node1\":{:.2}}},\"commits\":{commits_n},\"commits_over_10ms\":{slow_commits},\"mean_commit_ms\":{:.3}}}",
        catch_up.as_millis(),
        Lat::of(end_to_end).json(),
        Lat::of(stage(&sent, &acked)).json(),
        Lat::of(stage(&sent, &tapped)).json(),
        Lat::of(stage(&tapped, &received)).json(),
        Lat::of(settled(&sent, &received)).json(),
        Lat::of(settled(&tapped, &received)).json(),
        mean(&sent, &received),
        mean(&sent, &acked),
        mean(&sent, &tapped),
        mean(&tapped, &received),
        (after.seconds - commits.seconds) * 1e3 / commits_n.max(1) as f64,
    );
    n0.destroy().await.unwrap();
    n1.destroy().await.unwrap();
}

pub async fn run(args: &Args) {
    once(args, Duration::from_secs(1)).await;
    once(args, Duration::from_secs(3600)).await;
}
