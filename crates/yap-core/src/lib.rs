//! The core: sessions, prompt formatting and budgets, and the one turn driver.
//!
//! Data flows one way: a transport hands a [`turn::TurnInput`] and a [`turn::FrameSink`] to
//! [`Core::start_turn`]; the driver formats the prompt, asks the tool classifier and the chat
//! engine, and emits dialect-neutral [`turn::TurnFrame`]s into the sink. The core never sees a
//! socket; engines never see a session.
//!
//! Invariants: one running turn per session (see [`session`]); exactly one terminal frame per
//! turn and the tool frame before any token (see [`turn::output`]); history written once per
//! turn and trimmed in every deploy mode; prompt formatting runs on a blocking pool.

pub mod config;
pub mod history;
pub mod persona;
pub mod prompt;
pub mod sanitize;
pub mod session;
pub mod tool;
pub mod turn;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

pub use config::{CoreConfig, DeployMode};
use prompt::budget::Budget;
use prompt::{ChatMessage, PromptFormat, Role};
pub use session::{Session, SessionCell, SessionStore};
use tool::SharedClassifier;
pub use turn::{
    AckInfo, CancelReason, FrameSink, SharedSink, TurnError, TurnErrorKind, TurnFrame, TurnHandle,
    TurnOutcome,
};
use yap_engine_api::{Readiness, SamplingParams, SharedEngine};
use yap_protocol::{Gender, Sampling, UserIdentity};

/// Changes to a session a turn (or a `start` / `chat_prompt` message) brings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionUpdate {
    /// A persona as text (wins over templates).
    pub persona_text: Option<String>,
    /// A template persona style.
    pub persona_style: Option<String>,
    /// Assistant gender for templates.
    pub gender: Option<Gender>,
    /// User identity for templates.
    pub user_identity: Option<UserIdentity>,
    /// A `User:`/`Assistant:` transcript merged with the server's history.
    pub history_text: Option<String>,
    /// A history that replaces the session's (protocol v1 `start`).
    pub history: Option<Vec<ChatMessage>>,
    /// Sampling overrides kept for the session's later turns.
    pub sampling: Option<Sampling>,
    /// Per-session `CHECK_SCREEN_PREFIX`.
    pub check_screen_prefix: Option<String>,
    /// Per-session `SCREEN_CHECKED_PREFIX`.
    pub screen_checked_prefix: Option<String>,
}

/// One user turn.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TurnInput {
    /// What the user said.
    pub utterance: String,
    /// Session changes applied first.
    pub update: SessionUpdate,
    /// Sampling overrides of this turn only.
    pub sampling: Option<Sampling>,
    /// Send an `Ack` first (protocol v0).
    pub ack: bool,
    /// Send the whole reply as `Final` before `Done` (protocol v1).
    pub final_frame: bool,
    /// The dialect that started the turn (`v0`, `v1`), for metrics and traces.
    pub label: &'static str,
}

/// A one-off completion (the OpenAI-compatible API): no session, no tool, no sanitizer.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionInput {
    /// Chat messages rendered with the template, or
    pub messages: Option<Vec<ChatMessage>>,
    /// a raw prompt used as is, or
    pub raw_prompt: Option<String>,
    /// a prompt already tokenized.
    pub prompt_ids: Option<Vec<u32>>,
    /// Sampling.
    pub sampling: SamplingParams,
    /// Most new tokens (`None` = `CHAT_MAX_OUT`).
    pub max_tokens: Option<u32>,
    /// Stop strings.
    pub stop: Vec<String>,
}

/// Counters of the core.
#[derive(Debug, Default)]
pub struct CoreCounters {
    /// Turns started.
    pub turns: AtomicU64,
    /// Tool decisions that timed out (treated as no).
    pub tool_timeouts: AtomicU64,
    /// Tool decisions that failed (treated as no in `both`).
    pub tool_failures: AtomicU64,
    /// Turns running now.
    pub running: AtomicU64,
}

/// The orchestrator shared by all connections.
pub struct Core {
    engine: SharedEngine,
    format: OnceLock<Arc<PromptFormat>>,
    tool: OnceLock<SharedClassifier>,
    config: CoreConfig,
    sessions: SessionStore,
    next_id: AtomicU64,
    counters: CoreCounters,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// A core over a chat engine (with its prompt format) and a tool classifier, as the deploy
    /// mode needs them. Either may also be given later ([`Core::set_format`],
    /// [`Core::set_tool`]) while the models load; until then the core is not ready.
    pub fn new(
        engine: SharedEngine,
        format: Option<PromptFormat>,
        tool: Option<SharedClassifier>,
        config: CoreConfig,
    ) -> Arc<Self> {
        let sessions = SessionStore::new(
            config.session_cache_mb.saturating_mul(1024 * 1024),
            config.session_idle_timeout,
            Arc::clone(&engine),
        );
        let core = Arc::new(Self {
            engine,
            format: OnceLock::new(),
            tool: OnceLock::new(),
            config,
            sessions,
            next_id: AtomicU64::new(1),
            counters: CoreCounters::default(),
        });
        if let Some(f) = format {
            core.set_format(f);
        }
        if let Some(t) = tool {
            core.set_tool(t);
        }
        core
    }

