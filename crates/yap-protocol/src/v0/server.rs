//! Server → client frames of protocol v0 (`protocol.md`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ErrorCode, RequestId};

/// Token accounting and latency of one finished turn.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the rendered prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Prompt tokens served from the engine's prefix cache (not prefilled again).
    pub cached_prompt_tokens: u32,
    /// Milliseconds from `start` to the first frame of the turn sent to the client.
    pub ttfb_ms: f64,
    /// Milliseconds from `start` to the first token frame.
    pub ttft_ms: f64,
    /// Milliseconds from `start` to the terminal frame.
    pub total_ms: f64,
}

/// Connection-slot accounting sent with `server_at_capacity`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    /// Connections holding a slot.
    pub active: usize,
    /// `MAX_CONCURRENT_CONNECTIONS`.
    pub max: usize,
    /// Free slots.
    pub available: usize,
    /// Whether no slot is free.
    pub at_capacity: bool,
}

/// The tool classifier's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolStatus {
    /// Take a screenshot.
    Yes,
    /// Do not.
    No,
}

/// Every frame the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Acknowledges a `start` with the effective settings.
    Ack {
        /// The session.
        session_id: String,
        /// The client's request id, when given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<RequestId>,
        /// Effective persona style.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        persona_style: Option<String>,
        /// Effective assistant gender.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gender: Option<String>,
        /// Tokens of persona in the prompt.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        persona_tokens: Option<u32>,
        /// Turns of history kept by the server for this session.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        history_turns: Option<u32>,
    },
    /// The tool decision, once per turn, before any token.
    Toolcall {
        /// Yes or no.
        status: ToolStatus,
        /// Classifier output (label, probability).
        raw: Value,
    },
    /// A piece of streamed chat text.
    Token {
        /// The text.
        text: String,
    },
    /// The whole reply, just before done.
    Final {
        /// The text.
        text: String,
    },
    /// Terminal frame of a successful or cancelled turn.
    Done {
        /// Usage of a completed turn.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
        /// True when the turn was cancelled or barged in.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        cancelled: bool,
        /// The client's request id, when given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<RequestId>,
    },
    /// A typed error; terminal when it belongs to a turn.
    Error {
        /// The code.
        error_code: ErrorCode,
        /// Human-readable reason.
        message: String,
        /// The request id of the turn it ends, when any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<RequestId>,
        /// With `rate_limited`: when to retry.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
        /// With `server_at_capacity`: slot accounting.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        capacity: Option<Capacity>,
    },
    /// Reply to `ping`.
    Pong,
    /// Sent just before the server closes the connection on purpose.
    ConnectionClosed {
        /// Why (`client_request`, `idle_timeout`, ...).
        reason: String,
    },
}

