//! A Hugging Face folder's tokenizer and chat template (`tokenizer.json`,
//! `tokenizer_config.json`, `config.json`), as vLLM and TensorRT-LLM deployments have them.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;
use yap_engine_api::{ModelText, TemplateSource, Tokenizer};

use super::PromptError;

/// `tokenizers`' tokenizer of an HF folder.
pub struct HfTokenizer {
    /// Splits special-token text into special tokens.
    special: tokenizers::Tokenizer,
    /// Treats special-token text as plain text.
    plain: tokenizers::Tokenizer,
    bos: Option<u32>,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer").finish_non_exhaustive()
    }
}

impl Tokenizer for HfTokenizer {
    fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let t = if parse_special {
            &self.special
        } else {
            &self.plain
        };
        t.encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default()
    }

    fn decode(&self, ids: &[u32]) -> String {
        self.special.decode(ids, true).unwrap_or_default()
    }

    fn bos_to_add(&self) -> Option<u32> {
        self.bos
    }

    fn special_tokens(&self) -> Vec<(String, u32)> {
        self.special
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, t)| (t.content, id))
            .collect()
    }
}

/// `"<s>"` or `{"content": "<s>", ...}` → `<s>`.
fn token_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    }
}

fn read_json(dir: &Path, name: &str) -> Value {
    std::fs::read_to_string(dir.join(name))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

/// The template of `tokenizer_config.json` (a string, or a list of named templates), else
/// `chat_template.jinja`.
fn chat_template(dir: &Path, tcfg: &Value) -> Option<String> {
    match tcfg.get("chat_template") {
        Some(Value::String(t)) => Some(t.clone()),
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .or_else(|| list.first())
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
    }
}

/// Loads an HF folder's tokenizer and template facts.
pub fn load(dir: &Path) -> Result<ModelText, PromptError> {
    let err = |reason: String| PromptError::Load {
        path: dir.display().to_string(),
        reason,
    };
    let special = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
        .map_err(|e| err(format!("tokenizer.json: {e}")))?;
    let mut plain = special.clone();
    plain.set_encode_special_tokens(true);
    let tcfg = read_json(dir, "tokenizer_config.json");
    let cfg = read_json(dir, "config.json");
    let bos_text = token_text(tcfg.get("bos_token"));
    let add_bos = tcfg.get("add_bos_token").and_then(Value::as_bool) == Some(true);
    let bos = add_bos.then(|| special.token_to_id(&bos_text)).flatten();
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(ModelText {
        name,
        tokenizer: Arc::new(HfTokenizer {
            special,
            plain,
            bos,
        }),
        template: TemplateSource {
            source: chat_template(dir, &tcfg),
            arch: cfg
                .get("model_type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            bos: bos_text,
            eos: token_text(tcfg.get("eos_token")),
        },
    })
}
