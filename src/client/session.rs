//! The provider's background task: connect, run a session until it ends, wait, again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::encoding::read::{Cursor, Read};
use yrs::encoding::write::Write;
use yrs::sync::{Awareness, Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, StateVector, Transact};

use super::backoff::backoff;
use super::{Auth, Outbound, Shared, Status};
use crate::lock::lock;
use crate::sync::protocol::{self, MSG_SYNC_STATUS};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Close codes after which the provider stops trying: the server refused for good.
const FINAL_CODES: std::ops::RangeInclusive<u16> = 4400..=4499;
/// How long a clean close may take.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Failed attempts in a row after which a token callback is asked again.
const TOKEN_REFRESH_EVERY: u32 = 3;

/// How a session ended.
enum End {
    /// `disconnect()` or `destroy()`.
    Stopped,
    /// The server closed the connection.
    Closed { code: u16, reason: String },
    /// The connection failed or went silent.
    Lost(String),
}

/// Connects, runs sessions and reconnects with backoff until stopped or refused for good.
pub(crate) async fn supervise(shared: Arc<Shared>, stop: tokio_util::sync::CancellationToken) {
    let mut failures: u32 = 0;
    let mut token: Option<String> = None;
    let mut first = true;
    loop {
        if !first {
            shared.set_status(Status::Connecting);
            let wait = backoff(shared.options.backoff_base, failures);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        first = false;
        if stop.is_cancelled() {
            return;
        }
        shared.set_status(Status::Connecting);
        let url = match &shared.options.auth {
            Auth::None => shared.url.clone(),
            Auth::Token(t) => with_token(&shared.url, t),
            Auth::Callback(callback) => {
                if token.is_none() || (failures > 0 && failures.is_multiple_of(TOKEN_REFRESH_EVERY))
                {
                    let asked = tokio::select! {
                        _ = stop.cancelled() => return,
                        asked = callback() => asked,
                    };
                    match asked {
                        Ok(t) => token = Some(t),
                        Err(e) => {
                            tracing::warn!(url = %shared.url, error = %e, "token callback failed");
                            failures = failures.saturating_add(1);
                            continue;
                        }
                    }
                }
                with_token(&shared.url, token.as_deref().unwrap_or_default())
            }
        };
        let connecting = tokio_tungstenite::connect_async_with_config(url, None, true);
        let socket = tokio::select! {
            _ = stop.cancelled() => return,
            result = tokio::time::timeout(shared.options.connect_timeout, connecting) => result,
        };
        let socket = match socket {
            Ok(Ok((socket, _))) => socket,
            Ok(Err(e)) => {
                tracing::debug!(url = %shared.url, error = %e, "connection failed");
                failures = failures.saturating_add(1);
                continue;
            }
            Err(_) => {
                tracing::debug!(url = %shared.url, "connection timed out");
                failures = failures.saturating_add(1);
                continue;
            }
        };
        shared.set_status(Status::Handshaking);
        let (end, connected) = Session::new(&shared, socket).run(&stop).await;
        if connected {
            failures = 0;
        } else {
            failures = failures.saturating_add(1);
        }
        match end {
            End::Stopped => return,
            End::Closed { code, reason } if FINAL_CODES.contains(&code) => {
                tracing::warn!(url = %shared.url, code, %reason, "refused by the server; not retrying");
                shared.set_status(Status::Error { code, reason });
                return;
            }
            End::Closed { code, reason } => {
                tracing::info!(url = %shared.url, code, %reason, "closed by the server; reconnecting");
            }
            End::Lost(why) => {
                tracing::info!(url = %shared.url, %why, "connection lost; reconnecting");
            }
        }
    }
}

/// `url` with `token=<token>` added to its query.
fn with_token(url: &str, token: &str) -> String {
    let encoded = percent_encoding::utf8_percent_encode(token, percent_encoding::NON_ALPHANUMERIC);
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}token={encoded}")
}

/// The local client's awareness entry as a frame (its state, or its removal), if it has one.
pub(crate) fn own_awareness(awareness: &Awareness) -> Option<Bytes> {
    let update = awareness
        .update_with_clients([awareness.client_id()])
        .ok()?;
    Some(protocol::awareness(update))
}

