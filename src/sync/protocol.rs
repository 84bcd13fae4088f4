//! The y-websocket wire format: decoding inbound frames and encoding outbound ones, on top
//! of `yrs::sync`. One message per binary frame, as y-websocket sends them.

use bytes::Bytes;
use yrs::encoding::write::Write;
use yrs::sync::protocol::{MSG_SYNC, MSG_SYNC_STEP_2, MSG_SYNC_UPDATE};
use yrs::sync::{AwarenessUpdate, Message, SyncMessage};
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::{Encode, Encoder, EncoderV1};
use yrs::StateVector;

/// Message type of SYNC_STATUS: its payload (the client's local version) is echoed back
/// unchanged once everything the connection sent before it is applied and durable. A
/// SYNC_STATUS message may be at most 1 KiB (a version takes a few bytes); a larger one
/// closes the connection with 1009, so the echoes a peer can make the server hold stay
/// small.
pub const MSG_SYNC_STATUS: u8 = 102;

/// Largest SYNC_STATUS message, in bytes (see [`MSG_SYNC_STATUS`]).
pub(crate) const MAX_SYNC_STATUS: usize = 1024;

/// Close codes the server sends on sync connections.
pub mod close {
    /// The server is shutting down, or the doc is being closed (an update arriving then is
    /// not applied).
    pub const GOING_AWAY: u16 = 1001;
    /// A text frame arrived; the protocol is binary.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// No message within the handshake deadline, or an awareness update that would give the
    /// connection more than `max_awareness_states` states (it is not applied).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message could not be decoded, or its update could not be applied.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame or message was larger than the server's `max_frame_size` or
    /// `max_message_size`, or a SYNC_STATUS message larger than 1 KiB.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server failed (storage could not load or save the doc).
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The connection fell too far behind: `send_queue` outputs were pending for it
    /// (frames, and SYNC_STATUS echoes, whether waiting for durability or ready to send).
    /// Also sent when a connection or room limit is reached, when the client's address
    /// opened `max_new_rooms_per_minute` dynamic rooms this minute, or when the doc's storage
    /// cannot take the update now (commits fail and `SqliteOptions::max_pending_bytes`
    /// already wait; the update was not applied). Retryable: the client resyncs when it
    /// reconnects, sending its update again.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// `Bad room name: <why>`: no workspace has this id, and it is not a valid dynamic doc
    /// name (1 to `max_room_name_len` ASCII letters, digits, `-`, `_`, `.`, not starting
    /// with `.`). No doc is created. Final for y-websocket clients.
    pub const BAD_ROOM_NAME: u16 = 4400;
    /// No workspace has this id and dynamic docs are off. Final for y-websocket clients
    /// (4400–4499 stop their reconnect loop).
    pub const ROOM_NOT_FOUND: u16 = 4404;
    /// `Unauthorized`: no valid token (final for y-websocket clients).
    pub const UNAUTHORIZED: u16 = 4401;
    /// `Forbidden: this connection may only read`: a read-only connection sent a doc
    /// update that would change the doc (items or deletions it lacks). The update is
    /// neither applied nor sent to anyone, and nothing the connection sent after it is
    /// acknowledged, so no SYNC_STATUS echo ever covers it. Final for y-websocket clients
    /// and for [`SyncProvider`](crate::client::SyncProvider) (its status becomes
    /// `Error { code: 4403, .. }` and its local changes stay unsaved). An update holding
    /// only what the doc has (a read-only client's usual answer to step1) is let through.
    pub const FORBIDDEN: u16 = 4403;

    /// The longest reason a close frame carries: its payload is at most 125 bytes
    /// (RFC 6455, 5.5), two of them the code. A longer one makes clients fail the
    /// connection instead of reading the code.
    pub(crate) const MAX_REASON: usize = 123;

    /// `reason`, cut to [`MAX_REASON`] bytes between two characters.
    pub(crate) fn fit(reason: &str) -> &str {
        let mut end = reason.len().min(MAX_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        &reason[..end]
    }
}

/// An inbound message, decoded.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// Sync step 1: the peer's state vector; answered with step 2.
    Step1(StateVector),
    /// Sync step 2 or an update: to apply.
    Update(Vec<u8>),
    /// An awareness update.
    Awareness(AwarenessUpdate),
    /// A request for every awareness state.
    QueryAwareness,
    /// SYNC_STATUS: echoed unchanged once durable.
    SyncStatus,
    /// AUTH or a type this server does not use: ignored.
    Ignored(u8),
}

