//! WebSocket sync in the y-websocket protocol: one room per doc (a workspace's, or a
//! dynamic doc created on demand), shared by all its connections.
//!
//! Served by the server at `GET /workspaces/{id}/sync`, so a stock y-websocket
//! `WebsocketProvider` with server URL `ws://host:port/workspaces/{id}` and room `sync`
//! connects unchanged. What a connection gets:
//! - on connect, the server's step1 and every awareness state; its step1 is answered with
//!   step2;
//! - every doc update made elsewhere (other connections, REST, Rust code), encoded once per
//!   update and shared, in commit order; never its own updates back;
//! - every awareness update, its own included; when it leaves, its awareness states are
//!   removed and the removal is sent to the others;
//! - SYNC_STATUS (102) echoed byte for byte once everything it sent before is applied
//!   and durable;
//! - a ping every `ping_interval`; no answer by the next one drops it.
//!
//! Bad input (text frames, malformed messages, oversized messages) closes only that
//! connection, with 1003, 1007 or 1009; silence past the handshake deadline with 1008. A
//! connection whose send queue overflows, or that would exceed a connection or room
//! limit, is closed with 1013 and resyncs when it reconnects; one without a valid token
//! with 4401; a read-only one that sends an edit with 4403 (its edit is neither applied nor
//! acknowledged). See [`close`] for every code.

pub(crate) mod awareness;
#[cfg(feature = "redis")]
pub(crate) mod bus;
mod connection;
pub(crate) mod dynamic;
mod hub;
mod limits;
mod options;
mod outbox;
pub(crate) mod protocol;
pub(crate) mod read_only;
mod room;
pub(crate) mod wire;
#[cfg(test)]
mod wire_tests;

#[cfg(feature = "redis")]
pub use bus::RedisBus;
pub(crate) use connection::Transport;
pub(crate) use hub::Stats;
pub use hub::{RoomEvent, SyncHub, SyncStats};
pub(crate) use options::SyncOptions;
pub use protocol::{close, MSG_SYNC_STATUS};