impl ServerFrame {
    /// A plain error frame with no extras.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error {
            error_code: code,
            message: message.into(),
            request_id: None,
            retry_after_ms: None,
            capacity: None,
        }
    }

    /// A `done{cancelled:true}` frame.
    pub fn cancelled(request_id: Option<RequestId>) -> Self {
        Self::Done {
            usage: None,
            cancelled: true,
            request_id,
        }
    }

    /// Whether this frame ends a turn (done, cancelled done, or error).
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Done { .. } | Self::Error { .. })
    }

    /// Serializes the frame to its JSON text.
    pub fn to_json(&self) -> String {
        // Serializing these plain types cannot fail; fall back to a fixed error frame anyway.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","error_code":"internal_error","message":"serialization"}"#.into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn roundtrip(frame: ServerFrame, expected: Value) {
        let text = frame.to_json();
        let as_value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(as_value, expected, "{text}");
        let back: ServerFrame = serde_json::from_str(&text).unwrap();
        assert_eq!(back, frame);
    }

    #[test]
    fn frames_serialize_as_documented() {
        roundtrip(
            ServerFrame::Token { text: "Hi".into() },
            json!({"type":"token","text":"Hi"}),
        );
        roundtrip(ServerFrame::Pong, json!({"type":"pong"}));
        roundtrip(
            ServerFrame::cancelled(Some(RequestId::string("r"))),
            json!({"type":"done","cancelled":true,"request_id":"r"}),
        );
        roundtrip(
            ServerFrame::cancelled(None),
            json!({"type":"done","cancelled":true}),
        );
        roundtrip(
            ServerFrame::ConnectionClosed {
                reason: "client_request".into(),
            },
            json!({"type":"connection_closed","reason":"client_request"}),
        );
        roundtrip(
            ServerFrame::Toolcall {
                status: ToolStatus::Yes,
                raw: json!({"label":"yes","prob":0.9}),
            },
            json!({"type":"toolcall","status":"yes","raw":{"label":"yes","prob":0.9}}),
        );
        roundtrip(
            ServerFrame::Final { text: "x".into() },
            json!({"type":"final","text":"x"}),
        );
        roundtrip(
            ServerFrame::Done {
                usage: Some(Usage {
                    prompt_tokens: 10,
                    completion_tokens: 3,
                    cached_prompt_tokens: 4,
                    ttfb_ms: 1.5,
                    ttft_ms: 2.0,
                    total_ms: 9.0,
                }),
                cancelled: false,
                request_id: None,
            },
            json!({"type":"done","usage":{"prompt_tokens":10,"completion_tokens":3,
                "cached_prompt_tokens":4,"ttfb_ms":1.5,"ttft_ms":2.0,"total_ms":9.0}}),
        );
        roundtrip(
            ServerFrame::Ack {
                session_id: "s".into(),
                request_id: None,
                persona_style: Some("nerdy".into()),
                gender: None,
                persona_tokens: Some(12),
                history_turns: Some(0),
            },
            json!({"type":"ack","session_id":"s","persona_style":"nerdy","persona_tokens":12,
                "history_turns":0}),
        );
    }

    #[test]
    fn error_frames() {
        roundtrip(
            ServerFrame::error(ErrorCode::InvalidJson, "bad"),
            json!({"type":"error","error_code":"invalid_json","message":"bad"}),
        );
        roundtrip(
            ServerFrame::Error {
                error_code: ErrorCode::ServerAtCapacity,
                message: "full".into(),
                request_id: None,
                retry_after_ms: None,
                capacity: Some(Capacity {
                    active: 2,
                    max: 2,
                    available: 0,
                    at_capacity: true,
                }),
            },
            json!({"type":"error","error_code":"server_at_capacity","message":"full",
                "capacity":{"active":2,"max":2,"available":0,"at_capacity":true}}),
        );
        roundtrip(
            ServerFrame::Error {
                error_code: ErrorCode::RateLimited,
                message: "slow".into(),
                request_id: None,
                retry_after_ms: Some(1200),
                capacity: None,
            },
            json!({"type":"error","error_code":"rate_limited","message":"slow","retry_after_ms":1200}),
        );
        for code in [
            ErrorCode::AuthenticationFailed,
            ErrorCode::ServerAtCapacity,
            ErrorCode::InvalidJson,
            ErrorCode::InvalidMessage,
            ErrorCode::InvalidSampling,
            ErrorCode::MessageTooLarge,
            ErrorCode::RateLimited,
            ErrorCode::EngineUnavailable,
            ErrorCode::InternalError,
        ] {
            let v = serde_json::to_value(code).unwrap();
            assert_eq!(v, Value::String(code.as_str().into()));
        }
    }

    #[test]
    fn terminal_frames() {
        assert!(ServerFrame::cancelled(None).is_terminal());
        assert!(ServerFrame::error(ErrorCode::InternalError, "x").is_terminal());
        assert!(!ServerFrame::Token { text: "x".into() }.is_terminal());
        assert!(!ServerFrame::Pong.is_terminal());
    }
}
