//! Protocol v0: the dialect of `shared/docs/protocol.md`.

mod client;
mod server;

pub use client::{ClientMessage, ParseError, StartRequest, parse_client_message};
pub use server::{Capacity, ServerFrame, ToolStatus, Usage};
