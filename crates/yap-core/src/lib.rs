//! Session and turn orchestration.
//!
//! A [`Core`] owns the sessions (persona, history) keyed by `session_id`, and runs turns on a
//! [`ChatEngine`]: it composes the prompt (persona, trimmed history, user utterance), streams
//! the engine's text as frames into a [`FrameSink`], and guarantees exactly one terminal frame
//! per turn. Barge-in: a new turn for a session first cancels the running one and waits until it
//! has sent its `done{cancelled}`.

pub mod history;
pub mod persona;
pub mod sanitize;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use yap_engine::{
    ChatEngine, ChatMessage, EngineError, EngineEvent, GenerateRequest, Role, SamplingParams,
};
use yap_protocol::{
    ErrorCode, Gender, Sampling, ServerFrame, StartRequest, ToolStatus, Usage, UserIdentity,
};
use yap_tool::{ToolService, ToolVerdict};

/// Where a turn's frames go (the connection's outbound queue).
pub type FrameSink = mpsc::UnboundedSender<ServerFrame>;

/// Budgets and defaults of turn orchestration (see protocol.md for the env names).
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// `CHAT_MAX_LEN`: prompt + reply tokens.
    pub chat_max_len: usize,
    /// `CHAT_MAX_OUT`: most reply tokens.
    pub chat_max_out: u32,
    /// `CHAT_PROMPT_MAX_TOKENS`: most persona tokens.
    pub persona_max_tokens: usize,
    /// `CHAT_HISTORY_MAX_TOKENS`: history trim threshold.
    pub history_max_tokens: usize,
    /// `HISTORY_RETENTION_PCT`: % of the threshold kept after a trim.
    pub history_retention_pct: usize,
    /// `USER_UTT_MAX_TOKENS`: user utterance tokens kept (from the beginning).
    pub user_utt_max_tokens: usize,
    /// Server default sampling.
    pub default_sampling: SamplingParams,
    /// `SANITIZE_VERBALIZE`: the sanitizer also spells numbers and symbols for speech.
    pub verbalize: bool,
    /// `DEPLOY_MODE`: which models answer a turn.
    pub deploy_mode: DeployMode,
    /// `TOOL_THRESHOLD`: the yes-probability at or above which the toolcall says yes.
    pub tool_threshold: f32,
    /// `TOOL_OVERLAP`: in `both` mode, start the chat while the tool model classifies (tokens
    /// are held until the toolcall is out); false classifies first, then starts the chat.
    pub tool_overlap: bool,
}

/// Which models a deployment runs (`DEPLOY_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeployMode {
    /// Tool decision first (`toolcall` frame), then the chat reply.
    #[default]
    Both,
    /// Chat only: no `toolcall` frame.
    Chat,
    /// Tool only: a turn is `toolcall` + `done`.
    Tool,
}

impl DeployMode {
    /// Parses `both` / `chat` / `tool`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "both" => Some(Self::Both),
            "chat" => Some(Self::Chat),
            "tool" => Some(Self::Tool),
            _ => None,
        }
    }

    /// Whether the tool model runs.
    pub fn has_tool(self) -> bool {
        self != Self::Chat
    }

    /// Whether the chat model runs.
    pub fn has_chat(self) -> bool {
        self != Self::Tool
    }
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            chat_max_len: 5525,
            chat_max_out: 150,
            persona_max_tokens: 1500,
            history_max_tokens: 3000,
            history_retention_pct: 66,
            user_utt_max_tokens: 500,
            default_sampling: SamplingParams::default(),
            verbalize: false,
            deploy_mode: DeployMode::Chat,
            tool_threshold: 0.5,
            tool_overlap: true,
        }
    }
}

/// State kept per `session_id` for the life of the server.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// Persona given as text (`persona_text` / `chat_prompt`), overriding templates.
    pub persona_text: Option<String>,
    /// Template persona settings.
    pub persona_style: Option<String>,
    /// Assistant gender for templates.
    pub gender: Option<Gender>,
    /// User identity for templates.
    pub user_identity: Option<UserIdentity>,
    /// Conversation so far (user / assistant messages).
    pub history: Vec<ChatMessage>,
}

