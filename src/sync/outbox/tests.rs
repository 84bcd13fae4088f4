//! The send queue's unit tests: wake-ups, the limit, and frames written by pushes over
//! a socket with small buffers.

use super::*;
use std::task::Waker;

fn frame() -> Out {
    Out::Frame(Bytes::from_static(b"x"))
}

struct Count(std::sync::atomic::AtomicUsize);

impl std::task::Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn pushes_wake_the_task_only_while_it_asks_to_be_woken() {
    let count = Arc::new(Count(AtomicUsize::new(0)));
    let waker = Waker::from(count.clone());
    let cx = Context::from_waker(&waker);
    let out = Outbox::new(8, Arc::default(), None);
    assert!(out.poll_take(Some(&cx), None).is_none());
    out.push(frame());
    assert_eq!(count.0.load(Ordering::Relaxed), 1);
    // Holding: pushes queue silently, and are all there when the task takes them.
    assert!(out.poll_take(Some(&cx), None).is_none());
    assert!(out.poll_take(None, None).is_none());
    out.push(frame());
    out.push(frame());
    assert_eq!(count.0.load(Ordering::Relaxed), 1);
    let mut taken = VecDeque::new();
    assert!(out.poll_take(Some(&cx), Some(&mut taken)).is_none());
    assert_eq!(taken.len(), 3);
    // A close still shows when the task looks, woken or not.
    assert!(out.poll_take(None, None).is_none());
    out.close(close::GOING_AWAY, "bye");
    assert_eq!(count.0.load(Ordering::Relaxed), 1);
    assert_eq!(
        out.poll_take(None, None).map(|(code, _)| code),
        Some(close::GOING_AWAY)
    );
}

/// A loopback connection whose server side has small buffers; its other end.
async fn small_socket() -> (Wire, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    server.set_nodelay(true).unwrap();
    client.set_nodelay(true).unwrap();
    socket2::SockRef::from(&server)
        .set_send_buffer_size(4096)
        .unwrap();
    socket2::SockRef::from(&client)
        .set_recv_buffer_size(4096)
        .unwrap();
    (Arc::new(server), client)
}

#[tokio::test]
async fn an_idle_connections_frames_are_written_by_the_push_and_a_split_one_goes_to_the_task_first()
{
    use tokio::io::AsyncReadExt;
    let (wire, mut client) = small_socket().await;
    let out = Outbox::new(8, Arc::default(), Some(wire.clone()));
    let cx = Context::from_waker(Waker::noop());
    let mut taken = VecDeque::new();
    // Not idle until the task says so: queued.
    out.push(Out::Frame(Bytes::from_static(b"queued")));
    assert!(out.poll_take(Some(&cx), Some(&mut taken)).is_none());
    assert!(matches!(taken.pop_front(), Some(Out::Frame(f)) if f == "queued"));
    out.written();
    // Idle: a small frame goes straight to the socket.
    out.set_idle();
    out.push(Out::Frame(Bytes::from_static(b"direct")));
    let mut got = [0u8; 8];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"\x82\x06direct");
    assert_eq!(out.stats().messages_out.load(Ordering::Relaxed), 1);
    // A frame bigger than the buffers, pushed after a quiet moment (frames less than
    // `BUSY_GAP` apart go to the task): the socket takes part; the rest is the
    // task's, ahead of what is pushed next.
    tokio::time::sleep(BUSY_GAP * 2).await;
    let big = Bytes::from(vec![9u8; 1 << 16]);
    out.push(Out::Frame(big.clone()));
    out.push(Out::Frame(Bytes::from_static(b"after")));
    assert!(out.poll_take(Some(&cx), Some(&mut taken)).is_none());
    let Some(Out::Rest(mut rest)) = taken.pop_front() else {
        panic!("the rest of the big frame comes first");
    };
    assert!(rest.written > 0 && !rest.is_done());
    assert!(matches!(taken.pop_front(), Some(Out::Frame(f)) if f == "after"));
    // The task writes the rest while the peer reads: one whole frame.
    let reading = tokio::spawn(async move {
        let mut frame = vec![0u8; 10 + (1 << 16)];
        client.read_exact(&mut frame).await.unwrap();
        frame
    });
    while !rest.is_done() {
        match rest.try_write(&wire) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => wire.writable().await.unwrap(),
            Err(e) => panic!("{e}"),
        }
    }
    let frame = reading.await.unwrap();
    assert_eq!(&frame[..2], &[0x82, 127]);
    assert_eq!(
        u64::from_be_bytes(frame[2..10].try_into().unwrap()),
        1 << 16
    );
    assert!(frame[10..] == big[..]);
}

#[test]
fn items_taken_and_not_written_count_against_the_limit() {
    let out = Outbox::new(3, Arc::default(), None);
    let cx = Context::from_waker(Waker::noop());
    let mut taken = VecDeque::new();
    out.push(frame());
    out.push(frame());
    assert!(out.poll_take(Some(&cx), Some(&mut taken)).is_none());
    assert_eq!(taken.len(), 2);
    // Two taken, one queued: the limit is reached.
    out.push(frame());
    out.push(frame());
    assert_eq!(
        out.poll_take(Some(&cx), None).map(|(code, _)| code),
        Some(close::TRY_AGAIN_LATER)
    );
    assert_eq!(out.stats().slow_consumer_closes.load(Ordering::Relaxed), 1);

    // Written items make room again.
    let out = Outbox::new(2, Arc::default(), None);
    let mut taken = VecDeque::new();
    out.push(frame());
    out.push(frame());
    assert!(out.poll_take(Some(&cx), Some(&mut taken)).is_none());
    taken.clear();
    out.written();
    out.written();
    out.push(frame());
    out.push(frame());
    assert!(out.poll_take(Some(&cx), Some(&mut taken)).is_none());
    assert_eq!(taken.len(), 2);
}
