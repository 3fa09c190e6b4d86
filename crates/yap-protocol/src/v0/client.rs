//! Client → server messages of protocol v0 (`protocol.md`) and their parser.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{CANCEL_SENTINEL, END_SENTINEL, ErrorCode, Gender, RequestId, Sampling, UserIdentity};

/// Why a client message was refused; maps one to one onto an error frame.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ParseError {
    /// The typed error code sent to the client.
    pub code: ErrorCode,
    /// Human-readable reason.
    pub message: String,
}

impl ParseError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidMessage, message)
    }
}

/// A `start` message: begins a turn (cancelling a running one of the same session).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StartRequest {
    /// The session this turn belongs to.
    pub session_id: String,
    /// What the user said.
    pub user_utterance: String,
    /// The persona (system prompt) as text; composed from templates when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persona_text: Option<String>,
    /// A built-in persona style (wholesome, flirty, savage, nerdy, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persona_style: Option<String>,
    /// The assistant's gender (alias `assistant_gender`).
    #[serde(
        default,
        alias = "assistant_gender",
        skip_serializing_if = "Option::is_none"
    )]
    pub gender: Option<Gender>,
    /// How the user identifies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_identity: Option<UserIdentity>,
    /// Prior conversation as a `User:`/`Assistant:` transcript.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_text: Option<String>,
    /// Per-turn sampling overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
    /// Echoed on this turn's terminal frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
    /// The session's `CHECK_SCREEN_PREFIX` from now on (≤ 30 chars).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_screen_prefix: Option<String>,
    /// The session's `SCREEN_CHECKED_PREFIX` from now on (≤ 30 chars).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen_checked_prefix: Option<String>,
}

/// Every message a client may send.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// Begin a turn.
    Start(Box<StartRequest>),
    /// Abort the running turn.
    Cancel {
        /// Echoed on the `done{cancelled}` reply.
        request_id: Option<RequestId>,
    },
    /// Close the connection normally.
    End,
    /// Keep-alive; answered with `pong`.
    Ping,
    /// Inbound pong: a no-op.
    Pong,
    /// Prefill a persona into the engine's prefix cache.
    WarmPersona {
        /// The persona text.
        chat_prompt: String,
        /// Session to warm for, when given.
        session_id: Option<String>,
    },
    /// Prefill a history into the engine's prefix cache.
    WarmHistory {
        /// The history transcript.
        history_text: String,
        /// Session to warm for, when given.
        session_id: Option<String>,
    },
    /// Update a session's persona without starting a turn.
    ChatPrompt {
        /// The session.
        session_id: String,
        /// The new persona text.
        chat_prompt: String,
    },
}

impl ClientMessage {
    /// The message type name as used on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Start(_) => "start",
            Self::Cancel { .. } => "cancel",
            Self::End => "end",
            Self::Ping => "ping",
            Self::Pong => "pong",
            Self::WarmPersona { .. } => "warm_persona",
            Self::WarmHistory { .. } => "warm_history",
            Self::ChatPrompt { .. } => "chat_prompt",
        }
    }
}

fn opt_string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, ParseError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ParseError::invalid(format!(
            "field `{key}` must be a string, got {}",
            type_name(other)
        ))),
    }
}

fn req_string(obj: &Map<String, Value>, key: &str, kind: &str) -> Result<String, ParseError> {
    opt_string(obj, key)?
        .ok_or_else(|| ParseError::invalid(format!("`{kind}` requires the string field `{key}`")))
}

fn first_string(obj: &Map<String, Value>, keys: &[&str], kind: &str) -> Result<String, ParseError> {
    for key in keys {
        if let Some(s) = opt_string(obj, key)? {
            return Ok(s);
        }
    }
    Err(ParseError::invalid(format!(
        "`{kind}` requires the string field `{}`",
        keys.join("` or `")
    )))
}

