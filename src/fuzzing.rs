//! Entry points for the fuzz targets (`fuzz/`) and the property tests
//! (`tests/fuzz_props.rs`); not a stable API.
//!
//! Two paths take arbitrary bytes from the network, and each has a harness here:
//! - [`inbound_frames`]: WebSocket frames through what a sync connection does with them
//!   (decode, then step1 → step2, updates applied, awareness applied and echoed, 102
//!   acknowledged, errors → close codes), against a workspace room and a dynamic-doc room;
//! - [`rest_requests`]: request bodies through what the REST write handlers do (JSON parse,
//!   then `upsert` for POST or `update` for PUT/PATCH) against the tables of the same
//!   workspace.
//!
//! Both check their invariants with `assert!`: a broken one panics, and the fuzzer or
//! proptest reports that input. They return what the server would answer, so a test can
//! also hold a real server to the same prediction.
//!
//! `sync::connection::handle` and `sync::room::Room` are private to the sync module, so
//! [`inbound_frames`] mirrors them step by step over the same parts (the crate's frame
//! decoder and encoders, [`WorkspaceClient::apply_update`], the room's awareness states, the
//! storage provider): keep the two in step when either changes. Likewise the REST mirror
//! follows `server::rest::{create, update}`.
//!
//! The functions block on a private Tokio runtime (loading a workspace is async), so they
//! must not be called from inside a runtime.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{json, Map, Value};
use yrs::sync::AwarenessUpdate;
use yrs::updates::decoder::Decode;
use yrs::{Any, Array, ClientID, Doc, Options, Origin, ReadTxn, StateVector, Transact, Update};

use crate::server::ApiError;
use crate::storage::{DocStorage, MemoryStorage, StorageProvider};
use crate::sync::awareness::{AwarenessStates, Change};
use crate::sync::protocol::{self, close, Inbound};
use crate::workspace::{
    any_to_json, boolean, date, id, integer, json as json_field, json_with_schema, real, select,
    tags, tags_of, text, validate_row, RowResult, TableDefinition, TableHandle, WorkspaceClient,
    WorkspaceDefinition,
};
use crate::WorkspaceError;

/// The id of the fuzzed workspace (its doc guid and sync room).
pub const WORKSPACE: &str = "fuzz";

/// The fuzzed workspace: a table with a field of every type (plain, nullable, defaulted,
/// constrained), a second table whose id field is not called `id`, and two KV keys.
pub fn definition() -> WorkspaceDefinition {
    let schema = json!({
        "type": "object",
        "properties": { "n": { "type": "integer" } },
        "required": ["n"]
    });
    WorkspaceDefinition::builder(WORKSPACE)
        .table(
            "posts",
            [
                ("id", id()),
                ("title", text()),
                ("views", integer()),
                ("score", real().nullable()),
                ("done", boolean().default(false)),
                ("due", date().nullable()),
                ("status", select(["draft", "published"]).default("draft")),
                ("labels", tags()),
                ("topics", tags_of(["a", "b"]).nullable()),
                ("meta", json_field().nullable()),
                ("spec", json_with_schema(schema).nullable()),
            ],
        )
        .table(
            "notes",
            [
                ("slug", id()),
                ("body", text().default("")),
                ("pinned", boolean().nullable()),
            ],
        )
        .kv("theme", select(["light", "dark"]).default("light"))
        .kv("limit", integer().nullable())
        .build()
        .expect("the fuzz workspace definition is valid")
}

/// A valid `posts` row with this id (every required field set).
pub fn valid_post(id: &str) -> Value {
    json!({ "id": id, "title": "t", "views": 1, "labels": [] })
}

fn block_on<F: Future>(future: F) -> F::Output {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("fuzzing")
                .build()
                .expect("a Tokio runtime")
        })
        .block_on(future)
}

fn open_workspace(storage: &MemoryStorage) -> WorkspaceClient {
    block_on(definition().with_storage(storage.clone()).create())
        .expect("the fuzz workspace loads from its storage")
}

// ---------------------------------------------------------------------------------------
// Reading everything back
// ---------------------------------------------------------------------------------------

/// Everything a workspace serves: each table's rows by key, and the KV values.
#[derive(Debug, Clone, PartialEq)]
pub struct Contents {
    /// Per table, in definition order: its name and every stored row (by row key, in key
    /// order) as `get` reads it.
    pub tables: Vec<(String, Vec<(String, RowResult)>)>,
    /// Per KV key: its value as `KvHandle::get` reads it.
    pub kv: Vec<(String, Option<Value>)>,
}

/// The keys of the stored rows of a table, in order.
fn row_keys(table: &TableHandle) -> Vec<String> {
    let core = &table.core.tables[table.index];
    crate::lock::lock(&core.state)
        .rows
        .keys()
        .cloned()
        .collect()
}

