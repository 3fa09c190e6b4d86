//! Token budgets, checked in one place: persona, history, utterance, and the whole prompt plus
//! the reply budget against the context.
//!
//! Invariants: a fitted prompt has at most `chat_max_len - chat_max_out` tokens; history is
//! dropped from the oldest end only (in chunks, so what stays is byte-stable for the prefix
//! cache); the utterance keeps its beginning.

use super::{ChatMessage, Prompt, PromptError, PromptFormat, Role, normalize};
use crate::history;

/// The budgets (see `CoreConfig` for the env names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Prompt + reply tokens.
    pub chat_max_len: usize,
    /// Reply tokens.
    pub chat_max_out: usize,
    /// Persona tokens.
    pub persona_max_tokens: usize,
    /// History trim threshold.
    pub history_max_tokens: usize,
    /// Percent of the threshold kept after a trim.
    pub history_retention_pct: usize,
    /// Utterance tokens kept.
    pub user_utt_max_tokens: usize,
}

/// Why a prompt cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// The persona alone exceeds `CHAT_PROMPT_MAX_TOKENS`.
    #[error("persona has {tokens} tokens; the limit is {limit} (CHAT_PROMPT_MAX_TOKENS)")]
    PersonaTooLong {
        /// Its tokens.
        tokens: usize,
        /// The limit.
        limit: usize,
    },
    /// Even without history the prompt and reply exceed `CHAT_MAX_LEN`.
    #[error("prompt of {tokens} tokens plus {reply} reply tokens exceeds CHAT_MAX_LEN={limit}")]
    PromptTooLong {
        /// Prompt tokens.
        tokens: usize,
        /// Reply budget.
        reply: usize,
        /// The context.
        limit: usize,
    },
    /// The template failed.
    #[error(transparent)]
    Prompt(#[from] PromptError),
}

/// A prompt that fits, and the history it kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fitted {
    /// The prompt.
    pub prompt: Prompt,
    /// The history the prompt holds (the session's history after trimming).
    pub history: Vec<ChatMessage>,
    /// Whether history was dropped.
    pub trimmed: bool,
}

impl Budget {
    /// Checks a persona against `CHAT_PROMPT_MAX_TOKENS`.
    pub fn check_persona(&self, format: &PromptFormat, persona: &str) -> Result<(), BudgetError> {
        let tokens = format.count(persona);
        if tokens > self.persona_max_tokens {
            return Err(BudgetError::PersonaTooLong {
                tokens,
                limit: self.persona_max_tokens,
            });
        }
        Ok(())
    }

    /// Trims history in chunks to the history budget; returns messages dropped.
    pub fn trim_history(
        &self,
        history: &mut Vec<ChatMessage>,
        count: impl Fn(&str) -> usize,
    ) -> usize {
        history::trim(
            history,
            count,
            self.history_max_tokens,
            self.history_retention_pct,
        )
    }

    /// The utterance cut to `USER_UTT_MAX_TOKENS` (beginning kept).
    pub fn cut_utterance(&self, format: &PromptFormat, utterance: &str) -> String {
        format.truncate(utterance.trim(), self.user_utt_max_tokens, true)
    }

    /// Builds the prompt of a turn: persona, history (trimmed until it fits), utterance.
    pub fn fit(
        &self,
        format: &PromptFormat,
        persona: &str,
        mut history: Vec<ChatMessage>,
        utterance: &str,
    ) -> Result<Fitted, BudgetError> {
        self.check_persona(format, persona)?;
        let mut trimmed = self.trim_history(&mut history, |t| format.count(t)) > 0;
        let limit = self.chat_max_len.saturating_sub(self.chat_max_out);
        loop {
            let mut messages = Vec::with_capacity(history.len() + 2);
            messages.push(ChatMessage::new(Role::System, persona));
            messages.extend(history.iter().cloned());
            messages.push(ChatMessage::new(Role::User, utterance));
            let prompt = format.encode_chat(&normalize(messages))?;
            let n = prompt.ids.len();
            if n <= limit {
                return Ok(Fitted {
                    prompt,
                    history,
                    trimmed,
                });
            }
            if history.is_empty() {
                return Err(BudgetError::PromptTooLong {
                    tokens: n,
                    reply: self.chat_max_out,
                    limit: self.chat_max_len,
                });
            }
            // Drop the oldest messages that cover the overflow (at least one exchange), so one
            // more render usually fits. A message costs its text plus the template's share.
            let counts: Vec<usize> = history.iter().map(|m| format.count(&m.content)).collect();
            let text: usize =
                counts.iter().sum::<usize>() + format.count(persona) + format.count(utterance);
            let overhead = n.saturating_sub(text) / (history.len() + 2);
            let mut over = n - limit;
            let mut drop = 0;
            while drop < history.len() && (drop < 2 || over > 0) {
                over = over.saturating_sub(counts[drop] + overhead);
                drop += 1;
            }
            while drop < history.len() && history[drop].role == Role::Assistant {
                drop += 1;
            }
            history.drain(..drop);
            trimmed = true;
        }
    }