/// The `request_id` of a message exactly as sent (a string or a number of any size).
fn request_id(text: &str) -> Result<Option<RequestId>, ParseError> {
    #[derive(Deserialize)]
    struct Raw<'a> {
        #[serde(borrow, default)]
        request_id: Option<&'a serde_json::value::RawValue>,
    }
    match serde_json::from_str::<Raw<'_>>(text) {
        Ok(Raw {
            request_id: Some(raw),
        }) => RequestId::from_raw(raw).map_err(ParseError::invalid),
        _ => Ok(None),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses one inbound text frame: a sentinel or a JSON message.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, ParseError> {
    let trimmed = text.trim();
    if trimmed == CANCEL_SENTINEL {
        return Ok(ClientMessage::Cancel { request_id: None });
    }
    if trimmed == END_SENTINEL {
        return Ok(ClientMessage::End);
    }
    let value: Value = serde_json::from_str(trimmed)
        .map_err(|e| ParseError::new(ErrorCode::InvalidJson, format!("invalid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(ParseError::invalid(format!(
            "a message must be a JSON object, got {}",
            type_name(&value)
        )));
    };
    let kind = match obj.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(other) => {
            return Err(ParseError::invalid(format!(
                "field `type` must be a string, got {}",
                type_name(other)
            )));
        }
        None if obj.get("cancel") == Some(&Value::Bool(true)) => "cancel",
        None => return Err(ParseError::invalid("missing field `type`")),
    };
    match kind {
        "start" => {
            let mut start = parse_start(&obj)?;
            start.request_id = request_id(trimmed)?;
            Ok(ClientMessage::Start(Box::new(start)))
        }
        "cancel" => Ok(ClientMessage::Cancel {
            request_id: request_id(trimmed)?,
        }),
        "end" => Ok(ClientMessage::End),
        "ping" => Ok(ClientMessage::Ping),
        "pong" => Ok(ClientMessage::Pong),
        "warm_persona" => Ok(ClientMessage::WarmPersona {
            chat_prompt: first_string(&obj, &["chat_prompt", "persona_text"], kind)?,
            session_id: opt_string(&obj, "session_id")?,
        }),
        "warm_history" => Ok(ClientMessage::WarmHistory {
            history_text: req_string(&obj, "history_text", kind)?,
            session_id: opt_string(&obj, "session_id")?,
        }),
        "chat_prompt" => Ok(ClientMessage::ChatPrompt {
            session_id: req_string(&obj, "session_id", kind)?,
            chat_prompt: first_string(&obj, &["chat_prompt", "persona_text"], kind)?,
        }),
        other => {
            let shown: String = other.chars().take(40).collect();
            Err(ParseError::invalid(format!(
                "unknown message type `{shown}`"
            )))
        }
    }
}

