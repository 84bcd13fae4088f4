//! The publisher: puts this node's commits and its connections' presence on Redis, as many
//! entries per round trip as are waiting (one pipeline), so it keeps up with the commits.

use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::sign::{self, Signer};
use super::{awareness_key, stream_key};

/// What the publisher sends.
pub(crate) enum Publish {
    Update(String, u64, Vec<u8>),
    Awareness(String, bytes::Bytes),
}

/// Most entries one pipeline carries.
const MAX_PIPELINE: usize = 1000;

/// Longest a doc's update stream and awareness stream grow (approximately): readers that
/// fall further behind catch up from the storage.
const UPDATE_STREAM_LEN: usize = 10_000;
const AWARENESS_STREAM_LEN: usize = 1000;

pub(super) async fn run(
    client: redis::Client,
    node: String,
    signer: Option<Signer>,
    mut published: mpsc::Receiver<Publish>,
    shutdown: CancellationToken,
) {
    let mut conn: Option<MultiplexedConnection> = None;
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = published.recv() => match next { Some(next) => next, None => return },
        };
        let mut pipe = redis::pipe();
        pipe.add_command(xadd(first, &node, signer.as_ref()))
            .ignore();
        for _ in 1..MAX_PIPELINE {
            let Ok(next) = published.try_recv() else {
                break;
            };
            pipe.add_command(xadd(next, &node, signer.as_ref()))
                .ignore();
        }
        // Tried twice (a connection that broke, e.g. Redis restarted, is made anew), then
        // lost: the other nodes catch up from the storage, and awareness is renewed by its
        // clients every 15 s.
        for _ in 0..2 {
            if conn.is_none() {
                conn = client.get_multiplexed_async_connection().await.ok();
            }
            let Some(c) = conn.as_mut() else { break };
            let sent: redis::RedisResult<()> = pipe.query_async(c).await;
            if sent.is_ok() {
                break;
            }
            conn = None;
        }
    }
}

/// The XADD of one entry, signed when the nodes share a secret.
fn xadd(next: Publish, node: &str, signer: Option<&Signer>) -> redis::Cmd {
    let mut add = redis::cmd("XADD");
    let signature = signer.map(|s| match &next {
        Publish::Update(doc, n, update) => s.sign(&[
            b"u",
            doc.as_bytes(),
            node.as_bytes(),
            &n.to_be_bytes(),
            update,
        ]),
        Publish::Awareness(doc, frame) => s.sign(&[b"a", doc.as_bytes(), node.as_bytes(), frame]),
    });
    match next {
        Publish::Update(doc, n, update) => add
            .arg(stream_key(&doc))
            .arg("MAXLEN")
            .arg("~")
            .arg(UPDATE_STREAM_LEN)
            .arg("*")
            .arg("node")
            .arg(node)
            .arg("n")
            .arg(n)
            .arg("u")
            .arg(update),
        Publish::Awareness(doc, frame) => add
            .arg(awareness_key(&doc))
            .arg("MAXLEN")
            .arg("~")
            .arg(AWARENESS_STREAM_LEN)
            .arg("*")
            .arg("node")
            .arg(node)
            .arg("a")
            .arg(frame.as_ref()),
    };
    if let Some(signature) = signature {
        add.arg(sign::FIELD).arg(signature);
    }
    add
}