    /// Token ids of the persona + history prefix of the next prompt (for prefix warming).
    pub fn prefix(
        &self,
        format: &PromptFormat,
        persona: &str,
        history: &[ChatMessage],
    ) -> Result<Vec<u32>, BudgetError> {
        const MARK: &str = "\u{F8F2}";
        let mut messages = vec![ChatMessage::new(Role::System, persona)];
        messages.extend(history.iter().cloned());
        messages.push(ChatMessage::new(Role::User, MARK));
        Ok(format.encode_chat_prefix(&normalize(messages), MARK)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use yap_engine_api::{ModelText, TemplateSource, Tokenizer};

    struct CharTok;
    impl Tokenizer for CharTok {
        fn encode(&self, text: &str, _parse_special: bool) -> Vec<u32> {
            text.chars().map(|c| c as u32).collect()
        }
        fn decode(&self, ids: &[u32]) -> String {
            ids.iter().filter_map(|&i| char::from_u32(i)).collect()
        }
        fn bos_to_add(&self) -> Option<u32> {
            None
        }
        fn special_tokens(&self) -> Vec<(String, u32)> {
            Vec::new()
        }
    }

    fn format() -> PromptFormat {
        PromptFormat::new(ModelText {
            name: "x-instruct".into(),
            tokenizer: Arc::new(CharTok),
            template: TemplateSource {
                source: Some(
                    "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}".into(),
                ),
                ..TemplateSource::default()
            },
        })
        .unwrap()
    }

    fn budget(len: usize) -> Budget {
        Budget {
            chat_max_len: len,
            chat_max_out: 10,
            persona_max_tokens: 20,
            history_max_tokens: 1000,
            history_retention_pct: 66,
            user_utt_max_tokens: 8,
        }
    }

    fn hist(n: usize) -> Vec<ChatMessage> {
        (0..n)
            .map(|i| {
                let role = if i % 2 == 0 {
                    Role::User
                } else {
                    Role::Assistant
                };
                ChatMessage::new(role, format!("message {i:02}"))
            })
            .collect()
    }

    #[test]
    fn fits_by_dropping_oldest_history_and_never_starts_with_the_assistant() {
        let f = format();
        let b = budget(100);
        let out = b.fit(&f, "persona", hist(10), "hi").unwrap();
        assert!(out.trimmed);
        assert!(out.prompt.ids.len() <= 90);
        assert_eq!(out.history.first().map(|m| m.role), Some(Role::User));
        assert_eq!(
            out.history.last().map(|m| m.content.as_str()),
            Some("message 09")
        );
        // Roomy budget: nothing dropped.
        let out = budget(10_000).fit(&f, "persona", hist(10), "hi").unwrap();
        assert!(!out.trimmed);
        assert_eq!(out.history.len(), 10);
    }

    #[test]
    fn persona_and_prompt_limits_are_typed() {
        let f = format();
        let b = budget(30);
        assert!(matches!(
            b.fit(&f, &"p".repeat(21), Vec::new(), "hi"),
            Err(BudgetError::PersonaTooLong {
                tokens: 21,
                limit: 20
            })
        ));
        assert!(matches!(
            b.fit(&f, "persona persona", Vec::new(), "hello there"),
            Err(BudgetError::PromptTooLong { .. })
        ));
        assert_eq!(b.cut_utterance(&f, "  abcdefghijkl "), "abcdefgh");
    }

    #[test]
    fn prefix_is_the_start_of_the_next_prompt() {
        let f = format();
        let b = budget(10_000);
        let h = hist(2);
        let pre = b.prefix(&f, "persona", &h).unwrap();
        let full = b.fit(&f, "persona", h, "next").unwrap();
        assert!(full.prompt.ids.starts_with(&pre), "{pre:?}");
        assert!(pre.len() < full.prompt.ids.len());
    }
}
