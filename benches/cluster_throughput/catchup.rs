//! Catch-up after a Redis restart: a writer on node A at a steady rate, a reader on node B
//! (default bus options: catch-up check every 1 s). Redis is killed (losing everything, as
//! `SHUTDOWN NOSAVE`) and started again, empty, a few seconds later. Measured: when B has
//! every update written during the outage, counted from Redis being back; the longest
//! time B's reader went without a new update; latency before, during and after.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as Ws;

use crate::common::{self, markers, Lat, Writer};
use crate::Args;

/// Milliseconds from `from` to `to`, negative when `to` is earlier.
fn ms_between(from: Instant, to: Instant) -> f64 {
    if to >= from {
        to.duration_since(from).as_secs_f64() * 1e3
    } else {
        -(from.duration_since(to).as_secs_f64() * 1e3)
    }
}

pub async fn run(args: &Args) {
    let rate: u64 = args.num("rate", 500);
    let outage = Duration::from_secs_f64(args.num("outage", 3.0));
    let before = Duration::from_secs(4);
    let after = Duration::from_secs(6);
    let total = (rate as f64 * (before + outage + after).as_secs_f64()) as usize;
    let Some((pg, mut redis)) = common::services() else {
        return;
    };
    let (a, a_addr) = common::pg_node(&pg, &redis, "a", None).await;
    let (b, b_addr) = common::pg_node(&pg, &redis, "b", None).await;
    let mut on_a = common::client(a_addr, "catchup").await;
    let mut on_b = common::client(b_addr, "catchup").await;

    let reader = tokio::spawn(async move {
        let mut arrived: Vec<Option<Instant>> = vec![None; total];
        let mut count = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while count < total {
            let frame = match tokio::time::timeout_at(deadline, on_b.next()).await {
                Ok(Some(Ok(Ws::Binary(b)))) => b,
                Ok(Some(Ok(_))) => continue,
                other => {
                    eprintln!("catchup: the reader stopped after {count} updates: {other:?}");
                    break;
                }
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
    });
    let writer = tokio::spawn(async move {
        let doc = Writer::new();
        let mut sent = Vec::with_capacity(total);
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        for i in 0..total {
            tick.tick().await;
            let frame = doc.update(i as u32);
            sent.push(Instant::now());
            on_a.send(Ws::Binary(frame.into())).await.unwrap();
        }
        (sent, on_a)
    });

    tokio::time::sleep(before).await;
    let killed = Instant::now();
    tokio::task::block_in_place(|| redis.kill());
    tokio::time::sleep(outage).await;
    tokio::task::block_in_place(|| redis.restart());
    let back = Instant::now();
    let (sent, _on_a) = writer.await.unwrap();
    let arrived = reader.await.unwrap();

    let received = arrived.iter().flatten().count();
    let latency = |from: Instant, to: Instant| {
        let ms: Vec<f64> = (0..total)
            .filter(|&i| sent[i] >= from && sent[i] < to)
            .filter_map(|i| arrived[i].map(|t| ms_between(sent[i], t)))
            .collect();
        Lat::of(ms).json()
    };
    let far = back + Duration::from_secs(3600);
    let during: Vec<usize> = (0..total)
        .filter(|&i| sent[i] >= killed && sent[i] < back)
        .collect();
    let last_of_outage = during.iter().filter_map(|&i| arrived[i]).max();
    // Delivery over Redis again: the first update sent after Redis is back that arrives
    // within 20 ms.
    let resumed = (0..total)
        .filter(|&i| sent[i] >= back)
        .find(|&i| {
            arrived[i].is_some_and(|t| t.duration_since(sent[i]) < Duration::from_millis(20))
        })
        .map(|i| ms_between(back, sent[i]));
    let mut times: Vec<Instant> = arrived.iter().flatten().copied().collect();
    times.sort();
    let gap = times
        .windows(2)
        .map(|w| (w[1].duration_since(w[0]), w[0]))
        .max_by_key(|(d, _)| *d);
    println!(
        "{{\"section\":\"catchup\",\"rate\":{rate},\"outage_s\":{:.1},\"updates\":{total},\"received\":{received},\"written_during_outage\":{},\"of_them_received\":{},\"all_of_outage_at_b_after_back_ms\":{},\"redis_delivery_resumed_after_back_ms\":{},\"max_gap_ms\":{},\"max_gap_starts_after_kill_ms\":{},\"latency_before\":{},\"latency_during\":{},\"latency_first_2s_after_back\":{},\"latency_later\":{}}}",
        outage.as_secs_f64(),
        during.len(),
        during.iter().filter(|&&i| arrived[i].is_some()).count(),
        last_of_outage.map_or("null".into(), |t| format!("{:.0}", ms_between(back, t))),
        resumed.map_or("null".into(), |ms| format!("{ms:.0}")),
        gap.map_or("null".into(), |(d, _)| format!("{:.0}", d.as_secs_f64() * 1e3)),
        gap.map_or("null".into(), |(_, at)| format!("{:.0}", ms_between(killed, at))),
        latency(sent[0], killed),
        latency(killed, back),
        latency(back, back + Duration::from_secs(2)),
        latency(back + Duration::from_secs(2), far),
    );
    a.destroy().await.unwrap();
    b.destroy().await.unwrap();
}