/// Reads every table and KV value, checking that the reads agree with each other.
pub fn read_contents(client: &WorkspaceClient) -> Contents {
    let mut tables = Vec::new();
    for table in client.tables() {
        let def = table.definition().clone();
        let rows: Vec<(String, RowResult)> = row_keys(&table)
            .into_iter()
            .map(|key| {
                let row = table.get(&key);
                (key, row)
            })
            .collect();
        let valid = table.get_all_valid();
        let invalid = table.get_all_invalid();
        assert_eq!(rows.len(), table.count(), "table `{}`: count", def.name);
        let listed_valid: Vec<_> = rows
            .iter()
            .filter_map(|(_, r)| match r {
                RowResult::Valid(row) => Some(row.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(valid, listed_valid, "table `{}`: get_all_valid", def.name);
        let listed_invalid: Vec<_> = rows
            .iter()
            .filter(|(_, r)| matches!(r, RowResult::Invalid { .. }))
            .map(|(_, r)| r.clone())
            .collect();
        assert_eq!(
            invalid, listed_invalid,
            "table `{}`: get_all_invalid",
            def.name
        );
        for (key, result) in &rows {
            match result {
                RowResult::Valid(row) => {
                    let issues = validate_row(&def, row);
                    assert!(
                        issues.is_empty(),
                        "table `{}`: row {key:?} reads as valid but fails validation: \
                         {issues:?} in {row:?}",
                        def.name
                    );
                    assert_eq!(
                        row.keys().map(String::as_str).collect::<Vec<_>>(),
                        def.fields
                            .iter()
                            .map(|f| f.name.as_str())
                            .collect::<Vec<_>>(),
                        "table `{}`: a valid row has exactly the defined fields, in order",
                        def.name
                    );
                }
                RowResult::Invalid { id, issues, .. } => {
                    assert_eq!(id, key, "an invalid row reports another id");
                    assert!(
                        !issues.is_empty(),
                        "an invalid row without issues: {result:?}"
                    );
                }
                RowResult::NotFound => panic!("stored row {key:?} reads as not found"),
            }
            assert!(table.has(key));
        }
        let page: Vec<_> = valid.iter().skip(1).take(2).cloned().collect();
        assert_eq!(
            table.page_valid(1, 2),
            page,
            "page_valid(1, 2) is a slice of the list"
        );
        tables.push((def.name.clone(), rows));
    }
    let kv = client
        .definition()
        .kv
        .iter()
        .map(|k| {
            let value = client.kv().get(&k.key).expect("a defined KV key reads");
            (k.key.clone(), value)
        })
        .collect();
    Contents { tables, kv }
}

/// A state vector without its zero clocks (yrs may list a client it knows nothing of).
fn clocks(sv: &StateVector) -> std::collections::BTreeMap<u64, u32> {
    sv.iter()
        .filter(|(_, clock)| **clock > 0)
        .map(|(client, clock)| (client.get(), *clock))
        .collect()
}

/// Whether the doc holds updates waiting for missing ones. Its full state includes them, so
/// a doc fed the full state may integrate more than the doc did (say, items whose missing
/// dependency was an ID a later update filled with other content).
fn has_pending(doc: &Doc) -> bool {
    let txn = doc.transact();
    txn.store().pending_update().is_some() || txn.store().pending_ds().is_some()
}

/// Checks that `got` has every clock of `want` (and, unless `superset`, nothing more).
fn same_state(got: &StateVector, want: &StateVector, superset: bool, what: &str) {
    let (got, want) = (clocks(got), clocks(want));
    if superset {
        for (client, clock) in &want {
            assert!(
                got.get(client).is_some_and(|c| c >= clock),
                "{what}: misses clock {clock} of client {client}: {got:?} vs {want:?}"
            );
        }
    } else {
        assert_eq!(got, want, "{what}: another state vector");
    }
}

/// Checks that the doc's full state decodes, applies to a fresh doc, and re-encodes to an
/// update that gives the same state again.
fn check_encoding(doc: &Doc) {
    let (sv, full) = {
        let txn = doc.transact();
        (
            txn.state_vector(),
            txn.encode_state_as_update_v1(&StateVector::default()),
        )
    };
    let superset = has_pending(doc);
    let fresh = Doc::new();
    let update = Update::decode_v1(&full).expect("the doc's own full state decodes");
    fresh
        .transact_mut()
        .apply_update(update)
        .expect("the doc's own full state applies to a fresh doc");
    let again = fresh
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let third = Doc::new();
    third
        .transact_mut()
        .apply_update(Update::decode_v1(&again).expect("the re-encoded state decodes"))
        .expect("the re-encoded state applies");
    let fresh_sv = fresh.transact().state_vector();
    same_state(&fresh_sv, &sv, superset, "a fresh doc fed the full state");
    same_state(
        &third.transact().state_vector(),
        &fresh_sv,
        superset,
        "a doc fed the re-encoded full state",
    );
}

/// A second in-memory client of the workspace fed `doc`'s full state reads the same.
fn replica_contents(doc: &Doc) -> Contents {
    let full = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let replica = open_workspace(&MemoryStorage::new());
    replica
        .apply_update(&full, "fuzzing-replica")
        .expect("a workspace's full state applies to another client");
    let contents = read_contents(&replica);
    block_on(replica.destroy()).expect("destroy the replica");
    contents
}

// ---------------------------------------------------------------------------------------
// Inbound sync frames
// ---------------------------------------------------------------------------------------

/// What the server does after one inbound frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameOutcome {
    /// Handled; the connection stays open.
    Handled,
    /// A doc update on a read-only connection that would change the doc: refused (not
    /// applied, not fanned out) and the connection closed with 4403; the harness then
    /// reconnects. One that changes nothing is `Handled`.
    Refused,
    /// The connection is closed with this code. The harness then reconnects (a new
    /// connection to the same room) for the frames after it.
    Closed(u16),
}

/// What [`inbound_frames`] found, per frame, in each kind of room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramesReport {
    /// In the workspace room (updates go through [`WorkspaceClient::apply_update`]).
    pub workspace: Vec<FrameOutcome>,
    /// In a dynamic-doc room (a plain doc stored by a storage provider).
    pub dynamic: Vec<FrameOutcome>,
    /// Whether an update arrived with a hole before its items: yrs integrates them behind a
    /// placeholder its state vector does not cover, so the room also stores and fans out
    /// such an update as received.
    pub out_of_order: bool,
}

/// Runs `frames` (binary WebSocket messages, in order) through the sync path of a
/// read-write connection, checking every invariant. See [`inbound_frames_with`].
pub fn inbound_frames(frames: &[&[u8]]) -> FramesReport {
    inbound_frames_with(frames, false)
}

/// Runs `frames` through the sync path, once against a fresh workspace room and once
/// against a fresh dynamic-doc room, and checks:
/// - nothing panics, and no frame closes the connection with anything but 1007 (bad
///   input): never 1011 (a server failure, the sync side's 500);
/// - the frames the server sends (step1, step2, awareness, every fanned-out update) decode
///   again, and step2 for an empty state vector gives a joiner the room's state;
/// - a peer that applies every fanned-out update ends with the room's state vector and
///   rows;
/// - the doc's full state round-trips through a fresh doc; the tables read consistently;
///   a second client fed the full state reads the same rows; and so does the workspace
///   reloaded from what its storage kept (the dynamic doc: the same state vector). While
///   the doc holds updates waiting for missing ones, its full state includes them, so a
///   doc fed it may only know more;
/// - a connection's awareness states are gone once it has left;
/// - REST still works on top: a valid row upserted under any stored id reads back as
///   written.
pub fn inbound_frames_with(frames: &[&[u8]], read_only: bool) -> FramesReport {
    let storage = MemoryStorage::new();
    let client = open_workspace(&storage);
    let mut room = MirrorRoom::new(RoomDoc::Workspace(client.clone()));
    let workspace = room.run(frames, read_only);
    let out_of_order = room.out_of_order;
    room.finish();
    let contents = read_contents(&client);
    let replica = replica_contents(client.doc());
    if !has_pending(client.doc()) {
        assert_eq!(
            replica, contents,
            "a client fed the room's full state reads other rows"
        );
    }
    block_on(client.destroy()).expect("destroy the fuzzed client");
    let reloaded = open_workspace(&storage);
    let reread = read_contents(&reloaded);
    assert_eq!(
        reread, contents,
        "the workspace reloaded from its storage reads other rows"
    );
    rest_after_sync(&reloaded, &reread);
    block_on(reloaded.destroy()).expect("destroy the reloaded client");

    let dynamic_storage = MemoryStorage::new();
    let doc = DynamicDoc::open(&dynamic_storage);
    let mut room = MirrorRoom::new(RoomDoc::Dynamic(doc));
    let dynamic = room.run(frames, read_only);
    let out_of_order = out_of_order || room.out_of_order;
    room.finish();
    let RoomDoc::Dynamic(doc) = &room.doc else {
        unreachable!()
    };
    let sv = doc.doc.transact().state_vector();
    doc.close();
    let reloaded = DynamicDoc::open(&dynamic_storage);
    assert_eq!(
        clocks(&reloaded.doc.transact().state_vector()),
        clocks(&sv),
        "the dynamic doc reloaded from its storage has another state vector"
    );
    reloaded.close();

    FramesReport {
        workspace,
        dynamic,
        out_of_order,
    }
}

/// For fuzz targets, first thing: libFuzzer's panic hook aborts on every panic, even one
/// the server catches. The server decodes untrusted bytes under `catch_unwind` (yrs's
/// decoders `debug_assert!` and overflow-check on some input, in builds with debug
/// assertions), so a panic raised inside yrs is only printed and left to unwind: caught,
/// it is the 1007 the server answers; not caught, libFuzzer's wrapper aborts all the same.
/// Any other panic aborts at once, as before.
pub fn let_yrs_panics_unwind() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.location().is_some_and(|l| l.file().contains("/yrs-")) {
                eprintln!("{info} (inside yrs: left to unwind)");
            } else {
                abort(info);
            }
        }));
    });
}

