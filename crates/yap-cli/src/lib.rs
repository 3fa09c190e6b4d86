//! The `yap` command: server wiring, the default model fetcher and the WebSocket clients.

pub mod bench;
pub mod check;
pub mod client;
pub mod lifecycle;
pub mod logging;
pub mod model_fetch;
pub mod model_tools;
pub mod models;
pub mod plot;
pub mod serve;
pub mod telemetry;
pub mod tool_eval;
pub mod tools;
