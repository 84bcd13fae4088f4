//! A minimal WebSocket client over a bare TCP stream, for the scenarios where tungstenite's
//! own costs would dominate the measurement:
//!
//! - the joiners of `join` read a step 2 of many MB through a 64 KiB buffer and hash it as it
//!   arrives (tungstenite collects every message in memory of its own; for 150 joiners of a
//!   20 MB doc that is 3 GB of fresh memory, whose first touch alone costs the generator
//!   several times the server's CPU time);
//! - the clients of `connect` complete the upgrade from a request prepared once per run
//!   (address resolved, key and expected `Sec-WebSocket-Accept` computed once), read through
//!   a 1 KiB buffer and send prepared frames, so a handshake costs the generator little more
//!   than its syscalls (tungstenite's client handshake builds an `http::Request`, a random
//!   key, two 4 KiB buffers and a 4 KiB read buffer per connection; the generator shares the
//!   2 cores with the server, so its CPU per connection bounded the handshake rate).
//!
//! Server frames are unmasked; client frames are masked, as RFC 6455 requires.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::{random_id, read_varuint, sync_payload, Res};

/// Read buffer of the `join` joiners: messages of any size pass through it in pieces.
pub const JOIN_BUFFER: usize = 64 * 1024;
/// Read buffer of the `connect` clients: the server's response headers must fit in it.
pub const CONNECT_BUFFER: usize = 1024;

/// A `ws://` room URL resolved once, with its upgrade request: every connection of a run
/// sends the same request (one key per run; the server derives its answer from whatever
/// key it gets, so a fresh one per connection would cost the generator, not the server).
pub struct Target {
    addr: SocketAddr,
    request: Vec<u8>,
    accept: String,
}

impl Target {
    pub async fn new(url: &str) -> Res<Target> {
        let rest = url.strip_prefix("ws://").ok_or("not a ws:// URL")?;
        let (host, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
        let with_port = if host.ends_with(']') || !host.contains(':') {
            format!("{host}:80")
        } else {
            host.to_string()
        };
        let addr = tokio::net::lookup_host(with_port.as_str())
            .await?
            .next()
            .ok_or_else(|| format!("{host} has no address"))?;
        let key = generate_key();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .into_bytes();
        Ok(Target {
            addr,
            request,
            accept: derive_accept_key(key.as_bytes()),
        })
    }
}

/// A client frame (masked with a random key) carrying `payload`.
pub fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = (random_id() as u32).to_be_bytes();
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// The value of header `name` in a response head (`name` in lower case).
fn header<'a>(head: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    head.split(|&b| b == b'\n').find_map(|line| {
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon]
            .trim_ascii()
            .eq_ignore_ascii_case(name)
            .then(|| line[colon + 1..].trim_ascii())
    })
}

/// A WebSocket client connection that never holds a whole message (see the module docs).
pub struct RawWs {
    tcp: TcpStream,
    buf: Box<[u8]>,
    /// The bytes read but not consumed yet are `buf[pos..end]`.
    pos: usize,
    end: usize,
}

/// A frame header from the server (server frames are unmasked).
struct FrameHeader {
    fin: bool,
    opcode: u8,
    len: u64,
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

impl RawWs {
    /// Connects to `target` and completes the client handshake, with a read buffer of
    /// `buffer` bytes (the response headers must fit); whatever the server sent after its
    /// response headers stays buffered. With `recv_buffer`, the socket's receive buffer is
    /// set to that many bytes before connecting (instead of the kernel's autotuning, which
    /// starts small: see `join` in main.rs).
    pub async fn open(target: &Target, buffer: usize, recv_buffer: Option<u32>) -> Res<RawWs> {
        let mut tcp = match recv_buffer {
            None => TcpStream::connect(target.addr).await?,
            Some(bytes) => {
                let socket = match target.addr {
                    SocketAddr::V4(_) => TcpSocket::new_v4()?,
                    SocketAddr::V6(_) => TcpSocket::new_v6()?,
                };
                socket.set_recv_buffer_size(bytes)?;
                socket.connect(target.addr).await?
            }
        };
        tcp.set_nodelay(true)?;
        tcp.write_all(&target.request).await?;
        let mut ws = RawWs {
            tcp,
            buf: vec![0; buffer].into_boxed_slice(),
            pos: 0,
            end: 0,
        };
        let head_len = loop {
            if let Some(i) = ws.buf[..ws.end].windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if ws.end == ws.buf.len() {
                return Err(format!("handshake response headers over {buffer} bytes").into());
            }
            ws.fill().await?;
        };
        let head = &ws.buf[..head_len];
        let status = head.split(|&b| b == b'\r').next().unwrap_or_default();
        if status.split(|&b| b == b' ').nth(1) != Some(b"101") {
            let status = String::from_utf8_lossy(status);
            return Err(format!("handshake refused: {status}").into());
        }
        if header(head, b"sec-websocket-accept") != Some(target.accept.as_bytes()) {
            return Err("handshake: wrong or missing Sec-WebSocket-Accept".into());
        }
        ws.pos = head_len;
        Ok(ws)
    }

