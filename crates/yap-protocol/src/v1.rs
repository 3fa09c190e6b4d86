//! Protocol v1 (`shared/docs/protocol-v1.md`): one connection = one session; `start` opens it
//! (no utterance), `message` is a turn; strict fields with a version `v`; errors with `status`
//! and `code`.
//!
//! Invariants: every message is validated completely before anything happens (unknown fields,
//! `v`, types, ranges, which fields the deployment allows); a refusal names the field.

use serde_json::{Map, Value, json};

use crate::{ErrorCode, Gender, Sampling};

/// Who said a seed-history message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    /// The user.
    User,
    /// The companion.
    Assistant,
}

/// A `start`: the session's settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Start {
    /// `female` / `male`.
    pub gender: Option<Gender>,
    /// Persona style (letters only, ≤ 20 chars).
    pub personality: Option<String>,
    /// The full system prompt.
    pub chat_prompt: Option<String>,
    /// Seed history.
    pub history: Option<Vec<(Speaker, String)>>,
    /// Sampling overrides for the session.
    pub sampling: Option<Sampling>,
    /// Per-session `CHECK_SCREEN_PREFIX`.
    pub check_screen_prefix: Option<String>,
    /// Per-session `SCREEN_CHECKED_PREFIX`.
    pub screen_checked_prefix: Option<String>,
}

/// Every message a v1 client may send.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Open the session.
    Start(Box<Start>),
    /// One turn.
    Message {
        /// What the user said.
        user_utterance: String,
        /// Sampling overrides kept for the session from now on.
        sampling: Option<Sampling>,
    },
    /// Abort the running turn.
    Cancel,
    /// Close the session.
    End,
    /// Keep-alive.
    Ping,
    /// Inbound pong.
    Pong,
}

/// A refusal: its code, message, and whether the connection closes (1008).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    /// The code.
    pub code: ErrorCode,
    /// Why.
    pub message: String,
    /// Close the connection with 1008 after the error frame.
    pub close: bool,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>, close: bool) -> Self {
        Self {
            code,
            message: message.into(),
            close,
        }
    }
    fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidMessage, message, false)
    }
    fn settings(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidSettings, message, true)
    }
}

/// What the deployment accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepts {
    /// The version `v` must equal (`WS_PROTOCOL_VERSION`).
    pub version: i64,
    /// A chat model is deployed (persona fields required); false: tool-only (chat fields refused).
    pub chat: bool,
}

