//! The test kit: what tests and benchmarks need and the production binary does not ship.
//!
//! - [`gguf`]: a GGUF writer; [`tiny`]: tiny random-weight chat models with a real BPE
//!   tokenizer; [`shapes`]: random-weight F16 models with real shapes, for benchmarks;
//! - [`double`]: an OpenAI-compatible engine stand-in that can stall, fail and die;
//! - [`scripted`]: a [`yap_engine_api::ChatEngine`] that replays scripted events;
//! - [`fake`]: a classifier with fixed answers and delays.

pub mod double;
pub mod fake;
pub mod gguf;
pub mod scripted;
pub mod shapes;
pub mod tiny;
