//! The cross-node bus (feature `redis`): nodes that share one database tell each other
//! of every update they commit over Redis Streams, so a write answered by one node reaches
//! every other node's docs, REST reads and sync connections.
//!
//! Each doc has a stream `epicenter:{<doc>}:u` (the hash tag keeps a doc's keys on one
//! Redis Cluster slot) whose entries carry the committing node, the update's number (the
//! shared storage numbers each doc's updates gap-free, in commit order) and its bytes.
//! A node applies another node's update through the doc's one way in for remote updates
//! (`WorkspaceClient::apply_remote`: applied and passed to the doc's sync connections like
//! any other, never stored again), in number order. Redis holds nothing durable: an entry
//! past a gap (Redis restarted, the stream trimmed, this node lagging), and a check every
//! `catch_up_interval`, make the node read what it lacks from the storage.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::lock::lock;
use crate::workspace::WorkspaceClient;

mod publish;
mod reader;
mod sign;
use publish::Publish;
use sign::Signer;

/// How a node joins the others: the Redis server they share and this node's name.
#[derive(Debug, Clone)]
pub struct RedisBus {
    url: String,
    node: String,
    catch_up_interval: Duration,
    node_timeout: Duration,
    signer: Option<Signer>,
}

impl RedisBus {
    /// The bus on the Redis server at `url` (`redis://host:port/`), for node `node` (a
    /// name unique among the nodes, e.g. the host name).
    pub fn new(url: impl Into<String>, node: impl Into<String>) -> Self {
        RedisBus {
            url: url.into(),
            node: node.into(),
            catch_up_interval: Duration::from_secs(1),
            node_timeout: Duration::from_secs(30),
            signer: None,
        }
    }

    /// A secret every node shares: each entry a node puts on the bus is signed with it
    /// (HMAC-SHA256), and entries without a valid signature are ignored, so whoever can
    /// write to Redis without the secret cannot put updates or new presence into the nodes'
    /// docs. Not covered: heartbeat keys (such a writer can keep a dead node's presence up,
    /// or take a live one's down) and replays of presence entries once signed. Without a
    /// secret, Redis is trusted like the database. All nodes must use the same secret (or
    /// none).
    pub fn secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.signer = Some(Signer::new(secret.as_ref()));
        self
    }

    /// How long a node may go without renewing its heartbeat before the others take it
    /// for gone and remove the awareness states of its connections. Default 30 s (the
    /// heartbeat is renewed every third of it).
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout.max(Duration::from_millis(300));
        self
    }

    /// How often each doc is compared with the storage, whatever the bus delivered.
    /// Default 1 s.
    pub fn catch_up_interval(mut self, interval: Duration) -> Self {
        self.catch_up_interval = interval;
        self
    }
}

/// Updates and presence frames that may wait for Redis before new ones are dropped.
const PUBLISH_QUEUE: usize = 10_000;

fn stream_key(doc: &str) -> String {
    format!("epicenter:{{{doc}}}:u")
}

fn awareness_key(doc: &str) -> String {
    format!("epicenter:{{{doc}}}:a")
}

fn node_key(node: &str) -> String {
    format!("epicenter:node:{node}")
}

/// Where another node's update of a doc goes on this node.
#[derive(Clone)]
enum Target {
    /// A workspace: always live, with or without a room.
    Workspace(WorkspaceClient),
    /// A dynamic doc, while its room is loaded here.
    Room(Arc<super::room::Room>),
}

impl Target {
    fn storage(&self) -> Arc<dyn crate::storage::DocStorage> {
        match self {
            Target::Workspace(client) => client.storage().clone(),
            Target::Room(room) => room.storage(),
        }
    }

    fn apply_remote(&self, update: &[u8], through: u64) -> Result<(), String> {
        match self {
            Target::Workspace(client) => client
                .apply_remote(update, through)
                .map_err(|e| e.to_string()),
            Target::Room(room) => room.apply_remote(update, through),
        }
    }
}

/// What this node has applied of one doc.
struct DocState {
    client: Target,
    /// Every update numbered up to this one is in the doc.
    applied: u64,
    /// Numbers above `applied` already in the doc (this node's own commits).
    ahead: BTreeSet<u64>,
}

