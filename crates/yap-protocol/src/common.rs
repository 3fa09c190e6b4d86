//! Types both dialects share: persona settings and sampling overrides.

use serde::{Deserialize, Serialize};

/// The assistant's gender for built-in persona templates (`woman`/`man`, aliases `female`/`male`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gender {
    /// A woman (alias `female`).
    #[serde(alias = "female")]
    Woman,
    /// A man (alias `male`).
    #[serde(alias = "male")]
    Man,
}

/// How the user identifies, for built-in persona templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UserIdentity {
    /// A woman.
    Woman,
    /// A man.
    Man,
    /// Non-binary.
    NonBinary,
}

/// Per-turn sampling overrides; omitted keys use server defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    /// Temperature in [0, 1.2]; 0 means greedy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling in [0.6, 1.0].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Top-k in [0, 60]; 0 disables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    /// Min-p in [0, 0.2].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f64>,
    /// Repetition penalty in [1.0, 1.3].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f64>,
    /// Presence penalty in [0, 0.5].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    /// Frequency penalty in [0, 0.5].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    /// Whether the streaming sanitizer runs (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sanitize_output: Option<bool>,
}

impl Sampling {
    /// Checks every given value against the ranges in protocol.md; never clamps.
    pub fn validate(&self) -> Result<(), SamplingError> {
        fn check(name: &str, v: Option<f64>, lo: f64, hi: f64) -> Result<(), SamplingError> {
            match v {
                Some(x) if !x.is_finite() || x < lo || x > hi => Err(SamplingError(format!(
                    "sampling.{name}={x} is outside [{lo}, {hi}]"
                ))),
                _ => Ok(()),
            }
        }
        check("temperature", self.temperature, 0.0, 1.2)?;
        check("top_p", self.top_p, 0.6, 1.0)?;
        check("top_k", self.top_k.map(|k| k as f64), 0.0, 60.0)?;
        check("min_p", self.min_p, 0.0, 0.2)?;
        check("repetition_penalty", self.repetition_penalty, 1.0, 1.3)?;
        check("presence_penalty", self.presence_penalty, 0.0, 0.5)?;
        check("frequency_penalty", self.frequency_penalty, 0.0, 0.5)?;
        Ok(())
    }
}

/// A sampling value out of its range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SamplingError(pub String);

/// A client's `request_id`, kept as the exact JSON it sent (a string or a number of any size),
/// so it is echoed verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// An id from a string.
    pub fn string(s: &str) -> Self {
        Self(serde_json::Value::String(s.to_owned()).to_string())
    }

    /// The id from the raw JSON of a `request_id` field: a string or a number; `null` is none.
    pub fn from_raw(raw: &serde_json::value::RawValue) -> Result<Option<Self>, String> {
        let text = raw.get().trim();
        match text.as_bytes().first() {
            Some(b'"') => Ok(Some(Self(text.to_owned()))),
            Some(b'-' | b'0'..=b'9') => Ok(Some(Self(text.to_owned()))),
            Some(b'n') if text == "null" => Ok(None),
            _ => Err("field `request_id` must be a string or a number".to_owned()),
        }
    }

    /// The raw JSON text.
    pub fn as_json(&self) -> &str {
        &self.0
    }

    /// The id as text: a string's content, or the number's digits.
    pub fn as_text(&self) -> String {
        serde_json::from_str::<String>(&self.0).unwrap_or_else(|_| self.0.clone())
    }
}

impl Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match serde_json::value::RawValue::from_string(self.0.clone()) {
            Ok(raw) => raw.serialize(s),
            Err(_) => s.serialize_str(&self.0),
        }
    }
}

impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Clients read frames through a buffered (internally tagged) enum: go through a Value.
        match serde_json::Value::deserialize(d)? {
            v @ (serde_json::Value::String(_) | serde_json::Value::Number(_)) => {
                Ok(Self(v.to_string()))
            }
            _ => Err(serde::de::Error::custom(
                "request_id must be a string or a number",
            )),
        }
    }
}
