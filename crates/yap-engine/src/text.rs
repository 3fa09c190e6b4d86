//! A model's tokenizer and chat template, for prompt rendering and token budgets: from a GGUF
//! file (llama.cpp's vocabulary) or a Hugging Face folder (`tokenizer.json` and
//! `tokenizer_config.json`, as vLLM and TensorRT-LLM deployments have them).

use std::path::Path;
use std::sync::Arc;

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;
use serde_json::Value;
use tracing::info;

use crate::template::{ChatTemplate, builtin_for, looks_instruct};
use crate::{ChatMessage, EngineError};

enum Vocab {
    Llama(Arc<LlamaModel>),
    Hf(Box<tokenizers::Tokenizer>),
}

/// Tokenizer + chat template of a model.
pub struct TextModel {
    vocab: Vocab,
    template: ChatTemplate,
    /// Stop strings of the prompt format (built-in templates only).
    pub stops: Vec<String>,
    /// The model's name.
    pub name: String,
}

impl std::fmt::Debug for TextModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextModel")
            .field("name", &self.name)
            .finish()
    }
}

fn load_err(path: &Path, reason: impl Into<String>) -> EngineError {
    EngineError::Load {
        path: path.display().to_string(),
        reason: reason.into(),
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

impl TextModel {
    /// Loads a GGUF file (vocabulary only) or an HF folder.
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        if path.is_dir() {
            Self::load_hf(path)
        } else {
            Self::load_gguf_vocab(path)
        }
    }

    /// Loads only the vocabulary and metadata of a GGUF file.
    pub fn load_gguf_vocab(path: &Path) -> Result<Self, EngineError> {
        let backend = crate::llama::backend()?;
        if !path.is_file() {
            return Err(load_err(path, "no such file"));
        }
        let params = LlamaModelParams::default().with_vocab_only(true);
        let model = LlamaModel::load_from_file(backend, path, &params)
            .map_err(|e| load_err(path, e.to_string()))?;
        Self::from_llama(Arc::new(model))
    }

    /// Loads `tokenizer.json` and the chat template of `tokenizer_config.json` from a folder.
    pub fn load_hf(dir: &Path) -> Result<Self, EngineError> {
        let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| load_err(dir, format!("tokenizer.json: {e}")))?;
        let read_json = |name: &str| -> Value {
            std::fs::read_to_string(dir.join(name))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or(Value::Null)
        };
        let tcfg = read_json("tokenizer_config.json");
        let cfg = read_json("config.json");
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let template = match tcfg.get("chat_template") {
            Some(Value::String(t)) => Some(t.clone()),
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .or_else(|| list.first())
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
        };
        let (source, stops) = match template {
            Some(t) => (t, Vec::new()),
            None => {
                let arch = cfg
                    .get("model_type")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let (t, stops) = builtin_for(arch, looks_instruct(&name));
                info!(model = %name, arch = %arch, "model has no chat template; using a built-in one");
                (t.to_owned(), stops.iter().map(|s| s.to_string()).collect())
            }
        };
        let template = ChatTemplate::new(
            &source,
            &token_text(tcfg.get("bos_token")),
            &token_text(tcfg.get("eos_token")),
        )?;
        Ok(Self {
            vocab: Vocab::Hf(Box::new(tokenizer)),
            template,
            stops,
            name,
        })
    }

    /// Wraps a loaded llama.cpp model.
    pub(crate) fn from_llama(model: Arc<LlamaModel>) -> Result<Self, EngineError> {
        let vocab = model.vocab();
        let piece = |t: LlamaToken| {
            String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned()
        };
        let bos = piece(vocab.bos());
        let eos = piece(vocab.eos());
        let name = model
            .meta_val_str("general.name")
            .or_else(|_| model.meta_val_str("general.basename"))
            .unwrap_or_default();
        let (source, stops) = match model.meta_val_str("tokenizer.chat_template") {
            Ok(t) => (t, Vec::new()),
            Err(_) => {
                let arch = model
                    .meta_val_str("general.architecture")
                    .unwrap_or_default();
                let (t, stops) = builtin_for(&arch, looks_instruct(&name));
                info!(model = %name, arch = %arch, "model has no chat template; using a built-in one");
                (t.to_owned(), stops.iter().map(|s| s.to_string()).collect())
            }
        };
        let template = ChatTemplate::new(&source, &bos, &eos)?;
        Ok(Self {
            vocab: Vocab::Llama(model),
            template,
            stops,
            name,
        })
    }

    /// Token ids (special tokens in the text parsed as such when `special`).
    pub fn tokenize(&self, text: &str, special: bool) -> Vec<LlamaToken> {
        match &self.vocab {
            Vocab::Llama(m) => m.vocab().tokenize(text.as_bytes(), false, special),
            Vocab::Hf(t) => t
                .encode(text, false)
                .map(|e| e.get_ids().iter().map(|&i| LlamaToken(i as i32)).collect())
                .unwrap_or_default(),
        }
    }

    fn detokenize(&self, tokens: &[LlamaToken]) -> String {
        match &self.vocab {
            Vocab::Llama(m) => {
                String::from_utf8_lossy(&m.vocab().detokenize(tokens, false, false)).into_owned()
            }
            Vocab::Hf(t) => {
                let ids: Vec<u32> = tokens.iter().map(|t| t.0 as u32).collect();
                t.decode(&ids, false).unwrap_or_default()
            }
        }
    }

    /// Renders messages with the generation prompt appended.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, EngineError> {
        self.template.render(messages, true)
    }

    /// Tokens of plain text.
    pub fn count_tokens(&self, text: &str) -> usize {
        self.tokenize(text, false).len()
    }

    /// Prompt tokens of rendered text (special tokens parsed).
    pub fn count_prompt_tokens(&self, text: &str) -> usize {
        self.tokenize(text, true).len()
    }

    /// Cuts text to `max_tokens`, keeping the start or the end.
    pub fn truncate_tokens(&self, text: &str, max_tokens: usize, keep_start: bool) -> String {
        let tokens = self.tokenize(text, false);
        if tokens.len() <= max_tokens {
            return text.to_owned();
        }
        let kept = if keep_start {
            &tokens[..max_tokens]
        } else {
            &tokens[tokens.len() - max_tokens..]
        };
        self.detokenize(kept)
    }
}