impl DocState {
    /// Records that update `n` is in the doc.
    fn mark(&mut self, n: u64) {
        if n > self.applied {
            self.ahead.insert(n);
        }
        while self.ahead.remove(&(self.applied + 1)) {
            self.applied += 1;
        }
    }

    /// Through which number the doc holds every update once update `n` is in it (its own
    /// commits just above count too): what a mirror computed then is up to date with.
    fn through_with(&self, n: u64) -> u64 {
        let mut through = n.max(self.applied);
        while self.ahead.contains(&(through + 1)) {
            through += 1;
        }
        through
    }
}

type Docs = Arc<Mutex<HashMap<String, DocState>>>;

/// How the room registry puts dynamic docs on the bus while their rooms are loaded.
pub(crate) struct BusHandle {
    docs: Docs,
    publish: mpsc::Sender<Publish>,
    /// Wakes the reader when a doc joins, so it reads the doc's stream at once.
    added: Arc<tokio::sync::Notify>,
}

impl BusHandle {
    fn register(&self, id: String, target: Target) {
        let storage = target.storage();
        let Some(applied) = storage.loaded_through() else {
            tracing::warn!(doc = %id, "its storage is not shared; not on the bus");
            return;
        };
        // The state first, so no commit finds the doc missing.
        lock(&self.docs).insert(
            id,
            DocState {
                client: target,
                applied,
                ahead: BTreeSet::new(),
            },
        );
        self.added.notify_one();
        let (states, publish) = (self.docs.clone(), self.publish.clone());
        storage.on_commit(Arc::new(
            move |doc: &str, updates: crate::storage::Numbered| {
                if let Some(state) = lock(&states).get_mut(doc) {
                    for (n, _) in &updates {
                        state.mark(*n);
                    }
                }
                for (n, update) in updates {
                    // Full (Redis away for long): dropped; the others catch up from storage.
                    let _ = publish.try_send(Publish::Update(doc.to_string(), n, update));
                }
            },
        ));
    }

    /// Puts the dynamic doc of `room` on the bus (its room was just loaded).
    pub fn register_room(&self, room: Arc<super::room::Room>) {
        self.register(room.id.clone(), Target::Room(room));
    }

    /// Takes doc `id` off the bus (its room is being evicted).
    pub fn unregister(&self, id: &str) {
        lock(&self.docs).remove(id);
    }
}

/// Starts the bus for `clients`: their commits are published, other nodes' updates
/// applied. Runs until `shutdown`.
pub(crate) fn start(
    config: &RedisBus,
    clients: Vec<WorkspaceClient>,
    hub: Arc<super::SyncHub>,
    shutdown: CancellationToken,
) {
    let docs: Docs = Arc::default();
    // Bounded: while Redis is away, what does not fit is dropped (Redis holds nothing
    // durable; the other nodes catch up from storage, and clients renew their presence).
    let (publish, published) = mpsc::channel::<Publish>(PUBLISH_QUEUE);
    let (relay, relayed) = mpsc::unbounded_channel();
    hub.set_relay(relay);
    let awareness_publish = publish.clone();
    tokio::spawn(async move {
        let mut relayed = relayed;
        while let Some((room, frame)) = relayed.recv().await {
            let sent = awareness_publish.try_send(Publish::Awareness(room, frame));
            if let Err(mpsc::error::TrySendError::Closed(_)) = sent {
                return;
            }
        }
    });
    let added = Arc::new(tokio::sync::Notify::new());
    let handle = Arc::new(BusHandle {
        docs: docs.clone(),
        publish,
        added: added.clone(),
    });
    for client in clients {
        let id = client.id().to_string();
        handle.register(id, Target::Workspace(client));
    }
    hub.set_bus(handle);
    let config = config.clone();
    tokio::spawn(run(config, docs, added, hub, published, shutdown));
}

