//! Chat templates: the model's own Jinja template (from GGUF `tokenizer.chat_template` or an HF
//! `tokenizer_config.json`) rendered with minijinja and its Python-compatibility layer.

use minijinja::{Environment, Error, ErrorKind, context};
use serde::Serialize;

use super::PromptError;

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The persona / system prompt.
    System,
    /// The user.
    User,
    /// The companion.
    Assistant,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
}

impl ChatMessage {
    /// A message of the given role.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// ChatML, used when a model carries no template of its own.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Gemma's chat template (Gemma 2/3), for GGUF files that carry no template of their own.
pub const GEMMA_TEMPLATE: &str = r#"{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
{%- set loop_messages = messages[1:] -%}
{%- else -%}
{%- set first_user_prefix = "" -%}
{%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
{{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
{%- endif -%}
{%- if message['role'] == 'assistant' -%}{%- set role = "model" -%}{%- else -%}{%- set role = message['role'] -%}{%- endif -%}
{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"#;

/// A plain transcript, for base (not instruction-tuned) models that carry no chat template:
/// such models continue a `User:` / `Yap:` dialogue far better than unseen turn markers.
pub const TRANSCRIPT_TEMPLATE: &str = r#"{{ bos_token }}
{%- for m in messages -%}
{%- if m['role'] == 'system' -%}{{ (m['content'] | trim) + '\n\nUser: Who was Albert Einstein?\nAssistant: Albert Einstein was a German-born physicist, famous for the theory of relativity.\nUser: I had a long day at work.\nAssistant: Oh no, that sounds exhausting. Do you want to talk about it?\n' }}
{%- elif m['role'] == 'user' -%}{{ 'User: ' + (m['content'] | trim) + '\n' }}
{%- else -%}{{ 'Assistant: ' + (m['content'] | trim) + '\n' }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"#;

/// Stop strings of [`TRANSCRIPT_TEMPLATE`]: the next speaker's line, or a paragraph break.
pub const TRANSCRIPT_STOPS: &[&str] = &["\nUser:", "\nAssistant:", "\n\n"];

/// Picks the template (and its stop strings) for a model without an embedded template.
/// `instruct` tells whether the model was instruction-tuned (e.g. a `-it` / `instruct` name).
pub fn builtin_for(arch: &str, instruct: bool) -> (&'static str, &'static [&'static str]) {
    if !instruct {
        (TRANSCRIPT_TEMPLATE, TRANSCRIPT_STOPS)
    } else if arch.starts_with("gemma") {
        (GEMMA_TEMPLATE, &[])
    } else {
        (CHATML_TEMPLATE, &[])
    }
}

/// Whether a model name looks instruction-tuned.
pub fn looks_instruct(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["instruct", "-it", "_it", " it", "chat"]
        .iter()
        .any(|k| n.contains(k) || n.ends_with(k.trim()))
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

fn raise_exception(msg: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

fn strftime_now(_format: String) -> String {
    // Templates use this for a "today's date" line; a fixed neutral value keeps prompts
    // byte-stable (and so prefix-cacheable) across days.
    String::new()
}

impl ChatTemplate {
    /// Compiles a template source with the model's BOS/EOS token texts.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, PromptError> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_template_owned("chat", source.to_owned())
            .map_err(|e| PromptError::Template(e.to_string()))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// Renders messages; `add_generation_prompt` appends the assistant header.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, PromptError> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| PromptError::Template(e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| PromptError::Template(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders() {
        let t = ChatTemplate::new(CHATML_TEMPLATE, "", "<|im_end|>").unwrap();
        let out = t
            .render(
                &[
                    ChatMessage::new(Role::System, "Be kind."),
                    ChatMessage::new(Role::User, "Hi"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    /// Qwen2.5's own template (from the default model's GGUF): the persona is the system
    /// message, so the template's built-in "You are Qwen, created by Alibaba Cloud" default
    /// never appears — also not for an empty persona.
    #[test]
    fn qwen_template_never_inserts_its_default_system_prompt() {
        let src = include_str!("../../tests/data/qwen2.5-chat-template.jinja");
        assert!(src.contains("You are Qwen"), "fixture is the real template");
        let t = ChatTemplate::new(src, "<|endoftext|>", "<|im_end|>").unwrap();
        for persona in ["You are Yap, a voice companion.", ""] {
            let out = t
                .render(
                    &[
                        ChatMessage::new(Role::System, persona),
                        ChatMessage::new(Role::User, "Hi"),
                    ],
                    true,
                )
                .unwrap();
            assert!(!out.contains("Qwen"), "{out}");
            assert_eq!(
                out,
                format!(
                    "<|im_start|>system\n{persona}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
                )
            );
        }
        // Without a system message the template would add its own: Yap never sends that.
        let bare = t
            .render(&[ChatMessage::new(Role::User, "Hi")], true)
            .unwrap();
        assert!(bare.contains("You are Qwen"));
    }

    #[test]
    fn gemma_renders_system_into_first_user_turn() {
        let t = ChatTemplate::new(GEMMA_TEMPLATE, "<bos>", "<eos>").unwrap();
        let out = t
            .render(
                &[
                    ChatMessage::new(Role::System, "Be kind."),
                    ChatMessage::new(Role::User, "Hi"),
                    ChatMessage::new(Role::Assistant, "Hello!"),
                    ChatMessage::new(Role::User, "Bye"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            out,
            "<bos><start_of_turn>user\nBe kind.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
        let bad = t.render(&[ChatMessage::new(Role::Assistant, "x")], true);
        assert!(bad.is_err());
    }

    #[test]
    fn transcript_for_base_models() {
        let (src, stops) = builtin_for("gemma3", false);
        let t = ChatTemplate::new(src, "<bos>", "").unwrap();
        let out = t
            .render(
                &[
                    ChatMessage::new(Role::System, "Be kind."),
                    ChatMessage::new(Role::User, "Hi"),
                    ChatMessage::new(Role::Assistant, "Hello!"),
                    ChatMessage::new(Role::User, "Bye"),
                ],
                true,
            )
            .unwrap();
        assert!(
            out.starts_with("<bos>Be kind.\n\nUser: Who was Albert Einstein?"),
            "{out}"
        );
        assert!(
            out.ends_with("\nUser: Hi\nAssistant: Hello!\nUser: Bye\nAssistant:"),
            "{out}"
        );
        assert!(stops.contains(&"\nUser:"));
        assert_eq!(builtin_for("gemma3", true).0, GEMMA_TEMPLATE);
        assert!(looks_instruct("Gemma 3 270m It"));
        assert!(looks_instruct("Qwen2.5-0.5B-Instruct"));
        assert!(!looks_instruct("Gemma 3 270m"));
    }

    #[test]
    fn python_methods_and_raise() {
        let src = "{% if messages[0]['role'] == 'system' %}{{ bos_token }}{{ messages[0]['content'].strip() }}{% else %}{{ raise_exception('need system') }}{% endif %}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let ok = t
            .render(&[ChatMessage::new(Role::System, "  hi  ")], false)
            .unwrap();
        assert_eq!(ok, "<s>hi");
        let err = t.render(&[ChatMessage::new(Role::User, "x")], false);
        assert!(err.is_err());
    }
}
