//! The turn driver: one loop over a merged event stream — cancellation, the tool verdict, the
//! engine's events — feeding the [`Output`] state machine. Every kind of turn runs here:
//! chat turns (with or without the tool), tool-only turns and OpenAI completions.
//!
//! Invariants: the driver always ends its output (a terminal frame in every path); prompt
//! formatting runs on the blocking pool; the session's history is written once, at the end.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::{Instrument, Span, debug, warn};
use yap_engine_api::{EngineEvent, EngineRequest, GenerationStream, SamplingParams};
use yap_protocol::Usage;

use super::output::Output;
use super::telemetry;
use super::{CancelReason, FrameSink, TurnControl, TurnError, TurnErrorKind, TurnOutcome};
use crate::prompt::{ChatMessage, Role, StopFilter};
use crate::sanitize::Sanitizer;
use crate::session::{Session, SessionCell};
use crate::tool::{SharedClassifier, ToolDecision, ToolInput};
use crate::{CompletionInput, Core, DeployMode, TurnInput};

type Out = Output<dyn FrameSink>;

/// A tool verdict: a decision, or the classifier's failure.
enum Verdict {
    Decided(ToolDecision),
    Failed(String),
}

type VerdictFuture = Pin<Box<dyn Future<Output = Verdict> + Send>>;

fn ms(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1000.0
}

/// Classifies with the `TOOL_TIMEOUT_S` bound: a late decision is a "no" (counted).
fn classify(
    core: &Arc<Core>,
    tool: SharedClassifier,
    input: ToolInput,
    t0: Instant,
) -> VerdictFuture {
    let core = Arc::clone(core);
    let span = telemetry::tool_span(&Span::current());
    let verdict = async move {
        match tokio::time::timeout(core.config.tool_timeout, tool.classify(input)).await {
            Ok(Ok(v)) => {
                let d = ToolDecision::from_verdict(&v, core.threshold(), ms(t0));
                Span::current().record("decision", d.yes);
                Verdict::Decided(d)
            }
            Ok(Err(e)) => {
                core.counters.tool_failures.fetch_add(1, Ordering::Relaxed);
                telemetry::tool_failure();
                warn!(error = %e, "tool classification failed");
                Verdict::Failed(e)
            }
            Err(_) => {
                core.counters.tool_timeouts.fetch_add(1, Ordering::Relaxed);
                telemetry::tool_timeout();
                warn!(timeout = ?core.config.tool_timeout, "tool decision timed out; treating it as no");
                Verdict::Decided(ToolDecision::fallback_no("timeout", ms(t0)))
            }
        }
    };
    Box::pin(verdict.instrument(span))
}

/// The screen prefixes in effect for a session.
struct Prefixes {
    check: String,
    checked: String,
}

impl Prefixes {
    fn of(core: &Core, s: &Session) -> Self {
        Self {
            check: s
                .check_screen_prefix
                .clone()
                .unwrap_or_else(|| core.config.check_screen_prefix.clone()),
            checked: s
                .screen_checked_prefix
                .clone()
                .unwrap_or_else(|| core.config.screen_checked_prefix.clone()),
        }
    }

    /// The utterance as the chat model sees it.
    fn apply(&self, utterance: &str, yes: bool, pending: bool) -> String {
        let mut u = utterance.to_owned();
        if pending && !self.checked.is_empty() {
            u = format!("{} {u}", self.checked);
        }
        if yes && !self.check.is_empty() {
            u = format!("{} {u}", self.check);
        }
        u
    }
}

/// Stop strings, then the speech sanitizer.
struct TextPipe {
    stop: StopFilter,
    sanitizer: Option<Sanitizer>,
}

impl TextPipe {
    fn new(stops: Vec<String>, sanitize: Option<bool>) -> Self {
        Self {
            stop: StopFilter::new(stops),
            sanitizer: sanitize.map(Sanitizer::new),
        }
    }

    fn push(&mut self, raw: &str) -> (String, bool) {
        let (kept, hit) = self.stop.push(raw);
        let text = match self.sanitizer.as_mut() {
            Some(s) => s.push(&kept),
            None => kept,
        };
        (text, hit)
    }

