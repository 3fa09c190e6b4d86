//! A tool model: tokenizer + classifier + the yes/no reading of its labels.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::{PostProcessor, Tokenizer, TruncationDirection};

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

/// Token ids of one turn as the model reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids, special tokens included.
    pub ids: Vec<u32>,
    /// Segment (token type) ids: 0 for `[CLS] history [SEP]`, 1 for `utterance [SEP]`.
    pub type_ids: Vec<u32>,
}

/// The classifier with its tokenizer, input format and budget.
pub struct ToolModel {
    classifier: SequenceClassifier,
    tokenizer: Tokenizer,
    positive: usize,
    max_tokens: usize,
    /// Earlier turns kept (`yap_history_turns`); `None` keeps all that fit.
    history_turns: Option<usize>,
    /// What joins the earlier turns (`yap_history_join`).
    history_join: String,
    /// Special tokens the tokenizer adds to a pair (3 for BERT).
    pair_specials: usize,
    /// The decision threshold the model was tuned for (`yap_threshold`).
    threshold: Option<f32>,
    dir: PathBuf,
}

impl std::fmt::Debug for ToolModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolModel")
            .field("dir", &self.dir)
            .field("classifier", &self.classifier)
            .field("max_tokens", &self.max_tokens)
            .field("history_turns", &self.history_turns)
            .field("threshold", &self.threshold)
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
    /// else 512); it is capped at what the position table allows. Yap's own models also say in
    /// config.json how many earlier turns they read (`yap_history_turns`), how those are joined
    /// (`yap_history_join`) and their tuned threshold (`yap_threshold`).
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
        // Truncation is done per segment in `encode` (as the training script does it).
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| ToolError::Tokenizer(e.to_string()))?;
        let pair_specials = tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(true));
        let labels = classifier.labels();
        let positive = labels
            .iter()
            .position(|l| POSITIVE_LABELS.contains(&l.to_ascii_lowercase().as_str()))
            .unwrap_or(1);
        let cfg = classifier.config();
        let history_turns = cfg.usize("yap_history_turns");
        let history_join = cfg.str("yap_history_join").unwrap_or("\n").to_owned();
        let threshold = cfg
            .f64("yap_threshold")
            .filter(|t| (0.0..=1.0).contains(t))
            .map(|t| t as f32);
        Ok(Self {
            classifier,
            tokenizer,
            positive,
            max_tokens,
            history_turns,
            history_join,
            pair_specials,
            threshold,
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

    /// Earlier user turns the model reads (`None`: as many as fit the budget).
    pub fn history_turns(&self) -> Option<usize> {
        self.history_turns
    }

    /// The decision threshold the model was tuned for (`yap_threshold` in its config.json).
    pub fn tuned_threshold(&self) -> Option<f32> {
        self.threshold
    }

    /// The classifier.
    pub fn classifier(&self) -> &SequenceClassifier {
        &self.classifier
    }

    fn tokenize(&self, text: &str) -> Result<tokenizers::Encoding, ToolError> {
        self.tokenizer
            .encode(text, false)
            .map_err(|e| ToolError::Tokenizer(e.to_string()))
    }

    /// The model input of one turn, as `tools/tool-model/common.py` builds it for training: the
    /// tokenizer's pair encoding with segment A = the last `history_turns` earlier turns joined
    /// (its newest tokens kept: cut from the left) and segment B = the current utterance (cut
    /// from the right only when it alone exceeds the budget), e.g. `[CLS] A [SEP] B [SEP]` with
    /// type ids 0 then 1. No history gives `[CLS] [SEP] B [SEP]`.
    pub fn encode(&self, input: &ToolInput) -> Result<Encoded, ToolError> {
        let turns: Vec<&str> = input
            .history
            .iter()
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
            .collect();
        let keep = self.history_turns.unwrap_or(turns.len()).min(turns.len());
        let history = turns[turns.len() - keep..].join(self.history_join.as_str());
        // Tokenizing a huge history only to drop most of it is wasted work: keep a tail that
        // surely holds more than `max_tokens` tokens.
        let tail_bytes = self.max_tokens.saturating_mul(32);
        let history = if history.len() > tail_bytes {
            let mut cut = history.len() - tail_bytes;
            while !history.is_char_boundary(cut) {
                cut += 1;
            }
            &history[cut..]
        } else {
            history.as_str()
        };
        let mut a = self.tokenize(history)?;
        let mut b = self.tokenize(input.utterance.trim())?;
        let budget = self.max_tokens.saturating_sub(self.pair_specials).max(1);
        if b.len() > budget {
            b.truncate(budget, 0, TruncationDirection::Right);
        }
        let room = budget - b.len();
        if a.len() > room {
            a.truncate(room, 0, TruncationDirection::Left);
        }
        let enc = self
            .tokenizer
            .post_process(a, Some(b), true)
            .map_err(|e| ToolError::Tokenizer(e.to_string()))?;
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
        })
    }

    /// Classifies lone utterances (no history) in one batch.
    pub fn classify(&self, utterances: &[&str]) -> Result<Vec<ToolVerdict>, ToolError> {
        let inputs: Vec<ToolInput> = utterances
            .iter()
            .map(|u| ToolInput::utterance(*u))
            .collect();
        let refs: Vec<&ToolInput> = inputs.iter().collect();
        self.classify_inputs(&refs)
    }

    /// Classifies turns in one batch.
    pub fn classify_inputs(&self, inputs: &[&ToolInput]) -> Result<Vec<ToolVerdict>, ToolError> {
        let encoded = inputs
            .iter()
            .map(|i| self.encode(i))
            .collect::<Result<Vec<_>, _>>()?;
        self.classify_encoded(&encoded)
    }

    /// Logits of already-encoded turns, in one batch.
    pub fn logits(&self, encoded: &[Encoded]) -> Result<Vec<Vec<f32>>, ToolError> {
        let ids: Vec<Vec<u32>> = encoded.iter().map(|e| e.ids.clone()).collect();
        let types: Vec<Vec<u32>> = encoded.iter().map(|e| e.type_ids.clone()).collect();
        self.classifier.logits_typed(&ids, Some(types.as_slice()))
    }

    /// Classifies already-encoded turns in one batch.
    pub fn classify_encoded(&self, encoded: &[Encoded]) -> Result<Vec<ToolVerdict>, ToolError> {
        let logits = self.logits(encoded)?;
        let labels = self.classifier.labels();
        Ok(logits
            .iter()
            .zip(encoded)
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
                    tokens: seq.ids.len(),
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

    /// The turn as one text, earlier utterances first (for logs and display; the model itself
    /// reads the pair encoding of [`ToolModel::encode`]).
    pub fn context(&self) -> String {
        user_context(self.history.iter().map(String::as_str), &self.utterance)
    }
}

/// The user-side context of a turn as one text: earlier user utterances, oldest first, then the
/// current one, joined with newlines.
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
