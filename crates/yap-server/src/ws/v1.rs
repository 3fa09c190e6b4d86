//! Protocol v1 on a connection (`shared/docs/protocol-v1.md`).

use std::time::Duration;

use yap_core::CancelReason;
use yap_protocol::ErrorCode;

use super::conn::{Exit, Shared};
use crate::AppState;

/// A v1 error frame's JSON.
pub fn error_json(code: ErrorCode, message: &str) -> String {
    serde_json::json!({"type": "error", "status": code.status(), "code": code.as_str(), "message": message}).to_string()
}

/// A v1 connection's state.
#[derive(Debug, Default)]
pub struct V1Conn {}

impl V1Conn {
    /// A new connection.
    pub fn new(_state: &AppState) -> Self {
        Self {}
    }

    /// Handles one text message.
    pub async fn on_text(&mut self, _text: &str, shared: &mut Shared) -> Option<Exit> {
        shared.send(error_json(
            ErrorCode::InvalidMessage,
            "protocol v1 is not available yet",
        ));
        None
    }

    /// Answers a binary frame.
    pub fn on_binary(&mut self, shared: &mut Shared) {
        shared.send(error_json(
            ErrorCode::InvalidMessage,
            "binary frames are not supported",
        ));
    }

    /// Ends the running turn.
    pub async fn end_turn(&mut self, _reason: CancelReason, _drain: Option<Duration>) {}
}
