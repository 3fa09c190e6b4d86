//! Turns: the dialect-neutral frames a turn produces, the handle that cancels or awaits it, and
//! the one driver that runs every kind of turn (protocol v0, protocol v1, OpenAI API).
//!
//! Invariants (owned by [`output::Output`], unit-tested there):
//! - every turn ends with exactly one terminal frame (`Done`, `Cancelled` or `Error`);
//! - when the tool model is deployed, the `Tool` frame precedes every `Token`;
//! - history is written once, when the turn ends.

pub mod driver;
pub mod output;
pub mod telemetry;

use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use yap_protocol::Usage;

use crate::tool::ToolDecision;

/// Why a turn was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CancelReason {
    /// The client asked (`cancel`).
    #[default]
    Requested,
    /// A newer turn of the same session took over (barge-in).
    Superseded,
    /// The connection is gone or cannot keep up.
    Disconnected,
    /// The server is shutting down.
    Shutdown,
}

/// Kinds of turn failures (each dialect maps them to its own codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnErrorKind {
    /// The persona exceeds `CHAT_PROMPT_MAX_TOKENS`.
    PersonaTooLong,
    /// The prompt cannot fit `CHAT_MAX_LEN` even without history.
    PromptTooLong,
    /// A request the engine refused (bad parameters).
    InvalidRequest,
    /// The chat or tool engine cannot serve.
    EngineUnavailable,
    /// Anything else.
    Internal,
}

/// A turn failure with its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TurnError {
    /// What kind.
    pub kind: TurnErrorKind,
    /// Why, for the client.
    pub message: String,
}

impl TurnError {
    /// A new error.
    pub fn new(kind: TurnErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl From<yap_engine_api::EngineError> for TurnError {
    fn from(e: yap_engine_api::EngineError) -> Self {
        use yap_engine_api::EngineError as E;
        let kind = match e {
            E::ContextOverflow { .. } => TurnErrorKind::PromptTooLong,
            E::Rejected(_) => TurnErrorKind::InvalidRequest,
            E::Unavailable(_) | E::Decode(_) => TurnErrorKind::EngineUnavailable,
        };
        Self::new(kind, e.to_string())
    }
}

impl From<crate::prompt::budget::BudgetError> for TurnError {
    fn from(e: crate::prompt::budget::BudgetError) -> Self {
        use crate::prompt::budget::BudgetError as B;
        let kind = match e {
            B::PersonaTooLong { .. } => TurnErrorKind::PersonaTooLong,
            B::PromptTooLong { .. } => TurnErrorKind::PromptTooLong,
            B::Prompt(_) => TurnErrorKind::Internal,
        };
        Self::new(kind, e.to_string())
    }
}

/// What the session settings of a turn's `ack` were.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AckInfo {
    /// Effective persona style (`custom` for a persona text).
    pub persona_style: Option<String>,
    /// Effective assistant gender.
    pub gender: Option<String>,
    /// History messages the server holds for the session.
    pub history_turns: u32,
}

/// A frame of a turn, before a dialect gives it its wire shape.
#[derive(Debug, Clone, PartialEq)]
pub enum TurnFrame {
    /// The turn was accepted (protocol v0 sends it as `ack`).
    Ack(AckInfo),
    /// The tool decision.
    Tool(ToolDecision),
    /// Streamed reply text.
    Token(String),
    /// The whole reply, just before `Done`.
    Final(String),
    /// Terminal: the turn completed.
    Done(Usage),
    /// Terminal: the turn was cancelled.
    Cancelled(CancelReason),
    /// Terminal: the turn failed.
    Error(TurnError),
}

impl TurnFrame {
    /// Whether the frame ends its turn.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Done(_) | Self::Cancelled(_) | Self::Error(_))
    }
}

/// Where a turn's frames go. `send` returns false when they can no longer be delivered (the
/// connection is gone or too far behind); the driver then cancels the turn.
pub trait FrameSink: Send + Sync {
    /// Delivers one frame.
    fn send(&self, frame: TurnFrame) -> bool;
}

impl FrameSink for tokio::sync::mpsc::UnboundedSender<TurnFrame> {
    fn send(&self, frame: TurnFrame) -> bool {
        tokio::sync::mpsc::UnboundedSender::send(self, frame).is_ok()
    }
}

impl FrameSink for tokio::sync::mpsc::Sender<TurnFrame> {
    fn send(&self, frame: TurnFrame) -> bool {
        self.try_send(frame).is_ok()
    }
}

/// A shared sink.
pub type SharedSink = Arc<dyn FrameSink>;

/// How a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnOutcome {
    /// Ended with `Done`.
    Completed,
    /// Ended with `Cancelled`.
    Cancelled,
    /// Ended with `Error`.
    Failed,
}

/// A running turn: cancel it, or wait until its terminal frame was handed to its sink.
#[derive(Debug, Clone)]
pub struct TurnHandle {
    id: u64,
    label: &'static str,
    cancel: CancellationToken,
    reason: Arc<Mutex<CancelReason>>,
    finished: watch::Receiver<Option<TurnOutcome>>,
}

/// The driver's half of a [`TurnHandle`].
#[derive(Debug)]
pub(crate) struct TurnControl {
    pub(crate) cancel: CancellationToken,
    pub(crate) reason: Arc<Mutex<CancelReason>>,
    pub(crate) finished: watch::Sender<Option<TurnOutcome>>,
}

impl TurnControl {
    /// Why the turn was cancelled.
    pub(crate) fn reason(&self) -> CancelReason {
        self.reason.lock().map(|r| *r).unwrap_or_default()
    }
}

impl TurnHandle {
    /// A handle and its control half.
    pub(crate) fn new(id: u64, label: &'static str) -> (Self, TurnControl) {
        let cancel = CancellationToken::new();
        let reason = Arc::new(Mutex::new(CancelReason::Requested));
        let (tx, rx) = watch::channel(None);
        (
            Self {
                id,
                label,
                cancel: cancel.clone(),
                reason: Arc::clone(&reason),
                finished: rx,
            },
            TurnControl {
                cancel,
                reason,
                finished: tx,
            },
        )
    }

    /// The turn's id (unique in this process).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Asks the turn to stop; its terminal frame becomes `Cancelled(reason)` unless it already
    /// ended. The first reason given wins.
    pub fn cancel(&self, reason: CancelReason) {
        if !self.cancel.is_cancelled() {
            if let Ok(mut r) = self.reason.lock() {
                *r = reason;
            }
            self.cancel.cancel();
        }
    }

    /// Whether the turn has handed its terminal frame to its sink.
    pub fn is_finished(&self) -> bool {
        self.finished.borrow().is_some()
    }

    /// Waits until the turn has handed its terminal frame to its sink.
    pub async fn wait(&self) -> TurnOutcome {
        let mut rx = self.finished.clone();
        loop {
            if let Some(outcome) = *rx.borrow_and_update() {
                return outcome;
            }
            if rx.changed().await.is_err() {
                return rx.borrow().unwrap_or(TurnOutcome::Failed);
            }
        }
    }

    /// Cancels and waits (the time to the terminal frame is recorded as cancel→done).
    pub async fn cancel_and_wait(&self, reason: CancelReason) -> TurnOutcome {
        let t0 = std::time::Instant::now();
        let running = !self.is_finished();
        self.cancel(reason);
        let outcome = self.wait().await;
        if running && outcome == TurnOutcome::Cancelled {
            telemetry::cancel_to_done(self.label, reason, t0.elapsed().as_secs_f64());
        }
        outcome
    }
}