/// Decodes one frame. Truncated or malformed input is an error (never a panic).
pub(crate) fn decode(frame: &[u8]) -> Result<Inbound, String> {
    check_sizes(frame)?;
    let message = crate::storage::decode_untrusted(|| {
        let mut decoder = DecoderV1::from(frame);
        Message::decode(&mut decoder).map_err(|e| e.to_string())
    })?;
    Ok(match message {
        Message::Sync(SyncMessage::SyncStep1(sv)) => Inbound::Step1(sv),
        Message::Sync(SyncMessage::SyncStep2(update) | SyncMessage::Update(update)) => {
            Inbound::Update(update)
        }
        Message::Awareness(update) => Inbound::Awareness(update),
        Message::AwarenessQuery => Inbound::QueryAwareness,
        Message::Custom(MSG_SYNC_STATUS, _) => Inbound::SyncStatus,
        Message::Custom(tag, _) => Inbound::Ignored(tag),
        Message::Auth(_) => Inbound::Ignored(yrs::sync::protocol::MSG_AUTH),
    })
}

/// Checks the declared sizes inside a step 1's state vector or an awareness update before
/// yrs decodes them (and reserves what they declare). Updates are checked where they are
/// decoded, in `storage::decode_update`.
pub(crate) fn check_sizes(frame: &[u8]) -> Result<(), String> {
    use crate::storage::untrusted;
    use yrs::encoding::read::Read;
    use yrs::sync::protocol::{MSG_AWARENESS, MSG_SYNC_STEP_1};
    let mut decoder = DecoderV1::from(frame);
    match decoder.read_var::<u8>() {
        Ok(MSG_SYNC) if matches!(decoder.read_var::<u8>(), Ok(MSG_SYNC_STEP_1)) => {
            match decoder.read_buf() {
                Ok(sv) => untrusted::check_state_vector(sv),
                Err(_) => Ok(()),
            }
        }
        Ok(MSG_AWARENESS) => match decoder.read_buf() {
            Ok(update) => untrusted::check_awareness(update),
            Err(_) => Ok(()),
        },
        _ => Ok(()),
    }
}

/// `SYNC step1` with this state vector.
pub(crate) fn step1(sv: &StateVector) -> Bytes {
    Message::Sync(SyncMessage::SyncStep1(sv.clone()))
        .encode_v1()
        .into()
}

/// `SYNC step2` carrying `update`, without copying it twice.
pub(crate) fn step2(update: &[u8]) -> Bytes {
    sync_frame(MSG_SYNC_STEP_2, update)
}

/// [`step2`] built in `update`'s own buffer: the header goes in front of it in place, so a
/// big doc's state is not copied into a second buffer of its size (fresh memory is slow to
/// touch, and the copy would double the peak of the first joiner's encoding).
pub(crate) fn step2_in_place(mut update: Vec<u8>) -> Bytes {
    let mut header = Vec::with_capacity(12);
    header.write_var(MSG_SYNC);
    header.write_var(MSG_SYNC_STEP_2);
    header.write_var(update.len());
    update.splice(0..0, header);
    update.into()
}

/// `SYNC update` carrying `update`.
pub(crate) fn update(update: &[u8]) -> Bytes {
    sync_frame(MSG_SYNC_UPDATE, update)
}

fn sync_frame(sub: u8, payload: &[u8]) -> Bytes {
    let mut encoder = EncoderV1::new();
    encoder.write_var(MSG_SYNC);
    encoder.write_var(sub);
    encoder.write_buf(payload);
    encoder.to_vec().into()
}

/// An AWARENESS frame.
pub(crate) fn awareness(update: AwarenessUpdate) -> Bytes {
    Message::Awareness(update).encode_v1().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_reason_is_cut_between_characters() {
        assert_eq!(close::fit("short"), "short");
        let ascii = "a".repeat(200);
        assert_eq!(close::fit(&ascii).len(), close::MAX_REASON);
        // 'é' is 2 bytes: 123 falls inside the 62nd.
        let wide = "é".repeat(100);
        assert_eq!(close::fit(&wide), "é".repeat(61));
    }

    #[test]
    fn frames_round_trip_through_yrs() {
        let sv = StateVector::default();
        assert!(matches!(decode(&step1(&sv)), Ok(Inbound::Step1(s)) if s == sv));
        assert!(matches!(decode(&step2(&[1, 2, 3])), Ok(Inbound::Update(u)) if u == [1, 2, 3]));
        assert!(matches!(decode(&update(&[4])), Ok(Inbound::Update(u)) if u == [4]));
        for len in [0, 3, 127, 128, 300, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            assert_eq!(
                step2_in_place(payload.clone()),
                step2(&payload),
                "{len} bytes"
            );
        }
        assert!(matches!(decode(&[3]), Ok(Inbound::QueryAwareness)));
        assert!(matches!(decode(&[102, 1, 7]), Ok(Inbound::SyncStatus)));
        assert!(matches!(decode(&[2, 1]), Ok(Inbound::Ignored(2))));
    }

    #[test]
    fn truncated_and_malformed_frames_are_errors() {
        for bad in [
            &[][..],
            &[0],
            &[0, 2],
            &[0, 2, 5, 1],
            &[0, 9, 0],
            &[1, 3, 1],
            &[102],
        ] {
            assert!(decode(bad).is_err(), "{bad:?} decoded");
        }
    }
}