    fn finish(&mut self) -> String {
        let rest = self.stop.flush();
        match self.sanitizer.as_mut() {
            Some(s) => {
                let mut t = s.push(&rest);
                t.push_str(&s.finish());
                t
            }
            None => rest,
        }
    }
}

/// A running generation of a turn (with its trace spans: prefill until the first event, then
/// decode until the end).
struct Chat {
    stream: GenerationStream,
    pipe: TextPipe,
    prompt_tokens: u32,
    pieces: u32,
    done: bool,
    spans: (Option<Span>, Option<Span>),
}

impl Chat {
    fn new(stream: GenerationStream, pipe: TextPipe, prompt_tokens: usize) -> Self {
        let prefill = telemetry::prefill_span(&Span::current(), prompt_tokens);
        Self {
            stream,
            pipe,
            prompt_tokens: prompt_tokens as u32,
            pieces: 0,
            done: false,
            spans: (Some(prefill), None),
        }
    }

    /// Feeds one engine event into the output.
    fn on_event(&mut self, ev: Option<EngineEvent>, out: &mut Out) {
        if self.spans.0.take().is_some() {
            self.spans.1 = Some(telemetry::decode_span(&Span::current()));
        }
        self.on_engine_event(ev, out);
        if self.done
            && let Some(decode) = self.spans.1.take()
        {
            decode.record("pieces", self.pieces);
        }
    }

    fn on_engine_event(&mut self, ev: Option<EngineEvent>, out: &mut Out) {
        match ev {
            Some(EngineEvent::Text(raw)) => {
                self.pieces += 1;
                let (text, hit) = self.pipe.push(&raw);
                out.token(text);
                if hit {
                    // A stop string: end here; dropping the stream stops the engine.
                    self.stream.cancel();
                    self.end_ok(yap_engine_api::EngineUsage::default(), out);
                }
            }
            Some(EngineEvent::Finished { usage, .. }) => self.end_ok(usage, out),
            Some(EngineEvent::Failed(e)) => {
                self.done = true;
                out.fail(e.into());
            }
            None => {
                self.done = true;
                out.fail(TurnError::new(
                    TurnErrorKind::EngineUnavailable,
                    "engine stopped during the turn",
                ));
            }
        }
    }

    fn end_ok(&mut self, usage: yap_engine_api::EngineUsage, out: &mut Out) {
        self.done = true;
        out.token(self.pipe.finish());
        out.done(Usage {
            prompt_tokens: usage.prompt_tokens.max(self.prompt_tokens),
            completion_tokens: usage.completion_tokens.max(self.pieces),
            cached_prompt_tokens: usage.cached_prompt_tokens,
            ..Usage::default()
        });
    }
}

/// What a chat turn needs to (re)build its prompt.
struct ChatCtx {
    key: String,
    persona: String,
    history: Vec<ChatMessage>,
    utterance: String,
    prefixes: Prefixes,
    pending: bool,
    sampling: SamplingParams,
    sanitize: Option<bool>,
}

/// What a finished chat turn leaves for the session.
#[derive(Default)]
struct ChatResult {
    /// The user message as the chat model saw it.
    user_text: Option<String>,
    /// The history the prompt kept, when it had to drop some.
    kept_history: Option<Vec<ChatMessage>>,
    /// The tool decision that went out.
    decided_yes: Option<bool>,
}

/// Entry point of a session turn.
pub(crate) async fn run(
    core: Arc<Core>,
    cell: Arc<SessionCell>,
    input: TurnInput,
    sink: Arc<dyn FrameSink>,
    ctl: TurnControl,
    t0: Instant,
) {
    core.counters.running.fetch_add(1, Ordering::Relaxed);
    let mode = core.config.deploy_mode;
    let dialect = input.label;
    let mut out: Out = Output::new(sink, mode.has_tool(), input.final_frame, t0);
    let result = drive(&core, &cell, input, &mut out, &ctl, t0).await;
    if !out.is_terminal() {
        out.cancel(CancelReason::Disconnected);
    }
    let outcome = match out.phase() {
        super::output::Phase::Terminal(o) => o,
        _ => TurnOutcome::Failed,
    };
    record(&core, &cell, mode, result, &out, outcome);
    telemetry::turn_ended(dialect, &out.marks(), out.terminal(), &Span::current());
    core.counters.running.fetch_sub(1, Ordering::Relaxed);
    debug!(session = %cell.key(), ?outcome, chars = out.reply().len(), "turn ended");
    let _ = ctl.finished.send(Some(outcome));
}

