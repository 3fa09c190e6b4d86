//! Protocol v0 on a connection (`shared/docs/protocol.md`): sessions by `session_id`, a `start`
//! per turn, `toolcall`, `done{usage}` / `done{cancelled}`. Translates messages into core calls
//! and turn frames into v0 frames; no turn logic lives here.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::info;
use yap_core::{
    CancelReason, FrameSink, SessionUpdate, TurnErrorKind, TurnFrame, TurnHandle, TurnInput,
    TurnOutcome,
};
use yap_protocol::{
    ClientMessage, ErrorCode, RequestId, ServerFrame, StartRequest, ToolStatus, close_code,
    parse_client_message,
};

use super::conn::{Exit, Gate, Shared};
use super::outbox::Outbox;

/// A v0 error frame's JSON.
pub fn error_json(code: ErrorCode, message: &str) -> String {
    ServerFrame::error(code, message).to_json()
}

/// The `connection_closed` frame's JSON.
pub fn closed_frame(reason: &str) -> String {
    ServerFrame::ConnectionClosed {
        reason: reason.into(),
    }
    .to_json()
}

/// The `rate_limited` frame's JSON.
pub fn rate_limited(what: &str, wait: Duration) -> String {
    ServerFrame::Error {
        error_code: ErrorCode::RateLimited,
        message: format!("too many {what}; retry later"),
        request_id: None,
        retry_after_ms: Some(wait.as_millis().max(1) as u64),
        capacity: None,
    }
    .to_json()
}

/// The refusal of a binary frame before any dialect was picked.
pub fn binary_refusal(shared: &mut Shared) {
    if let Err(wait) = shared.gate(Gate::Message) {
        shared.send(rate_limited("messages", wait));
    } else {
        shared.send(error_json(
            ErrorCode::InvalidMessage,
            "binary frames are not supported; send JSON text frames",
        ));
    }
}

/// The v0 code of a turn failure.
fn error_code(kind: TurnErrorKind) -> ErrorCode {
    match kind {
        TurnErrorKind::PersonaTooLong
        | TurnErrorKind::PromptTooLong
        | TurnErrorKind::InvalidRequest => ErrorCode::InvalidMessage,
        TurnErrorKind::EngineUnavailable => ErrorCode::EngineUnavailable,
        TurnErrorKind::Internal => ErrorCode::InternalError,
    }
}

/// A v0 turn's sink: turn frames → v0 frames on the connection's queue.
#[derive(Debug)]
struct V0Sink {
    out: Outbox,
    session_id: String,
    request_id: Option<RequestId>,
    /// A `cancel`'s own `request_id`, echoed on the `done{cancelled}` it causes.
    cancel_rid: Mutex<Option<RequestId>>,
}

impl FrameSink for V0Sink {
    fn send(&self, frame: TurnFrame) -> bool {
        let rid = self.request_id.clone();
        let wire = match frame {
            TurnFrame::Ack(a) => ServerFrame::Ack {
                session_id: self.session_id.clone(),
                request_id: rid,
                persona_style: a.persona_style,
                gender: a.gender,
                persona_tokens: None,
                history_turns: Some(a.history_turns),
            },
            TurnFrame::Tool(d) => ServerFrame::Toolcall {
                status: if d.yes {
                    ToolStatus::Yes
                } else {
                    ToolStatus::No
                },
                raw: d.raw,
            },
            TurnFrame::Token(text) => ServerFrame::Token { text },
            TurnFrame::Final(_) => return true,
            TurnFrame::Done(usage) => ServerFrame::Done {
                usage: Some(usage),
                cancelled: false,
                request_id: rid,
            },
            TurnFrame::Cancelled(_) => {
                let own = self.cancel_rid.lock().ok().and_then(|g| g.clone());
                ServerFrame::cancelled(own.or(rid))
            }
            TurnFrame::Error(e) => ServerFrame::Error {
                error_code: error_code(e.kind),
                message: e.message,
                request_id: rid,
                retry_after_ms: None,
                capacity: None,
            },
        };
        self.out.text(wire.to_json())
    }
}

/// A v0 connection's state.
#[derive(Debug, Default)]
pub struct V0Conn {
    turn: Option<(TurnHandle, Arc<V0Sink>)>,
    last_session: Option<String>,
}

impl V0Conn {
    /// Handles one text message.
    pub async fn on_text(&mut self, text: &str, shared: &mut Shared) -> Option<Exit> {
        let limit = shared.state.config.max_message_bytes;
        let parsed = (limit == 0 || text.len() <= limit).then(|| parse_client_message(text));
        let gate = match &parsed {
            Some(Ok(ClientMessage::Ping | ClientMessage::Pong | ClientMessage::End)) => Gate::Free,
            Some(Ok(ClientMessage::Cancel { .. })) => Gate::Cancel,
            _ => Gate::Message,
        };
        if let Err(wait) = shared.gate(gate) {
            let what = if gate == Gate::Cancel {
                "cancels"
            } else {
                "messages"
            };
            shared.send(rate_limited(what, wait));
            return None;
        }
        let msg = match parsed {
            None => {
                let m = format!(
                    "message of {} bytes exceeds WS_MAX_MESSAGE_BYTES={limit}",
                    text.len()
                );
                shared.send(error_json(ErrorCode::MessageTooLarge, &m));
                return None;
            }
            Some(Err(e)) => {
                shared.send(error_json(e.code, &e.message));
                return None;
            }
            Some(Ok(m)) => m,
        };
        self.dispatch(msg, shared).await
    }

