//! The `/ws` endpoint: authentication, admission, and the per-connection message loop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use axum::extract::{ConnectInfo, Query, State, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tracing::{debug, info};
use yap_core::{FrameSink, TurnHandle, TurnOutcome};
use yap_protocol::{
    Capacity, ClientMessage, ErrorCode, ServerFrame, close_code, parse_client_message,
};

use crate::AppState;
use crate::limits::SlidingWindow;

fn rate_limited(what: &str, wait: Duration) -> ServerFrame {
    ServerFrame::Error {
        error_code: ErrorCode::RateLimited,
        message: format!("too many {what}; retry later"),
        request_id: None,
        retry_after_ms: Some(wait.as_millis().max(1) as u64),
        capacity: None,
    }
}

/// Upgrades every request; refusals (auth, capacity, origin) are sent as frames + close codes.
pub(crate) async fn handler(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let ip = peer.ip().to_string();
    let now = Instant::now();
    let auth_blocked = state
        .auth_failures
        .lock()
        .ok()
        .and_then(|mut l| l.blocked_for(&ip, now));
    let presented = query.get("api_key").cloned().or_else(|| {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    let authorized =
        presented.is_some_and(|k| bool::from(k.as_bytes().ct_eq(state.config.api_key.as_bytes())));
    if !authorized
        && auth_blocked.is_none()
        && let Ok(mut l) = state.auth_failures.lock()
    {
        l.record(&ip, now);
    }
    let origin_ok = origin_allowed(&state, &headers);
    // Leave headroom above the protocol limit so an oversized frame is read and answered with
    // `message_too_large` instead of killing the connection.
    let transport_limit = state
        .config
        .max_message_bytes
        .saturating_mul(16)
        .max(1 << 20);
    ws.max_message_size(transport_limit)
        .max_frame_size(transport_limit)
        .on_upgrade(move |socket| async move {
            if let Some(wait) = auth_blocked {
                refuse(
                    socket,
                    rate_limited("failed authentications from this address", wait),
                    close_code::POLICY_VIOLATION,
                )
                .await;
            } else if !origin_ok {
                refuse(
                    socket,
                    ServerFrame::error(ErrorCode::AuthenticationFailed, "origin not allowed"),
                    close_code::POLICY_VIOLATION,
                )
                .await;
            } else if !authorized {
                refuse(
                    socket,
                    ServerFrame::error(
                        ErrorCode::AuthenticationFailed,
                        "missing or invalid API key",
                    ),
                    close_code::POLICY_VIOLATION,
                )
                .await;
            } else {
                admit(socket, state).await;
            }
        })
}

fn origin_allowed(state: &AppState, headers: &HeaderMap) -> bool {
    if state.config.allowed_origins.is_empty() {
        return true;
    }
    match headers.get("origin").and_then(|v| v.to_str().ok()) {
        // Non-browser clients send no Origin header.
        None => true,
        Some(origin) => state
            .config
            .allowed_origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(origin.trim_end_matches('/'))),
    }
}

async fn refuse(mut socket: WebSocket, frame: ServerFrame, code: u16) {
    let _ = socket.send(Message::Text(frame.to_json().into())).await;
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(""),
        })))
        .await;
}

async fn admit(socket: WebSocket, state: AppState) {
    let permit = tokio::time::timeout(
        state.config.acquire_timeout,
        Arc::clone(&state.slots).acquire_owned(),
    )
    .await;
    match permit {
        Ok(Ok(permit)) => connection(socket, state, permit).await,
        _ => {
            let max = state.config.max_connections;
            let available = state.slots.available_permits();
            let frame = ServerFrame::Error {
                error_code: ErrorCode::ServerAtCapacity,
                message: "server at capacity; retry with backoff".into(),
                request_id: None,
                retry_after_ms: None,
                capacity: Some(Capacity {
                    active: max - available,
                    max,
                    available,
                    at_capacity: available == 0,
                }),
            };
            refuse(socket, frame, close_code::TRY_AGAIN_LATER).await;
        }
    }
}