const SAMPLING_KEYS: [&str; 8] = [
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "sanitize_output",
];
const START_KEYS: [&str; 9] = [
    "gender",
    "personality",
    "chat_prompt",
    "history",
    "sampling",
    "sampling_params",
    "check_screen_prefix",
    "screen_checked_prefix",
    "user_utterance",
];

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses one v1 message for a deployment.
pub fn parse(text: &str, accepts: Accepts) -> Result<Message, Refusal> {
    let value: Value = serde_json::from_str(text.trim())
        .map_err(|e| Refusal::invalid(format!("invalid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(Refusal::invalid("a message must be a JSON object"));
    };
    match obj.get("v") {
        Some(v) if v.as_i64() == Some(accepts.version) => {}
        Some(v) if v.is_i64() || v.is_u64() => {
            return Err(Refusal::invalid(format!(
                "unsupported protocol version {v}; this server speaks v{}",
                accepts.version
            )));
        }
        _ => {
            return Err(Refusal::invalid(
                "field `v` must be the integer protocol version",
            ));
        }
    }
    let kind = match obj.get("type") {
        Some(Value::String(t)) => t.to_ascii_lowercase(),
        Some(other) => {
            return Err(Refusal::invalid(format!(
                "field `type` must be a string, got {}",
                kind_of(other)
            )));
        }
        None => return Err(Refusal::invalid("missing field `type`")),
    };
    let allowed: Vec<&str> = match kind.as_str() {
        "start" => START_KEYS
            .iter()
            .chain(SAMPLING_KEYS.iter())
            .copied()
            .filter(|k| *k != "user_utterance")
            .collect(),
        "message" => ["user_utterance", "sampling", "sampling_params"]
            .into_iter()
            .chain(SAMPLING_KEYS)
            .collect(),
        "cancel" | "end" | "ping" | "pong" => Vec::new(),
        other => {
            let shown: String = other.chars().take(40).collect();
            return Err(Refusal::invalid(format!("unknown message type `{shown}`")));
        }
    };
    if let Some(field) = obj
        .keys()
        .find(|k| *k != "type" && *k != "v" && !allowed.contains(&k.as_str()))
    {
        let shown: String = field.chars().take(40).collect();
        return Err(Refusal::invalid(format!(
            "`{kind}` does not take the field `{shown}`"
        )));
    }
    match kind.as_str() {
        "start" => parse_start(&obj, accepts.chat).map(|s| Message::Start(Box::new(s))),
        "message" => parse_turn(&obj),
        "cancel" => Ok(Message::Cancel),
        "end" => Ok(Message::End),
        "ping" => Ok(Message::Ping),
        _ => Ok(Message::Pong),
    }
}

/// Sampling from a `sampling` / `sampling_params` object or top-level keys (not both).
fn parse_sampling(obj: &Map<String, Value>, close: bool) -> Result<Option<Sampling>, Refusal> {
    let payload = |m: String| Refusal::new(ErrorCode::InvalidPayload, m, close);
    let nested: Vec<&Value> = ["sampling", "sampling_params"]
        .iter()
        .filter_map(|k| obj.get(*k))
        .collect();
    let top: Map<String, Value> = SAMPLING_KEYS
        .iter()
        .filter_map(|k| obj.get(*k).map(|v| ((*k).to_owned(), v.clone())))
        .collect();
    let source = match (nested.as_slice(), top.is_empty()) {
        ([], true) => return Ok(None),
        ([], false) => Value::Object(top),
        ([one @ Value::Object(_)], true) => (*one).clone(),
        ([_], true) => return Err(payload("`sampling` must be an object".into())),
        _ => {
            return Err(payload(
                "give sampling once: a `sampling` object or top-level keys".into(),
            ));
        }
    };
    let s: Sampling =
        serde_json::from_value(source).map_err(|e| payload(format!("invalid sampling: {e}")))?;
    s.validate().map_err(|e| payload(e.0))?;
    Ok(Some(s))
}

fn opt_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, Refusal> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(Refusal::settings(format!(
            "`{key}` must be a string, got {}",
            kind_of(other)
        ))),
    }
}

fn parse_history(v: &Value) -> Result<Vec<(Speaker, String)>, Refusal> {
    let Value::Array(items) = v else {
        return Err(Refusal::settings(
            "`history` must be a list of {role, content}",
        ));
    };
    items
        .iter()
        .map(|item| {
            let Value::Object(m) = item else {
                return Err(Refusal::settings(
                    "`history` items must be objects {role, content}",
                ));
            };
            if let Some(k) = m.keys().find(|k| *k != "role" && *k != "content") {
                return Err(Refusal::settings(format!(
                    "`history` items do not take the field `{k}`"
                )));
            }
            let role = match m.get("role").and_then(Value::as_str) {
                Some("user") => Speaker::User,
                Some("assistant") => Speaker::Assistant,
                _ => {
                    return Err(Refusal::settings(
                        "`history` roles must be `user` or `assistant`",
                    ));
                }
            };
            let content = m
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| Refusal::settings("`history` content must be a string"))?;
            Ok((role, content.to_owned()))
        })
        .collect()
}

fn parse_persona(obj: &Map<String, Value>, s: &mut Start) -> Result<(), Refusal> {
    s.gender = match opt_str(obj, "gender")? {
        None => None,
        Some("female") => Some(Gender::Woman),
        Some("male") => Some(Gender::Man),
        Some(_) => return Err(Refusal::settings("`gender` must be `female` or `male`")),
    };
    s.personality = opt_str(obj, "personality")?.map(str::to_owned);
    if let Some(p) = &s.personality
        && (p.is_empty() || p.chars().count() > 20 || !p.chars().all(char::is_alphabetic))
    {
        return Err(Refusal::settings("`personality` must be 1 to 20 letters"));
    }
    s.chat_prompt = opt_str(obj, "chat_prompt")?.map(str::to_owned);
    for key in ["check_screen_prefix", "screen_checked_prefix"] {
        if let Some(p) = opt_str(obj, key)?
            && p.chars().count() > 30
        {
            return Err(Refusal::settings(format!(
                "`{key}` is longer than 30 characters"
            )));
        }
    }
    s.check_screen_prefix = opt_str(obj, "check_screen_prefix")?.map(str::to_owned);
    s.screen_checked_prefix = opt_str(obj, "screen_checked_prefix")?.map(str::to_owned);
    Ok(())
}

