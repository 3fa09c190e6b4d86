//! Settings of the tool classifier (flattened into `yap serve`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::service::ServiceConfig;

/// Tool model settings.
#[derive(Debug, Clone, Args)]
pub struct ToolArgs {
    /// Tool model: a Hugging Face sequence-classification folder (config.json with id2label,
    /// model.safetensors, tokenizer.json). Default: the project's screenshot-intent model.
    #[arg(long, env = "TOOL_MODEL")]
    pub tool_model: Option<PathBuf>,
    /// Tokens of user-side context the tool model sees (newest kept). Default: the model's own
    /// limit, else 512.
    #[arg(long, env = "TOOL_HISTORY_TOKENS")]
    pub tool_history_tokens: Option<usize>,
    /// Threads of the tool model's own pool (0 = half the cores, 2..4).
    #[arg(long, env = "TOOL_THREADS", default_value_t = 0)]
    pub tool_threads: usize,
    /// Micro-batch window: how long a classification waits for concurrent ones (ms).
    #[arg(long, env = "TOOL_BATCH_WINDOW_MS", default_value_t = 3.0)]
    pub tool_batch_window_ms: f64,
    /// Wait the batch window only under concurrency (a lone turn is classified at once).
    #[arg(long, env = "TOOL_BATCH_ADAPTIVE", default_value_t = true, action = clap::ArgAction::Set)]
    pub tool_batch_adaptive: bool,
    /// Most classifications in one batch (1 = no batching).
    #[arg(long, env = "TOOL_MAX_BATCH", default_value_t = 16)]
    pub tool_max_batch: usize,
}

impl ToolArgs {
    /// The batching service's configuration.
    pub fn service_config(&self) -> ServiceConfig {
        let threads = if self.tool_threads > 0 {
            self.tool_threads
        } else {
            let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
            (cores / 2).clamp(2, 4).min(cores)
        };
        let window = if self.tool_batch_window_ms.is_finite() {
            self.tool_batch_window_ms.clamp(0.0, 1000.0)
        } else {
            0.0
        };
        ServiceConfig {
            threads,
            batch_window: Duration::from_secs_f64(window / 1000.0),
            max_batch: self.tool_max_batch.max(1),
            adaptive: self.tool_batch_adaptive,
        }
    }
}