async fn drive(
    core: &Arc<Core>,
    cell: &Arc<SessionCell>,
    input: TurnInput,
    out: &mut Out,
    ctl: &TurnControl,
    t0: Instant,
) -> ChatResult {
    if ctl.cancel.is_cancelled() {
        out.cancel(ctl.reason());
        return ChatResult::default();
    }
    if let Err(e) = core.update_session(cell, &input.update) {
        out.fail_now(e);
        return ChatResult::default();
    }
    let session = cell.snapshot();
    if input.ack {
        out.ack(Core::ack_info(&session));
    }
    let prefixes = Prefixes::of(core, &session);
    let utterance = input.utterance.trim().to_owned();
    if core.config.deploy_mode.has_tool() && core.tool().is_none() {
        out.fail_now(TurnError::new(
            TurnErrorKind::EngineUnavailable,
            "the tool model is still loading",
        ));
        return ChatResult::default();
    }
    let verdict = core.tool().cloned().map(|tool| {
        let history = session.user_utterances(&[&prefixes.check, &prefixes.checked]);
        classify(
            core,
            tool,
            ToolInput {
                history,
                utterance: utterance.clone(),
            },
            t0,
        )
    });
    if core.config.deploy_mode == DeployMode::Tool {
        return tool_turn(verdict, utterance, out, ctl).await;
    }
    let ctx = ChatCtx {
        key: cell.key().to_owned(),
        persona: session.persona(),
        sampling: core.sampling_for(session.sampling.as_ref(), input.sampling.as_ref()),
        sanitize: crate::sanitize_on(session.sampling.as_ref(), input.sampling.as_ref())
            .then_some(core.config.sanitize_verbalize),
        history: session.history,
        utterance,
        prefixes,
        pending: session.screen_pending,
    };
    chat_turn(core, &ctx, verdict, out, ctl).await
}

/// `DEPLOY_MODE=tool`: the decision, then done.
async fn tool_turn(
    verdict: Option<VerdictFuture>,
    utterance: String,
    out: &mut Out,
    ctl: &TurnControl,
) -> ChatResult {
    let Some(verdict) = verdict else {
        out.fail_now(TurnError::new(TurnErrorKind::Internal, "no tool model"));
        return ChatResult::default();
    };
    tokio::select! {
        biased;
        () = ctl.cancel.cancelled() => {
            out.cancel(ctl.reason());
            ChatResult { user_text: Some(utterance), ..ChatResult::default() }
        }
        v = verdict => match v {
            Verdict::Decided(d) => {
                let yes = d.yes;
                let tokens = d.raw.get("tokens").and_then(serde_json::Value::as_u64).unwrap_or(0);
                out.tool(d);
                out.done(Usage { prompt_tokens: tokens as u32, ..Usage::default() });
                ChatResult { user_text: Some(utterance), kept_history: None, decided_yes: Some(yes) }
            }
            Verdict::Failed(e) => {
                out.fail_now(TurnError::new(TurnErrorKind::EngineUnavailable, format!("tool model: {e}")));
                ChatResult::default()
            }
        }
    }
}

/// Builds the prompt (on the blocking pool) and starts the engine.
async fn start_chat(
    core: &Arc<Core>,
    ctx: &ChatCtx,
    yes: bool,
) -> Result<(Chat, String, Option<Vec<ChatMessage>>), TurnError> {
    let Some(format) = core.format().cloned() else {
        return Err(TurnError::new(
            TurnErrorKind::EngineUnavailable,
            "the chat model is still loading",
        ));
    };
    let budget = core.budget();
    let (persona, history, raw) = (
        ctx.persona.clone(),
        ctx.history.clone(),
        ctx.utterance.clone(),
    );
    let (check, checked, pending) = (
        ctx.prefixes.check.clone(),
        ctx.prefixes.checked.clone(),
        ctx.pending,
    );
    let built = tokio::task::spawn_blocking(move || {
        let cut = budget.cut_utterance(&format, &raw);
        let user = Prefixes { check, checked }.apply(&cut, yes, pending);
        budget
            .fit(&format, &persona, history, &user)
            .map(|f| (f, user))
    })
    .await
    .map_err(|e| TurnError::new(TurnErrorKind::Internal, format!("prompt task: {e}")))?;
    let (fitted, user_text) = built?;
    let prompt_tokens = fitted.prompt.ids.len();
    let stream = core.engine.generate(EngineRequest {
        cache_key: ctx.key.clone(),
        prompt: fitted.prompt.ids,
        prompt_text: fitted.prompt.text,
        sampling: ctx.sampling.clone(),
        max_new_tokens: core.config.chat_max_out,
    })?;
    let stops = core
        .format()
        .map(|f| f.stops().to_vec())
        .unwrap_or_default();
    let kept = fitted.trimmed.then_some(fitted.history);
    Ok((
        Chat::new(stream, TextPipe::new(stops, ctx.sanitize), prompt_tokens),
        user_text,
        kept,
    ))
}

