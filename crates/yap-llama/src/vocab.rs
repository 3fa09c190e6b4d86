//! A GGUF model's tokenizer and chat-template facts, for prompt formatting.

use std::path::Path;
use std::sync::Arc;

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;
use yap_engine_api::{ModelText, TemplateSource, Tokenizer};

use crate::LoadError;

/// llama.cpp's tokenizer of a loaded model.
pub struct LlamaTokenizer {
    model: Arc<LlamaModel>,
}

impl std::fmt::Debug for LlamaTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaTokenizer").finish_non_exhaustive()
    }
}

impl Tokenizer for LlamaTokenizer {
    fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        self.model
            .vocab()
            .tokenize(text.as_bytes(), false, parse_special)
            .into_iter()
            .map(|t| t.0 as u32)
            .collect()
    }

    fn decode(&self, ids: &[u32]) -> String {
        let tokens: Vec<LlamaToken> = ids.iter().map(|&i| LlamaToken(i as i32)).collect();
        String::from_utf8_lossy(&self.model.vocab().detokenize(&tokens, false, false)).into_owned()
    }

    fn bos_to_add(&self) -> Option<u32> {
        let vocab = self.model.vocab();
        vocab.should_add_bos().then(|| vocab.bos().0 as u32)
    }

    fn special_tokens(&self) -> Vec<(String, u32)> {
        let vocab = self.model.vocab();
        vocab
            .tokens()
            .filter(|&t| vocab.is_control(t))
            .map(|t| {
                let text =
                    String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
                (text, t.0 as u32)
            })
            .collect()
    }
}

/// The tokenizer and template facts of a loaded model.
pub fn model_text(model: Arc<LlamaModel>) -> ModelText {
    let vocab = model.vocab();
    let piece =
        |t: LlamaToken| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
    let bos = piece(vocab.bos());
    let eos = piece(vocab.eos());
    let name = model
        .meta_val_str("general.name")
        .or_else(|_| model.meta_val_str("general.basename"))
        .unwrap_or_default();
    let template = TemplateSource {
        source: model.meta_val_str("tokenizer.chat_template").ok(),
        arch: model
            .meta_val_str("general.architecture")
            .unwrap_or_default(),
        bos,
        eos,
    };
    ModelText {
        name,
        tokenizer: Arc::new(LlamaTokenizer { model }),
        template,
    }
}

/// Loads only the vocabulary and metadata of a GGUF file (for remote engines serving it).
pub fn load_model_text(path: &Path) -> Result<ModelText, LoadError> {
    let err = |reason: String| LoadError {
        path: path.display().to_string(),
        reason,
    };
    let backend = crate::backend()?;
    if !path.is_file() {
        return Err(err("no such file".into()));
    }
    let params = LlamaModelParams::default().with_vocab_only(true);
    let model =
        LlamaModel::load_from_file(backend, path, &params).map_err(|e| err(e.to_string()))?;
    Ok(model_text(Arc::new(model)))
}