impl Session {
    /// The persona prompt in effect.
    pub fn persona(&self) -> String {
        self.persona_text.clone().unwrap_or_else(|| {
            persona::compose(
                self.persona_style.as_deref(),
                self.gender,
                self.user_identity,
            )
        })
    }
}

/// How a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnOutcome {
    /// Ended with `done` and usage.
    Completed,
    /// Ended with `done{cancelled}`.
    Cancelled,
    /// Ended with `error`.
    Failed,
}

/// A running turn: cancel it, or wait for its terminal frame to be queued.
#[derive(Debug, Clone)]
pub struct TurnHandle {
    id: u64,
    session_id: String,
    cancel: CancellationToken,
    cancel_request_id: Arc<Mutex<Option<String>>>,
    finished: watch::Receiver<Option<TurnOutcome>>,
}

impl TurnHandle {
    /// The session the turn belongs to.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The turn's `done{cancelled}`: with the cancel's `request_id` when it gave one, else
    /// `own` (the turn's).
    fn cancelled_frame(&self, own: &Option<String>) -> ServerFrame {
        let rid = self
            .cancel_request_id
            .lock()
            .ok()
            .and_then(|g| g.clone())
            .or_else(|| own.clone());
        ServerFrame::cancelled(rid)
    }

    /// Asks the turn to stop; its terminal frame becomes `done{cancelled}` carrying
    /// `request_id` when given (else the turn's own).
    pub fn cancel(&self, request_id: Option<String>) {
        if request_id.is_some()
            && let Ok(mut slot) = self.cancel_request_id.lock()
        {
            *slot = request_id;
        }
        self.cancel.cancel();
    }

    /// Whether the turn has queued its terminal frame.
    pub fn is_finished(&self) -> bool {
        self.finished.borrow().is_some()
    }

    /// Waits until the turn has queued its terminal frame.
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

    /// Cancels and waits.
    pub async fn cancel_and_wait(&self, request_id: Option<String>) -> TurnOutcome {
        self.cancel(request_id);
        self.wait().await
    }
}

/// Why a turn could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct TurnError {
    /// The error code for the client.
    pub code: ErrorCode,
    /// Reason.
    pub message: String,
}

impl TurnError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<EngineError> for TurnError {
    fn from(e: EngineError) -> Self {
        let code = match e {
            EngineError::ContextOverflow { .. } => ErrorCode::InvalidMessage,
            EngineError::Template(_) => ErrorCode::InternalError,
            _ => ErrorCode::EngineUnavailable,
        };
        Self::new(code, e.to_string())
    }
}

/// The orchestrator shared by all connections.
pub struct Core {
    engine: Arc<dyn ChatEngine>,
    tool: Option<Arc<ToolService>>,
    config: CoreConfig,
    sessions: Mutex<HashMap<String, Session>>,
    running: Mutex<HashMap<String, TurnHandle>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("config", &self.config)
            .finish()
    }
}

const USER_MARKER: &str = "\u{1}YAP-USER-MARK\u{1}";

impl Core {
    /// A core over an engine.
    pub fn new(engine: Arc<dyn ChatEngine>, config: CoreConfig) -> Arc<Self> {
        Self::with_tool(engine, None, config)
    }