/// Splits fuzzer bytes into a read-only flag and frames, then runs [`inbound_frames_with`].
///
/// Layout: one flag byte (bit 0: read-only), then frames, each a LEB128 length and that many
/// bytes (the last one takes what is left when the length runs past the end).
pub fn inbound_frames_from_bytes(data: &[u8]) -> FramesReport {
    let Some((&flags, mut rest)) = data.split_first() else {
        return inbound_frames_with(&[], false);
    };
    let mut frames = Vec::new();
    while !rest.is_empty() && frames.len() < 64 {
        let mut len = 0usize;
        let mut shift = 0;
        while let Some((&b, tail)) = rest.split_first() {
            rest = tail;
            if shift < 28 {
                len |= usize::from(b & 0x7f) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let take = len.min(rest.len());
        frames.push(&rest[..take]);
        rest = &rest[take..];
    }
    inbound_frames_with(&frames, flags & 1 == 1)
}

/// Mirrors `sync::dynamic::DynamicDoc`: a plain doc whose every update goes to storage.
struct DynamicDoc {
    doc: Doc,
    storage: Arc<dyn DocStorage>,
}

impl DynamicDoc {
    fn open(provider: &MemoryStorage) -> DynamicDoc {
        let storage: Arc<dyn DocStorage> = Arc::from(
            provider
                .open("fuzz-dynamic", None)
                .expect("open the dynamic doc's storage"),
        );
        let updates = storage.load().expect("load the dynamic doc");
        let doc = Doc::with_options(Options {
            guid: "fuzz-dynamic".into(),
            ..Options::default()
        });
        crate::storage::replay(&doc, &updates).expect("what a dynamic doc stored replays");
        let s = storage.clone();
        doc.observe_update_v1("epicenter-storage", move |_, event| {
            s.append(event.update.clone(), Vec::new());
        })
        .expect("observe the dynamic doc");
        DynamicDoc { doc, storage }
    }

    /// Mirrors `DynamicDoc::apply`.
    fn apply(&self, bytes: &[u8], origin: Origin) -> Result<bool, String> {
        crate::sync::dynamic::apply_and_keep(
            &self.doc,
            self.storage.as_ref(),
            bytes,
            origin,
            || Ok(()),
        )
        .map_err(|e| match e {
            crate::WorkspaceError::BadUpdate(m) => m,
            e => e.to_string(),
        })
    }

    fn close(&self) {
        let _ = self.doc.unobserve_update_v1("epicenter-storage");
        block_on(self.storage.close()).expect("close the dynamic doc's storage");
    }
}

enum RoomDoc {
    Workspace(WorkspaceClient),
    Dynamic(DynamicDoc),
}

impl RoomDoc {
    fn doc(&self) -> &Doc {
        match self {
            RoomDoc::Workspace(client) => client.doc(),
            RoomDoc::Dynamic(doc) => &doc.doc,
        }
    }
}

/// Mirrors `sync::room::Room` for one connection at a time.
struct MirrorRoom {
    doc: RoomDoc,
    awareness: AwarenessStates,
    /// Per connection: the awareness client ids it announced.
    members: HashMap<u64, HashSet<ClientID>>,
    /// Every update the room fanned out, in commit order.
    fanned_out: Arc<Mutex<Vec<Vec<u8>>>>,
    next_conn: u64,
    /// Whether an update arrived whose items for a client start past the doc's clock.
    out_of_order: bool,
}

/// Same layout as the room's connection origins (`\xECws` + the id, big endian).
fn origin_of(conn: u64) -> Origin {
    let mut bytes = [0u8; 11];
    bytes[..3].copy_from_slice(b"\xECws");
    bytes[3..].copy_from_slice(&conn.to_be_bytes());
    Origin::from(&bytes[..])
}

/// Decodes a frame the server sends, as its peer would.
fn reread(frame: &[u8]) -> Inbound {
    protocol::decode(frame)
        .unwrap_or_else(|e| panic!("a frame the server sends does not decode ({e}): {frame:?}"))
}

impl MirrorRoom {
    fn new(doc: RoomDoc) -> MirrorRoom {
        let fanned_out: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let sink = fanned_out.clone();
        doc.doc()
            .observe_update_v1("fuzzing-room", move |_, event| {
                // The room encodes each update once as a SYNC update frame.
                let frame = protocol::update(&event.update);
                match reread(&frame) {
                    Inbound::Update(update) => {
                        assert_eq!(update, event.update, "the update frame changed its payload");
                        crate::lock::lock(&sink).push(update);
                    }
                    other => panic!("an update frame decoded as {other:?}"),
                }
            })
            .expect("observe the room's doc");
        MirrorRoom {
            awareness: AwarenessStates::default(),
            doc,
            members: HashMap::new(),
            fanned_out,
            next_conn: 1,
            out_of_order: false,
        }
    }

    /// Runs the frames through connections to this room, reconnecting after each close.
    fn run(&mut self, frames: &[&[u8]], read_only: bool) -> Vec<FrameOutcome> {
        let mut conn = self.add();
        let mut outcomes = Vec::with_capacity(frames.len());
        for frame in frames {
            let before = self.doc.doc().transact().state_vector();
            let outcome = match self.handle(conn, frame, read_only) {
                Ok(FrameOutcome::Refused) => {
                    assert_eq!(
                        self.doc.doc().transact().state_vector(),
                        before,
                        "a refused update changed the doc"
                    );
                    self.remove(conn);
                    conn = self.add();
                    FrameOutcome::Refused
                }
                Ok(outcome) => outcome,
                Err((code, reason)) => {
                    // Bad input, or too many awareness states, or an oversized SYNC_STATUS.
                    assert!(
                        matches!(
                            code,
                            close::INVALID_PAYLOAD
                                | close::POLICY_VIOLATION
                                | close::MESSAGE_TOO_BIG
                        ),
                        "frame {frame:?} closed the connection with {code} ({reason})"
                    );
                    self.remove(conn);
                    conn = self.add();
                    FrameOutcome::Closed(code)
                }
            };
            outcomes.push(outcome);
        }
        self.remove(conn);
        outcomes
    }

    /// Mirrors `Room::add`: the new connection gets step1 and every awareness state.
    fn add(&mut self) -> u64 {
        let conn = self.next_conn;
        self.next_conn += 1;
        let sv = self.doc.doc().transact().state_vector();
        match reread(&protocol::step1(&sv)) {
            Inbound::Step1(got) => assert_eq!(got, sv, "step1 changed the state vector"),
            other => panic!("step1 decoded as {other:?}"),
        }
        self.send_awareness();
        self.members.insert(conn, HashSet::new());
        conn
    }

    /// Mirrors `Room::remove`: the connection's awareness states go, and everyone is told.
    fn remove(&mut self, conn: u64) {
        let Some(announced) = self.members.remove(&conn) else {
            return;
        };
        if announced.is_empty() {
            return;
        }
        let present = self.awareness.len();
        let update = self
            .awareness
            .remove(announced.iter().copied())
            .expect("a connection's announced states are present until it leaves");
        check_awareness_frame(&update);
        assert_eq!(self.awareness.len(), present - update.clients.len());
        let left = self.awareness.all();
        for id in &announced {
            assert!(
                !left.clients.contains_key(id),
                "awareness state {id:?} outlived the connection that announced it"
            );
        }
    }

    /// Mirrors `connection::handle`.
    fn handle(
        &mut self,
        conn: u64,
        frame: &[u8],
        read_only: bool,
    ) -> Result<FrameOutcome, (u16, String)> {
        match protocol::decode(frame) {
            Err(e) => Err((close::INVALID_PAYLOAD, format!("malformed message: {e}"))),
            Ok(Inbound::Step1(sv)) => {
                self.step2(&sv);
                Ok(FrameOutcome::Handled)
            }
            Ok(Inbound::Update(update)) if read_only => {
                match crate::sync::read_only::changes(self.doc.doc(), &update) {
                    Err(e) => Err((close::INVALID_PAYLOAD, format!("bad update: {e}"))),
                    Ok(false) => Ok(FrameOutcome::Handled),
                    Ok(true) => Ok(FrameOutcome::Refused),
                }
            }
            Ok(Inbound::Update(update)) => {
                if let Ok(decoded) = crate::storage::decode_update(&update) {
                    let sv = self.doc.doc().transact().state_vector();
                    self.out_of_order |= crate::storage::has_gap(&decoded, &sv);
                }
                self.apply(conn, &update)?;
                Ok(FrameOutcome::Handled)
            }
            Ok(Inbound::Awareness(update)) => {
                self.apply_awareness(conn, update)?;
                Ok(FrameOutcome::Handled)
            }
            Ok(Inbound::QueryAwareness) => {
                self.send_awareness();
                Ok(FrameOutcome::Handled)
            }
            Ok(Inbound::SyncStatus) if frame.len() > protocol::MAX_SYNC_STATUS => {
                Err((close::MESSAGE_TOO_BIG, "SYNC_STATUS too big".into()))
            }
            Ok(Inbound::SyncStatus) => {
                // Echoed once everything before it is durable: that must resolve.
                let flushed = match &self.doc {
                    RoomDoc::Workspace(client) => client.flushed(),
                    RoomDoc::Dynamic(doc) => doc.storage.flush(),
                };
                block_on(flushed).expect("storage flushes");
                Ok(FrameOutcome::Handled)
            }
            Ok(Inbound::Ignored(_)) => Ok(FrameOutcome::Handled),
        }
    }

    /// Mirrors `Room::step2`, and checks the answer applies on a fresh doc.
    fn step2(&self, sv: &StateVector) {
        let (update, ours) = {
            let txn = self.doc.doc().transact();
            (txn.encode_state_as_update_v1(sv), txn.state_vector())
        };
        let frame = protocol::step2(&update);
        let Inbound::Update(payload) = reread(&frame) else {
            panic!("step2 did not decode as an update");
        };
        assert_eq!(payload, update, "the step2 frame changed its payload");
        let decoded = Update::decode_v1(&payload)
            .unwrap_or_else(|e| panic!("the server's step2 for {sv:?} does not decode: {e}"));
        if *sv == StateVector::default() {
            let fresh = Doc::new();
            fresh
                .transact_mut()
                .apply_update(decoded)
                .expect("the server's full state applies to a fresh doc");
            same_state(
                &fresh.transact().state_vector(),
                &ours,
                has_pending(self.doc.doc()),
                "a joiner fed step2",
            );
        }
    }

    /// Mirrors `Room::apply`, with its error mapping: an update the doc's emitted update
    /// may leave part of is fanned out as received too.
    fn apply(&self, conn: u64, update: &[u8]) -> Result<(), (u16, String)> {
        let origin = origin_of(conn);
        let incomplete = match &self.doc {
            RoomDoc::Workspace(client) => {
                client
                    .apply_update_from(update, origin)
                    .map_err(|e| match e {
                        WorkspaceError::BadUpdate(m) => {
                            (close::INVALID_PAYLOAD, format!("bad update: {m}"))
                        }
                        WorkspaceError::Destroyed => {
                            (close::GOING_AWAY, "the workspace is closing".into())
                        }
                        e => (close::INTERNAL_ERROR, e.to_string()),
                    })?
            }
            RoomDoc::Dynamic(doc) => doc
                .apply(update, origin)
                .map_err(|e| (close::INVALID_PAYLOAD, format!("bad update: {e}")))?,
        };
        if incomplete {
            crate::lock::lock(&self.fanned_out).push(update.to_vec());
        }
        Ok(())
    }

    /// Mirrors `Room::apply_awareness` (the frame itself is echoed as received), with the
    /// default `max_awareness_states`.
    fn apply_awareness(&mut self, conn: u64, update: AwarenessUpdate) -> Result<(), (u16, String)> {
        let limit = crate::server::ServerOptions::default().max_awareness_states;
        let Some(member) = self.members.get_mut(&conn) else {
            return Ok(());
        };
        if self.awareness.announced_after(&update, member) > limit {
            return Err((close::POLICY_VIOLATION, "too many awareness states".into()));
        }
        let changes = self.awareness.apply(update);
        Change::track(changes, member);
        assert!(
            member.len() <= limit,
            "a connection has more states than allowed"
        );
        Ok(())
    }

    /// Mirrors `Room::send_awareness`.
    fn send_awareness(&self) {
        let update = self.awareness.all();
        assert_eq!(update.clients.len(), self.awareness.len());
        check_awareness_frame(&update);
    }

    /// After the last connection left: a peer that applied every fanned-out update (from
    /// an empty doc, as the room's doc started) has the room's state; the doc's full state
    /// round-trips.
    fn finish(&mut self) {
        let _ = self.doc.doc().unobserve_update_v1("fuzzing-room");
        assert!(self.members.is_empty());
        check_encoding(self.doc.doc());
        let peer = Doc::new();
        for update in crate::lock::lock(&self.fanned_out).drain(..) {
            let decoded = Update::decode_v1(&update).expect("a fanned-out update decodes");
            peer.transact_mut()
                .apply_update(decoded)
                .expect("a fanned-out update applies");
        }
        assert_eq!(
            clocks(&peer.transact().state_vector()),
            clocks(&self.doc.doc().transact().state_vector()),
            "a peer that got every fanned-out update has another state vector"
        );
        if !has_pending(self.doc.doc()) {
            assert_eq!(
                replica_contents(&peer),
                replica_contents(self.doc.doc()),
                "a peer that got every fanned-out update reads other rows"
            );
        }
    }
}

fn check_awareness_frame(update: &AwarenessUpdate) {
    let frame = protocol::awareness(update.clone());
    match reread(&frame) {
        Inbound::Awareness(got) => assert_eq!(&got, update, "the awareness frame changed"),
        other => panic!("an awareness frame decoded as {other:?}"),
    }
}

/// After arbitrary sync input, REST writes still land: a valid row upserted under every
/// stored id (valid or not) reads back exactly.
fn rest_after_sync(client: &WorkspaceClient, contents: &Contents) {
    let mut ids: Vec<String> = contents.tables[0]
        .1
        .iter()
        .map(|(key, _)| key.clone())
        .collect();
    ids.push("fresh".into());
    for id in ids {
        let body = serde_json::to_vec(&valid_post(&id)).expect("encode a row");
        let outcome = rest_request(
            client,
            &RestRequest {
                method: Method::Post,
                table: "posts",
                id: "",
                body: &body,
            },
        );
        let valid_id = !id.is_empty() && !id.contains(':');
        assert_eq!(
            outcome.status < 300,
            valid_id,
            "upserting a valid row under {id:?} after sync answered {outcome:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// REST bodies
// ---------------------------------------------------------------------------------------

/// The REST methods that carry a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `POST /workspaces/{ws}/tables/{table}`: upsert the whole row in the body.
    Post,
    /// `PUT /workspaces/{ws}/tables/{table}/{id}`: update the fields in the body.
    Put,
    /// `PATCH /workspaces/{ws}/tables/{table}/{id}`: the same as PUT.
    Patch,
}

/// One REST write.
#[derive(Debug, Clone, Copy)]
pub struct RestRequest<'a> {
    /// The method.
    pub method: Method,
    /// The table named in the path.
    pub table: &'a str,
    /// The row id in the path (PUT and PATCH; ignored for POST).
    pub id: &'a str,
    /// The request body, sent as `application/json`.
    pub body: &'a [u8],
}

/// What the handler answers.
#[derive(Debug, Clone, PartialEq)]
pub struct RestOutcome {
    /// The HTTP status.
    pub status: u16,
    /// The `data` of a 2xx answer.
    pub data: Option<Value>,
}

/// Runs one request against a fresh, seeded workspace. See [`rest_requests`].
pub fn rest_body(body: &[u8], method: Method, table: &str, id: &str) -> RestOutcome {
    rest_requests(&[RestRequest {
        method,
        table,
        id,
        body,
    }])
    .pop()
    .expect("one outcome per request")
}

/// The ids a fresh REST harness workspace holds: `posts` has a valid row `seed` and an
/// invalid row `broken` (written by a peer: a fractional `views`, no `title`, and a field
/// the schema does not know); `notes` has a valid row `n1`.
pub const SEEDED_IDS: [&str; 3] = ["seed", "broken", "n1"];

/// Runs the requests in order against a fresh workspace (seeded as [`SEEDED_IDS`] says)
/// and checks, for each:
/// - nothing panics; a body that is not JSON is 400 (or 422, as axum classifies serde
///   errors) and writes nothing;
/// - a write fails exactly when the resulting row would not validate (POST: the body with
///   defaults filled in; PUT/PATCH: the stored row with the body's fields over it), or the
///   row to update does not exist; the error is a workspace error answered 404 or 422,
///   never 5xx, and nothing at all is written;
/// - a write that succeeds reads back as written (numbers as float64, defaults and nulls
///   filled in), POST says 201 exactly when the row is new, and no other row changes.
///
/// At the end the workspace's full state round-trips, a second client fed it reads the
/// same rows, and so does the workspace reloaded from its storage.
pub fn rest_requests(requests: &[RestRequest<'_>]) -> Vec<RestOutcome> {
    let storage = MemoryStorage::new();
    let client = open_workspace(&storage);
    seed(&client);
    let outcomes = requests
        .iter()
        .map(|request| rest_request(&client, request))
        .collect();
    let contents = read_contents(&client);
    check_encoding(client.doc());
    assert_eq!(
        replica_contents(client.doc()),
        contents,
        "a client fed the full state reads other rows"
    );
    block_on(client.destroy()).expect("destroy the client");
    let reloaded = open_workspace(&storage);
    assert_eq!(
        read_contents(&reloaded),
        contents,
        "the workspace reloaded from its storage reads other rows"
    );
    block_on(reloaded.destroy()).expect("destroy the reloaded client");
    outcomes
}

/// Ids the fuzzer's requests pick from.
const FUZZ_IDS: [&str; 8] = ["seed", "broken", "n1", "new", "a:b", "x y", "ü", "seed "];

/// Splits fuzzer bytes into requests, then runs [`rest_requests`].
///
/// Layout, per request: a byte (bits 0-1: method, bit 2: table `notes` instead of
/// `posts`), a byte picking the id, a little-endian `u16` body length, the body (the last
/// one takes what is left).
pub fn rest_requests_from_bytes(data: &[u8]) -> Vec<RestOutcome> {
    let mut requests = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 && requests.len() < 16 {
        let (op, pick) = (rest[0], rest[1]);
        rest = &rest[2..];
        let len = match rest {
            [lo, hi, tail @ ..] => {
                rest = tail;
                usize::from(u16::from_le_bytes([*lo, *hi]))
            }
            _ => rest.len(),
        };
        let take = len.min(rest.len());
        let body = &rest[..take];
        rest = &rest[take..];
        requests.push(RestRequest {
            method: match op & 3 {
                0 | 3 => Method::Post,
                1 => Method::Put,
                _ => Method::Patch,
            },
            table: if op & 4 == 0 { "posts" } else { "notes" },
            id: FUZZ_IDS[usize::from(pick) % FUZZ_IDS.len()],
            body,
        });
    }
    rest_requests(&requests)
}

fn seed(client: &WorkspaceClient) {
    let posts = client.table("posts").expect("posts");
    posts.upsert(valid_post("seed")).expect("seed a valid post");
    client
        .table("notes")
        .expect("notes")
        .upsert(json!({ "slug": "n1", "body": "hello" }))
        .expect("seed a valid note");
    // A row a peer wrote: LWW entries straight into the table's array.
    let array = client.doc().get_or_insert_array("table:posts");
    {
        let mut txn = client.doc().transact_mut_with("fuzzing-peer");
        for (key, val) in [
            ("broken:id", Any::from("broken")),
            ("broken:views", Any::from(1.5)),
            ("broken:labels", Any::from(vec![Any::from("x")])),
            ("broken:ghost", Any::from(true)),
        ] {
            let entry = HashMap::from([
                ("key".to_string(), Any::from(key)),
                ("val".to_string(), val),
                ("ts".to_string(), Any::from(1.0)),
            ]);
            array.push_back(&mut txn, Any::from(entry));
        }
    }
    client.settle();
    assert!(matches!(posts.get("broken"), RowResult::Invalid { .. }));
}

/// Fills defaults and nulls in, as a POST does before validating.
fn complete(def: &TableDefinition, mut row: Map<String, Value>) -> Map<String, Value> {
    for field in &def.fields {
        if !row.contains_key(&field.name) {
            if let Some(default) = &field.spec.default {
                row.insert(field.name.clone(), default.clone());
            } else if field.spec.nullable {
                row.insert(field.name.clone(), Value::Null);
            }
        }
    }
    row
}

/// A value as it reads back from the doc (every number a float64).
fn stored(value: &Value) -> Value {
    any_to_json(&crate::workspace::json_to_any(value))
}

/// The row `get` must return after a write whose result was `row`.
fn read_back(def: &TableDefinition, row: &Map<String, Value>) -> Map<String, Value> {
    def.fields
        .iter()
        .map(|f| {
            let value = row.get(&f.name).map(stored).unwrap_or(Value::Null);
            (f.name.clone(), value)
        })
        .collect()
}

fn snapshot(client: &WorkspaceClient) -> (StateVector, Contents) {
    (
        client.doc().transact().state_vector(),
        read_contents(client),
    )
}

/// The contents with row `id` of `table` left out.
fn without(contents: &Contents, table: &TableHandle, id: &str) -> Contents {
    let mut out = contents.clone();
    for (name, rows) in &mut out.tables {
        if name == table.name() {
            rows.retain(|(key, _)| key != id);
        }
    }
    out
}

fn error_status(e: WorkspaceError) -> u16 {
    assert!(
        matches!(
            e,
            WorkspaceError::Invalid { .. } | WorkspaceError::NotFound { .. }
        ),
        "a REST write failed with {e:?}: only invalid data or a missing row may fail it"
    );
    let status = ApiError::from(e).status.as_u16();
    assert!(
        matches!(status, 404 | 422),
        "a REST write answered {status}"
    );
    status
}

/// Mirrors `server::rest::{create, update}` for one request, with the checks of
/// [`rest_requests`].
fn rest_request(client: &WorkspaceClient, request: &RestRequest<'_>) -> RestOutcome {
    let rejected = |status: u16| RestOutcome { status, data: None };
    let Ok(table) = client.table(request.table) else {
        return rejected(404);
    };
    // axum's `Json`: serde's data errors are 422, syntax and EOF errors 400.
    let body: Value = match serde_json::from_slice(request.body) {
        Ok(body) => body,
        Err(e) if e.classify() == serde_json::error::Category::Data => return rejected(422),
        Err(_) => return rejected(400),
    };
    let def = table.definition().clone();
    let id_field = def.id_field().to_string();
    let before = snapshot(client);
    let outcome = match request.method {
        Method::Post => {
            let id = body
                .get(&id_field)
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_default();
            let existed = table.has(&id);
            let expected = match &body {
                Value::Object(obj) => {
                    let full = complete(&def, obj.clone());
                    validate_row(&def, &full).is_empty().then_some(full)
                }
                _ => None,
            };
            match table.upsert(body.clone()) {
                Ok(created) => {
                    let full = expected.unwrap_or_else(|| {
                        panic!("POST {body} was accepted but the row does not validate")
                    });
                    assert_eq!(created, !existed, "POST {body}: `created` is wrong");
                    let row = read_back(&def, &full);
                    assert_eq!(
                        table.get(&id),
                        RowResult::Valid(row.clone()),
                        "POST {body} does not read back as written"
                    );
                    let after = read_contents(client);
                    assert_eq!(
                        without(&after, &table, &id),
                        without(&before.1, &table, &id),
                        "POST {body} changed other rows"
                    );
                    RestOutcome {
                        status: if created { 201 } else { 200 },
                        data: Some(Value::Object(row)),
                    }
                }
                Err(e) => {
                    assert!(expected.is_none(), "POST {body} was refused: {e}");
                    rejected(error_status(e))
                }
            }
        }
        Method::Put | Method::Patch => {
            let id = request.id;
            let mut body = body;
            // The URL names the row: an id in the body is ignored.
            if let Value::Object(fields) = &mut body {
                fields.remove(&id_field);
            }
            let current = table.get(id);
            let expected = match (&body, &current) {
                (Value::Object(_), RowResult::NotFound) => Err(404),
                (
                    Value::Object(partial),
                    RowResult::Valid(row) | RowResult::Invalid { row, .. },
                ) => {
                    let mut merged = row.clone();
                    merged.retain(|k, _| def.field(k).is_some());
                    for (k, v) in partial {
                        merged.insert(k.clone(), v.clone());
                    }
                    if validate_row(&def, &merged).is_empty() {
                        Ok(merged)
                    } else {
                        Err(422)
                    }
                }
                _ => Err(422),
            };
            match table.update(id, body.clone()) {
                Ok(merged) => {
                    let want = expected.unwrap_or_else(|status| {
                        panic!(
                            "{:?} {id:?} {body} was accepted, expected {status}",
                            request.method
                        )
                    });
                    assert_eq!(
                        merged, want,
                        "the merged row is not the stored row + the body"
                    );
                    let row = read_back(&def, &merged);
                    assert_eq!(
                        table.get(id),
                        RowResult::Valid(row.clone()),
                        "{:?} {id:?} {body} does not read back as written",
                        request.method
                    );
                    let after = read_contents(client);
                    assert_eq!(
                        without(&after, &table, id),
                        without(&before.1, &table, id),
                        "{:?} {id:?} {body} changed other rows",
                        request.method
                    );
                    RestOutcome {
                        status: 200,
                        data: Some(Value::Object(merged)),
                    }
                }
                Err(e) => {
                    let status = error_status(e);
                    assert_eq!(
                        expected.err(),
                        Some(status),
                        "{:?} {id:?} {body} answered {status}",
                        request.method
                    );
                    rejected(status)
                }
            }
        }
    };
    if outcome.status >= 400 {
        assert_eq!(
            snapshot(client),
            before,
            "{:?} {:?} was refused with {} but wrote something",
            request.method,
            String::from_utf8_lossy(request.body),
            outcome.status
        );
    }
    outcome
}
