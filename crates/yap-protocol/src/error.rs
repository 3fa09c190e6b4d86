//! Error codes shared by both dialects.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Typed error codes carried by `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Missing or wrong API key.
    AuthenticationFailed,
    /// No connection slot freed in time.
    ServerAtCapacity,
    /// The frame is not valid JSON.
    InvalidJson,
    /// Unknown type, missing or ill-typed field, binary frame.
    InvalidMessage,
    /// A sampling value out of range or unknown.
    InvalidSampling,
    /// The frame exceeds `WS_MAX_MESSAGE_BYTES`.
    MessageTooLarge,
    /// A rate limit was hit; see `retry_after_ms`.
    RateLimited,
    /// The chat or tool engine cannot serve the turn.
    EngineUnavailable,
    /// Anything else that went wrong on the server.
    InternalError,
    /// v1: a field value is malformed (e.g. a sampling value out of range).
    InvalidPayload,
    /// v1: a persona or prompt setting is invalid, or not allowed in this deployment.
    InvalidSettings,
    /// v1: text does not fit its token budget.
    TextTooLong,
    /// v1: the server cannot queue more work now.
    QueueFull,
}

impl ErrorCode {
    /// The wire name of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthenticationFailed => "authentication_failed",
            Self::ServerAtCapacity => "server_at_capacity",
            Self::InvalidJson => "invalid_json",
            Self::InvalidMessage => "invalid_message",
            Self::InvalidSampling => "invalid_sampling",
            Self::MessageTooLarge => "message_too_large",
            Self::RateLimited => "rate_limited",
            Self::EngineUnavailable => "engine_unavailable",
            Self::InternalError => "internal_error",
            Self::InvalidPayload => "invalid_payload",
            Self::InvalidSettings => "invalid_settings",
            Self::TextTooLong => "text_too_long",
            Self::QueueFull => "queue_full",
        }
    }

    /// The HTTP-like status protocol v1 sends with the code.
    pub fn status(self) -> u16 {
        match self {
            Self::AuthenticationFailed => 401,
            Self::ServerAtCapacity | Self::QueueFull | Self::EngineUnavailable => 503,
            Self::RateLimited => 429,
            Self::InternalError => 500,
            Self::MessageTooLarge => 413,
            Self::InvalidJson
            | Self::InvalidMessage
            | Self::InvalidSampling
            | Self::InvalidPayload
            | Self::InvalidSettings
            | Self::TextTooLong => 400,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