/// Waits for the verdict unless the turn is cancelled first.
async fn await_verdict(verdict: VerdictFuture, ctl: &TurnControl) -> Option<Verdict> {
    tokio::select! {
        biased;
        () = ctl.cancel.cancelled() => None,
        v = verdict => Some(v),
    }
}

/// A verdict as the chat turn uses it: a failure becomes a "no" (the reply still goes out).
fn decision_of(v: Verdict, t0_ms: f64) -> ToolDecision {
    match v {
        Verdict::Decided(d) => d,
        Verdict::Failed(_) => ToolDecision::fallback_no("error", t0_ms),
    }
}

async fn chat_turn(
    core: &Arc<Core>,
    ctx: &ChatCtx,
    mut verdict: Option<VerdictFuture>,
    out: &mut Out,
    ctl: &TurnControl,
) -> ChatResult {
    let mut result = ChatResult::default();
    if !core.config.tool_overlap
        && let Some(v) = verdict.take()
    {
        // Classify first, then start the chat with the decision known.
        let Some(v) = await_verdict(v, ctl).await else {
            out.cancel(ctl.reason());
            return ChatResult {
                user_text: Some(ctx.utterance.clone()),
                ..result
            };
        };
        let d = decision_of(v, 0.0);
        result.decided_yes = Some(d.yes);
        out.tool(d);
    }
    let mut chat = match start_chat(core, ctx, result.decided_yes.unwrap_or(false)).await {
        Ok((chat, user, kept)) => {
            result.user_text = Some(user);
            result.kept_history = kept;
            Some(chat)
        }
        Err(e) => {
            out.fail(e);
            None
        }
    };
    while !out.is_terminal() {
        let active = chat.as_ref().is_some_and(|c| !c.done);
        if !active && verdict.is_none() {
            break;
        }
        tokio::select! {
            biased;
            () = ctl.cancel.cancelled() => out.cancel(ctl.reason()),
            v = async { match verdict.as_mut() { Some(f) => f.await, None => std::future::pending().await } }, if verdict.is_some() => {
                verdict = None;
                let d = decision_of(v, 0.0);
                result.decided_yes = Some(d.yes);
                if d.yes {
                    // The chat started without knowing: restart it with the screen prefix.
                    out.discard_held();
                    chat = None;
                    match start_chat(core, ctx, true).await {
                        Ok((c, user, kept)) => {
                            result.user_text = Some(user);
                            result.kept_history = kept;
                            chat = Some(c);
                        }
                        Err(e) => out.fail(e),
                    }
                }
                out.tool(d);
            }
            ev = async { match chat.as_mut() { Some(c) => c.stream.next_event().await, None => std::future::pending().await } }, if active => {
                if let Some(c) = chat.as_mut() {
                    c.on_event(ev, out);
                }
            }
        }
        if !out.delivered() {
            out.cancel(CancelReason::Disconnected);
        }
    }
    if result.user_text.is_none() {
        result.user_text = Some(ctx.utterance.clone());
    }
    result
}