fn parse_start(obj: &Map<String, Value>, chat: bool) -> Result<Start, Refusal> {
    if !chat {
        let chat_fields = [
            "gender",
            "personality",
            "chat_prompt",
            "sampling",
            "sampling_params",
            "check_screen_prefix",
            "screen_checked_prefix",
        ];
        if let Some(k) = obj
            .keys()
            .find(|k| chat_fields.contains(&k.as_str()) || SAMPLING_KEYS.contains(&k.as_str()))
        {
            return Err(Refusal::settings(format!(
                "`{k}` is a chat setting; this deployment runs the tool model only"
            )));
        }
    } else if let Some(k) = ["gender", "personality", "chat_prompt"]
        .iter()
        .find(|k| obj.get(**k).is_none_or(Value::is_null))
    {
        return Err(Refusal::settings(format!(
            "`start` requires `{k}` in a chat deployment"
        )));
    }
    let mut s = Start::default();
    parse_persona(obj, &mut s)?;
    s.history = obj
        .get("history")
        .filter(|v| !v.is_null())
        .map(parse_history)
        .transpose()?;
    s.sampling = parse_sampling(obj, true)?;
    Ok(s)
}

fn parse_turn(obj: &Map<String, Value>) -> Result<Message, Refusal> {
    let user_utterance = match obj.get("user_utterance") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) => {
            return Err(Refusal::invalid("`user_utterance` must not be empty"));
        }
        Some(other) => {
            return Err(Refusal::invalid(format!(
                "`user_utterance` must be a string, got {}",
                kind_of(other)
            )));
        }
        None => {
            return Err(Refusal::invalid(
                "`message` requires the string field `user_utterance`",
            ));
        }
    };
    Ok(Message::Message {
        user_utterance,
        sampling: parse_sampling(obj, false)?,
    })
}

/// Server frames of v1, as JSON text.
pub mod frame {
    use super::{ErrorCode, json};

