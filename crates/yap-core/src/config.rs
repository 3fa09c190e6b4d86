//! The core's settings: budgets, sampling defaults, deploy mode, tool decision, screen prefixes,
//! session store. One clap `Args` struct (flattened into `yap serve`); every default is defined
//! once, in [`defaults`].

use std::time::Duration;

use clap::{Args, ValueEnum};
use yap_engine_api::config::{parse_seconds, parse_unit};

/// Default values (protocol.md and protocol-v1.md names in the field docs).
pub mod defaults {
    /// `CHAT_MAX_LEN`.
    pub const CHAT_MAX_LEN: usize = 5525;
    /// `CHAT_MAX_OUT`.
    pub const CHAT_MAX_OUT: u32 = 150;
    /// `CHAT_PROMPT_MAX_TOKENS`.
    pub const CHAT_PROMPT_MAX_TOKENS: usize = 1500;
    /// `CHAT_HISTORY_MAX_TOKENS`.
    pub const CHAT_HISTORY_MAX_TOKENS: usize = 3000;
    /// `HISTORY_RETENTION_PCT`.
    pub const HISTORY_RETENTION_PCT: usize = 66;
    /// `USER_UTT_MAX_TOKENS`.
    pub const USER_UTT_MAX_TOKENS: usize = 500;
    /// `CHAT_TEMPERATURE`.
    pub const CHAT_TEMPERATURE: f32 = 0.7;
    /// `TOOL_TIMEOUT_S`.
    pub const TOOL_TIMEOUT_S: &str = "2";
    /// `CHECK_SCREEN_PREFIX`.
    pub const CHECK_SCREEN_PREFIX: &str = "MUST CHECK SCREEN:";
    /// `SCREEN_CHECKED_PREFIX`.
    pub const SCREEN_CHECKED_PREFIX: &str = "ON THE SCREEN NOW:";
    /// `SESSION_CACHE_MB`.
    pub const SESSION_CACHE_MB: u64 = 256;
    /// `SESSION_IDLE_TIMEOUT_S`.
    pub const SESSION_IDLE_TIMEOUT_S: &str = "3600";
    /// Used when neither `TOOL_THRESHOLD` nor the tool model gives a threshold.
    pub const TOOL_THRESHOLD: f32 = 0.5;
}

/// Which models a deployment runs (`DEPLOY_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
#[value(rename_all = "lowercase")]
pub enum DeployMode {
    /// Tool decision first (`toolcall` frame), then the chat reply.
    #[default]
    Both,
    /// Chat only: no `toolcall` frame.
    Chat,
    /// Tool only: a turn is `toolcall` + `done`; no chat model is loaded.
    Tool,
}

impl DeployMode {
    /// Whether the tool model runs.
    pub fn has_tool(self) -> bool {
        self != Self::Chat
    }

    /// Whether the chat model runs.
    pub fn has_chat(self) -> bool {
        self != Self::Tool
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Both => "both",
            Self::Chat => "chat",
            Self::Tool => "tool",
        }
    }
}

