//! The tokenizer an engine's model uses, and where its chat template comes from.

use std::sync::Arc;

/// A model's tokenizer. Implementations never add BOS/EOS on their own.
pub trait Tokenizer: Send + Sync {
    /// Token ids of `text`; with `parse_special`, special-token text (`<|im_start|>`) becomes the
    /// special token, otherwise it is plain text.
    fn encode(&self, text: &str, parse_special: bool) -> Vec<u32>;
    /// Text of token ids (special tokens rendered as nothing).
    fn decode(&self, ids: &[u32]) -> String;
    /// The BOS id when the model expects every prompt to start with it and the chat template
    /// may not write it.
    fn bos_to_add(&self) -> Option<u32>;
    /// Text and id of every special (control) token: what `encode(.., true)` turns into one
    /// token and `encode(.., false)` leaves as text.
    fn special_tokens(&self) -> Vec<(String, u32)>;
}

/// A model's own chat template (when it carries one) and the facts needed to pick a built-in one
/// when it does not.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TemplateSource {
    /// The model's Jinja template, when it carries one.
    pub source: Option<String>,
    /// The architecture (`llama`, `gemma3`, `qwen2`, ...).
    pub arch: String,
    /// Text of the BOS token (`bos_token` in the template).
    pub bos: String,
    /// Text of the EOS token (`eos_token` in the template).
    pub eos: String,
}

/// What prompt formatting needs from a model: its tokenizer and chat template.
#[derive(Clone)]
pub struct ModelText {
    /// The model's name.
    pub name: String,
    /// The tokenizer.
    pub tokenizer: Arc<dyn Tokenizer>,
    /// The chat template.
    pub template: TemplateSource,
}

impl std::fmt::Debug for ModelText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelText")
            .field("name", &self.name)
            .field("template", &self.template)
            .finish_non_exhaustive()
    }
}