async fn run(
    config: RedisBus,
    docs: Docs,
    added: Arc<tokio::sync::Notify>,
    hub: Arc<super::SyncHub>,
    published: mpsc::Receiver<Publish>,
    shutdown: CancellationToken,
) {
    // This process's name on the bus: the node's name and an incarnation, so a node killed
    // and started again at once under its name is a new one to the others, and the
    // presence of the old one's clients still goes when its heartbeat lapses.
    let config = RedisBus {
        node: format!("{}#{:016x}", config.node, incarnation()),
        ..config
    };
    let client = match redis::Client::open(config.url.as_str()) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "bad Redis URL; the bus is off");
            return;
        }
    };
    let publisher = tokio::spawn(publish::run(
        client.clone(),
        config.node.clone(),
        config.signer.clone(),
        published,
        shutdown.clone(),
    ));
    let heartbeat = {
        let (client, node, shutdown) = (client.clone(), config.node.clone(), shutdown.clone());
        let timeout = config.node_timeout;
        tokio::spawn(async move {
            let mut beat = tokio::time::interval(timeout / 3);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = beat.tick() => {}
                }
                if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                    // Lives half the timeout and is renewed every third: present while
                    // the node is (see `missing`).
                    let _: redis::RedisResult<()> = redis::cmd("SET")
                        .arg(node_key(&node))
                        .arg(1)
                        .arg("PX")
                        .arg((timeout / 2).as_millis() as u64)
                        .query_async(&mut c)
                        .await;
                }
            }
        })
    };
    reader::run(&config, &docs, &added, &hub, &client, &shutdown).await;
    publisher.abort();
    heartbeat.abort();
}

/// A number that tells this process from an earlier one of the same node.
fn incarnation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}

/// Applies another node's update `n` to `doc`, in order: the next one at once, an old one
/// not at all, one past a gap after catching up from the storage.
async fn deliver(docs: &Docs, doc: &str, n: u64, update: Vec<u8>) {
    let next = {
        let states = lock(docs);
        let Some(state) = states.get(doc) else { return };
        if n <= state.applied || state.ahead.contains(&n) {
            return;
        }
        (n == state.applied + 1).then(|| (state.client.clone(), state.through_with(n)))
    };
    match next {
        Some((client, through)) => {
            if apply(&client, update, through).await {
                if let Some(state) = lock(docs).get_mut(doc) {
                    state.mark(n);
                }
            }
        }
        None => catch_up_doc(docs, doc).await,
    }
}

/// Reads and applies everything of `doc` numbered after what this node has applied.
async fn catch_up_doc(docs: &Docs, doc: &str) {
    let (client, after) = {
        let states = lock(docs);
        let Some(state) = states.get(doc) else { return };
        (state.client.clone(), state.applied)
    };
    // Bounded: a database that hangs must not stop delivery over Redis for every doc.
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        client.storage().updates_after(after),
    );
    let missing = match read.await.unwrap_or_else(|_| {
        Err(crate::error::StorageError::Unavailable {
            reason: "the storage did not answer within 10 s".into(),
        })
    }) {
        Ok(missing) => missing,
        Err(e) => {
            tracing::debug!(doc, error = %e, "cannot catch up from the storage now");
            return;
        }
    };
    for (i, (n, update)) in missing.into_iter().enumerate() {
        let (known, through) = match lock(docs).get(doc) {
            // Numbers are gap-free: a first one past a gap is a snapshot, which folds
            // updates this node lacks whatever its number (even one of its own commits').
            Some(s) if i == 0 && n > s.applied + 1 => (false, s.through_with(n)),
            Some(s) => (n <= s.applied || s.ahead.contains(&n), s.through_with(n)),
            None => return,
        };
        if !known && !apply(&client, update, through).await {
            // Stored, so every node sees the same bytes: waiting would stall the doc on
            // the bus for good. Skipped, loudly (`apply` logged why).
            tracing::error!(doc, n, "skipping a stored update that does not apply here");
        }
        if let Some(state) = lock(docs).get_mut(doc) {
            // A snapshot stands for every number up to its own.
            if n > state.applied + 1 && !state.ahead.contains(&n) {
                state.applied = n - 1;
                state.ahead = state.ahead.split_off(&n);
            }
            state.mark(n);
        }
    }
}

/// Applies a remote update on a blocking thread (it waits for the doc's lock).
async fn apply(client: &Target, update: Vec<u8>, through: u64) -> bool {
    let client = client.clone();
    let applied = tokio::task::spawn_blocking(move || client.apply_remote(&update, through)).await;
    match applied {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "an update from another node does not apply");
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "applying an update from another node failed");
            false
        }
    }
}
