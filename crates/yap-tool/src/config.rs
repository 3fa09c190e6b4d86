//! The parts of a Hugging Face `config.json` that a sequence classifier needs.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::ToolError;

/// Architectures Yap runs in-process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `BertForSequenceClassification`.
    Bert,
    /// `DistilBertForSequenceClassification`.
    DistilBert,
    /// `RobertaForSequenceClassification` / `XLMRobertaForSequenceClassification`.
    Roberta,
    /// `LongformerForSequenceClassification` (local + global attention).
    Longformer,
    /// `ModernBertForSequenceClassification`.
    ModernBert,
}

/// A parsed config.json.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// Which architecture.
    pub arch: Arch,
    /// `model_type` as written.
    pub model_type: String,
    /// Labels by class index.
    pub labels: Vec<String>,
    /// The whole JSON, for the architecture's own fields.
    pub raw: Value,
}

impl ModelConfig {
    /// Reads `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Self, ToolError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| ToolError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let raw: Value = serde_json::from_str(&text)
            .map_err(|e| ToolError::Config(format!("{}: {e}", path.display())))?;
        Self::from_value(raw)
    }

    /// Parses a config.json value.
    pub fn from_value(raw: Value) -> Result<Self, ToolError> {
        let model_type = raw
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let arch = match model_type.as_str() {
            "bert" => Arch::Bert,
            "distilbert" => Arch::DistilBert,
            "roberta" | "xlm-roberta" | "camembert" => Arch::Roberta,
            "longformer" => Arch::Longformer,
            "modernbert" => Arch::ModernBert,
            other => return Err(ToolError::Unsupported(other.to_owned())),
        };
        let mut by_index = BTreeMap::new();
        if let Some(map) = raw.get("id2label").and_then(Value::as_object) {
            for (k, v) in map {
                let i: usize = k.parse().map_err(|_| {
                    ToolError::Config(format!("id2label key {k:?} is not an index"))
                })?;
                let label = v
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string());
                by_index.insert(i, label);
            }
        }
        if by_index.is_empty() {
            let n = raw.get("num_labels").and_then(Value::as_u64).unwrap_or(2) as usize;
            by_index = (0..n).map(|i| (i, format!("LABEL_{i}"))).collect();
        }
        let labels: Vec<String> = by_index.values().cloned().collect();
        if by_index.keys().copied().ne(0..labels.len()) || labels.len() < 2 {
            return Err(ToolError::Config(
                "id2label must number the labels 0..n with n >= 2".into(),
            ));
        }
        Ok(Self {
            arch,
            model_type,
            labels,
            raw,
        })
    }

    /// An integer field.
    pub fn usize(&self, key: &str) -> Option<usize> {
        self.raw
            .get(key)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
    }

    /// A float field.
    pub fn f64(&self, key: &str) -> Option<f64> {
        self.raw.get(key).and_then(Value::as_f64)
    }

    /// A string field.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.raw.get(key).and_then(Value::as_str)
    }

    /// An integer field that must be there.
    pub fn need(&self, key: &str) -> Result<usize, ToolError> {
        self.usize(key)
            .ok_or_else(|| ToolError::Config(format!("config.json lacks {key:?}")))
    }

    /// The most tokens (special tokens included) the model's position table allows.
    pub fn max_tokens(&self) -> Option<usize> {
        let positions = self.usize("max_position_embeddings")?;
        Some(match self.arch {
            // RoBERTa-style position ids start after the padding index.
            Arch::Roberta | Arch::Longformer => {
                positions.saturating_sub(self.usize("pad_token_id").unwrap_or(1) + 1)
            }
            _ => positions,
        })
    }

    /// `num_labels`.
    pub fn num_labels(&self) -> usize {
        self.labels.len()
    }
}
