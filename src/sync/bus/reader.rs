//! The reader: reads every loaded doc's update and awareness streams in one blocking
//! `XREAD`, applies other nodes' entries, and runs the periodic checks (the storage, for
//! docs this node is behind on; Redis, for nodes whose heartbeat lapsed).
//!
//! Where it starts reading a stream: a doc that joins the bus starts after the stream's
//! last entry, and is caught up from the storage at once (entries left by an earlier
//! database, or from before the doc was loaded, are never taken for new ones); after a
//! lost connection to the same Redis server it reads on from where it was; a restarted
//! server (a new `run_id`, or none to be had) may have reloaded old entries from disk: its
//! update streams start after their last entry with a catch-up from the storage, as for a
//! doc joining, and its awareness streams are read from their start.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use tokio_util::sync::CancellationToken;

use super::{awareness_key, catch_up_doc, deliver, node_key, sign, stream_key, Docs, RedisBus};
use crate::lock::lock;

/// How long a key that is not a stream (someone wrote another type under its name) is left
/// out of the reads before it is looked at again.
const WRONG_TYPE_PAUSE: Duration = Duration::from_secs(60);

/// The reader's state between reads.
struct Reader<'a> {
    config: &'a RedisBus,
    docs: &'a Docs,
    hub: &'a super::super::SyncHub,
    client: &'a redis::Client,
    conn: Option<MultiplexedConnection>,
    /// The reader connection's id, to wake it from a blocking read (CLIENT UNBLOCK).
    reader_id: Option<i64>,
    /// The Redis server instance read last (its `run_id`).
    server_run: Option<String>,
    /// The last entry id read per stream key.
    last: HashMap<String, String>,
    /// Keys left out of the reads until then (not streams).
    wrong_type: HashMap<String, tokio::time::Instant>,
    /// Nodes whose heartbeat key was missing, and since when: one is taken for gone only
    /// once it stays missing for half of `node_timeout` (a restarted Redis holds no keys
    /// until every node's next beat).
    missing: HashMap<String, tokio::time::Instant>,
    backoff: Duration,
}

pub(super) async fn run(
    config: &RedisBus,
    docs: &Docs,
    added: &tokio::sync::Notify,
    hub: &Arc<super::super::SyncHub>,
    client: &redis::Client,
    shutdown: &CancellationToken,
) {
    let mut reader = Reader {
        config,
        docs,
        hub,
        client,
        conn: None,
        reader_id: None,
        server_run: None,
        last: HashMap::new(),
        wrong_type: HashMap::new(),
        missing: HashMap::new(),
        backoff: Duration::from_millis(50),
    };
    let mut storage_check = tokio::time::interval(config.catch_up_interval);
    let mut presence_check = tokio::time::interval(config.node_timeout / 6);
    while !shutdown.is_cancelled() {
        // The streams of the docs on the bus now (dynamic docs come and go with their
        // rooms), by key.
        let keys: BTreeMap<String, String> = {
            let now = tokio::time::Instant::now();
            reader.wrong_type.retain(|_, until| *until > now);
            lock(docs)
                .keys()
                .flat_map(|doc| {
                    [
                        (stream_key(doc), doc.clone()),
                        (awareness_key(doc), doc.clone()),
                    ]
                })
                .filter(|(key, _)| !reader.wrong_type.contains_key(key))
                .collect()
        };
        reader.last.retain(|key, _| keys.contains_key(key));
        if keys.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = added.notified() => {}
            }
            continue;
        }
        if reader.conn.is_none() && !reader.connect().await {
            // Redis is away: the storage is the way to catch up meanwhile.
            check_storage(docs, None).await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(reader.backoff.min(config.catch_up_interval)) => {}
            }
            reader.backoff = (reader.backoff * 2).min(Duration::from_secs(1));
            continue;
        }
        reader.start_new_streams(&keys).await;
        let reply = tokio::select! {
            _ = shutdown.cancelled() => break,
            reply = reader.read(&keys, added) => reply,
        };
        match reply {
            Ok(reply) => {
                reader.backoff = Duration::from_millis(50);
                reader.apply(&keys, reply).await;
            }
            Err(e) => {
                if e.to_string().contains("WRONGTYPE") {
                    reader.find_wrong_types(&keys).await;
                } else {
                    tracing::warn!(error = %e, "reading the bus failed; reconnecting");
                    reader.conn = None;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(reader.backoff) => {}
                }
                reader.backoff = (reader.backoff * 2).min(Duration::from_secs(1));
            }
        }
        if tokio::time::timeout(Duration::ZERO, storage_check.tick())
            .await
            .is_ok()
        {
            check_storage(docs, None).await;
        }
        if tokio::time::timeout(Duration::ZERO, presence_check.tick())
            .await
            .is_ok()
        {
            reader.check_nodes().await;
        }
    }
}

