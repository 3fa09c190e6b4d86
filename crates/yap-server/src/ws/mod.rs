//! The `/ws` endpoint: authentication, origin, admission, and the adapter between axum's
//! WebSocket and the generic connection loop in [`conn`].

pub mod conn;
pub mod outbox;
pub mod upgrade;
mod v0;
mod v1;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, error::ProtocolError};
use yap_core::{CancelReason, TurnHandle};
use yap_protocol::{Capacity, Dialect, ErrorCode, ServerFrame, close_code, dialect_of};

use self::conn::{WsIn, WsInError};
use self::outbox::WsOut;
use self::upgrade::Socket;
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
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    req: Request,
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
    let accepted = upgrade::check(&req);
    if accepted.status() != StatusCode::SWITCHING_PROTOCOLS {
        return accepted;
    }
    tokio::spawn(async move {
        let Some((socket, half)) = upgrade::socket(req, transport).await else {
            return;
        };
        let span = tracing::info_span!("connection", %peer, dialect = tracing::field::Empty);
        let work = upgraded(socket, half, state, origin_ok, verdict);
        tracing::Instrument::instrument(work, span).await;
    });
    accepted
}

/// An upgraded socket: refused (origin, key) or admitted (inside its `connection` span).
async fn upgraded(
    socket: Socket,
    half: upgrade::HalfClosed,
    state: AppState,
    origin_ok: bool,
    verdict: Verdict,
) {
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
        admit(socket, half, state).await;
    }
}

/// Sends one error frame and closes. The frame takes the dialect of the client's first
/// message, if one arrives within a moment (clients speak first in both dialects).
async fn refuse(mut socket: Socket, frame: ServerFrame, code: u16) {
    let first = tokio::time::timeout(Duration::from_millis(500), socket.next()).await;
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
            code: CloseCode::from(code),
            reason: "".into(),
        })))
        .await;
}

async fn admit(socket: Socket, half: upgrade::HalfClosed, state: AppState) {
    let permit = tokio::time::timeout(
        state.config.acquire_timeout,
        Arc::clone(&state.slots).acquire_owned(),
    )
    .await;
    match permit {
        Ok(Ok(permit)) => {
            let (tx, rx) = socket.split();
            // A half-close arrives as an item of its own, after every frame read before it.
            let fin = futures_util::stream::once(Box::pin(async move { half.wait().await }))
                .map(|()| Err(WsInError::HalfClosed));
            let inbound = futures_util::stream::select(rx.map(inbound), fin);
            let outbound = tx.with(|out: WsOut| async move { Ok::<_, WsError>(outbound(out)) });
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
            code: CloseCode::from(code),
            reason: reason.into(),
        })),
    }
}

/// tungstenite's message or error → the loop's.
fn inbound(m: Result<Message, WsError>) -> Result<WsIn, WsInError> {
    match m {
        Ok(Message::Text(t)) => Ok(WsIn::Text(t.to_string())),
        Ok(Message::Binary(_)) => Ok(WsIn::Binary),
        Ok(Message::Ping(_)) => Ok(WsIn::Ping),
        Ok(Message::Pong(_) | Message::Frame(_)) => Ok(WsIn::Pong),
        Ok(Message::Close(c)) => Ok(WsIn::Close(c.map(|c| u16::from(c.code)))),
        Err(e) => Err(classify_error(e)),
    }
}

/// What a transport error means for the connection.
fn classify_error(e: WsError) -> WsInError {
    match e {
        WsError::Utf8(_) => WsInError::InvalidUtf8,
        WsError::Capacity(_) => WsInError::TooBig,
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => WsInError::HalfClosed,
        WsError::Protocol(p) => WsInError::Protocol(p.to_string()),
        _ => WsInError::Reset,
    }
}