fn parse_start(obj: &Map<String, Value>) -> Result<StartRequest, ParseError> {
    let session_id = req_string(obj, "session_id", "start")?;
    if session_id.trim().is_empty() {
        return Err(ParseError::invalid("`session_id` must not be empty"));
    }
    let user_utterance = req_string(obj, "user_utterance", "start")?;
    let gender = match obj.get("gender").or_else(|| obj.get("assistant_gender")) {
        None | Some(Value::Null) => None,
        Some(v) => Some(serde_json::from_value::<Gender>(v.clone()).map_err(|_| {
            ParseError::invalid("`gender` must be one of woman, man, female, male")
        })?),
    };
    let user_identity = match obj.get("user_identity") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            serde_json::from_value::<UserIdentity>(v.clone()).map_err(|_| {
                ParseError::invalid("`user_identity` must be one of woman, man, non-binary")
            })?,
        ),
    };
    let sampling = match obj.get("sampling") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => {
            let s: Sampling = serde_json::from_value(v.clone()).map_err(|e| {
                ParseError::new(ErrorCode::InvalidSampling, format!("invalid sampling: {e}"))
            })?;
            s.validate()
                .map_err(|e| ParseError::new(ErrorCode::InvalidSampling, e.0))?;
            Some(s)
        }
        Some(other) => {
            return Err(ParseError::new(
                ErrorCode::InvalidSampling,
                format!("`sampling` must be an object, got {}", type_name(other)),
            ));
        }
    };
    let persona_style = opt_string(obj, "persona_style")?;
    if let Some(style) = &persona_style
        && style.chars().count() > 20
    {
        return Err(ParseError::invalid(
            "`persona_style` is longer than 20 characters",
        ));
    }
    for key in ["check_screen_prefix", "screen_checked_prefix"] {
        if opt_string(obj, key)?.is_some_and(|p| p.chars().count() > 30) {
            return Err(ParseError::invalid(format!(
                "`{key}` is longer than 30 characters"
            )));
        }
    }
    Ok(StartRequest {
        check_screen_prefix: opt_string(obj, "check_screen_prefix")?,
        screen_checked_prefix: opt_string(obj, "screen_checked_prefix")?,
        session_id,
        user_utterance,
        persona_text: opt_string(obj, "persona_text")?,
        persona_style,
        gender,
        user_identity,
        history_text: opt_string(obj, "history_text")?,
        sampling,
        request_id: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinels() {
        assert_eq!(
            parse_client_message("__CANCEL__").unwrap(),
            ClientMessage::Cancel { request_id: None }
        );
        assert_eq!(
            parse_client_message(" __END__\n").unwrap(),
            ClientMessage::End
        );
    }

    #[test]
    fn cancel_forms() {
        assert_eq!(
            parse_client_message(r#"{"cancel":true}"#).unwrap(),
            ClientMessage::Cancel { request_id: None }
        );
        assert_eq!(
            parse_client_message(r#"{"type":"cancel","request_id":"r1"}"#).unwrap(),
            ClientMessage::Cancel {
                request_id: Some(RequestId::string("r1"))
            }
        );
        assert_eq!(
            serde_json::to_string(&match parse_client_message(
                r#"{"type":"cancel","request_id":18446744073709551617}"#
            )
            .unwrap()
            {
                ClientMessage::Cancel { request_id } => request_id,
                _ => None,
            })
            .unwrap(),
            "18446744073709551617"
        );
    }

    #[test]
    fn full_start() {
        let m = parse_client_message(
            r#"{"type":"start","session_id":"s","user_utterance":"hi","persona_style":"nerdy",
                "assistant_gender":"female","user_identity":"non-binary","history_text":"User: a",
                "sampling":{"temperature":0.7,"top_k":40,"sanitize_output":false},"request_id":"q"}"#,
        )
        .unwrap();
        let ClientMessage::Start(s) = m else {
            panic!("not a start")
        };
        assert_eq!(s.session_id, "s");
        assert_eq!(s.gender, Some(Gender::Woman));
        assert_eq!(s.user_identity, Some(UserIdentity::NonBinary));
        assert_eq!(s.sampling.as_ref().unwrap().top_k, Some(40));
        assert_eq!(s.sampling.as_ref().unwrap().sanitize_output, Some(false));
        assert_eq!(s.request_id, Some(RequestId::string("q")));
        assert_eq!(s.persona_style.as_deref(), Some("nerdy"));
    }

    #[test]
    fn simple_messages() {
        for (text, kind) in [
            (r#"{"type":"end"}"#, "end"),
            (r#"{"type":"ping"}"#, "ping"),
            (r#"{"type":"pong"}"#, "pong"),
            (
                r#"{"type":"warm_persona","chat_prompt":"p"}"#,
                "warm_persona",
            ),
            (
                r#"{"type":"warm_persona","persona_text":"p"}"#,
                "warm_persona",
            ),
            (
                r#"{"type":"warm_history","history_text":"h"}"#,
                "warm_history",
            ),
            (
                r#"{"type":"chat_prompt","session_id":"s","chat_prompt":"p"}"#,
                "chat_prompt",
            ),
        ] {
            assert_eq!(parse_client_message(text).unwrap().kind(), kind, "{text}");
        }
    }

    #[test]
    fn errors_are_typed() {
        let cases = [
            ("{not json", ErrorCode::InvalidJson),
            ("", ErrorCode::InvalidJson),
            ("[1,2]", ErrorCode::InvalidMessage),
            (r#"{"type":"dance"}"#, ErrorCode::InvalidMessage),
            (r#"{"type":5}"#, ErrorCode::InvalidMessage),
            (r#"{"user_utterance":"x"}"#, ErrorCode::InvalidMessage),
            (
                r#"{"type":"start","user_utterance":"x"}"#,
                ErrorCode::InvalidMessage,
            ),
            (
                r#"{"type":"start","session_id":"s"}"#,
                ErrorCode::InvalidMessage,
            ),
            (
                r#"{"type":"start","session_id":3,"user_utterance":"x"}"#,
                ErrorCode::InvalidMessage,
            ),
            (
                r#"{"type":"start","session_id":"s","user_utterance":"x","gender":"robot"}"#,
                ErrorCode::InvalidMessage,
            ),
            (
                r#"{"type":"start","session_id":"s","user_utterance":"x","sampling":{"temperature":2}}"#,
                ErrorCode::InvalidSampling,
            ),
            (
                r#"{"type":"start","session_id":"s","user_utterance":"x","sampling":{"top_p":0.1}}"#,
                ErrorCode::InvalidSampling,
            ),
            (
                r#"{"type":"start","session_id":"s","user_utterance":"x","sampling":{"warmth":1}}"#,
                ErrorCode::InvalidSampling,
            ),
            (
                r#"{"type":"start","session_id":"s","user_utterance":"x","sampling":"hot"}"#,
                ErrorCode::InvalidSampling,
            ),
            (r#"{"type":"warm_history"}"#, ErrorCode::InvalidMessage),
            (
                r#"{"type":"chat_prompt","chat_prompt":"p"}"#,
                ErrorCode::InvalidMessage,
            ),
        ];
        for (text, code) in cases {
            let err = parse_client_message(text).unwrap_err();
            assert_eq!(err.code, code, "{text}: {err}");
        }
    }

    #[test]
    fn sampling_bounds_inclusive() {
        let s = Sampling {
            temperature: Some(1.2),
            top_p: Some(0.6),
            top_k: Some(0),
            min_p: Some(0.2),
            repetition_penalty: Some(1.0),
            presence_penalty: Some(0.5),
            frequency_penalty: Some(0.0),
            sanitize_output: None,
        };
        s.validate().unwrap();
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            "\\PC{0,24}".prop_map(Value::String),
            prop_oneof![
                Just("start"),
                Just("cancel"),
                Just("end"),
                Just("ping"),
                Just("pong"),
                Just("warm_persona"),
                Just("warm_history"),
                Just("chat_prompt"),
                Just("woman"),
                Just("non-binary"),
                Just("__CANCEL__")
            ]
            .prop_map(|s| Value::String(s.to_owned())),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec(
                    (
                        prop_oneof![
                            Just("type"),
                            Just("session_id"),
                            Just("user_utterance"),
                            Just("sampling"),
                            Just("temperature"),
                            Just("top_k"),
                            Just("gender"),
                            Just("request_id"),
                            Just("cancel"),
                            Just("chat_prompt"),
                            Just("history_text"),
                            Just("persona_style"),
                            Just("user_identity"),
                            Just("sanitize_output"),
                            Just("x")
                        ],
                        inner
                    ),
                    0..7
                )
                .prop_map(|kv| Value::Object(
                    kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = parse_client_message(&text);
        }

        #[test]
        fn arbitrary_json_gets_a_message_or_a_typed_error(v in json_value()) {
            match parse_client_message(&v.to_string()) {
                Ok(ClientMessage::Start(s)) => {
                    prop_assert!(!s.session_id.trim().is_empty());
                    if let Some(sampling) = &s.sampling {
                        prop_assert!(sampling.validate().is_ok());
                    }
                }
                Ok(_) => {}
                Err(e) => prop_assert!(matches!(
                    e.code,
                    ErrorCode::InvalidJson | ErrorCode::InvalidMessage | ErrorCode::InvalidSampling
                )),
            }
        }
    }
}