    /// The chat model's prompt format, once loaded.
    pub fn set_format(&self, format: PromptFormat) {
        let _ = self.format.set(Arc::new(format));
    }

    /// The tool classifier, once loaded (ignored in `DEPLOY_MODE=chat`).
    pub fn set_tool(&self, tool: SharedClassifier) {
        if self.config.deploy_mode.has_tool() {
            let _ = self.tool.set(tool);
        }
    }

    /// Whether every model the deploy mode needs is loaded and the engine serves.
    pub fn readiness(&self) -> Readiness {
        let mode = self.config.deploy_mode;
        if mode.has_tool() && self.tool.get().is_none() {
            return Readiness::Loading("loading the tool model".into());
        }
        if !mode.has_chat() {
            return Readiness::Ready;
        }
        match self.engine.readiness() {
            Readiness::Ready if self.format.get().is_none() => {
                Readiness::Loading("loading the chat model".into())
            }
            r => r,
        }
    }

    /// The chat engine.
    pub fn engine(&self) -> &SharedEngine {
        &self.engine
    }

    /// The tool classifier, when deployed and loaded.
    pub fn tool(&self) -> Option<&SharedClassifier> {
        self.tool.get()
    }

    /// The chat model's prompt format, when deployed and loaded.
    pub fn format(&self) -> Option<&Arc<PromptFormat>> {
        self.format.get()
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// The tool decision threshold in effect: `TOOL_THRESHOLD`, else the tool model's tuned one,
    /// else 0.5.
    pub fn threshold(&self) -> f32 {
        self.config
            .tool_threshold
            .or_else(|| self.tool.get().and_then(|t| t.tuned_threshold()))
            .unwrap_or(config::defaults::TOOL_THRESHOLD)
    }

    /// The session store (protocol v0 sessions by id).
    pub fn sessions(&self) -> &SessionStore {
        &self.sessions
    }

    /// Counters.
    pub fn counters(&self) -> &CoreCounters {
        &self.counters
    }

    /// Turns running now.
    pub fn running_turns(&self) -> u64 {
        self.counters.running.load(Ordering::Relaxed)
    }

    /// The model name the chat engine serves.
    pub fn model_name(&self) -> String {
        self.engine.info().model
    }

    fn budget(&self) -> Budget {
        self.config.budget()
    }

    /// Token count of text with the chat tokenizer; without one (tool-only), ~4 bytes a token.
    pub fn count_tokens(&self, text: &str) -> usize {
        match self.format.get() {
            Some(f) => f.count(text),
            None => text.len().div_ceil(4),
        }
    }

    /// Validates and applies session changes.
    pub fn update_session(
        &self,
        cell: &SessionCell,
        update: &SessionUpdate,
    ) -> Result<(), TurnError> {
        if let (Some(p), Some(f)) = (&update.persona_text, self.format.get()) {
            self.budget().check_persona(f, p)?;
        }
        let mut s = cell.lock();
        if let Some(p) = &update.persona_text {
            s.persona_text = Some(p.clone());
        } else if update.persona_style.is_some()
            || update.gender.is_some()
            || update.user_identity.is_some()
        {
            s.persona_text = None;
            if update.persona_style.is_some() {
                s.persona_style.clone_from(&update.persona_style);
            }
            s.gender = update.gender.or(s.gender);
            s.user_identity = update.user_identity.or(s.user_identity);
        }
        if let Some(h) = &update.history {
            s.history = h.clone();
        }
        if let Some(h) = &update.history_text {
            s.history = history::merge(&s.history, history::parse_transcript(h));
        }
        if let Some(sampling) = &update.sampling {
            s.sampling = Some(sampling.clone());
        }
        if update.check_screen_prefix.is_some() {
            s.check_screen_prefix
                .clone_from(&update.check_screen_prefix);
        }
        if update.screen_checked_prefix.is_some() {
            s.screen_checked_prefix
                .clone_from(&update.screen_checked_prefix);
        }
        let budget = self.budget();
        budget.trim_history(&mut s.history, |t| self.count_tokens(t));
        Ok(())
    }

    /// Whether a seed history fits the history budget (protocol v1 refuses one that does not).
    pub fn history_fits(&self, history: &[ChatMessage]) -> bool {
        let total: usize = history
            .iter()
            .map(|m| self.count_tokens(&m.content) + 4)
            .sum();
        total <= self.config.chat_history_max_tokens
    }

    /// Sampling for a turn: server defaults, then the session's overrides, then the turn's.
    pub fn sampling_for(
        &self,
        session: Option<&Sampling>,
        turn: Option<&Sampling>,
    ) -> SamplingParams {
        let mut p = SamplingParams {
            temperature: self.config.temperature,
            ..SamplingParams::default()
        };
        for s in [session, turn].into_iter().flatten() {
            apply_sampling(&mut p, s);
        }
        p
    }

    /// Starts a turn of a session. A running turn of the session is cancelled first
    /// (`Superseded`) and has handed its terminal frame to its sink before this turn's first
    /// frame; concurrent starts on one session serialize on its gate.
    pub async fn start_turn(
        self: &Arc<Self>,
        cell: Arc<SessionCell>,
        input: TurnInput,
        sink: SharedSink,
    ) -> TurnHandle {
        let t0 = Instant::now();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (handle, control) = TurnHandle::new(id, input.label);
        let span = turn::telemetry::turn_span(id, input.label, cell.key());
        let mut gate = cell.gate.lock().await;
        if let Some(prev) = gate.take() {
            prev.cancel_and_wait(CancelReason::Superseded).await;
        }
        *gate = Some(handle.clone());
        drop(gate);
        self.counters.turns.fetch_add(1, Ordering::Relaxed);
        let core = Arc::clone(self);
        let driver = turn::driver::run(core, cell, input, sink, control, t0);
        tokio::spawn(tracing::Instrument::instrument(driver, span));
        handle
    }

    /// Runs a one-off completion; its frames go to `sink` (`Token`s, then `Done` or `Error`).
    pub fn complete(self: &Arc<Self>, input: CompletionInput, sink: SharedSink) -> TurnHandle {
        let t0 = Instant::now();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (handle, control) = TurnHandle::new(id, "openai");
        let core = Arc::clone(self);
        let span = turn::telemetry::turn_span(id, "openai", "");
        let driver = turn::driver::run_completion(core, id, input, sink, control, t0);
        tokio::spawn(tracing::Instrument::instrument(driver, span));
        handle
    }

    /// Prefills a session's persona (and history) into the engine's cache, generating nothing.
    pub async fn warm(&self, cell: &SessionCell, update: &SessionUpdate) -> Result<u32, TurnError> {
        self.update_session(cell, update)?;
        let Some(format) = self.format.get().cloned() else {
            return Ok(0);
        };
        let s = cell.snapshot();
        let budget = self.budget();
        let ids =
            tokio::task::spawn_blocking(move || budget.prefix(&format, &s.persona(), &s.history))
                .await
                .map_err(|e| TurnError::new(TurnErrorKind::Internal, e.to_string()))??;
        let n = ids.len() as u32;
        let mut stream = self.engine.generate(yap_engine_api::EngineRequest {
            cache_key: cell.key().to_owned(),
            prompt: ids,
            prompt_text: String::new(),
            sampling: self.sampling_for(None, None),
            max_new_tokens: 0,
        })?;
        while let Some(ev) = stream.next_event().await {
            match ev {
                yap_engine_api::EngineEvent::Finished { .. } => return Ok(n),
                yap_engine_api::EngineEvent::Failed(e) => return Err(e.into()),
                yap_engine_api::EngineEvent::Text(_) => {}
            }
        }
        Err(TurnError::new(
            TurnErrorKind::EngineUnavailable,
            "engine dropped the prefill",
        ))
    }

    /// The `ack` facts of a session.
    pub fn ack_info(session: &Session) -> AckInfo {
        AckInfo {
            persona_style: Some(if session.persona_text.is_some() {
                "custom".to_owned()
            } else {
                persona::normalize_style(session.persona_style.as_deref()).to_owned()
            }),
            gender: session.gender.map(|g| match g {
                Gender::Woman => "woman".to_owned(),
                Gender::Man => "man".to_owned(),
            }),
            history_turns: session.history.len() as u32,
        }
    }
}

fn apply_sampling(p: &mut SamplingParams, s: &Sampling) {
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

/// Whether the sanitizer runs for these overrides (default on).
pub fn sanitize_on(session: Option<&Sampling>, turn: Option<&Sampling>) -> bool {
    turn.and_then(|s| s.sanitize_output)
        .or_else(|| session.and_then(|s| s.sanitize_output))
        .unwrap_or(true)
}

/// Messages of a role from a history (test and client helper).
pub fn messages_of(history: &[ChatMessage], role: Role) -> impl Iterator<Item = &str> {
    history
        .iter()
        .filter(move |m| m.role == role)
        .map(|m| m.content.as_str())
}
