//! A room: the live sync state of one doc (a workspace's, or a dynamic one): its
//! connections, its awareness, and the fan-out of every doc update.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use yrs::sync::AwarenessUpdate;
use yrs::{ClientID, Doc, Origin, ReadTxn, Transact};

use super::awareness::{AwarenessStates, Change};
use super::dynamic::DynamicDoc;
pub(crate) use super::outbox::{Out, Outbox};
use super::protocol::{self, close};
use crate::error::StorageError;
use crate::lock::lock;
use crate::storage::BoxFuture;
use crate::workspace::WorkspaceClient;

mod doc_work;
mod presence;
mod remote;

pub(crate) use remote::Relay;

/// Key of the room's update observer on its doc.
const ROOM_OBSERVER: &str = "epicenter-sync";

/// Prefix of the transaction origin of updates applied for a connection; the connection
/// id follows (big endian), so the fan-out can skip the connection an update came from.
const ORIGIN_PREFIX: &[u8; 3] = b"\xECws";

/// A v1 update with no items and no deletions.
const EMPTY_UPDATE: &[u8] = &[0, 0];

/// `Room::size` before the doc's size is known.
const UNKNOWN_SIZE: u64 = u64::MAX;

fn origin_of(conn: u64) -> Origin {
    let mut bytes = [0u8; 11];
    bytes[..3].copy_from_slice(ORIGIN_PREFIX);
    bytes[3..].copy_from_slice(&conn.to_be_bytes());
    Origin::from(&bytes[..])
}

fn conn_of(origin: &Origin) -> Option<u64> {
    let bytes = origin.as_ref();
    if bytes.len() == 11 && bytes[..3] == ORIGIN_PREFIX[..] {
        Some(u64::from_be_bytes(bytes[3..].try_into().ok()?))
    } else {
        None
    }
}

/// Runs `f` in a write transaction of `doc`, waiting for the doc as long as another
/// transaction holds it. On a blocking thread, like the other writers (REST handlers block
/// their thread for the doc): yrs's async `transact_mut` takes the lock in two steps and
/// holds the first while its task waits to be polled, so with every worker thread blocked
/// on that same lock nothing runs again. The transaction commits nothing unless `f`
/// changes the doc, so no update observer fires for it.
pub(crate) async fn in_write_txn<R: Send + 'static>(
    doc: &Doc,
    f: impl FnOnce(&mut yrs::TransactionMut) -> R + Send + 'static,
) -> Result<R, String> {
    let doc = doc.clone();
    tokio::task::spawn_blocking(move || f(&mut doc.transact_mut()))
        .await
        .map_err(|e| format!("the doc's transaction did not finish: {e}"))
}

/// Untrusted updates up to this size are read on the async worker when the doc is free.
const INLINE_READ: usize = 64 * 1024;

/// Runs `f` in a read transaction: on the spot when `inline` and no write transaction is
/// open on the doc, else on a blocking thread, so an async worker never waits for the doc's
/// lock (a big update can hold it for seconds).
pub(crate) async fn with_read_txn<R: Send + 'static>(
    doc: &Doc,
    inline: bool,
    f: impl FnOnce(&yrs::Transaction) -> R + Send + 'static,
) -> Result<R, String> {
    if inline {
        if let Ok(txn) = doc.try_transact() {
            return Ok(f(&txn));
        }
    }
    let doc = doc.clone();
    tokio::task::spawn_blocking(move || f(&doc.transact()))
        .await
        .map_err(|e| format!("the doc's transaction did not finish: {e}"))
}

/// The doc a room serves.
pub(crate) enum RoomDoc {
    /// A workspace's doc (its client settles LWW cells and stores updates).
    Workspace(WorkspaceClient),
    /// A dynamic doc, created on demand.
    Dynamic(DynamicDoc),
}

impl RoomDoc {
    pub(crate) fn doc(&self) -> &Doc {
        match self {
            RoomDoc::Workspace(client) => client.doc(),
            RoomDoc::Dynamic(doc) => doc.doc(),
        }
    }
}

/// Most frames one broadcast writes to sockets itself (see `outbox`): a few hundred
/// microseconds of writes; the rest of a big room's connections get the frame from their
/// own tasks, so a fan-out (which runs inside the doc's commit) never holds the doc for
/// thousands of writes.
const DIRECT_WRITES: usize = 128;

/// Sends `frame` to `members`.
fn broadcast<'a>(members: impl Iterator<Item = &'a Member>, frame: &Bytes) {
    let mut budget = DIRECT_WRITES;
    for member in members {
        if member.out.offer(Out::Frame(frame.clone()), budget > 0) {
            budget -= 1;
        }
    }
}