    /// Reads more bytes after the buffered ones; the end of the stream is an error.
    pub async fn fill(&mut self) -> Res<()> {
        if self.pos == self.end {
            (self.pos, self.end) = (0, 0);
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.pos..self.end, 0);
            (self.pos, self.end) = (0, self.end - self.pos);
        }
        if self.end == self.buf.len() {
            return Err("read buffer full".into());
        }
        let n = self.tcp.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err("connection ended by the server".into());
        }
        self.end += n;
        Ok(())
    }

    /// Takes the next `N` bytes (a few: header fields).
    async fn take<const N: usize>(&mut self) -> Res<[u8; N]> {
        while self.end - self.pos < N {
            self.fill().await?;
        }
        let bytes = self.buf[self.pos..self.pos + N]
            .try_into()
            .expect("N bytes");
        self.pos += N;
        Ok(bytes)
    }

    async fn frame_header(&mut self) -> Res<FrameHeader> {
        let [b0, b1] = self.take::<2>().await?;
        if b0 & 0x70 != 0 {
            return Err("frame with reserved bits set (no extension was negotiated)".into());
        }
        if b1 & 0x80 != 0 {
            return Err("masked frame from the server".into());
        }
        let len = match b1 & 0x7f {
            126 => u64::from(u16::from_be_bytes(self.take::<2>().await?)),
            127 => u64::from_be_bytes(self.take::<8>().await?),
            len => u64::from(len),
        };
        Ok(FrameHeader {
            fin: b0 & 0x80 != 0,
            opcode: b0 & 0x0f,
            len,
        })
    }

    /// Passes a frame's payload of `len` bytes to `f` in pieces, as they arrive.
    async fn payload(&mut self, mut len: u64, mut f: impl FnMut(&[u8])) -> Res<()> {
        while len > 0 {
            if self.pos == self.end {
                self.fill().await?;
            }
            let n = (self.end - self.pos).min(usize::try_from(len).unwrap_or(usize::MAX));
            f(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            len -= n as u64;
        }
        Ok(())
    }

    /// A control frame's payload (at most 125 bytes).
    async fn control_payload(&mut self, len: u64) -> Res<Vec<u8>> {
        if len > 125 {
            return Err(format!("control frame of {len} bytes (at most 125)").into());
        }
        let mut payload = Vec::with_capacity(len as usize);
        self.payload(len, |piece| payload.extend_from_slice(piece))
            .await?;
        Ok(payload)
    }

    /// Sends one masked frame (client frames must be masked).
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> Res<()> {
        self.write(&masked_frame(opcode, payload)).await
    }

    /// Writes bytes as they are (frames made with [`masked_frame`]).
    pub async fn write(&mut self, bytes: &[u8]) -> Res<()> {
        self.tcp.write_all(bytes).await?;
        Ok(())
    }

    /// Reads the next binary message, passing its bytes to `f` as they arrive (across
    /// fragments). Text messages and pongs are skipped, pings answered; a close frame or the
    /// end of the stream is an error.
    pub async fn read_binary(&mut self, mut f: impl FnMut(&[u8])) -> Res<()> {
        // Inside a fragmented message: whether it is binary.
        let mut message: Option<bool> = None;
        loop {
            let header = self.frame_header().await?;
            match header.opcode {
                OP_CLOSE => {
                    let p = self.control_payload(header.len).await?;
                    let code = p.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    let reason = String::from_utf8_lossy(p.get(2..).unwrap_or_default());
                    return Err(format!("closed by server: code {code:?} {reason:?}").into());
                }
                OP_PING => {
                    let p = self.control_payload(header.len).await?;
                    self.send(OP_PONG, &p).await?;
                    continue;
                }
                OP_PONG => {
                    self.control_payload(header.len).await?;
                    continue;
                }
                OP_TEXT | OP_BINARY if message.is_none() => {
                    message = Some(header.opcode == OP_BINARY);
                }
                OP_CONTINUATION if message.is_some() => {}
                op => return Err(format!("unexpected frame (opcode {op})").into()),
            }
            let binary = message == Some(true);
            self.payload(header.len, |piece| {
                if binary {
                    f(piece)
                }
            })
            .await?;
            if header.fin {
                if binary {
                    return Ok(());
                }
                message = None;
            }
        }
    }

    /// Keeps reading (answering pings, discarding messages) until `stop`, then closes the
    /// connection. Returns false if the server ended it first.
    pub async fn hold(mut self, mut stop: watch::Receiver<bool>) -> bool {
        let kept = tokio::select! {
            _ = async { while self.read_binary(|_| {}).await.is_ok() {} } => false,
            _ = stop.changed() => true,
        };
        if kept {
            // Our close frame, then whatever comes (a frame may have been cut short above)
            // until the server closes the connection.
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                if self.send(OP_CLOSE, &[]).await.is_ok() {
                    while self.fill().await.is_ok() {
                        self.pos = self.end;
                    }
                }
            })
            .await;
        }
        kept
    }
}

