//! `floor`: the physical floor of fan-out on this machine, for the fan-out tables. No
//! WebSocket server and no doc: one sender thread stands in for the server and writes a
//! frame the size of a small sync update (`--frame-bytes`, default 30) to each of
//! `--clients` loopback TCP connections, `--rate` times a second for `--duration` seconds,
//! either one `write()` per delivery (`--per-write 1`) or `--per-write K` updates' frames in
//! one `write()` per connection every K updates. Receivers (their own threads) read and
//! count. Reports deliveries/s and the sender thread's CPU per delivery: on loopback the
//! kernel charges the receiving side's TCP path to the sender, so that is what a server's
//! CPU per delivery is compared with.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::{Args, Res};

/// CPU time this thread has used (`/proc/thread-self/schedstat`, nanoseconds).
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map(Duration::from_nanos)
        .unwrap_or_default()
}

pub fn floor(args: &Args) -> Res<bool> {
    let clients: usize = args.num("clients", 100)?;
    let rate: f64 = args.num("rate", 2000.0)?;
    let duration = args.secs("duration", 10.0)?;
    let per_write: usize = args.num("per-write", 1usize)?.max(1);
    let frame_bytes: usize = args.num("frame-bytes", 30usize)?.max(1);

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..clients {
        let client = TcpStream::connect(addr)?;
        client.set_nodelay(true)?;
        let (server_side, _) = listener.accept()?;
        server_side.set_nodelay(true)?;
        senders.push(server_side);
        let received = received.clone();
        readers.push(std::thread::spawn(move || {
            let mut client = client;
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = client.read(&mut buf) {
                if n == 0 {
                    break;
                }
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        }));
    }
    let total_updates = (rate * duration.as_secs_f64()) as u64;
    let chunk = vec![0x42u8; frame_bytes * per_write];
    let tick = Duration::from_secs_f64(per_write as f64 / rate);
    let sender = std::thread::spawn(move || -> std::io::Result<(Duration, Duration, u64)> {
        let cpu_before = thread_cpu();
        let started = Instant::now();
        let mut next = started;
        let mut sent_updates = 0u64;
        while sent_updates < total_updates {
            next += tick;
            for socket in senders.iter_mut() {
                socket.write_all(&chunk)?;
            }
            sent_updates += per_write as u64;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let elapsed = started.elapsed();
        let cpu = thread_cpu() - cpu_before;
        drop(senders);
        Ok((elapsed, cpu, sent_updates))
    });
    let (elapsed, cpu, updates) = sender.join().map_err(|_| "the sender thread panicked")??;
    for reader in readers {
        let _ = reader.join();
    }
    let deliveries = updates * clients as u64;
    let expected_bytes = deliveries * frame_bytes as u64;
    let got = received.load(Ordering::Relaxed);
    let per_delivery_us = cpu.as_secs_f64() * 1e6 / deliveries.max(1) as f64;
    let summary = json!({
        "scenario": "floor",
        "clients": clients,
        "rate": rate,
        "per_write": per_write,
        "frame_bytes": frame_bytes,
        "deliveries": deliveries,
        "deliveries_per_s": deliveries as f64 / elapsed.as_secs_f64(),
        "sender_cpu_s": cpu.as_secs_f64(),
        "sender_cpu_us_per_delivery": per_delivery_us,
        "bytes_ok": got == expected_bytes,
    });
    println!("{summary}");
    println!(
        "floor: {clients} connections, {rate} updates/s, {per_write} per write: {:.0} deliveries/s, \
         {per_delivery_us:.2} µs of sender CPU per delivery{}",
        deliveries as f64 / elapsed.as_secs_f64(),
        if got == expected_bytes { "" } else { " (BYTES MISSING)" }
    );
    Ok(got == expected_bytes)
}
