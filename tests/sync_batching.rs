//! A busy connection's frames go out several per write: the server holds its flushes for a
//! short window while updates arrive faster than one a millisecond. Seen from the clients,
//! nothing may change: every update arrives, in order, the last one of a burst without
//! waiting for another to push it out; SYNC_STATUS is still echoed after what came before
//! it; a shutdown in the middle of a burst still closes with 1001.

mod support;

use std::time::Duration;

use epicenter_server::server::ServerOptions;
use epicenter_server::sync::close;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as Ws;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, Text, Transact, Update};

use support::ws::{blog_server, join, letter, letter_updates, next_frame, Socket};

/// A guard against a hung test; nothing waits for it to elapse.
const GUARD: Duration = Duration::from_secs(10);
const BURST: usize = 600;

fn expected(count: usize) -> String {
    (0..count).map(letter).collect()
}

/// Reads updates into `doc` until its text has `len` characters (and `marker`, a
/// SYNC_STATUS echo, came when one is given); returns the text and how many updates came
/// before the marker.
async fn receive(
    ws: &mut Socket,
    doc: &Doc,
    len: usize,
    marker: Option<&[u8]>,
) -> (String, Option<usize>) {
    let text = doc.get_or_insert_text("t");
    let (mut updates, mut marker_at) = (0, None);
    loop {
        let frame = match tokio::time::timeout(GUARD, ws.next())
            .await
            .expect("the burst's updates in time")
        {
            Some(Ok(Ws::Binary(frame))) => frame,
            Some(Ok(_)) => continue,
            other => panic!("connection ended: {other:?}"),
        };
        if marker.is_some_and(|m| m == &frame[..]) {
            marker_at = Some(updates);
        } else if let Ok(Message::Sync(SyncMessage::Update(u))) = Message::decode_v1(&frame) {
            doc.transact_mut()
                .apply_update(Update::decode_v1(&u).unwrap())
                .unwrap();
            updates += 1;
        }
        if text.len(&doc.transact()) as usize >= len && (marker.is_none() || marker_at.is_some()) {
            return (text.get_string(&doc.transact()), marker_at);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_arrives_whole_and_in_order_and_its_last_update_is_not_held_back() {
    let (server, addr) = blog_server(ServerOptions::default()).await;
    let mut receivers = Vec::new();
    for _ in 0..3 {
        receivers.push(join(addr, "blog").await);
    }
    let mut writer = join(addr, "blog").await;
    let updates = letter_updates(BURST);
    // Back to back: far less than a millisecond apart, so the receivers count as busy.
    let mut all = futures_util::stream::iter(updates.into_iter().map(|u| Ok(Ws::Binary(u.into()))));
    writer.send_all(&mut all).await.unwrap();
    // Nothing follows the last update: it must arrive by itself (the hold's timer).
    for ws in &mut receivers {
        let (text, _) = receive(ws, &Doc::new(), BURST, None).await;
        assert_eq!(text, expected(BURST));
    }
    // Quiet again: a lone update still arrives.
    let doc = Doc::new();
    let text = doc.get_or_insert_text("late");
    let update = {
        let mut txn = doc.transact_mut();
        text.push(&mut txn, "x");
        txn.encode_update_v1()
    };
    writer
        .send(Ws::Binary(
            Message::Sync(SyncMessage::Update(update))
                .encode_v1()
                .into(),
        ))
        .await
        .unwrap();
    for ws in &mut receivers {
        let frame = next_frame(ws).await;
        assert!(matches!(
            Message::decode_v1(&frame),
            Ok(Message::Sync(SyncMessage::Update(_)))
        ));
    }
    server.destroy().await.unwrap();
}

fn sync_status(version: u64) -> Vec<u8> {
    let mut payload = Vec::new();
    yrs::encoding::write::Write::write_var(&mut payload, version);
    Message::Custom(102, payload).encode_v1()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_status_during_a_burst_is_echoed_after_what_came_before_it() {
    let (server, addr) = blog_server(ServerOptions::default()).await;
    let mut receiver = join(addr, "blog").await;
    let mut writer = join(addr, "blog").await;
    let updates = letter_updates(BURST);
    // The writer's SYNC_STATUS in the middle of its burst: echoed to the writer only,
    // while the receivers are busy.
    let status = sync_status(7);
    let sent = status.clone();
    let writing = tokio::spawn(async move {
        let mut frames: Vec<Result<Ws, _>> = updates
            .into_iter()
            .map(|u| Ok(Ws::Binary(u.into())))
            .collect();
        frames.insert(BURST / 2, Ok(Ws::Binary(sent.into())));
        writer
            .send_all(&mut futures_util::stream::iter(frames))
            .await
            .unwrap();
        writer
    });
    // The receiver asks too, in the middle of the burst: its echo comes, after at least
    // the updates it had already received, and nothing is lost around it.
    let doc = Doc::new();
    let _ = receive(&mut receiver, &doc, 50, None).await;
    let mine = sync_status(9);
    receiver
        .send(Ws::Binary(mine.clone().into()))
        .await
        .unwrap();
    let (text, before) = receive(&mut receiver, &doc, BURST, Some(&mine)).await;
    assert_eq!(text, expected(BURST));
    assert!(before.is_some());
    // The writer gets its own echo, and none of its updates back.
    let mut writer = writing.await.unwrap();
    let echo = next_frame(&mut writer).await;
    assert_eq!(&echo[..], &status[..]);
    server.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_in_the_middle_of_a_burst_closes_with_1001() {
    let (server, addr) = blog_server(ServerOptions::default()).await;
    let mut receiver = join(addr, "blog").await;
    let mut writer = join(addr, "blog").await;
    let updates = letter_updates(BURST);
    let frames: Vec<Result<Ws, _>> = updates[..BURST / 2]
        .iter()
        .map(|u| Ok(Ws::Binary(u.clone().into())))
        .collect();
    writer
        .send_all(&mut futures_util::stream::iter(frames))
        .await
        .unwrap();
    // Wait until the receiver is in the burst, then shut down while the writer goes on.
    let _ = receive(&mut receiver, &Doc::new(), 50, None).await;
    let writing = tokio::spawn(async move {
        for u in &updates[BURST / 2..] {
            if writer.send(Ws::Binary(u.clone().into())).await.is_err() {
                break;
            }
        }
    });
    let (destroyed, code) = tokio::join!(server.destroy(), async {
        loop {
            match tokio::time::timeout(GUARD, receiver.next())
                .await
                .expect("a close frame in time")
            {
                Some(Ok(Ws::Close(Some(frame)))) => break u16::from(frame.code),
                Some(Ok(_)) => continue,
                other => panic!("ended without a close frame: {other:?}"),
            }
        }
    });
    destroyed.unwrap();
    assert_eq!(code, close::GOING_AWAY);
    writing.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_in_a_busy_room_is_merged_and_everyone_ends_with_everyones_latest_state() {
    const CLIENTS: u64 = 40;
    const CLOCKS: u32 = 10;
    let (server, addr) = blog_server(ServerOptions::default()).await;
    let mut sockets = Vec::new();
    for _ in 0..CLIENTS {
        sockets.push(join(addr, "blog").await);
    }
    // Everyone announces CLOCKS states back to back: hundreds of messages, each for all
    // 40 connections, in a moment.
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            tokio::spawn(async move {
                let me = 1000 + i as u64;
                let frames: Vec<Result<Ws, _>> = (1..=CLOCKS)
                    .map(|clock| {
                        let state = format!("{{\"user\":{me},\"clock\":{clock}}}");
                        Ok(Ws::Binary(support::ws::awareness(me, clock, &state).into()))
                    })
                    .collect();
                ws.send_all(&mut futures_util::stream::iter(frames))
                    .await
                    .unwrap();
                // Read until every client's last state is here.
                let mut latest = std::collections::HashMap::new();
                let mut messages = 0;
                while latest.len() < CLIENTS as usize
                    || latest.values().any(|clock| *clock < CLOCKS)
                {
                    let frame = next_frame(&mut ws).await;
                    let Ok(Message::Awareness(update)) = Message::decode_v1(&frame) else {
                        continue;
                    };
                    messages += 1;
                    for (id, entry) in update.clients {
                        let clock = latest.entry(id).or_insert(0);
                        *clock = (*clock).max(entry.clock);
                    }
                }
                messages
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += tokio::time::timeout(GUARD, task).await.unwrap().unwrap();
    }
    // Without merging, each connection would get all 400 messages.
    let unmerged = CLIENTS * CLIENTS * CLOCKS as u64;
    assert!(total < unmerged, "{total} messages: nothing was merged");
    server.destroy().await.unwrap();
}
