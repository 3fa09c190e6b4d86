//! Yap wire protocol: the JSON messages a client sends, the frames the server sends back, error
//! codes, close codes and sentinels. Shared by the server and the project's own clients.
//!
//! The contract lives in `shared/docs/protocol.md`; `docs/protocol-choices.md` records what this
//! crate decides where that document is silent.

mod client;
mod server;

pub use client::{
    ClientMessage, Gender, ParseError, Sampling, StartRequest, UserIdentity, parse_client_message,
};
pub use server::{Capacity, ErrorCode, ServerFrame, ToolStatus, Usage};

/// Raw text a client may send instead of a JSON cancel message (`WS_CANCEL_SENTINEL`).
pub const CANCEL_SENTINEL: &str = "__CANCEL__";
/// Raw text a client may send instead of a JSON end message (`WS_END_SENTINEL`).
pub const END_SENTINEL: &str = "__END__";

/// WebSocket close codes used by the server.
pub mod close_code {
    /// Normal closure, after a client `end`.
    pub const NORMAL: u16 = 1000;
    /// Invalid frame payload (a text frame that is not UTF-8).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation: authentication failed or a forbidden origin.
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