/// Where a [`SyncStream`] is in its message.
enum StreamState {
    /// The first bytes, until the header (message type, sync sub-type, payload length) is
    /// complete.
    Head(Vec<u8>),
    /// Not a sync message.
    Other,
    /// A sync message: its sub-type and the payload length its header declares.
    Sync { sub: u64, declared: u64 },
}

/// Follows one binary message as its bytes arrive and gives, at its end, what
/// [`sync_payload`] gives for the whole message: its sync sub-type, and the length and
/// CRC-32 of its payload.
pub struct SyncStream {
    state: StreamState,
    len: u64,
    crc: crc32fast::Hasher,
}

impl SyncStream {
    /// The longest header: three varints of at most 10 bytes.
    const MAX_HEAD: usize = 30;

    pub fn new() -> SyncStream {
        SyncStream {
            state: StreamState::Head(Vec::with_capacity(Self::MAX_HEAD)),
            len: 0,
            crc: crc32fast::Hasher::new(),
        }
    }

    pub fn feed(&mut self, mut piece: &[u8]) {
        while let StreamState::Head(head) = &mut self.state {
            // A header longer than MAX_HEAD is malformed: `finish` says so.
            let Some((&byte, rest)) = piece.split_first().filter(|_| head.len() < Self::MAX_HEAD)
            else {
                return;
            };
            head.push(byte);
            piece = rest;
            let mut pos = 0;
            self.state = match read_varuint(head, &mut pos) {
                Some(0) => match (read_varuint(head, &mut pos), read_varuint(head, &mut pos)) {
                    (Some(sub), Some(declared)) => StreamState::Sync { sub, declared },
                    _ => continue,
                },
                Some(_) => StreamState::Other,
                None => continue,
            };
        }
        if let StreamState::Sync { .. } = self.state {
            self.len += piece.len() as u64;
            self.crc.update(piece);
        }
    }

    /// The sync sub-type, payload length and payload CRC-32; `None` if the message is not a
    /// sync message; an error if its header is malformed or its length prefix does not
    /// match the message exactly.
    pub fn finish(self) -> Res<Option<(u64, usize, u32)>> {
        match self.state {
            // The whole message is in `head`.
            StreamState::Head(head) => Ok(sync_payload(&head)?
                .map(|(sub, payload)| (sub, payload.len(), crc32fast::hash(payload)))),
            StreamState::Other => Ok(None),
            StreamState::Sync { sub, declared } if declared == self.len => {
                Ok(Some((sub, self.len as usize, self.crc.finalize())))
            }
            StreamState::Sync { declared, .. } => Err(format!(
                "sync frame says {declared} payload bytes but carries {}",
                self.len
            )
            .into()),
        }
    }
}

/// The frames an empty client sends in the sync handshake, masked once per run: its step 1
/// (an empty state vector) and its answer to the server's step 1 (an empty step 2).
pub struct EmptyClient {
    step1: Vec<u8>,
    step2: Vec<u8>,
}

impl EmptyClient {
    pub fn new() -> EmptyClient {
        EmptyClient {
            step1: masked_frame(OP_BINARY, &crate::empty_step1().into_data()),
            step2: masked_frame(OP_BINARY, &crate::empty_step2().into_data()),
        }
    }

    /// Sends step 1 on `ws`, answers the server's step 1, and returns once the server's
    /// step 1 and step 2 have both arrived (other messages are skipped); then, how long the
    /// server's step 2 payload was.
    pub async fn sync(&self, ws: &mut RawWs) -> Res<usize> {
        ws.write(&self.step1).await?;
        let (mut step1, mut step2) = (false, None);
        while !(step1 && step2.is_some()) {
            let mut message = SyncStream::new();
            ws.read_binary(|piece| message.feed(piece)).await?;
            match message.finish()? {
                Some((0, ..)) => {
                    step1 = true;
                    ws.write(&self.step2).await?;
                }
                Some((1, len, _)) => step2 = Some(len),
                _ => {}
            }
        }
        Ok(step2.unwrap_or_default())
    }
}