    /// `{"type":"done","status":200}`.
    pub fn done() -> String {
        json!({"type": "done", "status": 200}).to_string()
    }
    /// The tool decision.
    pub fn tool(yes: bool) -> String {
        let tools = if yes {
            json!([{"name": "take_screenshot"}])
        } else {
            json!([])
        };
        json!({"type": "tool", "status": 200, "tools": tools}).to_string()
    }
    /// A token.
    pub fn token(text: &str) -> String {
        json!({"type": "token", "text": text}).to_string()
    }
    /// The whole reply.
    pub fn final_text(text: &str) -> String {
        json!({"type": "final", "status": 200, "text": text}).to_string()
    }
    /// An explicit cancel's reply.
    pub fn cancelled() -> String {
        json!({"type": "cancelled"}).to_string()
    }
    /// The reply to `ping`.
    pub fn pong() -> String {
        json!({"type": "pong"}).to_string()
    }
    /// An error.
    pub fn error(code: ErrorCode, message: &str) -> String {
        json!({"type": "error", "status": code.status(), "code": code.as_str(), "message": message})
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: Accepts = Accepts {
        version: 1,
        chat: true,
    };
    const TOOL: Accepts = Accepts {
        version: 1,
        chat: false,
    };

    fn code(text: &str, a: Accepts) -> (ErrorCode, bool) {
        let e = parse(text, a).unwrap_err();
        (e.code, e.close)
    }

    #[test]
    fn full_start_and_message() {
        let m = parse(
            r#"{"type":"START","v":1,"gender":"female","personality":"nerdy","chat_prompt":"be nice",
                "history":[{"role":"user","content":"hi"},{"role":"assistant","content":"hey"}],
                "sampling_params":{"temperature":0.5},"check_screen_prefix":"LOOK:"}"#,
            CHAT,
        )
        .unwrap();
        let Message::Start(s) = m else { panic!() };
        assert_eq!(s.gender, Some(Gender::Woman));
        assert_eq!(s.history.as_ref().unwrap().len(), 2);
        assert_eq!(s.sampling.as_ref().unwrap().temperature, Some(0.5));
        let m = parse(
            r#"{"type":"message","v":1,"user_utterance":"yo","top_k":20}"#,
            CHAT,
        )
        .unwrap();
        assert_eq!(
            m,
            Message::Message {
                user_utterance: "yo".into(),
                sampling: Some(Sampling {
                    top_k: Some(20),
                    ..Sampling::default()
                })
            }
        );
        for (t, want) in [
            ("cancel", Message::Cancel),
            ("end", Message::End),
            ("ping", Message::Ping),
            ("pong", Message::Pong),
        ] {
            assert_eq!(
                parse(&format!(r#"{{"type":"{t}","v":1}}"#), CHAT).unwrap(),
                want
            );
        }
    }

    #[test]
    fn refusals_are_typed_and_say_whether_to_close() {
        let start = r#""gender":"male","personality":"savage","chat_prompt":"p""#;
        for (text, want) in [
            (r#"{"type":"ping","v":2}"#.to_owned(), (ErrorCode::InvalidMessage, false)),
            (r#"{"type":"ping","v":1,"session_id":"s"}"#.to_owned(), (ErrorCode::InvalidMessage, false)),
            (r#"{"type":"dance","v":1}"#.to_owned(), (ErrorCode::InvalidMessage, false)),
            (r#"{"type":"message","v":1}"#.to_owned(), (ErrorCode::InvalidMessage, false)),
            (r#"{"type":"message","v":1,"user_utterance":"  "}"#.to_owned(), (ErrorCode::InvalidMessage, false)),
            (r#"{"type":"message","v":1,"user_utterance":"x","temperature":9}"#.to_owned(), (ErrorCode::InvalidPayload, false)),
            (r#"{"type":"start","v":1,"personality":"x","chat_prompt":"p"}"#.to_owned(), (ErrorCode::InvalidSettings, true)),
            (format!(r#"{{"type":"start","v":1,{start},"temperature":9}}"#), (ErrorCode::InvalidPayload, true)),
            (format!(r#"{{"type":"start","v":1,{start},"sampling":{{"warmth":1}}}}"#), (ErrorCode::InvalidPayload, true)),
            (r#"{"type":"start","v":1,"gender":"robot","personality":"x","chat_prompt":"p"}"#.to_owned(), (ErrorCode::InvalidSettings, true)),
            (r#"{"type":"start","v":1,"gender":"male","personality":"so nerdy","chat_prompt":"p"}"#.to_owned(), (ErrorCode::InvalidSettings, true)),
            (format!(r#"{{"type":"start","v":1,{start},"check_screen_prefix":"{}"}}"#, "x".repeat(31)), (ErrorCode::InvalidSettings, true)),
            (format!(r#"{{"type":"start","v":1,{start},"history":[{{"role":"system","content":"x"}}]}}"#), (ErrorCode::InvalidSettings, true)),
            (format!(r#"{{"type":"start","v":1,{start},"user_utterance":"hi"}}"#), (ErrorCode::InvalidMessage, false)),
        ] {
            assert_eq!(code(&text, CHAT), want, "{text}");
        }
        assert_eq!(
            code(&format!(r#"{{"type":"start","v":1,{start}}}"#), TOOL),
            (ErrorCode::InvalidSettings, true)
        );
        assert!(parse(r#"{"type":"start","v":1,"history":[]}"#, TOOL).is_ok());
        assert!(parse(r#"{"type":"start","v":1}"#, TOOL).is_ok());
    }

    #[test]
    fn frames_are_exact() {
        let done: Value = serde_json::from_str(&frame::done()).unwrap();
        assert_eq!(done, json!({"type":"done","status":200}));
        let tool: Value = serde_json::from_str(&frame::tool(true)).unwrap();
        assert_eq!(
            tool,
            json!({"type":"tool","status":200,"tools":[{"name":"take_screenshot"}]})
        );
        let err: Value =
            serde_json::from_str(&frame::error(ErrorCode::RateLimited, "slow")).unwrap();
        assert_eq!(
            err,
            json!({"type":"error","status":429,"code":"rate_limited","message":"slow"})
        );
        assert!(err.get("error_code").is_none());
    }
}
