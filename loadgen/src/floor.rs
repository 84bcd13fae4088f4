//! `floor`: the physical floor of fan-out on this machine, for the fan-out tables. No
//! WebSocket server and no doc: one sender thread stands in for the server and writes a
//! frame the size of a small sync update (`--frame-bytes`, default 30) to each of
//! `--clients` loopback TCP connections, `--rate` times a second for `--duration` seconds,
//! either one `write()` per delivery (`--per-write 1`) or `--per-write K` updates' frames in
//! one `write()` per connection every K updates. Receivers (their own threads) read and
//! count. Reports deliveries/s and the sender thread's CPU per delivery: on loopback the
//! kernel charges the receiving side's TCP path to the sender, so that is what a server's
//! CPU per delivery is compared with.
//!
//! The receivers read on one thread (`--readers one`, the default), as the `fanout`
//! generator's do with `--threads 1`, or on a thread each (`--readers threads`; then every
//! write also wakes a thread, which loopback charges to the sender too). Each write carries
//! the time its tick began (the first 8 bytes of each frame), so the latency from a tick to
//! each receiver's read is the floor of a fan-out's latency with this generator: no server
//! work at all, only the writes and the reads.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::{latency_ms, Args, Res};

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
    let frame_bytes: usize = args.num("frame-bytes", 30usize)?.max(STAMP);
    let one_reader = match args.flags.get("readers").map(String::as_str) {
        None | Some("one") => true,
        Some("threads") => false,
        Some(other) => return Err(format!("--readers {other}: one or threads").into()),
    };

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let base = Instant::now();
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..clients {
        let client = TcpStream::connect(addr)?;
        client.set_nodelay(true)?;
        let (server_side, _) = listener.accept()?;
        server_side.set_nodelay(true)?;
        senders.push(server_side);
        receivers.push(client);
    }
    let readers: Vec<std::thread::JoinHandle<Res<Received>>> = if one_reader {
        vec![std::thread::spawn(move || {
            read_on_one_thread(receivers, frame_bytes, base)
        })]
    } else {
        receivers
            .into_iter()
            .map(|client| std::thread::spawn(move || read_blocking(client, frame_bytes, base)))
            .collect()
    };

    let total_updates = (rate * duration.as_secs_f64()) as u64;
    let mut chunk = vec![0x42u8; frame_bytes * per_write];
    let tick = Duration::from_secs_f64(per_write as f64 / rate);
    let sender = std::thread::spawn(move || -> std::io::Result<(Duration, Duration, u64)> {
        let cpu_before = thread_cpu();
        let started = Instant::now();
        let mut next = started;
        let mut sent_updates = 0u64;
        while sent_updates < total_updates {
            next += tick;
            let now = (base.elapsed().as_micros() as u64).to_le_bytes();
            for frame in chunk.chunks_mut(frame_bytes) {
                frame[..STAMP].copy_from_slice(&now);
            }
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
    let mut got = Received::default();
    for reader in readers {
        let r = reader.join().map_err(|_| "a reader thread panicked")??;
        got.bytes += r.bytes;
        got.latencies_us.extend(r.latencies_us);
    }
    let deliveries = updates * clients as u64;
    let expected_bytes = deliveries * frame_bytes as u64;
    let bytes_ok = got.bytes == expected_bytes;
    let per_delivery_us = cpu.as_secs_f64() * 1e6 / deliveries.max(1) as f64;
    let latency = latency_ms(&mut got.latencies_us);
    let summary = json!({
        "scenario": "floor",
        "clients": clients,
        "rate": rate,
        "per_write": per_write,
        "frame_bytes": frame_bytes,
        "readers": if one_reader { "one" } else { "threads" },
        "deliveries": deliveries,
        "deliveries_per_s": deliveries as f64 / elapsed.as_secs_f64(),
        "sender_cpu_s": cpu.as_secs_f64(),
        "sender_cpu_us_per_delivery": per_delivery_us,
        "latency_ms": latency,
        "bytes_ok": bytes_ok,
    });
    println!("{summary}");
    println!(
        "floor: {clients} connections, {rate} updates/s, {per_write} per write: {:.0} deliveries/s, \
         {per_delivery_us:.2} µs of sender CPU per delivery, latency p50 {} p99 {}{}",
        deliveries as f64 / elapsed.as_secs_f64(),
        crate::fmt_ms(&latency["p50"]),
        crate::fmt_ms(&latency["p99"]),
        if bytes_ok { "" } else { " (BYTES MISSING)" }
    );
    Ok(bytes_ok)
}

/// Bytes at the start of each frame holding the time its tick began (µs since `base`).
const STAMP: usize = 8;

/// What receivers read: bytes, and the latency of each frame (µs from its tick).
#[derive(Default)]
struct Received {
    bytes: u64,
    latencies_us: Vec<u64>,
}

impl Received {
    /// Takes `data` just read; `partial` holds the start of a frame cut by the last read.
    fn take(&mut self, data: &[u8], partial: &mut Vec<u8>, frame_bytes: usize, base: Instant) {
        let now = base.elapsed().as_micros() as u64;
        self.bytes += data.len() as u64;
        partial.extend_from_slice(data);
        let whole = partial.len() / frame_bytes * frame_bytes;
        for frame in partial[..whole].chunks(frame_bytes) {
            let mut stamp = [0u8; STAMP];
            stamp.copy_from_slice(&frame[..STAMP]);
            self.latencies_us
                .push(now.saturating_sub(u64::from_le_bytes(stamp)));
        }
        partial.drain(..whole);
    }
}

/// A receiver on its own thread, reading until the sender closes.
fn read_blocking(mut client: TcpStream, frame_bytes: usize, base: Instant) -> Res<Received> {
    let mut got = Received::default();
    let (mut buf, mut partial) = (vec![0u8; 64 * 1024], Vec::new());
    loop {
        let n = client.read(&mut buf)?;
        if n == 0 {
            return Ok(got);
        }
        got.take(&buf[..n], &mut partial, frame_bytes, base);
    }
}

/// All receivers on this one thread (a current-thread runtime), until the sender closes.
fn read_on_one_thread(clients: Vec<TcpStream>, frame_bytes: usize, base: Instant) -> Res<Received> {
    use tokio::io::AsyncReadExt;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(async move {
        let mut tasks = Vec::with_capacity(clients.len());
        for client in clients {
            client.set_nonblocking(true)?;
            let mut client = tokio::net::TcpStream::from_std(client)?;
            tasks.push(tokio::spawn(async move {
                let mut got = Received::default();
                let (mut buf, mut partial) = (vec![0u8; 64 * 1024], Vec::new());
                loop {
                    let n = client.read(&mut buf).await?;
                    if n == 0 {
                        return Ok::<_, std::io::Error>(got);
                    }
                    got.take(&buf[..n], &mut partial, frame_bytes, base);
                }
            }));
        }
        let mut all = Received::default();
        for task in tasks {
            let got = task.await??;
            all.bytes += got.bytes;
            all.latencies_us.extend(got.latencies_us);
        }
        Ok(all)
    })
}
