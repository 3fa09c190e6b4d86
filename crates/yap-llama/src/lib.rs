//! The embedded chat engine: llama.cpp (GGUF) in-process.
//!
//! - [`engine::LlamaEngine`] implements [`yap_engine_api::ChatEngine`]: one decode thread owns
//!   the llama context and runs continuous batching over token-id requests.
//! - [`slots`] is the pure bookkeeping behind it (which KV sequence a session owns, prefix reuse
//!   and sharing, LRU eviction, the KV budget), unit-tested without a model.
//! - [`gguf`] reads and writes GGUF files; [`quantize`] is `yap quantize` (llama.cpp's
//!   recipe and reference quantizers in safe Rust).
//! - [`vocab`] gives a GGUF's tokenizer and chat template to prompt formatting (also for remote
//!   engines serving the same model).

pub mod engine;
pub mod gguf;
pub mod quantize;
pub mod sampler;
pub mod slots;
pub mod vocab;

use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::{LogOptions, send_logs_to_tracing};

pub use engine::{EmbeddedArgs, LlamaConfig, LlamaEngine};

/// Errors of loading a model.
#[derive(Debug, Clone, thiserror::Error)]
#[error("failed to load model {path}: {reason}")]
pub struct LoadError {
    /// The path tried.
    pub path: String,
    /// Why.
    pub reason: String,
}

static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();

/// The process-wide llama.cpp backend (initialised once).
pub fn backend() -> Result<&'static LlamaBackend, LoadError> {
    BACKEND
        .get_or_init(|| {
            send_logs_to_tracing(LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| LoadError {
            path: String::new(),
            reason: format!("llama backend: {e}"),
        })
}