    async fn dispatch(&mut self, msg: ClientMessage, shared: &mut Shared) -> Option<Exit> {
        match msg {
            ClientMessage::Start(req) => self.start(*req, shared).await,
            ClientMessage::Cancel { request_id } => self.cancel(request_id, shared).await,
            ClientMessage::End => {
                return Some(Exit::Close {
                    code: close_code::NORMAL,
                    reason: "",
                    frame: Some(closed_frame("client_request")),
                    drain: false,
                });
            }
            ClientMessage::Ping => {
                shared.out.pong(&ServerFrame::Pong.to_json());
            }
            ClientMessage::Pong => {}
            ClientMessage::WarmPersona {
                chat_prompt,
                session_id,
            } => {
                let update = SessionUpdate {
                    persona_text: Some(chat_prompt),
                    ..SessionUpdate::default()
                };
                self.warm(session_id, update, shared);
            }
            ClientMessage::WarmHistory {
                history_text,
                session_id,
            } => {
                let update = SessionUpdate {
                    history_text: Some(history_text),
                    ..SessionUpdate::default()
                };
                self.warm(session_id, update, shared);
            }
            ClientMessage::ChatPrompt {
                session_id,
                chat_prompt,
            } => Self::chat_prompt(session_id, chat_prompt, shared),
        }
        None
    }

    async fn start(&mut self, req: StartRequest, shared: &mut Shared) {
        // A turn of another session on this connection ends first (one turn per connection).
        if let Some((prev, _)) = self.turn.take()
            && !prev.is_finished()
        {
            prev.cancel_and_wait(CancelReason::Superseded).await;
        }
        let core = Arc::clone(shared.state.core());
        let cell = core.sessions().get(&req.session_id);
        self.last_session = Some(req.session_id.clone());
        let sink = Arc::new(V0Sink {
            out: shared.out.clone(),
            session_id: req.session_id.clone(),
            request_id: req.request_id.clone(),
            cancel_rid: Mutex::new(None),
        });
        let input = TurnInput {
            utterance: req.user_utterance,
            update: SessionUpdate {
                persona_text: req.persona_text,
                persona_style: req.persona_style,
                gender: req.gender,
                user_identity: req.user_identity,
                history_text: req.history_text,
                check_screen_prefix: req.check_screen_prefix,
                screen_checked_prefix: req.screen_checked_prefix,
                ..SessionUpdate::default()
            },
            sampling: req.sampling,
            ack: true,
            final_frame: false,
            label: "v0",
        };
        let handle = core.start_turn(cell, input, sink.clone()).await;
        self.turn = Some((handle, sink));
    }

    async fn cancel(&mut self, request_id: Option<RequestId>, shared: &mut Shared) {
        let outcome = match self.turn.take() {
            Some((turn, sink)) if !turn.is_finished() => {
                if request_id.is_some()
                    && let Ok(mut r) = sink.cancel_rid.lock()
                {
                    *r = request_id.clone();
                }
                turn.cancel_and_wait(CancelReason::Requested).await
            }
            _ => TurnOutcome::Completed,
        };
        if outcome != TurnOutcome::Cancelled {
            shared.send(ServerFrame::cancelled(request_id).to_json());
        }
    }

    fn chat_prompt(session_id: String, chat_prompt: String, shared: &mut Shared) {
        let limited = shared
            .state
            .persona_updates
            .lock()
            .ok()
            .and_then(|mut l| l.try_acquire(&session_id, Instant::now()).err());
        if let Some(wait) = limited {
            crate::metrics::rate_limited("v0", "persona_updates");
            shared.send(rate_limited("persona updates for this session", wait));
            return;
        }
        let core = shared.state.core();
        let cell = core.sessions().get(&session_id);
        let update = SessionUpdate {
            persona_text: Some(chat_prompt),
            ..SessionUpdate::default()
        };
        if let Err(e) = core.update_session(&cell, &update) {
            shared.send(error_json(error_code(e.kind), &e.message));
        }
    }

    fn warm(&mut self, session_id: Option<String>, update: SessionUpdate, shared: &mut Shared) {
        let Some(session) = session_id.or_else(|| self.last_session.clone()) else {
            shared.send(error_json(
                ErrorCode::InvalidMessage,
                "warm_* needs a `session_id` (or a previous start on this connection)",
            ));
            return;
        };
        self.last_session = Some(session.clone());
        let core = Arc::clone(shared.state.core());
        let out = shared.out.clone();
        tokio::spawn(async move {
            let cell = core.sessions().get(&session);
            match core.warm(&cell, &update).await {
                Ok(tokens) => info!(session = %session, tokens, "prefix warmed"),
                Err(e) => {
                    out.text(error_json(error_code(e.kind), &e.message));
                }
            }
        });
    }

    /// Answers a binary frame.
    pub fn on_binary(&mut self, shared: &mut Shared) {
        binary_refusal(shared);
    }

    /// Ends the running turn: cancels it (or, with `drain`, lets it finish for that long first)
    /// and waits until its terminal frame is queued.
    pub async fn end_turn(&mut self, reason: CancelReason, drain: Option<Duration>) {
        if let Some((turn, _)) = self.turn.take() {
            super::end_turn(&turn, reason, drain).await;
        }
    }
}
