//! The `/ws` endpoint: authentication, origin, admission, and the adapter between axum's
//! WebSocket and the generic connection loop in [`conn`].

pub mod conn;
pub mod outbox;
mod v0;
mod v1;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use axum::extract::{ConnectInfo, Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use yap_core::{CancelReason, TurnHandle};
use yap_protocol::{Capacity, Dialect, ErrorCode, ServerFrame, close_code, dialect_of};

use self::conn::{WsIn, WsInError};
use self::outbox::WsOut;
use crate::AppState;
use crate::auth::{self, Verdict};

/// Ends a turn: with `drain`, lets it run that long first; then cancels it and waits for its
/// terminal frame (bounded).
pub(crate) async fn end_turn(turn: &TurnHandle, reason: CancelReason, drain: Option<Duration>) {
    if let Some(limit) = drain
        && tokio::time::timeout(limit, turn.wait()).await.is_ok()
    {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), turn.cancel_and_wait(reason)).await;
}

/// Upgrades a request with a valid key (refusals: an error frame and close 1008, or HTTP 429
/// for an address that failed too often).
pub(crate) async fn handler(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let presented = auth::presented_key(&headers, &query);
    let verdict = state
        .auth
        .check(&peer.ip().to_string(), presented.as_deref());
    if let Verdict::Blocked(wait) = verdict {
        crate::metrics::auth_failure("ws");
        // Refused before the upgrade: cheap, and no socket is held.
        let secs = wait.as_secs().max(1).to_string();
        let mut resp = (
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed authentications from this address",
        )
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&secs) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    let origin_ok = auth::origin_allowed(&headers, &state.config.allowed_origins);
    // Headroom above the protocol limit so an oversized message is read and answered with
    // `message_too_large`; beyond it the transport closes with 1009.
    let transport = state
        .config
        .max_message_bytes
        .saturating_mul(16)
        .max(1 << 20);
    ws.max_message_size(transport)
        .max_frame_size(transport)
        .on_upgrade(move |socket| {
            let span = tracing::info_span!("connection", %peer, dialect = tracing::field::Empty);
            tracing::Instrument::instrument(upgraded(socket, state, origin_ok, verdict), span)
        })
}

/// An upgraded socket: refused (origin, key) or admitted (inside its `connection` span).
async fn upgraded(socket: WebSocket, state: AppState, origin_ok: bool, verdict: Verdict) {
    if !origin_ok {
        let frame = ServerFrame::error(ErrorCode::AuthenticationFailed, "origin not allowed");
        refuse(socket, frame, close_code::POLICY_VIOLATION).await;
    } else if verdict != Verdict::Ok {
        crate::metrics::auth_failure("ws");
        let frame = ServerFrame::error(
            ErrorCode::AuthenticationFailed,
            "missing or invalid API key",
        );
        refuse(socket, frame, close_code::POLICY_VIOLATION).await;
    } else {
        admit(socket, state).await;
    }
}

/// Sends one error frame and closes. The frame takes the dialect of the client's first
/// message, if one arrives within a moment (clients speak first in both dialects).
async fn refuse(mut socket: WebSocket, frame: ServerFrame, code: u16) {
    let first = tokio::time::timeout(Duration::from_millis(500), socket.recv()).await;
    let v1 =
        matches!(&first, Ok(Some(Ok(Message::Text(t)))) if dialect_of(t.as_str()) == Dialect::V1);
    let json = match (&frame, v1) {
        (
            ServerFrame::Error {
                error_code,
                message,
                ..
            },
            true,
        ) => v1::error_json(*error_code, message),
        _ => frame.to_json(),
    };
    let _ = socket.send(Message::Text(json.into())).await;
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
        Ok(Ok(permit)) => {
            let (tx, rx) = socket.split();
            let inbound = rx.map(inbound);
            let outbound = tx.with(|out: WsOut| async move { Ok::<_, axum::Error>(outbound(out)) });
            conn::run(inbound, Box::pin(outbound), state, permit).await;
        }
        _ => {
            crate::metrics::capacity_refusal("ws");
            let max = state.config.max_connections();
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

fn outbound(out: WsOut) -> Message {
    match out {
        WsOut::Text(t) => Message::Text(t.into()),
        WsOut::Close(code, reason) => Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })),
    }
}

/// axum's message or error → the loop's.
fn inbound(m: Result<Message, axum::Error>) -> Result<WsIn, WsInError> {
    match m {
        Ok(Message::Text(t)) => Ok(WsIn::Text(t.to_string())),
        Ok(Message::Binary(_)) => Ok(WsIn::Binary),
        Ok(Message::Ping(_)) => Ok(WsIn::Ping),
        Ok(Message::Pong(_)) => Ok(WsIn::Pong),
        Ok(Message::Close(c)) => Ok(WsIn::Close(c.map(|c| c.code))),
        Err(e) => Err(classify_error(&e)),
    }
}

/// What a transport error means, from tungstenite's error text (axum wraps it opaquely).
fn classify_error(e: &axum::Error) -> WsInError {
    let text = format!("{e:?} {e}").to_ascii_lowercase();
    if text.contains("utf-8") || text.contains("utf8") {
        WsInError::InvalidUtf8
    } else if text.contains("capacity")
        || text.contains("too long")
        || text.contains("too big")
        || text.contains("size")
    {
        WsInError::TooBig
    } else if text.contains("protocol")
        || text.contains("opcode")
        || text.contains("mask")
        || text.contains("control frame")
        || text.contains("reserved")
    {
        WsInError::Protocol(text)
    } else {
        WsInError::Reset
    }
}