fn close_frame(reason: &'static str) -> CloseFrame {
    CloseFrame {
        code: 1000.into(),
        reason: reason.into(),
    }
}

/// A SYNC_STATUS frame carrying `version`.
fn sync_status(version: u64) -> Bytes {
    let mut payload = Vec::new();
    payload.write_var(version);
    Message::Custom(MSG_SYNC_STATUS, payload).encode_v1().into()
}

/// One connection's life.
struct Session<'a> {
    shared: &'a Shared,
    socket: Socket,
    outbound: mpsc::UnboundedReceiver<Outbound>,
    /// Whether the answer to the server's step1 (which carries offline edits) is sent:
    /// only then may a SYNC_STATUS go out, so an echo never reports clean too early.
    step2_sent: bool,
    connected: bool,
    /// Whether the server has echoed a SYNC_STATUS in this session.
    echoed: bool,
    /// The highest local version whose changes this session has written: what a
    /// SYNC_STATUS may claim.
    sent_version: u64,
    last_frame: Instant,
    probe_sent: Option<Instant>,
    next_renewal: Instant,
}

impl<'a> Session<'a> {
    fn new(shared: &'a Shared, socket: Socket) -> Session<'a> {
        let (tx, outbound) = mpsc::unbounded_channel();
        *lock(&shared.outbound) = Some(tx);
        let now = Instant::now();
        Session {
            shared,
            socket,
            outbound,
            step2_sent: false,
            connected: false,
            echoed: false,
            sent_version: 0,
            last_frame: now,
            probe_sent: None,
            next_renewal: now + shared.options.awareness_renewal,
        }
    }

    /// Runs until the connection ends; returns how, and whether it reached connected.
    async fn run(mut self, stop: &tokio_util::sync::CancellationToken) -> (End, bool) {
        let end = self.serve(stop).await;
        *lock(&self.shared.outbound) = None;
        match &end {
            End::Stopped => {
                if self.shared.destroying.load(Ordering::Acquire) {
                    // The local state is already cleared: tell the peers before leaving.
                    let removal = own_awareness(&lock(&self.shared.awareness));
                    if let Some(frame) = removal {
                        let _ =
                            tokio::time::timeout(CLOSE_GRACE, self.socket.send(Ws::Binary(frame)))
                                .await;
                    }
                }
                // A clean close: wait (briefly) for the server's answer.
                let _ = tokio::time::timeout(CLOSE_GRACE, async {
                    let _ = self
                        .socket
                        .close(Some(close_frame("provider stopped")))
                        .await;
                    while let Some(Ok(_)) = self.socket.next().await {}
                })
                .await;
            }
            End::Lost(_) => {
                // The link is presumed dead: a close frame if it goes out at once, no wait.
                let _ = tokio::time::timeout(
                    Duration::from_millis(50),
                    self.socket.close(Some(close_frame("connection lost"))),
                )
                .await;
            }
            End::Closed { .. } => {}
        }
        (end, self.connected)
    }

    async fn serve(&mut self, stop: &tokio_util::sync::CancellationToken) -> End {
        // Handshake: our state vector, and our awareness state if we have one.
        let sv = self.shared.doc.transact().state_vector();
        if let Err(e) = self.send(protocol::step1(&sv)).await {
            return e;
        }
        let own = {
            let awareness = lock(&self.shared.awareness);
            awareness
                .local_state_raw()
                .and_then(|_| own_awareness(&awareness))
        };
        if let Some(frame) = own {
            if let Err(e) = self.send(frame).await {
                return e;
            }
        }
        let opened = Instant::now();
        loop {
            let deadline = self.deadline(opened);
            tokio::select! {
                biased;
                _ = stop.cancelled() => return End::Stopped,
                frame = self.socket.next() => {
                    self.last_frame = Instant::now();
                    self.probe_sent = None;
                    match frame {
                        Some(Ok(Ws::Binary(frame))) => {
                            if let Err(end) = self.handle(&frame).await {
                                return end;
                            }
                        }
                        Some(Ok(Ws::Close(frame))) => {
                            let (code, reason) = frame
                                .map(|f| (u16::from(f.code), f.reason.to_string()))
                                .unwrap_or((1005, String::new()));
                            return End::Closed { code, reason };
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return End::Lost(format!("read failed: {e}")),
                        None => return End::Lost("the server went away".into()),
                    }
                }
                Some(out) = self.outbound.recv() => {
                    if let Err(end) = self.send_local(out).await {
                        return end;
                    }
                }
                _ = sleep_until(deadline) => {
                    if let Err(end) = self.on_timer(opened).await {
                        return end;
                    }
                }
            }
        }
    }

    /// When the timer must next look at the connection.
    fn deadline(&self, opened: Instant) -> Instant {
        let options = &self.shared.options;
        let heartbeat = if !self.step2_sent {
            // Still handshaking: the server must speak within the connect timeout.
            opened + options.connect_timeout
        } else {
            match self.probe_sent {
                Some(at) if self.echoed => at + options.heartbeat_timeout,
                Some(at) => at + options.heartbeat_idle,
                None => self.last_frame + options.heartbeat_idle,
            }
        };
        heartbeat.min(self.next_renewal)
    }

    async fn on_timer(&mut self, opened: Instant) -> Result<(), End> {
        let now = Instant::now();
        let options = &self.shared.options;
        if now >= self.next_renewal {
            self.next_renewal = now + options.awareness_renewal;
            let renewal = {
                let mut awareness = lock(&self.shared.awareness);
                match awareness.local_state_raw() {
                    Some(state) => {
                        awareness.set_local_state_raw(state);
                        own_awareness(&awareness)
                    }
                    None => None,
                }
            };
            if let Some(frame) = renewal {
                self.send(frame).await?;
            }
        }
        if !self.step2_sent {
            if now >= opened + options.connect_timeout {
                return Err(End::Lost("no handshake from the server in time".into()));
            }
            return Ok(());
        }
        match self.probe_sent {
            Some(at) if self.echoed && now >= at + options.heartbeat_timeout => {
                Err(End::Lost(format!(
                    "no answer within {:?} of a probe",
                    options.heartbeat_timeout
                )))
            }
            Some(at) if !self.echoed && now >= at + options.heartbeat_idle => self.probe().await,
            None if now >= self.last_frame + options.heartbeat_idle => self.probe().await,
            _ => Ok(()),
        }
    }

    async fn probe(&mut self) -> Result<(), End> {
        self.probe_sent = Some(Instant::now());
        self.send_version().await
    }

    async fn handle(&mut self, frame: &[u8]) -> Result<(), End> {
        let decoded = crate::sync::protocol::check_sizes(frame)
            .and_then(|()| Message::decode_v1(frame).map_err(|e| e.to_string()));
        let message = match decoded {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(url = %self.shared.url, error = %e, "undecodable message from the server");
                return Ok(());
            }
        };
        match message {
            Message::Sync(SyncMessage::SyncStep1(sv)) => {
                self.answer_step1(&sv).await?;
            }
            Message::Sync(SyncMessage::SyncStep2(update)) => {
                self.apply(&update);
                if !self.connected {
                    self.connected = true;
                    self.shared.set_status(Status::Connected);
                }
            }
            Message::Sync(SyncMessage::Update(update)) => self.apply(&update),
            Message::Awareness(update) => {
                let mut awareness = lock(&self.shared.awareness);
                if let Err(e) = awareness.apply_update(update) {
                    tracing::warn!(url = %self.shared.url, error = %e, "bad awareness update");
                }
                self.shared.publish_peers(&awareness);
            }
            Message::AwarenessQuery => {
                let own = own_awareness(&lock(&self.shared.awareness));
                if let Some(frame) = own {
                    self.send(frame).await?;
                }
            }
            Message::Custom(MSG_SYNC_STATUS, payload) => {
                self.echoed = true;
                let mut cursor = Cursor::new(&payload);
                if let Ok(version) = cursor.read_var::<u64>() {
                    self.shared.acknowledged(version);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Sends what the server lacks (offline edits included), then the local version: its
    /// echo means all of it is durable on the server.
    async fn answer_step1(&mut self, sv: &StateVector) -> Result<(), End> {
        let (update, version) = {
            // No commit can run while the read transaction is held, so the version read
            // here counts exactly the local changes in the encoded state.
            let txn = self.shared.doc.transact();
            let version = self.shared.version.load(Ordering::Acquire);
            (txn.encode_state_as_update_v1(sv), version)
        };
        self.send(protocol::step2(&update)).await?;
        self.sent_version = self.sent_version.max(version);
        self.step2_sent = true;
        self.send_version().await
    }

    /// Applies a server update with the provider's origin (so it is not sent back).
    fn apply(&self, update: &[u8]) {
        let origin = self.shared.origin.clone();
        let result = match &self.shared.workspace {
            Some(client) => client
                .apply_update(update, origin)
                .map_err(|e| e.to_string()),
            None => crate::storage::decode_update(update).and_then(|update| {
                self.shared
                    .doc
                    .transact_mut_with(origin)
                    .apply_update(update)
                    .map_err(|e| e.to_string())
            }),
        };
        if let Err(e) = result {
            tracing::warn!(url = %self.shared.url, error = %e, "could not apply a server update");
        }
    }

    /// Sends a local change, and everything else queued with it; after doc updates, the
    /// version (once the handshake allows it).
    async fn send_local(&mut self, first: Outbound) -> Result<(), End> {
        let mut updated = false;
        let mut next = Some(first);
        while let Some(out) = next {
            let frame = match out {
                Outbound::Update(frame, version) => {
                    updated = true;
                    self.sent_version = self.sent_version.max(version);
                    frame
                }
                Outbound::Awareness(frame) => frame,
            };
            self.socket
                .feed(Ws::Binary(frame))
                .await
                .map_err(|e| End::Lost(format!("write failed: {e}")))?;
            next = self.outbound.try_recv().ok();
        }
        if updated && self.step2_sent {
            let frame = sync_status(self.sent_version);
            self.socket
                .feed(Ws::Binary(frame))
                .await
                .map_err(|e| End::Lost(format!("write failed: {e}")))?;
        }
        self.socket
            .flush()
            .await
            .map_err(|e| End::Lost(format!("write failed: {e}")))
    }

    /// Sends the version of what this session has written (never of changes still
    /// queued: their echo would report them durable too early).
    async fn send_version(&mut self) -> Result<(), End> {
        self.send(sync_status(self.sent_version)).await
    }

    async fn send(&mut self, frame: Bytes) -> Result<(), End> {
        self.socket
            .send(Ws::Binary(frame))
            .await
            .map_err(|e| End::Lost(format!("write failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_plain_websocket_urls() {
        use crate::client::{ProviderOptions, SyncProvider};
        use crate::error::ClientError;
        for bad in ["http://h/s", "wss://h/s", "h:1/s"] {
            let made = SyncProvider::new(yrs::Doc::new(), bad, ProviderOptions::default());
            assert!(matches!(made, Err(ClientError::InvalidUrl(_))), "{bad}");
        }
        let provider =
            SyncProvider::new(yrs::Doc::new(), "ws://h/s", ProviderOptions::default()).unwrap();
        assert!(matches!(provider.connect(), Err(ClientError::NoRuntime)));
    }

    #[test]
    fn tokens_are_percent_encoded_into_the_query() {
        assert_eq!(
            with_token("ws://h/s", "a b+/="),
            "ws://h/s?token=a%20b%2B%2F%3D"
        );
        assert_eq!(with_token("ws://h/s?x=1", "t"), "ws://h/s?x=1&token=t");
    }

    #[test]
    fn sync_status_carries_the_version() {
        let frame = sync_status(300);
        match Message::decode_v1(&frame).unwrap() {
            Message::Custom(tag, payload) => {
                assert_eq!(tag, MSG_SYNC_STATUS);
                assert_eq!(Cursor::new(&payload).read_var::<u64>().unwrap(), 300);
            }
            other => panic!("{other:?}"),
        }
    }
}
