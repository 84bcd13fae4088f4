//! The room's work on its doc: applying updates and answering step 1, done on the async
//! worker only when it is quick and the doc is free, else on a blocking thread. A big
//! update or a doc busy with one (yrs can take seconds over 30 MB) must not park a worker:
//! every connection, ping and REST request on it would stall.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use yrs::{ReadTxn, StateVector, Transact};

use super::{origin_of, Out, Outbox, Room, RoomDoc, EMPTY_UPDATE};
use crate::sync::protocol::{self, close};

/// Updates up to this size are applied on the async worker when no transaction is open on
/// the doc (the common case, and the cheap one); bigger ones, and any update while the doc
/// is busy, are applied on a blocking thread, so a worker never waits for the doc's lock
/// or spends long in yrs.
const INLINE_UPDATE: usize = 64 * 1024;
/// A step 1 is answered on the async worker when the doc is free and about this small
/// (encoded), or when the shared full-state encoding is current; else on a blocking thread.
const INLINE_DOC: u64 = 256 * 1024;

impl Room {
    /// Answers step1: the updates the peer lacks, queued while no update can commit, so
    /// later updates reach the peer after it. Joiners with an empty state vector share one
    /// encoding of the full state. A big doc, or one busy with a transaction, is encoded on
    /// a blocking thread (the caller waits, so the connection's messages stay in order).
    pub async fn step2(self: &Arc<Self>, sv: StateVector, out: &Outbox) {
        let full = sv == StateVector::default();
        // Held until the frame is queued, so concurrent joiners wait for one encoding.
        let mut cache = match full {
            true => Some(self.full_state.lock().await),
            false => None,
        };
        let cached = cache.as_ref().and_then(|c| (**c).clone());
        if let Ok(txn) = self.doc.doc().try_transact() {
            let version = self.version.load(Ordering::Acquire);
            let current = cached.as_ref().filter(|(v, _)| *v == version);
            if let Some((_, frame)) = current {
                out.push(Out::Frame(frame.clone()));
                return;
            }
            if self.size.load(Ordering::Acquire) <= INLINE_DOC {
                let frame = self.encode_step2(&txn, &sv);
                out.push(Out::Frame(frame.clone()));
                if let Some(cache) = &mut cache {
                    **cache = Some((version, frame));
                }
                return;
            }
        }
        let (room, queue) = (self.clone(), out.clone());
        let encoded = tokio::task::spawn_blocking(move || {
            let txn = room.doc.doc().transact();
            let version = room.version.load(Ordering::Acquire);
            let frame = match cached {
                Some((v, frame)) if v == version => frame,
                _ => room.encode_step2(&txn, &sv),
            };
            queue.push(Out::Frame(frame.clone()));
            (version, frame)
        })
        .await;
        match (encoded, cache) {
            (Ok(encoded), Some(mut cache)) => *cache = Some(encoded),
            (Ok(_), None) => {}
            (Err(e), _) => {
                tracing::error!(room = %self.id, error = %e, "encoding a step 2 failed");
                out.close(close::INTERNAL_ERROR, "cannot encode the doc");
            }
        }
    }

    /// The step2 frame for a peer at `sv`; an encoding of the full state also measures the
    /// doc. Called with a read transaction open.
    fn encode_step2(&self, txn: &yrs::Transaction, sv: &StateVector) -> Bytes {
        let update = txn.encode_state_as_update_v1(sv);
        if *sv == StateVector::default() {
            self.size.store(update.len() as u64, Ordering::Release);
        }
        protocol::step2_in_place(update)
    }

    /// Applies an update from connection `conn`; the fan-out skips that connection. An
    /// update the doc's own emitted update leaves part of (see
    /// `storage::apply_untrusted`) is also fanned out as received. A small update into a
    /// free doc is applied on the spot; else (or to settle LWW losers it revealed) the work
    /// goes to a blocking thread and the caller waits, so a connection's messages stay in
    /// order and a SYNC_STATUS after it still covers it. An empty update takes no
    /// transaction at all.
    pub async fn apply(self: &Arc<Self>, conn: u64, update: Vec<u8>) -> Result<(), (u16, String)> {
        if update == EMPTY_UPDATE {
            // What every new client answers the server's step 1 with: nothing to apply, so
            // no transaction, which would wait for a busy doc and keep the other joiners'
            // reads of the doc off the async workers.
            return Ok(());
        }
        if update.len() <= INLINE_UPDATE {
            let origin = origin_of(conn);
            let applied = match &self.doc {
                RoomDoc::Workspace(client) => client
                    .try_apply_update_from(&update, origin.clone())
                    .map(|r| r.map_err(workspace_error)),
                RoomDoc::Dynamic(doc) => doc
                    .try_apply(&update, origin.clone())
                    .map(|r| r.map_err(workspace_error)),
            };
            if let Some(applied) = applied {
                if applied? {
                    self.fan_out(Some(&origin), &update);
                }
                let RoomDoc::Workspace(client) = &self.doc else {
                    return Ok(());
                };
                if client.is_settled() == Some(true) {
                    return Ok(());
                }
                let client = client.clone();
                return off_worker(move || {
                    client.settle();
                    Ok(())
                })
                .await;
            }
        }
        let room = self.clone();
        off_worker(move || room.apply_blocking(conn, &update)).await
    }

    /// [`Room::apply`], waiting for the doc's lock (on a blocking thread).
    fn apply_blocking(&self, conn: u64, update: &[u8]) -> Result<(), (u16, String)> {
        let origin = origin_of(conn);
        let incomplete = match &self.doc {
            RoomDoc::Workspace(client) => client
                .apply_update_from(update, origin.clone())
                .map_err(workspace_error)?,
            RoomDoc::Dynamic(doc) => doc.apply(update, origin.clone()).map_err(workspace_error)?,
        };
        if incomplete {
            self.fan_out(Some(&origin), update);
        }
        Ok(())
    }
}

/// Runs `work` on a blocking thread and waits for it.
async fn off_worker(
    work: impl FnOnce() -> Result<(), (u16, String)> + Send + 'static,
) -> Result<(), (u16, String)> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "applying an update failed");
        Err((close::INTERNAL_ERROR, "cannot apply the update".into()))
    })
}

/// The close frame for an update the doc refused.
fn workspace_error(e: crate::WorkspaceError) -> (u16, String) {
    use crate::{StorageError, WorkspaceError as E};
    match e {
        E::BadUpdate(m) => bad_update(m),
        E::Destroyed | E::Storage(StorageError::Closed) => {
            (close::GOING_AWAY, "the doc is closing".into())
        }
        // Not applied: the client keeps the update and sends it again when it resyncs.
        E::Storage(StorageError::Unavailable { .. }) => (
            close::TRY_AGAIN_LATER,
            "storage is unavailable; try again later".into(),
        ),
        // Storage errors name files: logged here, not sent.
        e => {
            tracing::error!(error = %e, "applying an update failed");
            (close::INTERNAL_ERROR, "cannot apply the update".into())
        }
    }
}

fn bad_update(message: String) -> (u16, String) {
    (close::INVALID_PAYLOAD, format!("bad update: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{StorageError, WorkspaceError};

    #[test]
    fn a_storage_failure_closes_without_naming_files() {
        let e = WorkspaceError::Storage(StorageError::Damaged {
            path: "/srv/data/secret-workspace.db".into(),
            detail: "page 7 is corrupt".into(),
        });
        let (code, reason) = workspace_error(e);
        assert_eq!(code, close::INTERNAL_ERROR);
        assert!(
            !reason.contains("secret") && !reason.contains("corrupt"),
            "{reason}"
        );
    }
}