/// What the reader loop decided when it stopped.
enum Exit {
    Close(u16, ServerFrame),
    Gone,
}

struct Conn {
    messages: SlidingWindow,
    cancels: SlidingWindow,
    state: AppState,
    sink: FrameSink,
    turn: Option<TurnHandle>,
    last_session: Option<String>,
}

async fn connection(socket: WebSocket, state: AppState, permit: OwnedSemaphorePermit) {
    let (mut tx, mut rx) = socket.split();
    let (frames_tx, mut frames_rx) = mpsc::unbounded_channel::<ServerFrame>();
    let (close_tx, mut close_rx) = watch::channel::<Option<u16>>(None);
    // Writer: frames in order; a close goes out after every frame already queued.
    let writer = tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                frame = frames_rx.recv() => match frame {
                    Some(frame) => {
                        if tx.send(Message::Text(frame.to_json().into())).await.is_err() {
                            return;
                        }
                    }
                    None => return,
                },
                changed = close_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let code = *close_rx.borrow();
                    if let Some(code) = code {
                        while let Ok(frame) = frames_rx.try_recv() {
                            let _ = tx.send(Message::Text(frame.to_json().into())).await;
                        }
                        let _ = tx.send(Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from_static("") }))).await;
                        return;
                    }
                }
            }
        }
    });
    let (mm, mw) = state.config.messages_per_window;
    let (cm, cw) = state.config.cancels_per_window;
    let mut conn = Conn {
        messages: SlidingWindow::new(mm, mw),
        cancels: SlidingWindow::new(cm, cw),
        state: state.clone(),
        sink: frames_tx,
        turn: None,
        last_session: None,
    };
    let idle = state.config.idle_timeout;
    let exit = loop {
        let msg = match tokio::time::timeout(idle, rx.next()).await {
            Err(_) => {
                break Exit::Close(
                    state.config.idle_close_code,
                    ServerFrame::ConnectionClosed {
                        reason: "idle_timeout".into(),
                    },
                );
            }
            Ok(Some(Err(e))) if e.to_string().to_ascii_lowercase().contains("utf-8") => {
                // A text frame that is not UTF-8: say so, then close (1007, invalid payload).
                break Exit::Close(
                    close_code::INVALID_PAYLOAD,
                    ServerFrame::error(ErrorCode::InvalidMessage, "text frame is not valid UTF-8"),
                );
            }
            Ok(None) | Ok(Some(Err(_))) => break Exit::Gone,
            Ok(Some(Ok(msg))) => msg,
        };
        match msg {
            Message::Text(text) => {
                if let Some(exit) = conn.on_text(text.as_str()).await {
                    break exit;
                }
            }
            Message::Binary(_) => {
                if let Err(wait) = conn.messages.try_acquire(Instant::now()) {
                    conn.send(rate_limited("messages", wait));
                } else {
                    conn.send(ServerFrame::error(
                        ErrorCode::InvalidMessage,
                        "binary frames are not supported; send JSON text frames",
                    ));
                }
            }
            Message::Ping(_) | Message::Pong(_) => {}
            Message::Close(_) => break Exit::Gone,
        }
    };
    // Whatever way the connection ends, the running turn is aborted.
    if let Some(turn) = conn.turn.take() {
        match &exit {
            Exit::Close(..) => {
                turn.cancel_and_wait(None).await;
            }
            Exit::Gone => turn.cancel(None),
        }
    }
    match exit {
        Exit::Close(code, frame) => {
            conn.send(frame);
            let _ = close_tx.send(Some(code));
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
        }
        Exit::Gone => writer.abort(),
    }
    drop(permit);
    debug!("connection closed");
}

impl Conn {
    fn send(&self, frame: ServerFrame) {
        let _ = self.sink.send(frame);
    }

    fn error(&self, code: ErrorCode, message: impl Into<String>) {
        self.send(ServerFrame::error(code, message));
    }

