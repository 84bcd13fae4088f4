//! Raw WebSocket frames on a TCP stream that two parties share: a connection's task (which
//! reads and writes through tungstenite) and its send queue, which writes a frame straight
//! to the stream when the task has nothing in flight (see `outbox`). A quiet connection's
//! delivery is then one `write()` from the room's thread, with no task woken.
//!
//! The stream is an `Arc<TcpStream>`: reads and writes go through tokio's readiness and
//! `try_read`/`try_write`, which take `&TcpStream`.

use std::io::IoSlice;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::ReadBuf;
use tokio::net::TcpStream;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// A TCP stream shared by a connection's task and its send queue.
pub(crate) type Wire = Arc<TcpStream>;

/// `AsyncRead::poll_read` over a shared stream.
pub(crate) fn poll_read(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<std::io::Result<()>> {
    loop {
        ready!(tcp.poll_read_ready(cx))?;
        // `try_read_buf` clears the readiness when it would block, so the next poll
        // waits; it reads into the buffer's uninitialised part as it is (zeroing it first,
        // as `initialize_unfilled` does, cost a memset of the whole buffer per read).
        match tcp.try_read_buf(buf) {
            Ok(_) => return Poll::Ready(Ok(())),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// `AsyncWrite::poll_write_vectored` over a shared stream.
pub(crate) fn poll_write_vectored(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
) -> Poll<std::io::Result<usize>> {
    loop {
        ready!(tcp.poll_write_ready(cx))?;
        match tcp.try_write_vectored(bufs) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            done => return Poll::Ready(done),
        }
    }
}

/// Half-closes a shared stream (its write side).
pub(crate) fn shutdown_write(tcp: &TcpStream) -> std::io::Result<()> {
    socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write)
}

/// A binary frame written from its shared payload straight to the socket, maybe in
/// several writes.
pub(crate) struct RawFrame {
    header: [u8; 10],
    header_len: u8,
    payload: Bytes,
    /// Bytes written so far, the header's included.
    pub written: usize,
}

impl RawFrame {
    pub fn binary(payload: Bytes) -> RawFrame {
        let mut header = [0u8; 10];
        let mut cursor = std::io::Cursor::new(&mut header[..]);
        let format = FrameHeader {
            is_final: true,
            opcode: OpCode::Data(Data::Binary),
            ..FrameHeader::default()
        }
        .format(payload.len() as u64, &mut cursor);
        debug_assert!(format.is_ok(), "a server frame header fits in 10 bytes");
        let header_len = cursor.position() as u8;
        RawFrame {
            header,
            header_len,
            payload,
            written: 0,
        }
    }

    /// The payload, for a frame none of which was written.
    pub fn into_payload(self) -> Bytes {
        self.payload
    }

    pub fn is_done(&self) -> bool {
        self.written == self.header_len as usize + self.payload.len()
    }

    /// The unwritten parts of the header and the payload.
    pub fn rest(&self) -> [IoSlice<'_>; 2] {
        let header_len = self.header_len as usize;
        [
            IoSlice::new(&self.header[self.written.min(header_len)..header_len]),
            IoSlice::new(&self.payload[self.written.saturating_sub(header_len)..]),
        ]
    }

    /// Writes as much as the socket takes now, without waiting.
    pub fn try_write(&mut self, tcp: &TcpStream) -> std::io::Result<()> {
        while !self.is_done() {
            match tcp.try_write_vectored(&self.rest()) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_read_fills_uninitialised_memory_then_the_end_reads_nothing() {
        use std::mem::MaybeUninit;
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(b"hello").await.unwrap();
        let mut memory = [MaybeUninit::<u8>::uninit(); 64];
        let mut buf = ReadBuf::uninit(&mut memory);
        std::future::poll_fn(|cx| poll_read(&server, cx, &mut buf))
            .await
            .unwrap();
        assert_eq!(buf.filled(), b"hello");
        drop(client);
        let mut memory = [MaybeUninit::<u8>::uninit(); 64];
        let mut buf = ReadBuf::uninit(&mut memory);
        std::future::poll_fn(|cx| poll_read(&server, cx, &mut buf))
            .await
            .unwrap();
        assert!(buf.filled().is_empty());
    }

    #[test]
    fn a_frame_is_its_header_then_its_payload_whatever_was_written() {
        for len in [0usize, 1, 125, 126, 65_535, 65_536] {
            let payload = Bytes::from(vec![7u8; len]);
            let mut frame = RawFrame::binary(payload);
            let header_len = match len {
                0..=125 => 2,
                126..=65_535 => 4,
                _ => 10,
            };
            assert_eq!(frame.header_len as usize, header_len);
            assert_eq!(frame.header[0], 0x82, "final binary frame");
            let [h, p] = frame.rest();
            assert_eq!((h.len(), p.len()), (header_len, len));
            frame.written = 1;
            let [h, p] = frame.rest();
            assert_eq!((h.len(), p.len()), (header_len - 1, len));
            frame.written = header_len + len / 2;
            let [h, p] = frame.rest();
            assert_eq!((h.len(), p.len()), (0, len - len / 2));
            frame.written = header_len + len;
            assert!(frame.is_done());
        }
    }
}