impl Reader<'_> {
    /// Connects; a new Redis server (its `run_id`) is read from the start of each stream.
    async fn connect(&mut self) -> bool {
        let options = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_connection_timeout(Some(Duration::from_secs(2)));
        let Ok(mut c) = self
            .client
            .get_multiplexed_async_connection_with_config(&options)
            .await
        else {
            return false;
        };
        self.backoff = Duration::from_millis(50);
        let run = run_id(&mut c).await;
        if run.is_none() || run != self.server_run {
            // A restarted server (or one we cannot tell): it may have reloaded old entries
            // (an earlier database's) from disk. Update streams start again after their
            // last entry, and their docs are caught up from the storage. Awareness streams
            // are read from their start: presence is not in the storage, a removal sent
            // while this node was away must still arrive, and replayed frames end where
            // their clients are (frames carry clocks; gone nodes' clients are dropped).
            self.last.retain(|key, _| key.ends_with(":a"));
            for id in self.last.values_mut() {
                *id = "0".into();
            }
        }
        self.server_run = run;
        self.reader_id = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut c)
            .await
            .ok();
        self.conn = Some(c);
        true
    }

    /// Streams not read yet start after their last entry, and their docs are caught up
    /// from the storage.
    async fn start_new_streams(&mut self, keys: &BTreeMap<String, String>) {
        let new: Vec<&String> = keys
            .keys()
            .filter(|k| !self.last.contains_key(*k))
            .collect();
        let Some(c) = self.conn.as_mut() else { return };
        if new.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for key in &new {
            pipe.cmd("XREVRANGE")
                .arg(*key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1);
        }
        let lasts = match pipe
            .query_async::<Vec<redis::streams::StreamRangeReply>>(c)
            .await
        {
            Ok(lasts) => lasts,
            Err(e) if e.to_string().contains("WRONGTYPE") => {
                let new: BTreeMap<String, String> = new
                    .into_iter()
                    .map(|k| (k.clone(), keys[k].clone()))
                    .collect();
                self.find_wrong_types(&new).await;
                return;
            }
            Err(_) => {
                self.conn = None;
                return;
            }
        };
        let mut docs = BTreeSet::new();
        for (key, reply) in new.into_iter().zip(lasts) {
            let id = reply.ids.last().map_or("0-0".to_string(), |e| e.id.clone());
            self.last.insert(key.clone(), id);
            docs.insert(keys[key].clone());
        }
        check_storage(self.docs, Some(&docs)).await;
    }

    /// One blocking read of every stream, ended early when a doc joins.
    async fn read(
        &mut self,
        keys: &BTreeMap<String, String>,
        added: &tokio::sync::Notify,
    ) -> redis::RedisResult<Option<StreamReadReply>> {
        let mut read = redis::cmd("XREAD");
        read.arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(500)
            .arg("STREAMS");
        let streams: Vec<&String> = keys.keys().filter(|k| self.last.contains_key(*k)).collect();
        if streams.is_empty() {
            return Ok(None);
        }
        for key in &streams {
            read.arg(*key);
        }
        for key in &streams {
            read.arg(&self.last[*key]);
        }
        let (client, reader_id) = (self.client, self.reader_id);
        let Some(c) = self.conn.as_mut() else {
            return Ok(None);
        };
        let reading = read.query_async(c);
        tokio::pin!(reading);
        tokio::select! {
            reply = &mut reading => reply,
            // A doc joined: end the blocking read so the next one includes its stream.
            _ = added.notified() => {
                if let (Some(id), Ok(mut other)) =
                    (reader_id, client.get_multiplexed_async_connection().await)
                {
                    let _: redis::RedisResult<i64> = redis::cmd("CLIENT")
                        .arg("UNBLOCK")
                        .arg(id)
                        .query_async(&mut other)
                        .await;
                }
                reading.await
            }
        }
    }

    /// Applies what a read returned: other nodes' updates (in number order) and presence.
    async fn apply(&mut self, keys: &BTreeMap<String, String>, reply: Option<StreamReadReply>) {
        let Some(reply) = reply else { return };
        let config = self.config;
        for stream in reply.keys {
            let Some(doc) = keys.get(&stream.key) else {
                continue;
            };
            for entry in stream.ids {
                self.last.insert(stream.key.clone(), entry.id.clone());
                let Some(node) = entry.get::<String>("node") else {
                    continue;
                };
                if node == config.node {
                    continue;
                }
                let signature = entry.get::<Vec<u8>>(sign::FIELD).unwrap_or_default();
                let signed = |parts: &[&[u8]]| {
                    let ok = config
                        .signer
                        .as_ref()
                        .is_none_or(|s| s.verify(parts, &signature));
                    if !ok {
                        tracing::warn!(doc, node, "ignored a bus entry without a valid signature");
                    }
                    ok
                };
                if let Some(frame) = entry.get::<Vec<u8>>("a") {
                    if signed(&[b"a", doc.as_bytes(), node.as_bytes(), &frame]) {
                        relay_in(self.hub, doc, &node, frame);
                    }
                    continue;
                }
                let (Some(n), Some(update)) = (entry.get::<u64>("n"), entry.get::<Vec<u8>>("u"))
                else {
                    continue;
                };
                let parts: [&[u8]; 5] = [
                    b"u",
                    doc.as_bytes(),
                    node.as_bytes(),
                    &n.to_be_bytes(),
                    &update,
                ];
                if signed(&parts) {
                    deliver(self.docs, doc, n, update).await;
                }
            }
        }
    }

    /// Finds the keys that hold something other than a stream, and leaves them out for a
    /// while (loudly): one such key must not stop the reads of every other.
    async fn find_wrong_types(&mut self, keys: &BTreeMap<String, String>) {
        let Some(c) = self.conn.as_mut() else { return };
        let mut pipe = redis::pipe();
        for key in keys.keys() {
            pipe.cmd("TYPE").arg(key);
        }
        let Ok(types) = pipe.query_async::<Vec<String>>(c).await else {
            self.conn = None;
            return;
        };
        let until = tokio::time::Instant::now() + WRONG_TYPE_PAUSE;
        for (key, kind) in keys.keys().zip(types) {
            if kind != "stream" && kind != "none" {
                tracing::error!(
                    key,
                    kind,
                    "a key the bus reads is not a stream; left out for a minute"
                );
                self.wrong_type.insert(key.clone(), until);
            }
        }
    }

    /// Removes the awareness of nodes whose heartbeat has lapsed (one question per node).
    async fn check_nodes(&mut self) {
        let Some(c) = self.conn.as_mut() else { return };
        let ids: Vec<String> = lock(self.docs).keys().cloned().collect();
        let rooms: Vec<_> = ids
            .iter()
            .filter_map(|doc| self.hub.live_room(doc))
            .collect();
        let nodes: BTreeSet<String> = rooms.iter().flat_map(|r| r.remote_nodes()).collect();
        self.missing.retain(|node, _| nodes.contains(node));
        for node in nodes {
            let alive: redis::RedisResult<bool> = redis::cmd("EXISTS")
                .arg(node_key(&node))
                .query_async(c)
                .await;
            let gone = match alive {
                Ok(true) => {
                    self.missing.remove(&node);
                    false
                }
                Ok(false) => {
                    let since = *self
                        .missing
                        .entry(node.clone())
                        .or_insert_with(tokio::time::Instant::now);
                    since.elapsed() >= self.config.node_timeout / 2
                }
                Err(_) => false,
            };
            if gone {
                self.missing.remove(&node);
                for room in &rooms {
                    if room.remote_nodes().contains(&node) {
                        tracing::info!(node, room = %room.id, "node gone; removing its awareness states");
                        room.drop_remote_node(&node);
                    }
                }
            }
        }
    }
}