    /// A core over a chat engine and a tool classifier. Without a classifier the deploy mode
    /// falls back to `chat` (a `tool`-only deployment needs one).
    pub fn with_tool(
        engine: Arc<dyn ChatEngine>,
        tool: Option<Arc<ToolService>>,
        mut config: CoreConfig,
    ) -> Arc<Self> {
        if tool.is_none() {
            config.deploy_mode = DeployMode::Chat;
        }
        Arc::new(Self {
            engine,
            tool,
            config,
            sessions: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<dyn ChatEngine> {
        &self.engine
    }

    /// The tool classifier, when deployed.
    pub fn tool(&self) -> Option<&Arc<ToolService>> {
        self.tool.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// A copy of a session's state.
    pub fn session(&self, session_id: &str) -> Option<Session> {
        self.sessions.lock().ok()?.get(session_id).cloned()
    }

    /// Number of turns running now.
    pub fn running_turns(&self) -> usize {
        self.running.lock().map(|m| m.len()).unwrap_or(0)
    }

    fn with_session<R>(&self, session_id: &str, f: impl FnOnce(&mut Session) -> R) -> R {
        let mut guard = match self.sessions.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(guard.entry(session_id.to_owned()).or_default())
    }

    /// Sets a session's persona text (the `chat_prompt` message).
    pub fn set_persona(&self, session_id: &str, persona: &str) -> Result<(), TurnError> {
        self.check_persona(persona)?;
        self.with_session(session_id, |s| s.persona_text = Some(persona.to_owned()));
        Ok(())
    }

    fn check_persona(&self, persona: &str) -> Result<(), TurnError> {
        let n = self.engine.count_tokens(persona);
        if n > self.config.persona_max_tokens {
            return Err(TurnError::new(
                ErrorCode::InvalidMessage,
                format!(
                    "persona has {n} tokens; the limit is {} (CHAT_PROMPT_MAX_TOKENS)",
                    self.config.persona_max_tokens
                ),
            ));
        }
        Ok(())
    }

    /// Prefills a persona (and the session's history when `with_history`) into the engine's
    /// cache for `session_id`, generating nothing. Resolves when the prefill is done.
    pub async fn warm(
        &self,
        session_id: &str,
        persona: Option<&str>,
        history_text: Option<&str>,
    ) -> Result<u32, TurnError> {
        if let Some(p) = persona {
            self.check_persona(p)?;
        }
        let (persona, mut history) = self.with_session(session_id, |s| {
            if let Some(p) = persona {
                s.persona_text = Some(p.to_owned());
            }
            if let Some(h) = history_text {
                s.history = history::merge(&s.history, history::parse_transcript(h));
            }
            (s.persona(), s.history.clone())
        });
        self.trim_history(&mut history);
        let mut messages = vec![ChatMessage::new(Role::System, persona)];
        messages.extend(history);
        messages.push(ChatMessage::new(Role::User, USER_MARKER));
        let rendered = self.engine.render(&normalize(messages))?;
        let prefix = rendered
            .find(USER_MARKER)
            .map_or(rendered.as_str(), |at| &rendered[..at]);
        let mut stream = self.engine.generate(GenerateRequest {
            cache_key: session_id.to_owned(),
            prompt: prefix.to_owned(),
            sampling: self.config.default_sampling.clone(),
            max_new_tokens: 0,
            stop: Vec::new(),
        })?;
        while let Some(ev) = stream.next().await {
            match ev {
                EngineEvent::Finished { usage, .. } => return Ok(usage.prompt_tokens),
                EngineEvent::Failed(e) => return Err(e.into()),
                EngineEvent::Text(_) => {}
            }
        }
        Err(TurnError::new(
            ErrorCode::EngineUnavailable,
            "engine dropped the prefill",
        ))
    }

    fn trim_history(&self, history: &mut Vec<ChatMessage>) {
        history::trim(
            history,
            |t| self.engine.count_tokens(t),
            self.config.history_max_tokens,
            self.config.history_retention_pct,
        );
    }

    /// Starts a turn. A running turn of the same session is cancelled first and has queued its
    /// `done{cancelled}` before this returns. Every frame of the new turn, ending with exactly
    /// one terminal frame, goes to `sink`.
    pub async fn start_turn(self: &Arc<Self>, req: StartRequest, sink: FrameSink) -> TurnHandle {
        let t0 = Instant::now();
        let previous = self
            .running
            .lock()
            .ok()
            .and_then(|m| m.get(&req.session_id).cloned());
        if let Some(prev) = previous {
            prev.cancel_and_wait(None).await;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        let (done_tx, done_rx) = watch::channel(None);
        let handle = TurnHandle {
            id,
            session_id: req.session_id.clone(),
            cancel: cancel.clone(),
            cancel_request_id: Arc::new(Mutex::new(None)),
            finished: done_rx,
        };
        if let Ok(mut m) = self.running.lock() {
            m.insert(req.session_id.clone(), handle.clone());
        }
        let core = Arc::clone(self);
        let task_handle = handle.clone();
        tokio::spawn(async move {
            let outcome = core.run_turn(req, &sink, &task_handle, t0).await;
            if let Ok(mut m) = core.running.lock()
                && m.get(task_handle.session_id())
                    .is_some_and(|h| h.id == task_handle.id)
            {
                m.remove(task_handle.session_id());
            }
            let _ = done_tx.send(Some(outcome));
        });
        handle
    }

    fn prepare(&self, req: &StartRequest) -> Result<(Vec<ChatMessage>, String), TurnError> {
        if let Some(p) = &req.persona_text {
            self.check_persona(p)?;
        }
        let (persona, mut history) = self.with_session(&req.session_id, |s| {
            if let Some(p) = &req.persona_text {
                s.persona_text = Some(p.clone());
            } else if req.persona_style.is_some()
                || req.gender.is_some()
                || req.user_identity.is_some()
            {
                s.persona_text = None;
                if req.persona_style.is_some() {
                    s.persona_style.clone_from(&req.persona_style);
                }
                s.gender = req.gender.or(s.gender);
                s.user_identity = req.user_identity.or(s.user_identity);
            }
            if let Some(h) = &req.history_text {
                s.history = history::merge(&s.history, history::parse_transcript(h));
            }
            (s.persona(), s.history.clone())
        });
        let utterance = self.engine.truncate_tokens(
            req.user_utterance.trim(),
            self.config.user_utt_max_tokens,
            true,
        );
        let before = history.len();
        self.trim_history(&mut history);
        let mut dropped = history.len() != before;
        let budget = self
            .config
            .chat_max_len
            .saturating_sub(self.config.chat_max_out as usize);
        loop {
            let mut messages = vec![ChatMessage::new(Role::System, persona.clone())];
            messages.extend(history.iter().cloned());
            messages.push(ChatMessage::new(Role::User, utterance.clone()));
            let prompt = self.engine.render(&normalize(messages))?;
            let n = self.engine.count_tokens(&prompt);
            if n <= budget {
                if dropped {
                    self.with_session(&req.session_id, |s| s.history.clone_from(&history));
                }
                return Ok((vec![ChatMessage::new(Role::User, utterance)], prompt));
            }
            if history.is_empty() {
                return Err(TurnError::new(
                    ErrorCode::InvalidMessage,
                    format!(
                        "prompt of {n} tokens plus {} reply tokens exceeds CHAT_MAX_LEN={}",
                        self.config.chat_max_out, self.config.chat_max_len
                    ),
                ));
            }
            let drop = history.len().min(2);
            history.drain(..drop);
            dropped = true;
        }
    }

    fn sampling_for(&self, s: Option<&Sampling>) -> SamplingParams {
        let mut p = self.config.default_sampling.clone();
        if let Some(s) = s {
            if let Some(v) = s.temperature {
                p.temperature = v as f32;
            }
            if let Some(v) = s.top_p {
                p.top_p = v as f32;
            }
            if let Some(v) = s.top_k {
                p.top_k = v as i32;
            }
            if let Some(v) = s.min_p {
                p.min_p = v as f32;
            }
            if let Some(v) = s.repetition_penalty {
                p.repetition_penalty = v as f32;
            }
            if let Some(v) = s.presence_penalty {
                p.presence_penalty = v as f32;
            }
            if let Some(v) = s.frequency_penalty {
                p.frequency_penalty = v as f32;
            }
        }
        p
    }

    async fn run_turn(
        &self,
        req: StartRequest,
        sink: &FrameSink,
        handle: &TurnHandle,
        t0: Instant,
    ) -> TurnOutcome {
        let cancelled_frame = |h: &TurnHandle, own: &Option<String>| h.cancelled_frame(own);
        let error_frame = |e: TurnError| ServerFrame::Error {
            error_code: e.code,
            message: e.message,
            request_id: req.request_id.clone(),
            retry_after_ms: None,
            capacity: None,
        };
        if handle.cancel.is_cancelled() {
            let _ = sink.send(cancelled_frame(handle, &req.request_id));
            return TurnOutcome::Cancelled;
        }
        if self.config.deploy_mode == DeployMode::Tool {
            return self.run_tool_turn(req, sink, handle, t0).await;
        }
        let (user_msgs, prompt) = match self.prepare(&req) {
            Ok(x) => x,
            Err(e) => {
                let _ = sink.send(error_frame(e));
                return TurnOutcome::Failed;
            }
        };
        let session = self.session(&req.session_id).unwrap_or_default();
        let _ = sink.send(ServerFrame::Ack {
            session_id: req.session_id.clone(),
            request_id: req.request_id.clone(),
            persona_style: Some(if session.persona_text.is_some() {
                "custom".to_owned()
            } else {
                persona::normalize_style(session.persona_style.as_deref()).to_owned()
            }),
            gender: session.gender.map(|g| match g {
                Gender::Woman => "woman".to_owned(),
                Gender::Man => "man".to_owned(),
            }),
            persona_tokens: None,
            history_turns: Some(session.history.len() as u32),
        });
        let tool_future = match (&self.tool, self.config.deploy_mode) {
            (Some(tool), DeployMode::Both) => {
                let users = session
                    .history
                    .iter()
                    .filter(|m| m.role == Role::User)
                    .map(|m| m.content.as_str());
                let utterance = user_msgs.first().map(|m| m.content.as_str()).unwrap_or("");
                let context = yap_tool::user_context(users, utterance);
                let tool = Arc::clone(tool);
                Some(Box::pin(async move { tool.classify(context).await }))
            }
            _ => None,
        };
        let mut out = Output {
            sink,
            held: Vec::new(),
            holding: tool_future.is_some(),
            reply: String::new(),
            first_token: None,
            toolcall_ms: None,
            t0,
        };
        let mut tool_future = tool_future;
        if !self.config.tool_overlap
            && let Some(f) = tool_future.take()
        {
            // Classify first, then start the chat: on a CPU shared with the embedded engine
            // this beats running both at once (they would slow each other down).
            let verdict = tokio::select! {
                biased;
                _ = handle.cancel.cancelled() => None,
                v = f => Some(v),
            };
            match verdict {
                None => {
                    let _ = sink.send(cancelled_frame(handle, &req.request_id));
                    return self.finish_cancelled_turn(&req, user_msgs);
                }
                Some(Ok(v)) => {
                    let _ = sink.send(self.toolcall_frame(&v, t0));
                    out.toolcall_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
                    out.release();
                }
                Some(Err(e)) => {
                    warn!(session = %req.session_id, error = %e, "tool classification failed");
                    let _ = sink.send(error_frame(TurnError::new(
                        ErrorCode::InternalError,
                        format!("tool model: {e}"),
                    )));
                    return TurnOutcome::Failed;
                }
            }
        }
        let mut stream = match self.engine.generate(GenerateRequest {
            cache_key: req.session_id.clone(),
            prompt,
            sampling: self.sampling_for(req.sampling.as_ref()),
            max_new_tokens: self.config.chat_max_out,
            stop: Vec::new(),
        }) {
            Ok(s) => Some(s),
            Err(e) => {
                if tool_future.is_none() {
                    let _ = sink.send(error_frame(e.into()));
                    return TurnOutcome::Failed;
                }
                // The tool verdict still goes out first.
                out.held.push(error_frame(e.into()));
                None
            }
        };
        let sanitize_on = req
            .sampling
            .as_ref()
            .and_then(|s| s.sanitize_output)
            .unwrap_or(true);
        let mut sanitizer = sanitize_on.then(|| sanitize::Sanitizer::new(self.config.verbalize));
        let mut ending: Option<Ending> = stream.is_none().then_some(Ending::Failed);
        let outcome = loop {
            if let Some(end) = &ending
                && tool_future.is_none()
            {
                break out.finish(end, &req);
            }
            tokio::select! {
                biased;
                _ = handle.cancel.cancelled() => {
                    if let Some(s) = stream.as_mut() {
                        s.abort();
                    }
                    // Dropping the pending classification withdraws it from the batcher.
                    drop(tool_future.take());
                    let _ = sink.send(cancelled_frame(handle, &req.request_id));
                    break TurnOutcome::Cancelled;
                }
                verdict = async {
                    match tool_future.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                }, if tool_future.is_some() => {
                    tool_future = None;
                    match verdict {
                        Ok(v) => {
                            let _ = sink.send(self.toolcall_frame(&v, t0));
                            out.toolcall_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
                            out.release();
                        }
                        Err(e) => {
                            warn!(session = %req.session_id, error = %e, "tool classification failed");
                            if let Some(s) = stream.as_mut() {
                                s.abort();
                            }
                            let _ = sink.send(error_frame(TurnError::new(
                                ErrorCode::InternalError,
                                format!("tool model: {e}"),
                            )));
                            break TurnOutcome::Failed;
                        }
                    }
                }
                ev = async {
                    match stream.as_mut() {
                        Some(s) => s.next().await,
                        None => std::future::pending().await,
                    }
                }, if ending.is_none() && stream.is_some() => match ev {
                    Some(EngineEvent::Text(raw)) => {
                        let text = match sanitizer.as_mut() {
                            Some(s) => s.push(&raw),
                            None => raw,
                        };
                        if !text.is_empty() {
                            out.token(text);
                        }
                    }
                    Some(EngineEvent::Finished { usage, .. }) => {
                        if let Some(tail) = sanitizer.as_mut().map(sanitize::Sanitizer::finish)
                            && !tail.is_empty()
                        {
                            out.token(tail);
                        }
                        ending = Some(Ending::Done(Usage {
                            prompt_tokens: usage.prompt_tokens,
                            completion_tokens: usage.completion_tokens,
                            cached_prompt_tokens: usage.cached_prompt_tokens,
                            ttfb_ms: 0.0,
                            ttft_ms: 0.0,
                            total_ms: 0.0,
                        }));
                    }
                    Some(EngineEvent::Failed(e)) => {
                        warn!(session = %req.session_id, error = %e, "turn failed in the engine");
                        out.push(error_frame(e.into()));
                        ending = Some(Ending::Failed);
                    }
                    None => {
                        out.push(error_frame(TurnError::new(
                            ErrorCode::EngineUnavailable,
                            "engine stopped during the turn",
                        )));
                        ending = Some(Ending::Failed);
                    }
                }
            }
        };
        let reply = out.reply;
        if outcome != TurnOutcome::Failed {
            self.with_session(&req.session_id, |s| {
                s.history.extend(user_msgs);
                if !reply.trim().is_empty() {
                    s.history
                        .push(ChatMessage::new(Role::Assistant, reply.trim().to_owned()));
                }
            });
        }
        debug!(session = %req.session_id, ?outcome, chars = reply.len(), "turn ended");
        outcome
    }
    /// A turn cancelled before its chat started: the user utterance still joins the history
    /// (nothing was streamed).
    fn finish_cancelled_turn(
        &self,
        req: &StartRequest,
        user_msgs: Vec<ChatMessage>,
    ) -> TurnOutcome {
        self.with_session(&req.session_id, |s| s.history.extend(user_msgs));
        TurnOutcome::Cancelled
    }

    fn toolcall_frame(&self, v: &ToolVerdict, t0: Instant) -> ServerFrame {
        let threshold = self.config.tool_threshold;
        let yes = v.is_yes(threshold);
        let (label, probability) = if yes {
            (v.yes_label.clone(), v.yes_probability)
        } else {
            (v.no_label.clone(), 1.0 - v.yes_probability)
        };
        ServerFrame::Toolcall {
            status: if yes { ToolStatus::Yes } else { ToolStatus::No },
            raw: serde_json::json!({
                "label": label,
                "probability": probability,
                "yes_probability": v.yes_probability,
                "threshold": threshold,
                "tokens": v.tokens,
                "ms": t0.elapsed().as_secs_f64() * 1000.0,
            }),
        }
    }

    /// `DEPLOY_MODE=tool`: the turn is `ack`, `toolcall`, `done`.
    async fn run_tool_turn(
        &self,
        req: StartRequest,
        sink: &FrameSink,
        handle: &TurnHandle,
        t0: Instant,
    ) -> TurnOutcome {
        let Some(tool) = self.tool.clone() else {
            return TurnOutcome::Failed;
        };
        let utterance = req.user_utterance.trim().to_owned();
        let history = self.with_session(&req.session_id, |s| {
            if let Some(h) = &req.history_text {
                s.history = history::merge(&s.history, history::parse_transcript(h));
            }
            s.history.clone()
        });
        let _ = sink.send(ServerFrame::Ack {
            session_id: req.session_id.clone(),
            request_id: req.request_id.clone(),
            persona_style: None,
            gender: None,
            persona_tokens: None,
            history_turns: Some(history.len() as u32),
        });
        let users = history
            .iter()
            .filter(|m| m.role == Role::User)
            .map(|m| m.content.as_str());
        let context = yap_tool::user_context(users, &utterance);
        let verdict = tokio::select! {
            biased;
            _ = handle.cancel.cancelled() => None,
            v = tool.classify(context) => Some(v),
        };
        let rid = req.request_id.clone();
        match verdict {
            None => {
                let _ = sink.send(handle.cancelled_frame(&rid));
                TurnOutcome::Cancelled
            }
            Some(Ok(v)) => {
                let _ = sink.send(self.toolcall_frame(&v, t0));
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                let _ = sink.send(ServerFrame::Done {
                    usage: Some(Usage {
                        prompt_tokens: v.tokens as u32,
                        completion_tokens: 0,
                        cached_prompt_tokens: 0,
                        ttfb_ms: ms,
                        ttft_ms: ms,
                        total_ms: ms,
                    }),
                    cancelled: false,
                    request_id: rid,
                });
                if !utterance.is_empty() {
                    self.with_session(&req.session_id, |s| {
                        s.history.push(ChatMessage::new(Role::User, utterance));
                    });
                }
                TurnOutcome::Completed
            }
            Some(Err(e)) => {
                let _ = sink.send(ServerFrame::Error {
                    error_code: ErrorCode::InternalError,
                    message: format!("tool model: {e}"),
                    request_id: rid,
                    retry_after_ms: None,
                    capacity: None,
                });
                TurnOutcome::Failed
            }
        }
    }
}

/// How the chat part of a turn ended (its terminal frame may wait for the toolcall).
enum Ending {
    Done(Usage),
    Failed,
}

/// A turn's outbound frames: held back until the `toolcall` frame went out.
struct Output<'a> {
    sink: &'a FrameSink,
    held: Vec<ServerFrame>,
    holding: bool,
    reply: String,
    first_token: Option<f64>,
    /// When the toolcall frame went out (the turn's first byte in `both` mode).
    toolcall_ms: Option<f64>,
    t0: Instant,
}

impl Output<'_> {
    fn push(&mut self, frame: ServerFrame) {
        if self.holding {
            self.held.push(frame);
            return;
        }
        if let ServerFrame::Token { text } = &frame {
            if self.first_token.is_none() {
                self.first_token = Some(self.t0.elapsed().as_secs_f64() * 1000.0);
            }
            self.reply.push_str(text);
        }
        let _ = self.sink.send(frame);
    }

    fn token(&mut self, text: String) {
        self.push(ServerFrame::Token { text });
    }

    /// The toolcall went out: send what was held.
    fn release(&mut self) {
        self.holding = false;
        for f in std::mem::take(&mut self.held) {
            self.push(f);
        }
    }

    /// Sends the terminal frame (error frames were already pushed).
    fn finish(&mut self, end: &Ending, req: &StartRequest) -> TurnOutcome {
        self.release();
        match end {
            Ending::Failed => TurnOutcome::Failed,
            Ending::Done(usage) => {
                let now = self.t0.elapsed().as_secs_f64() * 1000.0;
                let ttft = self.first_token.unwrap_or(now);
                let _ = self.sink.send(ServerFrame::Done {
                    usage: Some(Usage {
                        ttfb_ms: self.toolcall_ms.unwrap_or(ttft),
                        ttft_ms: ttft,
                        total_ms: now,
                        ..usage.clone()
                    }),
                    cancelled: false,
                    request_id: req.request_id.clone(),
                });
                TurnOutcome::Completed
            }
        }
    }
}

/// Settings of a one-off completion (the OpenAI-compatible API).
#[derive(Debug, Clone)]
pub struct CompletionParams {
    /// Sampling.
    pub sampling: SamplingParams,
    /// Most new tokens; `None` = `CHAT_MAX_OUT`.
    pub max_tokens: Option<u32>,
    /// Stop strings.
    pub stop: Vec<String>,
}

impl Core {
    /// Starts a completion of raw prompt text (no template). Prefixes already in the engine's
    /// cache (any session's) are reused.
    pub fn complete_text(
        &self,
        prompt: String,
        params: CompletionParams,
    ) -> Result<yap_engine::GenerationStream, TurnError> {
        if prompt.is_empty() {
            return Err(TurnError::new(
                ErrorCode::InvalidMessage,
                "prompt must not be empty",
            ));
        }
        let prompt_tokens = self.engine.count_tokens(&prompt);
        let room = self.config.chat_max_len.saturating_sub(prompt_tokens);
        let max_new = params.max_tokens.unwrap_or(self.config.chat_max_out) as usize;
        if max_new == 0 || max_new > room {
            return Err(TurnError::new(
                ErrorCode::InvalidMessage,
                format!(
                    "prompt of {prompt_tokens} tokens plus max_tokens={max_new} exceeds the context of {} tokens (CHAT_MAX_LEN)",
                    self.config.chat_max_len
                ),
            ));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Ok(self.engine.generate(GenerateRequest {
            cache_key: format!("api:{id}"),
            prompt,
            sampling: params.sampling,
            max_new_tokens: max_new as u32,
            stop: params.stop,
        })?)
    }

    /// Starts a chat completion: messages rendered with the model's template.
    pub fn complete_chat(
        &self,
        messages: Vec<ChatMessage>,
        params: CompletionParams,
    ) -> Result<yap_engine::GenerationStream, TurnError> {
        if !messages.iter().any(|m| m.role == Role::User) {
            return Err(TurnError::new(
                ErrorCode::InvalidMessage,
                "messages must contain at least one user message",
            ));
        }
        let prompt = self.engine.render(&normalize(messages))?;
        self.complete_text(prompt, params)
    }

    /// The model name the engine serves.
    pub fn model_name(&self) -> String {
        self.engine.info().model
    }
}

/// Makes a message list acceptable to strict templates: one leading system message, then
/// user/assistant alternating starting with user (same-role neighbours are merged).
pub fn normalize(messages: Vec<ChatMessage>) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len());
    for m in messages {
        if m.role == Role::System && !out.is_empty() {
            continue;
        }
        if m.role == Role::Assistant && out.iter().all(|x| x.role == Role::System) {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.role == m.role => {
                last.content.push('\n');
                last.content.push_str(&m.content);
            }
            _ => out.push(m),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_alternates() {
        let msgs = vec![
            ChatMessage::new(Role::System, "p"),
            ChatMessage::new(Role::Assistant, "orphan"),
            ChatMessage::new(Role::User, "a"),
            ChatMessage::new(Role::User, "b"),
            ChatMessage::new(Role::Assistant, "c"),
        ];
        let out = normalize(msgs);
        assert_eq!(
            out,
            vec![
                ChatMessage::new(Role::System, "p"),
                ChatMessage::new(Role::User, "a\nb"),
                ChatMessage::new(Role::Assistant, "c"),
            ]
        );
    }
}