struct Member {
    out: Outbox,
    /// Awareness client ids this connection has announced (removed when it leaves).
    awareness: HashSet<ClientID>,
}

/// The live sync state of one doc.
pub(crate) struct Room {
    pub id: String,
    doc: RoomDoc,
    members: Mutex<HashMap<u64, Member>>,
    awareness: Mutex<AwarenessStates>,
    /// Bumped on every doc update; tells whether the cached full state is current.
    version: AtomicU64,
    /// The full state as a step2 frame, for joiners with an empty state vector.
    full_state: tokio::sync::Mutex<Option<(u64, Bytes)>>,
    /// About the doc's full state's encoded size: measured at each full encoding, plus the
    /// bytes of every update since (`UNKNOWN_SIZE` until measured). Only an estimate: an
    /// update fanned out as received (outside the commit) may race and be left out.
    size: AtomicU64,
    /// Bumped by every join; an eviction timer only fires if no one joined since.
    epoch: AtomicU64,
    /// Most awareness states one connection may have present (`max_awareness_states`).
    max_awareness: usize,
    /// Where the awareness of this node's connections goes for the other nodes.
    relay: Option<Relay>,
    /// Awareness client ids present here for other nodes' connections, by node.
    remote_awareness: Mutex<HashMap<String, HashSet<ClientID>>>,
    /// Batches presence when the room is busy.
    presence: presence::Presence,
}

impl Room {
    /// Opens a room over `doc` and starts fanning out its updates. Waits for the doc when
    /// something else holds it (a REST write, a metrics scrape): yrs's
    /// `Doc::observe_update_v1` only tries the lock, and a join must not fail because the
    /// doc is busy for a moment.
    pub async fn open(
        id: &str,
        doc: RoomDoc,
        max_awareness: usize,
        relay: Option<Relay>,
    ) -> Result<Arc<Room>, String> {
        let room = Arc::new(Room {
            id: id.to_string(),
            awareness: Mutex::default(),
            doc,
            members: Mutex::default(),
            version: AtomicU64::new(0),
            full_state: tokio::sync::Mutex::new(None),
            size: AtomicU64::new(UNKNOWN_SIZE),
            epoch: AtomicU64::new(0),
            max_awareness,
            relay,
            remote_awareness: Mutex::default(),
            presence: presence::Presence::default(),
        });
        let weak = Arc::downgrade(&room);
        in_write_txn(room.doc.doc(), move |txn| {
            txn.observe_update_v1(ROOM_OBSERVER, move |txn, event| {
                if let Some(room) = weak.upgrade() {
                    room.fan_out(txn.origin(), &event.update);
                }
            });
        })
        .await?;
        Ok(room)
    }

    /// Runs inside the doc's commit, so every connection gets updates in commit order.
    fn fan_out(&self, origin: Option<&Origin>, update: &[u8]) {
        self.version.fetch_add(1, Ordering::AcqRel);
        let size = self.size.load(Ordering::Acquire);
        if size != UNKNOWN_SIZE {
            self.size
                .store(size.saturating_add(update.len() as u64), Ordering::Release);
        }
        if update == EMPTY_UPDATE {
            // Nothing the peers lack (a transaction that changed nothing, or one whose
            // items are not covered by the state vector: those go out as received).
            return;
        }
        let except = origin.and_then(conn_of);
        let members = lock(&self.members);
        if members.keys().all(|id| Some(*id) == except) {
            return;
        }
        // Encoded once, shared by every connection.
        let frame = protocol::update(update);
        broadcast(
            members
                .iter()
                .filter(|(id, _)| Some(**id) != except)
                .map(|(_, member)| member),
            &frame,
        );
    }