    async fn on_text(&mut self, text: &str) -> Option<Exit> {
        let limit = self.state.config.max_message_bytes;
        let parsed = if limit > 0 && text.len() > limit {
            None
        } else {
            Some(parse_client_message(text))
        };
        // Cancels have their own window; keep-alives are free; everything else, malformed
        // input included, counts as a message.
        let now = Instant::now();
        let gate = match &parsed {
            Some(Ok(ClientMessage::Ping | ClientMessage::Pong | ClientMessage::End)) => Ok(()),
            Some(Ok(ClientMessage::Cancel { .. })) => {
                self.cancels.try_acquire(now).map_err(|w| ("cancels", w))
            }
            _ => self.messages.try_acquire(now).map_err(|w| ("messages", w)),
        };
        if let Err((what, wait)) = gate {
            self.send(rate_limited(what, wait));
            return None;
        }
        let Some(parsed) = parsed else {
            self.error(
                ErrorCode::MessageTooLarge,
                format!(
                    "message of {} bytes exceeds WS_MAX_MESSAGE_BYTES={limit}",
                    text.len()
                ),
            );
            return None;
        };
        let msg = match parsed {
            Ok(m) => m,
            Err(e) => {
                self.error(e.code, e.message);
                return None;
            }
        };
        match msg {
            ClientMessage::Start(req) => {
                if let Some(prev) = self.turn.take()
                    && !prev.is_finished()
                    && prev.session_id() != req.session_id
                {
                    prev.cancel_and_wait(None).await;
                }
                self.last_session = Some(req.session_id.clone());
                let handle = self.state.core.start_turn(*req, self.sink.clone()).await;
                self.turn = Some(handle);
            }
            ClientMessage::Cancel { request_id } => {
                let outcome = match self.turn.take() {
                    Some(turn) if !turn.is_finished() => {
                        turn.cancel_and_wait(request_id.clone()).await
                    }
                    _ => TurnOutcome::Completed,
                };
                if outcome != TurnOutcome::Cancelled {
                    self.send(ServerFrame::cancelled(request_id));
                }
            }
            ClientMessage::End => {
                return Some(Exit::Close(
                    close_code::NORMAL,
                    ServerFrame::ConnectionClosed {
                        reason: "client_request".into(),
                    },
                ));
            }
            ClientMessage::Ping => self.send(ServerFrame::Pong),
            ClientMessage::Pong => {}
            ClientMessage::WarmPersona {
                chat_prompt,
                session_id,
            } => {
                self.warm(session_id, Some(chat_prompt), None);
            }
            ClientMessage::WarmHistory {
                history_text,
                session_id,
            } => {
                self.warm(session_id, None, Some(history_text));
            }
            ClientMessage::ChatPrompt {
                session_id,
                chat_prompt,
            } => {
                let limited = self
                    .state
                    .persona_updates
                    .lock()
                    .ok()
                    .and_then(|mut l| l.try_acquire(&session_id, Instant::now()).err());
                if let Some(wait) = limited {
                    self.send(rate_limited("persona updates for this session", wait));
                } else if let Err(e) = self.state.core.set_persona(&session_id, &chat_prompt) {
                    self.error(e.code, e.message);
                }
            }
        }
        None
    }

    fn warm(
        &mut self,
        session_id: Option<String>,
        persona: Option<String>,
        history: Option<String>,
    ) {
        let Some(session) = session_id.or_else(|| self.last_session.clone()) else {
            self.error(
                ErrorCode::InvalidMessage,
                "warm_* needs a `session_id` (or a previous start on this connection)",
            );
            return;
        };
        self.last_session = Some(session.clone());
        let core = Arc::clone(&self.state.core);
        let sink = self.sink.clone();
        tokio::spawn(async move {
            match core
                .warm(&session, persona.as_deref(), history.as_deref())
                .await
            {
                Ok(tokens) => info!(session = %session, tokens, "prefix warmed"),
                Err(e) => {
                    let _ = sink.send(ServerFrame::error(e.code, e.message));
                }
            }
        });
    }
}
