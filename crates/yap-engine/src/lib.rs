//! Chat engines behind one trait.
//!
//! [`ChatEngine`] is what the turn orchestration talks to: render a chat with the model's own
//! template, count tokens, submit a prompt and read a stream of text pieces, abort by dropping
//! the stream. [`llama::LlamaEngine`] is the embedded engine (llama.cpp, continuous batching,
//! per-session prefix reuse). [`tiny`] writes small random-weight GGUF models for tests.

pub mod fit;
pub mod gguf;
pub mod launch;
pub mod llama;
pub mod none;
pub mod remote;
pub mod supervise;
pub mod template;
pub mod text;
pub mod tiny;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;

pub use template::{ChatMessage, ChatTemplate, Role};

/// Errors an engine reports.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The model file could not be loaded.
    #[error("failed to load model {path}: {reason}")]
    Load {
        /// The path tried.
        path: String,
        /// Why.
        reason: String,
    },
    /// The chat template failed to render.
    #[error("chat template error: {0}")]
    Template(String),
    /// The engine is not running (stopped, crashed, or still loading).
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// The prompt does not fit the context.
    #[error("prompt of {prompt} tokens does not fit the context of {context} tokens")]
    ContextOverflow {
        /// Prompt tokens.
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
pub struct GenerateRequest {
    /// Key of the engine-side cache this request reuses and extends (the session id).
    pub cache_key: String,
    /// The fully rendered prompt text (special tokens as text).
    pub prompt: String,
    /// Sampling settings.
    pub sampling: SamplingParams,
    /// Maximum new tokens; 0 means prefill only (warm the cache, generate nothing).
    pub max_new_tokens: u32,
    /// Extra stop strings (the engine's own template stops always apply).
    pub stop: Vec<String>,
}

/// Holds back streamed text that may be the start of a stop string; cuts at a full match.
#[derive(Debug, Clone, Default)]
pub struct StopFilter {
    stops: Vec<String>,
    held: String,
}

impl StopFilter {
    /// A filter for these stop strings (empty ones are ignored).
    pub fn new(stops: impl IntoIterator<Item = String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Adds text; returns what may be emitted now and whether a stop string was reached
    /// (the stop string and anything after it are dropped).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.held.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let out = self.held[..at].to_owned();
            self.held.clear();
            return (out, true);
        }
        // Keep the longest tail that is a proper prefix of some stop string.
        let mut keep = 0;
        for stop in &self.stops {
            for (i, _) in stop.char_indices().skip(1) {
                if i > keep && self.held.ends_with(&stop[..i]) {
                    keep = i;
                }
            }
        }
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_owned();
        self.held.drain(..cut);
        (out, false)
    }

    /// Releases whatever is held back (at the end of a generation).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Why a generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-generation token.
    Stop,
    /// `max_new_tokens` reached.
    Length,
    /// Prefill-only request finished.
    Prefilled,
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
#[derive(Debug, Clone)]
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

/// A running generation: read events from it; dropping it (or [`GenerationStream::abort`])
/// stops the generation within one decode step.
#[derive(Debug)]
pub struct GenerationStream {
    rx: mpsc::UnboundedReceiver<EngineEvent>,
    abort: AbortHandle,
}

impl GenerationStream {
    /// Builds a stream from its parts (for engine implementations).
    pub fn new(rx: mpsc::UnboundedReceiver<EngineEvent>, abort: AbortHandle) -> Self {
        Self { rx, abort }
    }

    /// The next event; `None` after the last one.
    pub async fn next(&mut self) -> Option<EngineEvent> {
        self.rx.recv().await
    }

    /// A handle that aborts this generation.
    pub fn abort_handle(&self) -> AbortHandle {
        self.abort.clone()
    }

    /// Aborts the generation.
    pub fn abort(&self) {
        self.abort.abort();
    }
}

impl Drop for GenerationStream {
    fn drop(&mut self) {
        self.abort.abort();
    }
}

/// A cloneable flag that aborts a generation; async engines can also wait for it.
#[derive(Debug, Clone, Default)]
pub struct AbortHandle(Arc<AbortInner>);

#[derive(Debug, Default)]
struct AbortInner {
    flag: AtomicBool,
    notify: tokio::sync::Notify,
}

impl AbortHandle {
    /// A fresh, not yet aborted handle.
    pub fn new() -> Self {
        Self::default()
    }
    /// Requests the abort.
    pub fn abort(&self) {
        self.0.flag.store(true, Ordering::Release);
        self.0.notify.notify_waiters();
    }
    /// Whether an abort was requested.
    pub fn is_aborted(&self) -> bool {
        self.0.flag.load(Ordering::Acquire)
    }
    /// Resolves once the abort is requested.
    pub async fn aborted(&self) {
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_aborted() {
                return;
            }
            notified.await;
        }
    }
}

/// Static facts about an engine.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    /// Engine kind (`embedded`, ...).
    pub kind: String,
    /// Model name or path.
    pub model: String,
    /// Context window in tokens available to one sequence.
    pub context_tokens: usize,
    /// Stop strings that end every reply (from the prompt format).
    pub stop_sequences: Vec<String>,
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
}

/// A chat model engine: the only way turn orchestration reaches a model.
pub trait ChatEngine: Send + Sync {
    /// Static facts.
    fn info(&self) -> EngineInfo;
    /// Whether the engine can take requests now.
    fn is_ready(&self) -> bool;
    /// Renders messages with the model's chat template (generation prompt appended).
    fn render(&self, messages: &[ChatMessage]) -> Result<String, EngineError>;
    /// Counts tokens of plain text with the model's tokenizer.
    fn count_tokens(&self, text: &str) -> usize;
    /// Cuts `text` to at most `max_tokens` tokens, keeping the beginning (`keep_start`) or the end.
    fn truncate_tokens(&self, text: &str, max_tokens: usize, keep_start: bool) -> String;
    /// Starts a generation; events arrive on the returned stream.
    fn generate(&self, request: GenerateRequest) -> Result<GenerationStream, EngineError>;
    /// Forgets the cached state of a key (e.g. a session that is gone).
    fn release(&self, cache_key: &str);
    /// Work counters.
    fn stats(&self) -> EngineStats {
        EngineStats::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], chunks: &[&str]) -> (String, bool) {
        let mut f = StopFilter::new(stops.iter().map(|s| s.to_string()));
        let mut out = String::new();
        for c in chunks {
            let (o, hit) = f.push(c);
            out.push_str(&o);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&f.flush());
        (out, false)
    }

    #[test]
    fn stop_filter_cuts_across_chunks() {
        assert_eq!(
            run(&["\nUser:"], &["Hi", " there\n", "Us", "er: more"]),
            ("Hi there".into(), true)
        );
        assert_eq!(
            run(&["\nUser:"], &["Hi\n", "Usual"]),
            ("Hi\nUsual".into(), false)
        );
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(
            run(&["END", "\n\n"], &["one\n", "\ntwo"]),
            ("one".into(), true)
        );
    }

    #[test]
    fn stop_filter_holds_only_possible_prefixes() {
        let mut f = StopFilter::new(["\nUser:".to_string()]);
        assert_eq!(f.push("abc\nU"), ("abc".into(), false));
        assert_eq!(f.push("x"), ("\nUx".into(), false));
        assert_eq!(f.flush(), "");
    }
}
