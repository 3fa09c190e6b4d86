//! Protocol v1 (protocol-v1.md): filled in by issue 11.
