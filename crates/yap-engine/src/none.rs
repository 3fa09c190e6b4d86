//! The engine of a deployment without a chat model (`DEPLOY_MODE=tool`): always ready, never
//! generates. Text helpers work on whitespace-separated words.

use crate::{ChatEngine, ChatMessage, EngineError, EngineInfo, GenerateRequest, GenerationStream};

/// No chat model deployed.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoChatEngine;

impl ChatEngine for NoChatEngine {
    fn info(&self) -> EngineInfo {
        EngineInfo {
            kind: "none".into(),
            model: "none (DEPLOY_MODE=tool)".into(),
            context_tokens: 0,
            stop_sequences: Vec::new(),
        }
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn render(&self, messages: &[ChatMessage]) -> Result<String, EngineError> {
        Ok(messages
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n"))
    }

    fn count_tokens(&self, text: &str) -> usize {
        text.split_whitespace().count()
    }

    fn truncate_tokens(&self, text: &str, max_tokens: usize, keep_start: bool) -> String {
        let words: Vec<&str> = text.split_whitespace().collect();
        if words.len() <= max_tokens {
            return text.to_owned();
        }
        let kept = if keep_start {
            &words[..max_tokens]
        } else {
            &words[words.len() - max_tokens..]
        };
        kept.join(" ")
    }

    fn generate(&self, _request: GenerateRequest) -> Result<GenerationStream, EngineError> {
        Err(EngineError::Unavailable(
            "no chat model is deployed (DEPLOY_MODE=tool)".into(),
        ))
    }

    fn release(&self, _cache_key: &str) {}
}
