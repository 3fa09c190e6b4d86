//! Yap's wire protocols: one module per dialect, plus what both share.
//!
//! - [`v0`]: the dialect of `shared/docs/protocol.md` (sessions by `session_id`, `start` per turn,
//!   `toolcall`, `done{usage}` / `done{cancelled}`).
//! - [`v1`]: the dialect of `shared/docs/protocol-v1.md` (one connection = one session, `start`
//!   without an utterance, `message` per turn, `tool`, `final`, `done{status}`, `cancelled`).
//!
//! The first message of a connection picks its dialect ([`dialect_of`]). `docs/protocol-choices.md`
//! records what Yap decides where the documents are silent.

mod common;
mod error;
pub mod v0;
pub mod v1;

pub use common::{Gender, RequestId, Sampling, SamplingError, UserIdentity};
pub use error::ErrorCode;
pub use v0::{
    Capacity, ClientMessage, ParseError, ServerFrame, StartRequest, ToolStatus, Usage,
    parse_client_message,
};

/// Raw text a client may send instead of a JSON cancel message (`WS_CANCEL_SENTINEL`).
pub const CANCEL_SENTINEL: &str = "__CANCEL__";
/// Raw text a client may send instead of a JSON end message (`WS_END_SENTINEL`).
pub const END_SENTINEL: &str = "__END__";

/// Which dialect a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `protocol.md`.
    V0,
    /// `protocol-v1.md`.
    V1,
}

impl Dialect {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0 => "v0",
            Self::V1 => "v1",
        }
    }
}

/// The dialect of a connection's first message: a JSON object with an integer `v` speaks v1;
/// anything else (sentinels, malformed text included) is v0.
pub fn dialect_of(text: &str) -> Dialect {
    #[derive(serde::Deserialize)]
    struct Probe {
        v: Option<serde_json::Value>,
    }
    match serde_json::from_str::<Probe>(text.trim()) {
        Ok(Probe { v: Some(v) }) if v.is_i64() || v.is_u64() => Dialect::V1,
        _ => Dialect::V0,
    }
}

/// WebSocket close codes used by the server.
pub mod close_code {
    /// Normal closure, after a client `end`.
    pub const NORMAL: u16 = 1000;
    /// Going away: the server shuts down.
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error: a malformed WebSocket frame.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Invalid frame payload (a text frame that is not UTF-8).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation: authentication failed, a forbidden origin, a reader too far behind.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// Message too big for the server to process.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Internal server error.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// Try again later: the server is at capacity.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Default idle close code (`WS_CLOSE_IDLE_CODE`).
    pub const IDLE: u16 = 4000;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialect_is_picked_by_an_integer_v() {
        assert_eq!(dialect_of(r#"{"type":"start","v":1}"#), Dialect::V1);
        assert_eq!(dialect_of(r#"{"type":"start","v":2}"#), Dialect::V1);
        assert_eq!(dialect_of(r#"{"type":"start","v":"1"}"#), Dialect::V0);
        assert_eq!(dialect_of(r#"{"type":"start","v":1.5}"#), Dialect::V0);
        assert_eq!(
            dialect_of(r#"{"type":"start","session_id":"s"}"#),
            Dialect::V0
        );
        assert_eq!(dialect_of("__END__"), Dialect::V0);
        assert_eq!(dialect_of("{nope"), Dialect::V0);
    }

    #[test]
    fn request_ids_echo_verbatim() {
        let raw: Box<serde_json::value::RawValue> =
            serde_json::from_str("123456789012345678901234567890").unwrap();
        let id = RequestId::from_raw(&raw).unwrap().unwrap();
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "123456789012345678901234567890"
        );
        let raw: Box<serde_json::value::RawValue> =
            serde_json::from_str("9007199254740993").unwrap();
        let id = RequestId::from_raw(&raw).unwrap().unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "9007199254740993");
        assert_eq!(id.as_text(), "9007199254740993");
        assert_eq!(RequestId::string("r").as_text(), "r");
        let raw: Box<serde_json::value::RawValue> = serde_json::from_str("{}").unwrap();
        assert!(RequestId::from_raw(&raw).is_err());
    }
}
