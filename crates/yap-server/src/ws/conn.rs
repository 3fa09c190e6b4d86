//! The connection loop, generic over the socket's `Stream`/`Sink` halves so its rules are
//! unit-tested without sockets.
//!
//! Invariants:
//! - the first text message picks the dialect for the life of the connection;
//! - a reader that falls behind (outbound queue over its frame or byte bound) is dropped;
//! - every way out cancels (or, on a graceful drain, awaits) the running turn, sends the turn's
//!   terminal frame before the close, and returns the connection slot (the permit is dropped);
//! - protocol errors get their close code (1002 malformed frame, 1007 invalid UTF-8, 1009 too
//!   big), a client's close is echoed, and a half-closed client still gets its replies.

use std::time::{Duration, Instant};

use futures_util::{Sink, Stream, StreamExt};
use tokio::sync::OwnedSemaphorePermit;
use tracing::debug;
use yap_core::CancelReason;
use yap_protocol::{Dialect, close_code, dialect_of};

use super::outbox::{Outbox, OutboxLimits, WsOut};
use super::{v0, v1};
use crate::AppState;
use crate::limits::SlidingWindow;

/// An inbound WebSocket message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsIn {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary,
    /// A control ping (answered by the WebSocket layer).
    Ping,
    /// A control pong.
    Pong,
    /// The client's close, with its code.
    Close(Option<u16>),
}

/// Why reading failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsInError {
    /// A text frame that is not UTF-8.
    InvalidUtf8,
    /// A frame or message over the transport limit.
    TooBig,
    /// A malformed frame (unmasked, reserved opcode, oversized control frame, ...).
    Protocol(String),
    /// The TCP connection broke.
    Reset,
    /// The client half-closed TCP without a close frame: it may still read.
    HalfClosed,
}

/// How a connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Close with a frame (already translated for the dialect) and a close code and reason.
    Close {
        /// Close code.
        code: u16,
        /// Close reason.
        reason: &'static str,
        /// A last text frame.
        frame: Option<String>,
        /// Let the running turn finish (graceful drain) instead of cancelling it.
        drain: bool,
    },
    /// The client closed: echo its code.
    Echo(Option<u16>),
    /// The client stopped sending (half-close): finish the running turn, then close.
    Eof,
    /// The connection broke: cancel, send nothing.
    Gone,
    /// The reader fell behind.
    Overflow,
}

/// What both dialects share on one connection: the outbound queue and the per-connection limits.
pub struct Shared {
    /// Server state.
    pub state: AppState,
    /// Outbound queue.
    pub out: Outbox,
    /// General message limit.
    pub messages: SlidingWindow,
    /// Cancel limit.
    pub cancels: SlidingWindow,
    /// The dialect's metric label, once the first message picked it.
    pub dialect: &'static str,
}

/// What a message counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Exempt (ping, pong, end).
    Free,
    /// The cancel limit.
    Cancel,
    /// The general limit.
    Message,
}

impl Shared {
    /// Applies a limit; `Err(wait)` when the message must be refused.
    pub fn gate(&mut self, gate: Gate) -> Result<(), Duration> {
        let now = Instant::now();
        let verdict = match gate {
            Gate::Free => Ok(()),
            Gate::Cancel => self.cancels.try_acquire(now),
            Gate::Message => self.messages.try_acquire(now),
        };
        if verdict.is_err() {
            let limit = if gate == Gate::Cancel {
                "cancels"
            } else {
                "messages"
            };
            crate::metrics::rate_limited(self.dialect, limit);
        }
        verdict
    }

    /// Queues a text frame (false: the reader fell behind).
    pub fn send(&self, json: String) -> bool {
        self.out.text(json)
    }
}

enum Proto {
    Undecided,
    V0(v0::V0Conn),
    V1(v1::V1Conn),
}

/// Runs one admitted connection to its end.
pub async fn run<R, W>(mut inbound: R, outbound: W, state: AppState, permit: OwnedSemaphorePermit)
where
    R: Stream<Item = Result<WsIn, WsInError>> + Unpin + Send,
    W: Sink<WsOut> + Unpin + Send + 'static,
{
    let limits = OutboxLimits {
        max_frames: state.config.max_queued_frames,
        max_bytes: state.config.max_queued_bytes,
    };
    let (out, writer) = Outbox::new(limits, outbound);
    let writer = tokio::spawn(writer);
    let l = &state.config.limits;
    let mut shared = Shared {
        messages: SlidingWindow::new(l.messages, l.messages_window.unwrap_or(l.shared_window)),
        cancels: SlidingWindow::new(l.cancels, l.cancels_window.unwrap_or(l.shared_window)),
        out: out.clone(),
        state: state.clone(),
        dialect: "undecided",
    };
    let mut proto = Proto::Undecided;
    let exit = read_loop(&mut inbound, &mut shared, &mut proto).await;
    debug!(?exit, "connection ending");
    finish(exit, &mut shared, &mut proto, writer).await;
    drop(permit);
}

