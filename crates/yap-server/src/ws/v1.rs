//! Protocol v1 on a connection (`shared/docs/protocol-v1.md`): the connection is the session.
//! Translates v1 messages into core calls and turn frames into v1 frames; no turn logic here.
//!
//! Invariants: the session exists only between `start` and the end of the connection (its
//! engine cache is released then); a barge-in by `message` is silent; an explicit `cancel` is
//! answered with exactly one `cancelled`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use yap_core::prompt::{ChatMessage, Role};
use yap_core::{
    CancelReason, FrameSink, SessionCell, SessionUpdate, TurnErrorKind, TurnFrame, TurnHandle,
    TurnInput, TurnOutcome,
};
use yap_engine_api::SharedEngine;
use yap_protocol::v1::{self, Accepts, Message, Speaker, Start, frame};
use yap_protocol::{ErrorCode, Sampling, close_code};

use super::conn::{Exit, Gate, Shared};
use super::outbox::Outbox;
use crate::AppState;

/// A v1 error frame's JSON.
pub fn error_json(code: ErrorCode, message: &str) -> String {
    frame::error(code, message)
}

fn error_code(kind: TurnErrorKind) -> ErrorCode {
    match kind {
        TurnErrorKind::PersonaTooLong => ErrorCode::InvalidSettings,
        TurnErrorKind::PromptTooLong => ErrorCode::TextTooLong,
        TurnErrorKind::InvalidRequest => ErrorCode::InvalidPayload,
        TurnErrorKind::EngineUnavailable | TurnErrorKind::Internal => ErrorCode::InternalError,
    }
}

/// A v1 turn's sink.
#[derive(Debug)]
struct V1Sink {
    out: Outbox,
}

impl FrameSink for V1Sink {
    fn send(&self, f: TurnFrame) -> bool {
        let json = match f {
            TurnFrame::Ack(_) => return true,
            TurnFrame::Tool(d) => frame::tool(d.yes),
            TurnFrame::Token(t) => frame::token(&t),
            TurnFrame::Final(t) => frame::final_text(&t),
            TurnFrame::Done(_) => frame::done(),
            // An explicit cancel is answered, and so is a turn the server's shutdown cut short
            // (the client learns the turn ended before the 1001 close); a barge-in or a closing
            // connection is silent.
            TurnFrame::Cancelled(CancelReason::Requested | CancelReason::Shutdown) => {
                frame::cancelled()
            }
            TurnFrame::Cancelled(_) => return true,
            TurnFrame::Error(e) => frame::error(error_code(e.kind), &e.message),
        };
        self.out.text(json)
    }
}

static NEXT: AtomicU64 = AtomicU64::new(1);

/// A v1 connection's state.
pub struct V1Conn {
    key: String,
    accepts: Accepts,
    engine: SharedEngine,
    cell: Option<Arc<SessionCell>>,
    turn: Option<TurnHandle>,
}

impl std::fmt::Debug for V1Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V1Conn")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn merge_sampling(old: Option<Sampling>, new: Option<Sampling>) -> Option<Sampling> {
    let Some(n) = new else { return old };
    let mut s = old.unwrap_or_default();
    s.temperature = n.temperature.or(s.temperature);
    s.top_p = n.top_p.or(s.top_p);
    s.top_k = n.top_k.or(s.top_k);
    s.min_p = n.min_p.or(s.min_p);
    s.repetition_penalty = n.repetition_penalty.or(s.repetition_penalty);
    s.presence_penalty = n.presence_penalty.or(s.presence_penalty);
    s.frequency_penalty = n.frequency_penalty.or(s.frequency_penalty);
    s.sanitize_output = n.sanitize_output.or(s.sanitize_output);
    Some(s)
}

impl V1Conn {
    /// A new connection (its session opens with `start`).
    pub fn new(state: &AppState) -> Self {
        let core = state.core();
        Self {
            key: format!("v1:{}", NEXT.fetch_add(1, Ordering::Relaxed)),
            accepts: Accepts {
                version: state.config.protocol_version,
                chat: core.config().deploy_mode.has_chat(),
            },
            engine: Arc::clone(core.engine()),
            cell: None,
            turn: None,
        }
    }

    /// Handles one text message.
    pub async fn on_text(&mut self, text: &str, shared: &mut Shared) -> Option<Exit> {
        let limit = shared.state.config.max_message_bytes;
        let parsed = (limit == 0 || text.len() <= limit).then(|| v1::parse(text, self.accepts));
        let gate = match &parsed {
            Some(Ok(Message::Ping | Message::Pong | Message::End)) => Gate::Free,
            Some(Ok(Message::Cancel)) => Gate::Cancel,
            _ => Gate::Message,
        };
        if shared.gate(gate).is_err() {
            shared.send(frame::error(
                ErrorCode::RateLimited,
                "too many messages; retry later",
            ));
            return None;
        }
        let msg = match parsed {
            None => {
                shared.send(frame::error(
                    ErrorCode::InvalidMessage,
                    &format!("message exceeds WS_MAX_MESSAGE_BYTES={limit}"),
                ));
                return None;
            }
            Some(Err(r)) => {
                shared.send(frame::error(r.code, &r.message));
                return r.close.then(Self::policy_close);
            }
            Some(Ok(m)) => m,
        };
        self.dispatch(msg, shared).await
    }