fn parse_pct(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(v) if (1..=100).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` must be a whole percentage in 1..=100")),
    }
}

fn parse_prefix(s: &str) -> Result<String, String> {
    if s.chars().count() > 30 {
        return Err(format!("`{s}` is longer than 30 characters"));
    }
    Ok(s.to_owned())
}

/// Settings of turn orchestration.
#[derive(Debug, Clone, Args)]
pub struct CoreConfig {
    /// Prompt + reply tokens per turn.
    #[arg(long, env = "CHAT_MAX_LEN", default_value_t = defaults::CHAT_MAX_LEN)]
    pub chat_max_len: usize,
    /// Most reply tokens per turn.
    #[arg(long, env = "CHAT_MAX_OUT", default_value_t = defaults::CHAT_MAX_OUT)]
    pub chat_max_out: u32,
    /// Most persona (system prompt) tokens.
    #[arg(long, env = "CHAT_PROMPT_MAX_TOKENS", default_value_t = defaults::CHAT_PROMPT_MAX_TOKENS)]
    pub chat_prompt_max_tokens: usize,
    /// History trim threshold in tokens (alias env `HISTORY_MAX_TOKENS`).
    #[arg(long, env = "CHAT_HISTORY_MAX_TOKENS", default_value_t = defaults::CHAT_HISTORY_MAX_TOKENS)]
    pub chat_history_max_tokens: usize,
    /// Percent of the history threshold kept after a trim.
    #[arg(long, env = "HISTORY_RETENTION_PCT", default_value_t = defaults::HISTORY_RETENTION_PCT,
        value_parser = parse_pct)]
    pub history_retention_pct: usize,
    /// User utterance tokens kept (from the beginning).
    #[arg(long, env = "USER_UTT_MAX_TOKENS", default_value_t = defaults::USER_UTT_MAX_TOKENS)]
    pub user_utt_max_tokens: usize,
    /// Default sampling temperature.
    #[arg(long = "temperature", env = "CHAT_TEMPERATURE", default_value_t = defaults::CHAT_TEMPERATURE)]
    pub temperature: f32,
    /// The sanitizer also reads numbers, symbols, e-mails, phones, units aloud.
    #[arg(long, env = "SANITIZE_VERBALIZE", default_value_t = false, action = clap::ArgAction::Set)]
    pub sanitize_verbalize: bool,
    /// Which models run: `both`, `chat` (no toolcall), `tool` (toolcall + done).
    #[arg(long, env = "DEPLOY_MODE", value_enum, ignore_case = true, default_value_t = DeployMode::Both)]
    pub deploy_mode: DeployMode,
    /// Yes-probability at or above which the tool decision is yes (alias env
    /// `TOOL_DECISION_THRESHOLD`). Default: the tool model's tuned threshold, else 0.5.
    #[arg(long, env = "TOOL_THRESHOLD", value_parser = parse_unit)]
    pub tool_threshold: Option<f32>,
    /// In `both` mode, start the chat while the tool model classifies (tokens wait for the
    /// decision; a yes restarts the chat with the screen prefix) instead of classifying first.
    #[arg(long, env = "TOOL_OVERLAP", default_value_t = true, action = clap::ArgAction::Set)]
    pub tool_overlap: bool,
    /// Seconds a turn waits for its tool decision before treating it as no.
    #[arg(long = "tool-timeout-s", env = "TOOL_TIMEOUT_S", default_value = defaults::TOOL_TIMEOUT_S,
        value_parser = parse_seconds)]
    pub tool_timeout: Duration,
    /// Prefix of the utterance the chat model sees when the tool decision is yes.
    #[arg(long, env = "CHECK_SCREEN_PREFIX", default_value = defaults::CHECK_SCREEN_PREFIX,
        value_parser = parse_prefix)]
    pub check_screen_prefix: String,
    /// Prefix of the next turn's utterance after a yes.
    #[arg(long, env = "SCREEN_CHECKED_PREFIX", default_value = defaults::SCREEN_CHECKED_PREFIX,
        value_parser = parse_prefix)]
    pub screen_checked_prefix: String,
    /// Memory for session state (persona, history) in MiB; least recently used sessions go
    /// first (their cached KV is released too).
    #[arg(long, env = "SESSION_CACHE_MB", default_value_t = defaults::SESSION_CACHE_MB)]
    pub session_cache_mb: u64,
    /// Seconds after which an unused session is forgotten.
    #[arg(long = "session-idle-timeout-s", env = "SESSION_IDLE_TIMEOUT_S",
        default_value = defaults::SESSION_IDLE_TIMEOUT_S, value_parser = parse_seconds)]
    pub session_idle_timeout: Duration,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            chat_max_len: defaults::CHAT_MAX_LEN,
            chat_max_out: defaults::CHAT_MAX_OUT,
            chat_prompt_max_tokens: defaults::CHAT_PROMPT_MAX_TOKENS,
            chat_history_max_tokens: defaults::CHAT_HISTORY_MAX_TOKENS,
            history_retention_pct: defaults::HISTORY_RETENTION_PCT,
            user_utt_max_tokens: defaults::USER_UTT_MAX_TOKENS,
            temperature: defaults::CHAT_TEMPERATURE,
            sanitize_verbalize: false,
            deploy_mode: DeployMode::Both,
            tool_threshold: None,
            tool_overlap: true,
            tool_timeout: Duration::from_secs(2),
            check_screen_prefix: defaults::CHECK_SCREEN_PREFIX.into(),
            screen_checked_prefix: defaults::SCREEN_CHECKED_PREFIX.into(),
            session_cache_mb: defaults::SESSION_CACHE_MB,
            session_idle_timeout: Duration::from_secs(3600),
        }
    }
}

impl CoreConfig {
    /// The token budgets.
    pub fn budget(&self) -> crate::prompt::budget::Budget {
        crate::prompt::budget::Budget {
            chat_max_len: self.chat_max_len,
            chat_max_out: self.chat_max_out as usize,
            persona_max_tokens: self.chat_prompt_max_tokens,
            history_max_tokens: self.chat_history_max_tokens,
            history_retention_pct: self.history_retention_pct,
            user_utt_max_tokens: self.user_utt_max_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct W {
        #[command(flatten)]
        c: CoreConfig,
    }

    #[test]
    fn clap_defaults_equal_the_default_impl() {
        let parsed = W::try_parse_from(["x"]).unwrap().c;
        let d = CoreConfig::default();
        assert_eq!(format!("{parsed:?}"), format!("{d:?}"));
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            ["x", "--tool-timeout-s=-1"],
            ["x", "--tool-timeout-s=NaN"],
            ["x", "--tool-threshold=1.5"],
            ["x", "--history-retention-pct=0"],
            ["x", "--deploy-mode=both-ish"],
            [
                "x",
                "--check-screen-prefix=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            ],
        ] {
            assert!(W::try_parse_from(bad).is_err(), "{bad:?}");
        }
        let w = W::try_parse_from(["x", "--deploy-mode=TOOL"]).unwrap();
        assert_eq!(w.c.deploy_mode, DeployMode::Tool);
    }
}
