//! A tool model: tokenizer + classifier + the yes/no reading of its labels.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::ToolError;
use crate::classifier::{SequenceClassifier, softmax};

/// Used when neither the model nor `TOOL_HISTORY_TOKENS` gives a budget.
pub const DEFAULT_HISTORY_TOKENS: usize = 512;

/// Label names read as "take a screenshot" (case-insensitive).
const POSITIVE_LABELS: [&str; 8] = [
    "yes",
    "screenshot",
    "take_screenshot",
    "tool",
    "true",
    "positive",
    "1",
    "label_1",
];

/// One classification.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolVerdict {
    /// Probability of the positive ("take a screenshot") label.
    pub yes_probability: f32,
    /// The positive label's name.
    pub yes_label: String,
    /// The most probable other label and its probability.
    pub no_label: String,
    /// Tokens the classifier saw (special tokens included).
    pub tokens: usize,
}

impl ToolVerdict {
    /// The decision against a threshold.
    pub fn is_yes(&self, threshold: f32) -> bool {
        self.yes_probability >= threshold
    }
}

/// The classifier with its tokenizer and budget.
pub struct ToolModel {
    classifier: SequenceClassifier,
    tokenizer: Tokenizer,
    positive: usize,
    max_tokens: usize,
    dir: PathBuf,
}

impl std::fmt::Debug for ToolModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolModel")
            .field("dir", &self.dir)
            .field("classifier", &self.classifier)
            .field("max_tokens", &self.max_tokens)
            .finish()
    }
}

fn model_max_length(dir: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let n = v.get("model_max_length")?.as_f64()?;
    // transformers writes 1e30 for "no limit".
    (1.0..1e9).contains(&n).then_some(n as usize)
}

impl ToolModel {
    /// Loads a Hugging Face sequence-classification folder. `history_tokens` (`TOOL_HISTORY_TOKENS`)
    /// overrides the model's own budget (tokenizer `model_max_length`, else its position table,
    /// else 512); it is capped at what the position table allows.
    pub fn load(dir: &Path, history_tokens: Option<usize>) -> Result<Self, ToolError> {
        let classifier = SequenceClassifier::load(dir)?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| {
            ToolError::Tokenizer(format!("{}: {e}", dir.join("tokenizer.json").display()))
        })?;
        let limit = classifier.config().max_tokens();
        let own = model_max_length(dir)
            .into_iter()
            .chain(limit)
            .min()
            .unwrap_or(DEFAULT_HISTORY_TOKENS);
        let mut max_tokens = history_tokens.unwrap_or(own).max(4);
        if let Some(limit) = limit {
            max_tokens = max_tokens.min(limit);
        }
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Left,
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| ToolError::Tokenizer(e.to_string()))?;
        let labels = classifier.labels();
        let positive = labels
            .iter()
            .position(|l| POSITIVE_LABELS.contains(&l.to_ascii_lowercase().as_str()))
            .unwrap_or(1);
        Ok(Self {
            classifier,
            tokenizer,
            positive,
            max_tokens,
            dir: dir.to_owned(),
        })
    }

    /// The folder it came from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Token budget of the input (special tokens included).
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The classifier.
    pub fn classifier(&self) -> &SequenceClassifier {
        &self.classifier
    }

    /// Token ids of a context, keeping its newest tokens (truncation from the left).
    pub fn encode(&self, context: &str) -> Result<Vec<u32>, ToolError> {
        // Tokenizing a huge context only to drop most of it is wasted work: keep a tail that
        // surely holds more than `max_tokens` tokens.
        let keep = self.max_tokens.saturating_mul(16);
        let tail = if context.len() > keep {
            let mut cut = context.len() - keep;
            while !context.is_char_boundary(cut) {
                cut += 1;
            }
            &context[cut..]
        } else {
            context
        };
        let enc = self
            .tokenizer
            .encode(tail, true)
            .map_err(|e| ToolError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Classifies contexts in one batch.
    pub fn classify(&self, contexts: &[&str]) -> Result<Vec<ToolVerdict>, ToolError> {
        let ids = contexts
            .iter()
            .map(|c| self.encode(c))
            .collect::<Result<Vec<_>, _>>()?;
        self.classify_ids(&ids)
    }

    /// Classifies turns in one batch.
    pub fn classify_inputs(&self, inputs: &[&ToolInput]) -> Result<Vec<ToolVerdict>, ToolError> {
        let contexts: Vec<String> = inputs.iter().map(|i| i.context()).collect();
        let refs: Vec<&str> = contexts.iter().map(String::as_str).collect();
        self.classify(&refs)
    }

    /// Classifies already-encoded contexts in one batch.
    pub fn classify_ids(&self, ids: &[Vec<u32>]) -> Result<Vec<ToolVerdict>, ToolError> {
        let logits = self.classifier.logits(ids)?;
        let labels = self.classifier.labels();
        Ok(logits
            .iter()
            .zip(ids)
            .map(|(row, seq)| {
                let p = softmax(row);
                let (no_idx, _) = p
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != self.positive)
                    .fold(
                        (0, f32::MIN),
                        |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
                    );
                ToolVerdict {
                    yes_probability: p.get(self.positive).copied().unwrap_or(0.0),
                    yes_label: labels[self.positive].clone(),
                    no_label: labels[no_idx].clone(),
                    tokens: seq.len(),
                }
            })
            .collect())
    }
}

/// What the classifier sees of one turn: the session's earlier user utterances (oldest first)
/// and the current one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolInput {
    /// Earlier user utterances, oldest first.
    pub history: Vec<String>,
    /// The current utterance.
    pub utterance: String,
}

impl ToolInput {
    /// An input of a lone utterance.
    pub fn utterance(text: impl Into<String>) -> Self {
        Self {
            history: Vec::new(),
            utterance: text.into(),
        }
    }

    /// The model's input text (see [`user_context`]).
    pub fn context(&self) -> String {
        user_context(self.history.iter().map(String::as_str), &self.utterance)
    }
}

/// The user-side context of a turn: earlier user utterances, oldest first, then the current one,
/// joined with newlines (the training script builds the same string).
pub fn user_context<'a>(earlier: impl IntoIterator<Item = &'a str>, utterance: &str) -> String {
    let mut out = String::new();
    for u in earlier {
        let u = u.trim();
        if !u.is_empty() {
            out.push_str(u);
            out.push('\n');
        }
    }
    out.push_str(utterance.trim());
    out
}