async fn read_loop<R>(inbound: &mut R, shared: &mut Shared, proto: &mut Proto) -> Exit
where
    R: Stream<Item = Result<WsIn, WsInError>> + Unpin + Send,
{
    let idle = shared.state.config.idle_timeout;
    let shutdown = shared.state.shutdown.clone();
    let out = shared.out.clone();
    loop {
        let msg = tokio::select! {
            biased;
            () = out.overflowed() => return Exit::Overflow,
            () = shutdown.cancelled() => return Exit::Close {
                code: close_code::GOING_AWAY, reason: "server_shutdown", frame: None, drain: true,
            },
            m = tokio::time::timeout(idle, inbound.next()) => m,
        };
        let msg = match msg {
            Err(_) => return idle_exit(shared, proto),
            Ok(None) => return Exit::Eof,
            Ok(Some(Err(e))) => return error_exit(e, shared, proto),
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            WsIn::Text(text) => {
                if let Some(exit) = on_text(&text, shared, proto).await {
                    return exit;
                }
            }
            WsIn::Binary => match proto {
                Proto::V1(c) => c.on_binary(shared),
                Proto::V0(c) => c.on_binary(shared),
                Proto::Undecided => v0::binary_refusal(shared),
            },
            WsIn::Ping | WsIn::Pong => {}
            WsIn::Close(code) => return Exit::Echo(code),
        }
    }
}

async fn on_text(text: &str, shared: &mut Shared, proto: &mut Proto) -> Option<Exit> {
    if matches!(proto, Proto::Undecided) {
        *proto = match dialect_of(text) {
            Dialect::V0 => Proto::V0(v0::V0Conn::default()),
            Dialect::V1 => Proto::V1(v1::V1Conn::new(&shared.state)),
        };
        shared.dialect = if matches!(proto, Proto::V1(_)) {
            "v1"
        } else {
            "v0"
        };
        tracing::Span::current().record("dialect", shared.dialect);
    }
    match proto {
        Proto::V0(c) => c.on_text(text, shared).await,
        Proto::V1(c) => c.on_text(text, shared).await,
        Proto::Undecided => None,
    }
}

fn idle_exit(shared: &Shared, proto: &Proto) -> Exit {
    let frame = match proto {
        Proto::V1(_) => None,
        _ => Some(v0::closed_frame("idle_timeout")),
    };
    Exit::Close {
        code: shared.state.config.idle_close_code,
        reason: "idle_timeout",
        frame,
        drain: false,
    }
}

fn error_exit(e: WsInError, shared: &Shared, proto: &Proto) -> Exit {
    let close = |code, reason| Exit::Close {
        code,
        reason,
        frame: None,
        drain: false,
    };
    match e {
        WsInError::InvalidUtf8 => Exit::Close {
            code: close_code::INVALID_PAYLOAD,
            reason: "invalid_utf8",
            frame: Some(match proto {
                Proto::V1(_) => v1::error_json(
                    yap_protocol::ErrorCode::InvalidMessage,
                    "text frame is not valid UTF-8",
                ),
                _ => v0::error_json(
                    yap_protocol::ErrorCode::InvalidMessage,
                    "text frame is not valid UTF-8",
                ),
            }),
            drain: false,
        },
        WsInError::TooBig => close(close_code::MESSAGE_TOO_BIG, "message_too_big"),
        WsInError::Protocol(why) => {
            debug!(%why, limit = shared.state.config.max_message_bytes, "websocket protocol error");
            close(close_code::PROTOCOL_ERROR, "protocol_error")
        }
        WsInError::Reset => Exit::Gone,
        WsInError::HalfClosed => Exit::Eof,
    }
}

async fn end_turn(proto: &mut Proto, reason: CancelReason, drain: Option<Duration>) {
    match proto {
        Proto::V0(c) => c.end_turn(reason, drain).await,
        Proto::V1(c) => c.end_turn(reason, drain).await,
        Proto::Undecided => {}
    }
}

/// Waits for the writer to flush, at most `limit`; then stops it.
async fn join_writer(mut writer: tokio::task::JoinHandle<()>, limit: Duration) {
    if tokio::time::timeout(limit, &mut writer).await.is_err() {
        writer.abort();
    }
}

async fn finish(
    exit: Exit,
    shared: &mut Shared,
    proto: &mut Proto,
    writer: tokio::task::JoinHandle<()>,
) {
    let grace = Duration::from_secs(2);
    if exit == Exit::Overflow {
        crate::metrics::slow_consumer();
    }
    match exit {
        Exit::Close {
            code,
            reason,
            frame,
            drain,
        } => {
            let wait = drain.then_some(shared.state.config.shutdown_grace);
            end_turn(proto, CancelReason::Shutdown, wait).await;
            if let Some(f) = frame {
                shared.out.text(f);
            }
            shared.out.close(code, reason);
            join_writer(writer, grace).await;
        }
        Exit::Echo(code) => {
            end_turn(proto, CancelReason::Disconnected, None).await;
            shared.out.close(code.unwrap_or(close_code::NORMAL), "");
            join_writer(writer, grace).await;
        }
        Exit::Eof => {
            // Half-close: the client may still read. Let the running turn finish, then close.
            end_turn(
                proto,
                CancelReason::Disconnected,
                Some(Duration::from_secs(30)),
            )
            .await;
            shared.out.close(close_code::NORMAL, "");
            join_writer(writer, grace).await;
        }
        Exit::Gone | Exit::Overflow => {
            end_turn(proto, CancelReason::Disconnected, None).await;
            shared
                .out
                .close(close_code::POLICY_VIOLATION, "slow_consumer");
            join_writer(writer, Duration::from_millis(200)).await;
        }
    }
}
