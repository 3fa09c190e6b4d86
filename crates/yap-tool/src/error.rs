//! Errors of the tool classifier.

/// What can go wrong loading or running the tool model.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// A file of the model folder could not be read.
    #[error("tool model: cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// config.json is not what a sequence classifier needs.
    #[error("tool model config: {0}")]
    Config(String),
    /// The architecture is not one Yap runs.
    #[error(
        "tool model: unsupported architecture {0:?} (supported: bert, distilbert, roberta, xlm-roberta, longformer, modernbert)"
    )]
    Unsupported(String),
    /// candle failed (missing weight, wrong shape, ...).
    #[error("tool model: {0}")]
    Candle(#[from] candle_core::Error),
    /// The tokenizer failed to load or to encode.
    #[error("tool tokenizer: {0}")]
    Tokenizer(String),
    /// The classification was cancelled (barge-in / cancel).
    #[error("classification cancelled")]
    Cancelled,
    /// The classifier's worker threads are gone.
    #[error("tool classifier stopped")]
    Stopped,
}