    fn policy_close() -> Exit {
        Exit::Close {
            code: close_code::POLICY_VIOLATION,
            reason: "invalid_settings",
            frame: None,
            drain: false,
        }
    }

    async fn dispatch(&mut self, msg: Message, shared: &mut Shared) -> Option<Exit> {
        match msg {
            Message::Start(s) => return self.start(*s, shared),
            Message::Message {
                user_utterance,
                sampling,
            } => self.message(user_utterance, sampling, shared).await,
            Message::Cancel => {
                let outcome = match self.turn.take() {
                    Some(t) if !t.is_finished() => t.cancel_and_wait(CancelReason::Requested).await,
                    _ => TurnOutcome::Completed,
                };
                if outcome != TurnOutcome::Cancelled {
                    shared.send(frame::cancelled());
                }
            }
            Message::End => {
                // The client leaves: a running turn ends silently (`Shutdown` is the server's).
                self.end_turn(CancelReason::Disconnected, None).await;
                shared.send(frame::done());
                return Some(Exit::Close {
                    code: close_code::NORMAL,
                    reason: "",
                    frame: None,
                    drain: false,
                });
            }
            Message::Ping => {
                shared.out.pong(&frame::pong());
            }
            Message::Pong => {}
        }
        None
    }

    fn start(&mut self, s: Start, shared: &mut Shared) -> Option<Exit> {
        if self.cell.is_some() {
            shared.send(frame::error(
                ErrorCode::InvalidMessage,
                "the session is already started on this connection",
            ));
            return None;
        }
        let core = shared.state.core();
        let history: Option<Vec<ChatMessage>> = s.history.map(|h| {
            h.into_iter()
                .map(|(who, text)| {
                    ChatMessage::new(
                        if who == Speaker::User {
                            Role::User
                        } else {
                            Role::Assistant
                        },
                        text,
                    )
                })
                .collect()
        });
        if let Some(h) = &history
            && !core.history_fits(h)
        {
            shared.send(frame::error(
                ErrorCode::TextTooLong,
                "the seed history does not fit CHAT_HISTORY_MAX_TOKENS",
            ));
            return Some(Exit::Close {
                code: close_code::POLICY_VIOLATION,
                reason: "text_too_long",
                frame: None,
                drain: false,
            });
        }
        let update = SessionUpdate {
            persona_text: s.chat_prompt.filter(|p| !p.trim().is_empty()),
            persona_style: s.personality.map(|p| p.to_ascii_lowercase()),
            gender: s.gender,
            history,
            sampling: s.sampling,
            check_screen_prefix: s.check_screen_prefix,
            screen_checked_prefix: s.screen_checked_prefix,
            ..SessionUpdate::default()
        };
        let cell = SessionCell::new(self.key.clone());
        if let Err(e) = core.update_session(&cell, &update) {
            shared.send(frame::error(error_code(e.kind), &e.message));
            return Some(Self::policy_close());
        }
        self.cell = Some(cell);
        metrics::gauge!("yap_sessions", "dialect" => "v1").increment(1.0);
        shared.send(frame::done());
        None
    }

    async fn message(
        &mut self,
        utterance: String,
        sampling: Option<Sampling>,
        shared: &mut Shared,
    ) {
        let Some(cell) = self.cell.clone() else {
            shared.send(frame::error(
                ErrorCode::InvalidMessage,
                "send 'start' first",
            ));
            return;
        };
        let merged = merge_sampling(cell.snapshot().sampling, sampling);
        let input = TurnInput {
            utterance,
            update: SessionUpdate {
                sampling: merged,
                ..SessionUpdate::default()
            },
            sampling: None,
            ack: false,
            final_frame: true,
            label: "v1",
        };
        let sink = Arc::new(V1Sink {
            out: shared.out.clone(),
        });
        let core = Arc::clone(shared.state.core());
        // The session's gate ends a running turn first (Superseded: silent here).
        self.turn = Some(core.start_turn(cell, input, sink).await);
    }

    /// Answers a binary frame.
    pub fn on_binary(&mut self, shared: &mut Shared) {
        if shared.gate(Gate::Message).is_err() {
            shared.send(frame::error(
                ErrorCode::RateLimited,
                "too many messages; retry later",
            ));
        } else {
            shared.send(frame::error(
                ErrorCode::InvalidMessage,
                "binary frames are not supported; send JSON text frames",
            ));
        }
    }

    /// Ends the running turn (see [`super::end_turn`]) and releases the session's engine cache.
    pub async fn end_turn(&mut self, reason: CancelReason, drain: Option<Duration>) {
        if let Some(turn) = self.turn.take() {
            super::end_turn(&turn, reason, drain).await;
        }
    }
}

impl Drop for V1Conn {
    fn drop(&mut self) {
        if self.cell.is_some() {
            self.engine.release(&self.key);
            metrics::gauge!("yap_sessions", "dialect" => "v1").decrement(1.0);
        }
    }
}