/// Catches up every doc (of `only`, when given) that its storage holds more of than this
/// node has applied: one question per storage for all of its docs.
async fn check_storage(docs: &Docs, only: Option<&BTreeSet<String>>) {
    let mut by_store: HashMap<usize, (Arc<dyn crate::storage::DocStorage>, Vec<String>)> =
        HashMap::new();
    for (id, state) in lock(docs).iter() {
        if only.is_some_and(|only| !only.contains(id)) {
            continue;
        }
        let storage = state.client.storage();
        by_store
            .entry(storage.store_id())
            .or_insert_with(|| (storage, Vec::new()))
            .1
            .push(id.clone());
    }
    for (storage, ids) in by_store.into_values() {
        let stored = match storage.stored_through(ids.clone()).await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::debug!(error = %e, "cannot check the docs against the storage now");
                continue;
            }
        };
        for doc in &ids {
            let applied = lock(docs).get(doc).map(|s| s.applied);
            if applied.is_some_and(|a| stored.get(doc).is_some_and(|&n| n > a)) {
                catch_up_doc(docs, doc).await;
            }
        }
    }
}

/// Applies another node's awareness frame to room `doc`, when it is open here.
fn relay_in(hub: &super::super::SyncHub, doc: &str, node: &str, frame: Vec<u8>) {
    let Some(room) = hub.live_room(doc) else {
        return;
    };
    match super::super::protocol::decode(&frame) {
        Ok(super::super::protocol::Inbound::Awareness(update)) => {
            room.apply_remote_awareness(node, update, bytes::Bytes::from(frame));
        }
        _ => tracing::debug!(
            doc,
            node,
            "ignored a malformed awareness frame from the bus"
        ),
    }
}

/// The Redis server's `run_id`: a new one after every restart.
async fn run_id(c: &mut MultiplexedConnection) -> Option<String> {
    let info: String = redis::cmd("INFO").arg("server").query_async(c).await.ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .map(|id| id.trim().to_string())
}
