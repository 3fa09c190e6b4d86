//! A turn's output as a small state machine: holding → streaming → terminal.
//!
//! Every ordering rule of a turn lives here and nowhere else:
//! - while *holding* (the tool decision is not out yet), tokens and even the turn's end are kept
//!   back; the `Tool` frame releases them in order;
//! - exactly one terminal frame leaves, and nothing after it;
//! - a cancel discards whatever was held (a cancelled turn shows no toolcall and no token that
//!   was not already sent);
//! - the reply text is what was actually sent (history records that).

use std::time::Instant;

use yap_protocol::Usage;

use super::{CancelReason, FrameSink, TurnError, TurnFrame, TurnOutcome};
use crate::tool::ToolDecision;

/// Where the turn is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the tool decision; frames are held.
    Holding,
    /// Frames go out as they come.
    Streaming,
    /// The terminal frame went out.
    Terminal(TurnOutcome),
}

/// Latency marks of a turn, in ms since it began.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Marks {
    /// The tool frame went out.
    pub tool_ms: Option<f64>,
    /// The first token went out.
    pub first_token_ms: Option<f64>,
    /// The first sentence end went out.
    pub first_sentence_ms: Option<f64>,
    /// The terminal frame went out.
    pub end_ms: Option<f64>,
    /// Largest gap between two tokens.
    pub max_gap_ms: f64,
}

/// A turn's outbound frames.
pub struct Output<S: FrameSink + ?Sized> {
    sink: std::sync::Arc<S>,
    phase: Phase,
    held: Vec<TurnFrame>,
    reply: String,
    final_frame: bool,
    t0: Instant,
    last_token: Option<f64>,
    marks: Marks,
    delivered: bool,
    terminal: Option<TurnFrame>,
}

