//! The tool classifier: decides for each user turn whether the app should take a screenshot.
//!
//! A Hugging Face `AutoModelForSequenceClassification` folder (config.json with `id2label`,
//! `model.safetensors`, `tokenizer.json`) runs in-process on candle ([`classifier`]); a
//! [`ToolModel`] adds the tokenizer, the history + utterance pair encoding and the yes/no
//! decision; a [`ToolService`] micro-batches concurrent turns on its own thread pool.

pub mod args;
pub mod assemble;
pub mod classifier;
pub mod config;
pub mod distilbert;
pub mod encoder;
mod error;
pub mod service;
pub mod tool;

pub use args::ToolArgs;
pub use classifier::SequenceClassifier;
pub use error::ToolError;
pub use service::{ServiceConfig, ServiceStats, ToolService};
pub use tool::{Encoded, ToolInput, ToolModel, ToolVerdict, user_context};