/// Writes what the turn leaves in its session: history (once), the pending-screenshot flag.
fn record(
    core: &Core,
    cell: &Arc<SessionCell>,
    mode: DeployMode,
    result: ChatResult,
    out: &Out,
    outcome: TurnOutcome,
) {
    let mut s = cell.lock();
    let recorded = outcome != TurnOutcome::Failed;
    if recorded {
        if let Some(kept) = result.kept_history {
            s.history = kept;
        }
        if let Some(user) = result.user_text.filter(|u| !u.trim().is_empty()) {
            s.history.push(ChatMessage::new(Role::User, user));
        }
        let reply = out.reply().trim();
        if mode.has_chat() && !reply.is_empty() {
            s.history.push(ChatMessage::new(Role::Assistant, reply));
        }
    }
    match result.decided_yes {
        Some(yes) => s.screen_pending = yes,
        None if recorded && mode.has_tool() => s.screen_pending = false,
        None => {}
    }
    let budget = core.budget();
    budget.trim_history(&mut s.history, |t| core.count_tokens(t));
    drop(s);
    core.sessions.touch(cell);
}

/// Entry point of a one-off completion.
pub(crate) async fn run_completion(
    core: Arc<Core>,
    id: u64,
    input: CompletionInput,
    sink: Arc<dyn FrameSink>,
    ctl: TurnControl,
    t0: Instant,
) {
    core.counters.running.fetch_add(1, Ordering::Relaxed);
    let mut out: Out = Output::new(sink, false, false, t0);
    match start_completion(&core, id, input).await {
        Ok(mut chat) => {
            while !out.is_terminal() {
                tokio::select! {
                    biased;
                    () = ctl.cancel.cancelled() => out.cancel(ctl.reason()),
                    ev = chat.stream.next_event() => chat.on_event(ev, &mut out),
                }
                if !out.delivered() {
                    out.cancel(CancelReason::Disconnected);
                }
            }
        }
        Err(e) => out.fail(e),
    }
    telemetry::turn_ended("openai", &out.marks(), out.terminal(), &Span::current());
    core.counters.running.fetch_sub(1, Ordering::Relaxed);
    let outcome = match out.phase() {
        super::output::Phase::Terminal(o) => o,
        _ => TurnOutcome::Failed,
    };
    let _ = ctl.finished.send(Some(outcome));
}

async fn start_completion(
    core: &Arc<Core>,
    id: u64,
    input: CompletionInput,
) -> Result<Chat, TurnError> {
    let invalid = |m: String| TurnError::new(TurnErrorKind::InvalidRequest, m);
    let Some(format) = core.format().cloned() else {
        return Err(TurnError::new(
            TurnErrorKind::EngineUnavailable,
            "no chat model is loaded",
        ));
    };
    let (messages, raw, ids) = (
        input.messages.clone(),
        input.raw_prompt.clone(),
        input.prompt_ids.clone(),
    );
    let prompt = tokio::task::spawn_blocking(move || match (messages, raw, ids) {
        (Some(m), _, _) => format
            .encode_chat(&crate::prompt::normalize(m))
            .map_err(|e| e.to_string()),
        (None, Some(r), _) => Ok(format.encode_raw(&r)),
        (None, None, Some(ids)) => Ok(crate::prompt::Prompt {
            text: format.decode(&ids),
            ids,
        }),
        (None, None, None) => Err("a prompt or messages are required".to_owned()),
    })
    .await
    .map_err(|e| TurnError::new(TurnErrorKind::Internal, e.to_string()))?
    .map_err(invalid)?;
    let max_new = input.max_tokens.unwrap_or(core.config.chat_max_out) as usize;
    let limit = core.config.chat_max_len;
    if prompt.ids.is_empty() || max_new == 0 || prompt.ids.len() + max_new > limit {
        return Err(invalid(format!(
            "prompt of {} tokens plus max_tokens={max_new} exceeds the context of {limit} tokens (CHAT_MAX_LEN)",
            prompt.ids.len()
        )));
    }
    let n = prompt.ids.len();
    let stream = core.engine.generate(EngineRequest {
        cache_key: format!("api:{id}"),
        prompt: prompt.ids,
        prompt_text: prompt.text,
        sampling: input.sampling,
        max_new_tokens: max_new as u32,
    })?;
    let mut stops = input.stop;
    stops.extend(
        core.format()
            .map(|f| f.stops().to_vec())
            .unwrap_or_default(),
    );
    Ok(Chat::new(stream, TextPipe::new(stops, None), n))
}