impl<S: FrameSink + ?Sized> std::fmt::Debug for Output<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("phase", &self.phase)
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl<S: FrameSink + ?Sized> Output<S> {
    /// An output that holds frames until [`Output::tool`] when `hold`; `final_frame` adds the
    /// whole reply as a `Final` frame before `Done`.
    pub fn new(sink: std::sync::Arc<S>, hold: bool, final_frame: bool, t0: Instant) -> Self {
        Self {
            sink,
            phase: if hold {
                Phase::Holding
            } else {
                Phase::Streaming
            },
            held: Vec::new(),
            reply: String::new(),
            final_frame,
            t0,
            last_token: None,
            marks: Marks::default(),
            delivered: true,
            terminal: None,
        }
    }

    fn ms(&self) -> f64 {
        self.t0.elapsed().as_secs_f64() * 1000.0
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether the terminal frame went out.
    pub fn is_terminal(&self) -> bool {
        matches!(self.phase, Phase::Terminal(_))
    }

    /// Whether every frame so far reached the sink (false: the connection is gone or behind).
    pub fn delivered(&self) -> bool {
        self.delivered
    }

    /// The reply text sent so far.
    pub fn reply(&self) -> &str {
        &self.reply
    }

    /// The latency marks.
    pub fn marks(&self) -> Marks {
        self.marks
    }

    /// The terminal frame that went out, once it did.
    pub fn terminal(&self) -> Option<&TurnFrame> {
        self.terminal.as_ref()
    }

    fn emit(&mut self, frame: TurnFrame) {
        if let TurnFrame::Token(text) = &frame {
            let now = self.ms();
            if self.marks.first_token_ms.is_none() {
                self.marks.first_token_ms = Some(now);
            }
            if let Some(prev) = self.last_token {
                self.marks.max_gap_ms = self.marks.max_gap_ms.max(now - prev);
            }
            self.last_token = Some(now);
            if self.marks.first_sentence_ms.is_none() && text.contains(['.', '!', '?']) {
                self.marks.first_sentence_ms = Some(now);
            }
            self.reply.push_str(text);
        }
        if frame.is_terminal() {
            self.terminal = Some(frame.clone());
        }
        if !self.sink.send(frame) {
            self.delivered = false;
        }
    }

    fn push(&mut self, frame: TurnFrame) {
        match self.phase {
            Phase::Terminal(_) => {}
            Phase::Holding if self.has_held_end() => {}
            Phase::Holding => self.held.push(frame),
            Phase::Streaming => self.emit(frame),
        }
    }

    /// Sends the `Ack`.
    pub fn ack(&mut self, info: super::AckInfo) {
        if !self.is_terminal() {
            self.emit(TurnFrame::Ack(info));
        }
    }

    /// The tool decision: sent at once, then whatever was held, in order.
    pub fn tool(&mut self, decision: ToolDecision) {
        if self.phase != Phase::Holding {
            return;
        }
        self.emit(TurnFrame::Tool(decision));
        self.marks.tool_ms = Some(self.ms());
        self.phase = Phase::Streaming;
        for frame in std::mem::take(&mut self.held) {
            self.finish_or_emit(frame);
        }
    }

    fn finish_or_emit(&mut self, frame: TurnFrame) {
        match frame {
            TurnFrame::Done(usage) => self.done(usage),
            TurnFrame::Error(e) => self.fail(e),
            other => self.emit(other),
        }
    }

    /// Drops everything held (a restarted chat replaces it).
    pub fn discard_held(&mut self) {
        self.held.clear();
    }

    /// A piece of reply text.
    pub fn token(&mut self, text: String) {
        if !text.is_empty() {
            self.push(TurnFrame::Token(text));
        }
    }

    /// The turn completed: `Final` (when asked) and `Done`, now or once the tool frame is out.
    pub fn done(&mut self, usage: Usage) {
        match self.phase {
            Phase::Terminal(_) => {}
            Phase::Holding if self.has_held_end() => {}
            Phase::Holding => self.held.push(TurnFrame::Done(usage)),
            Phase::Streaming => {
                if self.final_frame {
                    // Trimmed as Python's str.strip() does (the replaced server's final text
                    // is the joined tokens stripped): Unicode spaces and the separators U+001C-1F.
                    let text = self
                        .reply
                        .trim_matches(|c: char| {
                            c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
                        })
                        .to_owned();
                    self.emit(TurnFrame::Final(text));
                }
                let now = self.ms();
                let ttft = self.marks.first_token_ms.unwrap_or(now);
                self.emit(TurnFrame::Done(Usage {
                    ttfb_ms: self.marks.tool_ms.unwrap_or(ttft),
                    ttft_ms: ttft,
                    total_ms: now,
                    ..usage
                }));
                self.end(TurnOutcome::Completed);
            }
        }
    }

    /// The turn failed: `Error`, now or once the tool frame is out.
    pub fn fail(&mut self, error: TurnError) {
        match self.phase {
            Phase::Terminal(_) => {}
            Phase::Holding if self.has_held_end() => {}
            Phase::Holding => self.held.push(TurnFrame::Error(error)),
            Phase::Streaming => {
                self.emit(TurnFrame::Error(error));
                self.end(TurnOutcome::Failed);
            }
        }
    }

    /// Fails at once, even while holding (the tool decision itself failed).
    pub fn fail_now(&mut self, error: TurnError) {
        if !self.is_terminal() {
            self.held.clear();
            self.emit(TurnFrame::Error(error));
            self.end(TurnOutcome::Failed);
        }
    }

    /// The turn was cancelled: held frames are dropped, `Cancelled` goes out at once.
    pub fn cancel(&mut self, reason: CancelReason) {
        if !self.is_terminal() {
            self.held.clear();
            self.emit(TurnFrame::Cancelled(reason));
            self.end(TurnOutcome::Cancelled);
        }
    }

    fn end(&mut self, outcome: TurnOutcome) {
        self.marks.end_ms = Some(self.ms());
        self.phase = Phase::Terminal(outcome);
    }

    /// Whether a terminal frame is held (the turn is over once the tool frame is out).
    pub fn has_held_end(&self) -> bool {
        self.held.iter().any(TurnFrame::is_terminal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::TurnErrorKind;
    use proptest::prelude::*;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Rec(Mutex<Vec<TurnFrame>>);
    impl FrameSink for Rec {
        fn send(&self, f: TurnFrame) -> bool {
            self.0.lock().unwrap().push(f);
            true
        }
    }

    fn kinds(r: &Rec) -> Vec<&'static str> {
        r.0.lock()
            .unwrap()
            .iter()
            .map(|f| match f {
                TurnFrame::Ack(_) => "ack",
                TurnFrame::Tool(_) => "tool",
                TurnFrame::Token(_) => "token",
                TurnFrame::Final(_) => "final",
                TurnFrame::Done(_) => "done",
                TurnFrame::Cancelled(_) => "cancelled",
                TurnFrame::Error(_) => "error",
            })
            .collect()
    }

    fn no() -> ToolDecision {
        ToolDecision::fallback_no("test", 0.0)
    }

    #[test]
    fn tokens_and_end_wait_for_the_tool_frame() {
        let r = Arc::new(Rec::default());
        let mut o = Output::new(r.clone(), true, true, Instant::now());
        o.token("Hi".into());
        o.token(" there.".into());
        o.done(Usage::default());
        assert!(kinds(&r).is_empty());
        assert!(o.has_held_end());
        o.tool(no());
        assert_eq!(kinds(&r), ["tool", "token", "token", "final", "done"]);
        assert_eq!(o.reply(), "Hi there.");
        assert!(o.is_terminal());
        o.token("late".into());
        o.cancel(CancelReason::Requested);
        assert_eq!(kinds(&r).len(), 5, "nothing after the terminal frame");
    }

    #[test]
    fn cancel_while_holding_sends_no_tool_and_no_token() {
        let r = Arc::new(Rec::default());
        let mut o = Output::new(r.clone(), true, false, Instant::now());
        o.token("secret".into());
        o.cancel(CancelReason::Superseded);
        o.tool(no());
        assert_eq!(kinds(&r), ["cancelled"]);
        assert_eq!(o.reply(), "");
    }

    #[test]
    fn a_restart_drops_held_tokens_but_keeps_order() {
        let r = Arc::new(Rec::default());
        let mut o = Output::new(r.clone(), true, false, Instant::now());
        o.token("speculative".into());
        o.discard_held();
        o.token("real".into());
        o.tool(no());
        o.fail(TurnError::new(TurnErrorKind::EngineUnavailable, "x"));
        assert_eq!(kinds(&r), ["tool", "token", "error"]);
        assert_eq!(o.reply(), "real");
    }

    #[test]
    fn fail_now_skips_the_tool_frame() {
        let r = Arc::new(Rec::default());
        let mut o = Output::new(r.clone(), true, false, Instant::now());
        o.token("x".into());
        o.fail_now(TurnError::new(TurnErrorKind::Internal, "tool model broke"));
        assert_eq!(kinds(&r), ["error"]);
    }

    #[derive(Debug, Clone)]
    enum Ev {
        Tool,
        Token,
        Done,
        Fail,
        Cancel,
        Discard,
    }

    proptest! {
        #[test]
        fn exactly_one_terminal_and_tool_before_tokens(
            hold in any::<bool>(),
            evs in proptest::collection::vec(prop_oneof![
                Just(Ev::Tool), Just(Ev::Token), Just(Ev::Done), Just(Ev::Fail),
                Just(Ev::Cancel), Just(Ev::Discard)], 0..30)
        ) {
            let r = Arc::new(Rec::default());
            let mut o = Output::new(r.clone(), hold, true, Instant::now());
            for e in evs {
                match e {
                    Ev::Tool => o.tool(no()),
                    Ev::Token => o.token("t".into()),
                    Ev::Done => o.done(Usage::default()),
                    Ev::Fail => o.fail(TurnError::new(TurnErrorKind::Internal, "x")),
                    Ev::Cancel => o.cancel(CancelReason::Requested),
                    Ev::Discard => o.discard_held(),
                }
            }
            // A driver always ends a turn: a cancel is the last resort.
            o.cancel(CancelReason::Shutdown);
            let k = kinds(&r);
            let terminals = k.iter().filter(|x| matches!(**x, "done" | "cancelled" | "error")).count();
            prop_assert_eq!(terminals, 1);
            prop_assert!(matches!(*k.last().unwrap(), "done" | "cancelled" | "error"));
            if hold {
                let first_token = k.iter().position(|x| *x == "token");
                let tool = k.iter().position(|x| *x == "tool");
                if let Some(t) = first_token {
                    prop_assert!(tool.is_some_and(|p| p < t));
                }
            } else {
                prop_assert!(!k.contains(&"tool"));
            }
            prop_assert!(k.iter().filter(|x| **x == "tool").count() <= 1);
        }
    }
}
