//! The engine API: what the turn driver needs from a chat engine and nothing more.
//!
//! Invariants:
//! - A request carries the prompt as token ids (exactly one BOS where the model wants one); an
//!   engine never tokenizes prompts and never adds special tokens of its own.
//! - A [`GenerationStream`] yields zero or more [`EngineEvent::Text`] and then exactly one
//!   terminal event ([`EngineEvent::Finished`] or [`EngineEvent::Failed`]); after that, `None`.
//! - Dropping a stream (or cancelling its token) stops the generation: engines check the token
//!   at least once per decode step and free the slot.
//! - Engines never see sockets, sessions or protocol frames.

pub mod config;
mod deferred;
mod stream;
mod tokenizer;

use std::sync::Arc;

pub use deferred::DeferredEngine;
pub use stream::{GenerationStream, StreamSender};
pub use tokenizer::{ModelText, TemplateSource, Tokenizer};

/// Errors an engine reports for a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The engine cannot take requests (stopped, crashed, loading, unreachable).
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// The engine refused this request (bad parameters, unknown model, 4xx).
    #[error("engine rejected the request: {0}")]
    Rejected(String),
    /// The prompt plus the reply budget does not fit the context.
    #[error("prompt of {prompt} tokens does not fit the context of {context} tokens")]
    ContextOverflow {
        /// Prompt tokens plus reply budget.
        prompt: usize,
        /// Context size.
        context: usize,
    },
    /// Decoding failed inside the engine.
    #[error("decode failed: {0}")]
    Decode(String),
}

/// Sampling settings resolved for one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Temperature; 0 = greedy.
    pub temperature: f32,
    /// Nucleus sampling.
    pub top_p: f32,
    /// Top-k; 0 disables.
    pub top_k: i32,
    /// Min-p; 0 disables.
    pub min_p: f32,
    /// Repetition penalty; 1 disables.
    pub repetition_penalty: f32,
    /// Presence penalty; 0 disables.
    pub presence_penalty: f32,
    /// Frequency penalty; 0 disables.
    pub frequency_penalty: f32,
    /// Random seed; `None` draws one.
    pub seed: Option<u32>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_p: 0.95,
            top_k: 40,
            min_p: 0.05,
            repetition_penalty: 1.1,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

/// One generation (or prefill-only) request.
#[derive(Debug, Clone)]
pub struct EngineRequest {
    /// Key of the engine-side cache this request reuses and extends (the session id); also the
    /// routing key of remote engines.
    pub cache_key: String,
    /// The prompt as token ids.
    pub prompt: Vec<u32>,
    /// The same prompt as text (for engines or routers that only take text).
    pub prompt_text: String,
    /// Sampling settings.
    pub sampling: SamplingParams,
    /// Maximum new tokens; 0 means prefill only (warm the cache, generate nothing).
    pub max_new_tokens: u32,
}

/// Why a generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-generation token (or the consumer's stop rule hit).
    Stop,
    /// `max_new_tokens` reached.
    Length,
    /// Prefill-only request finished.
    Prefilled,
    /// The consumer cancelled; engines that can still report usage send this.
    Cancelled,
}

/// Token accounting reported when a generation ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineUsage {
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Prompt tokens reused from the cache.
    pub cached_prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
}

/// Events of a generation stream.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    /// A piece of generated text (valid UTF-8, possibly several tokens).
    Text(String),
    /// The generation ended normally.
    Finished {
        /// Accounting.
        usage: EngineUsage,
        /// Why it ended.
        reason: FinishReason,
    },
    /// The generation failed.
    Failed(EngineError),
}

impl EngineEvent {
    /// Whether this event ends the stream.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, Self::Text(_))
    }
}

/// Whether an engine can serve now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Serving.
    Ready,
    /// Starting up (loading weights, waiting for a launched server); the reason says what.
    Loading(String),
    /// Not serving (crashed, unreachable, stopped); the reason says why.
    Down(String),
}

impl Readiness {
    /// Whether requests can be served now.
    pub fn is_ready(&self) -> bool {
        matches!(self, Self::Ready)
    }
}

/// Static facts about an engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    /// Engine kind (`embedded`, `remote`, `vllm`, ...).
    pub kind: String,
    /// Model name served.
    pub model: String,
    /// Context window in tokens available to one sequence.
    pub context_tokens: usize,
}

/// Counters an engine keeps about its work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Generations running or queued now.
    pub active_generations: u64,
    /// Decode steps run.
    pub steps: u64,
    /// Most sequences that shared one decode step.
    pub peak_batch_sequences: u64,
    /// Generations admitted.
    pub generations: u64,
    /// Prompt tokens served from the prefix cache, summed.
    pub cached_prompt_tokens: u64,
    /// Of those, tokens shared from another session's cache (same persona prefix).
    pub shared_prefix_tokens: u64,
    /// KV cells in use now (embedded engine).
    pub kv_cells_used: u64,
    /// Idle caches moved between KV streams to keep running sequences together (embedded
    /// engine, one stream per sequence).
    pub kv_moves: u64,
    /// Engine process restarts (launched engines).
    pub restarts: u64,
}

/// A chat model engine: the only way the turn driver reaches a model.
pub trait ChatEngine: Send + Sync {
    /// Static facts.
    fn info(&self) -> EngineInfo;
    /// Whether the engine can take requests now.
    fn readiness(&self) -> Readiness;
    /// Starts a generation; events arrive on the returned stream.
    fn generate(&self, request: EngineRequest) -> Result<GenerationStream, EngineError>;
    /// Forgets the cached state of a key (a session that is gone).
    fn release(&self, cache_key: &str);
    /// Work counters.
    fn stats(&self) -> EngineStats {
        EngineStats::default()
    }
}

/// A shared engine handle.
pub type SharedEngine = Arc<dyn ChatEngine>;

/// The engine of a deployment without a chat model (`DEPLOY_MODE=tool`): never ready for chat.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoChatEngine;

impl ChatEngine for NoChatEngine {
    fn info(&self) -> EngineInfo {
        EngineInfo {
            kind: "none".into(),
            model: String::new(),
            context_tokens: 0,
        }
    }
    fn readiness(&self) -> Readiness {
        Readiness::Ready
    }
    fn generate(&self, _request: EngineRequest) -> Result<GenerationStream, EngineError> {
        Err(EngineError::Unavailable(
            "no chat model in this deployment (DEPLOY_MODE=tool)".into(),
        ))
    }
    fn release(&self, _cache_key: &str) {}
}