    /// Adds a connection: sends it step1 and the awareness states. Never waits for the doc
    /// on an async worker.
    pub async fn add(&self, conn: u64, out: Outbox) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let sv = match with_read_txn(self.doc.doc(), true, |txn| txn.state_vector()).await {
            Ok(sv) => sv,
            Err(e) => {
                tracing::error!(room = %self.id, error = %e, "cannot read the state vector");
                yrs::StateVector::default()
            }
        };
        out.push(Out::Frame(protocol::step1(&sv)));
        // The awareness lock is held until the connection is a member (lock order:
        // awareness, then members): a removal made in between would go to every member
        // but this one, which would keep the removed states from its copy.
        let awareness = lock(&self.awareness);
        let all = awareness.all();
        if !all.clients.is_empty() {
            out.push(Out::Frame(protocol::awareness(all)));
        }
        lock(&self.members).insert(
            conn,
            Member {
                out,
                awareness: HashSet::new(),
            },
        );
        drop(awareness);
    }

    /// Removes a connection, removes its awareness states and tells everyone. Returns how
    /// many connections remain.
    pub fn remove(self: &Arc<Self>, conn: u64) -> usize {
        let member = lock(&self.members).remove(&conn);
        if let Some(member) = member.filter(|m| !m.awareness.is_empty()) {
            let removal = lock(&self.awareness).remove(member.awareness);
            if let Some(update) = removal {
                let frame = protocol::awareness(update.clone());
                self.send_presence(&update, &frame, &lock(&self.members));
                self.relay(&frame);
            }
        }
        lock(&self.members).len()
    }

    /// The room's doc.
    pub fn doc(&self) -> &Doc {
        self.doc.doc()
    }

    /// How many connections the room has.
    pub fn len(&self) -> usize {
        lock(&self.members).len()
    }

    /// The join counter (see `epoch`).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether `update` would change the doc (see `read_only`): what a read-only
    /// connection may not send. Never waits for the doc on an async worker.
    pub async fn changes(&self, bytes: Vec<u8>) -> Result<bool, String> {
        if bytes == EMPTY_UPDATE {
            return Ok(false);
        }
        let small = bytes.len() <= INLINE_READ;
        let decode = move || crate::storage::decode_update(&bytes);
        let update = if small {
            decode()?
        } else {
            tokio::task::spawn_blocking(decode)
                .await
                .map_err(|e| format!("decoding failed: {e}"))??
        };
        // Checking deletions walks the whole doc: never on an async worker.
        let inline = update.delete_set().is_empty();
        with_read_txn(self.doc.doc(), inline, move |txn| {
            super::read_only::changes_in(txn, &update)
        })
        .await
    }

    /// Applies an awareness update from `conn` and sends it to every connection, the
    /// sender included (its own renewals coming back keep an idle y-websocket client
    /// from timing out); in a busy room, merged with others for a moment (see
    /// `presence`). An update that would give the connection more than `max_awareness`
    /// present states is refused whole, with the close frame to send.
    pub fn apply_awareness(
        self: &Arc<Self>,
        conn: u64,
        update: AwarenessUpdate,
        frame: Bytes,
    ) -> Result<(), (u16, String)> {
        // Lock order: awareness, then members (nothing takes them the other way round).
        let mut awareness = lock(&self.awareness);
        let mut members = lock(&self.members);
        let Some(member) = members.get(&conn) else {
            return Ok(());
        };
        if awareness.announced_after(&update, &member.awareness) > self.max_awareness {
            return Err((
                close::POLICY_VIOLATION,
                format!(
                    "too many awareness states: at most {} per connection",
                    self.max_awareness
                ),
            ));
        }
        // Sent (or batched) before it is applied, so the update need not be copied: both
        // locks are held throughout, so no one sees the one without the other.
        self.send_presence(&update, &frame, &members);
        let changes = awareness.apply(update);
        drop(awareness);
        if let Some(member) = members.get_mut(&conn) {
            Change::track(changes, &mut member.awareness);
        }
        drop(members);
        self.relay(&frame);
        Ok(())
    }

    /// Sends every awareness state to one connection (QUERY_AWARENESS).
    pub fn send_awareness(&self, out: &Outbox) {
        let all = lock(&self.awareness).all();
        out.push(Out::Frame(protocol::awareness(all)));
    }

    /// Resolves once everything applied so far is durable.
    pub fn flushed(&self) -> BoxFuture<Result<(), StorageError>> {
        match &self.doc {
            RoomDoc::Workspace(client) => client.flushed(),
            RoomDoc::Dynamic(doc) => doc.flushed(),
        }
    }

    /// Stops the fan-out; a dynamic doc is flushed and its storage closed. The rest of
    /// the room's state goes when the registry drops it.
    pub async fn release(&self) {
        // Waits for the doc like `open` (a try-lock could leave the observer behind).
        let unobserved = in_write_txn(self.doc.doc(), |txn| {
            txn.unobserve_update_v1(ROOM_OBSERVER);
        });
        if let Err(e) = unobserved.await {
            tracing::error!(room = %self.id, error = %e, "cannot stop the room's fan-out");
        }
        if let RoomDoc::Dynamic(doc) = &self.doc {
            if let Err(e) = doc.close().await {
                tracing::error!(room = %self.id, error = %e, "closing a dynamic doc failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_origins_round_trip_and_others_do_not_match() {
        assert_eq!(conn_of(&origin_of(42)), Some(42));
        assert_eq!(conn_of(&origin_of(u64::MAX)), Some(u64::MAX));
        assert_eq!(conn_of(&Origin::from("epicenter-local")), None);
        assert_eq!(conn_of(&Origin::from(42u64)), None);
    }
}
