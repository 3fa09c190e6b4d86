//! Interactive and scripted clients: `yap live`, `yap conversation`, `yap personality`.

use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;
use yap_protocol::ServerFrame;

use crate::client::{ClientArgs, connect, run_turn};

/// What a client shows of a turn (`PROMPT_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PromptMode {
    /// The toolcall verdict and the chat tokens.
    Both,
    /// Only chat tokens.
    Chat,
    /// Only the toolcall verdict.
    Tool,
}

/// Flags of `yap live`.
#[derive(Debug, Clone, Args)]
pub struct LiveArgs {
    /// Connection flags.
    #[command(flatten)]
    pub client: ClientArgs,
    /// What to show of each turn.
    #[arg(long, env = "PROMPT_MODE", value_enum, default_value = "both")]
    pub prompt_mode: PromptMode,
}

fn flush() {
    let _ = std::io::stdout().flush();
}

/// `yap live`: type to talk; `/persona NAME`, `/cancel`, `/quit`. A new line while a reply is
/// streaming barges in.
pub async fn live(args: &LiveArgs) -> Result<()> {
    let ws = connect(&args.client).await?;
    let (mut tx, mut rx) = ws.split();
    let session = format!("live-{}", rand::random::<u32>());
    let mut persona = args.client.personality.clone();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    println!("yap live — session {session}. Type to talk; /persona NAME, /cancel, /quit.");
    print!("> ");
    flush();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                let line = line.trim();
                if line.is_empty() {
                    print!("> ");
                    flush();
                    continue;
                }
                if line == "/quit" || line == "/exit" {
                    break;
                }
                if line == "/cancel" {
                    tx.send(Message::Text(r#"{"type":"cancel"}"#.into())).await?;
                    continue;
                }
                if let Some(name) = line.strip_prefix("/persona") {
                    let name = name.trim();
                    persona = (!name.is_empty()).then(|| name.to_owned());
                    println!("(persona: {})", persona.as_deref().unwrap_or("default"));
                    print!("> ");
                    flush();
                    continue;
                }
                let mut start = args.client.start_message(&session, line, None);
                if let Some(p) = &persona {
                    start["persona_style"] = json!(p);
                }
                tx.send(Message::Text(start.to_string().into())).await?;
            }
            msg = rx.next() => {
                let Some(msg) = msg else { break };
                let Message::Text(text) = msg? else { continue };
                let Ok(frame) = serde_json::from_str::<ServerFrame>(text.as_str()) else { continue };
                match frame {
                    ServerFrame::Toolcall { status, raw } if args.prompt_mode != PromptMode::Chat => {
                        println!("[toolcall {status:?} {raw}]");
                    }
                    ServerFrame::Token { text } if args.prompt_mode != PromptMode::Tool => {
                        print!("{text}");
                        flush();
                    }
                    ServerFrame::Done { cancelled: true, .. } => {
                        println!(" [cancelled]");
                        print!("> ");
                        flush();
                    }
                    ServerFrame::Done { usage, .. } => {
                        if let Some(u) = usage {
                            println!("\n  ({} tokens, ttft {:.0} ms, {} cached)", u.completion_tokens, u.ttft_ms, u.cached_prompt_tokens);
                        }
                        print!("> ");
                        flush();
                    }
                    ServerFrame::Error { error_code, message, .. } => {
                        println!("\n[error {error_code}: {message}]");
                        print!("> ");
                        flush();
                    }
                    _ => {}
                }
            }
        }
    }
    let _ = tx.send(Message::Text("__END__".into())).await;
    println!();
    Ok(())
}

/// The scripted user lines of `yap conversation`.
pub const CONVERSATION: [&str; 10] = [
    "Hi! I just got home from work.",
    "It was long. My boss moved every deadline up a week.",
    "I think I need a hobby to unwind. Any ideas?",
    "Painting sounds nice. What would I need to start?",
    "How long does it take to get decent at it?",
    "Could I paint my cat? She sits still for hours.",
    "Her name is Miso, she is orange and very fluffy.",
    "What colors would you use for an orange cat?",
    "Do you remember my cat's name?",
    "Thanks, that helped. Good night!",
];

/// `yap conversation`: ten turns through one session; a row per turn shows the history the
/// server keeps, prompt and cached-prefix tokens, and latency.
pub async fn conversation(args: &ClientArgs) -> Result<()> {
    let mut ws = connect(args).await?;
    let session = format!("conversation-{}", rand::random::<u32>());
    let timeout = Duration::from_secs_f64(args.recv_timeout_sec);
    println!(
        "{:>4} {:>8} {:>7} {:>7} {:>6} {:>8} {:>8}  reply",
        "turn", "history", "prompt", "cached", "out", "ttft_ms", "total_ms"
    );
    for (i, line) in CONVERSATION.iter().enumerate() {
        let start = args.start_message(&session, line, Some(&format!("turn-{}", i + 1)));
        let m = run_turn(&mut ws, &start, timeout, |_| {}).await?;
        if let Some(ServerFrame::Error {
            error_code,
            message,
            ..
        }) = &m.terminal
        {
            anyhow::bail!("turn {} failed: {error_code}: {message}", i + 1);
        }
        let reply: String = m.text.chars().take(60).collect();
        println!(
            "{:>4} {:>8} {:>7} {:>7} {:>6} {:>8.1} {:>8.1}  {}",
            i + 1,
            m.history_turns.map_or("-".into(), |h| h.to_string()),
            m.prompt_tokens,
            m.cached_prompt_tokens,
            m.completion_tokens,
            m.ttfb_ms.unwrap_or(f64::NAN),
            m.total_ms,
            reply.replace('\n', " ")
        );
    }
    let _ = ws.send(Message::Text("__END__".into())).await;
    Ok(())
}

/// Flags of `yap personality`.
#[derive(Debug, Clone, Args)]
pub struct PersonalityArgs {
    /// Connection flags.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Persona switches after the first turn.
    #[arg(long, default_value_t = 4)]
    pub switches: usize,
    /// Seconds between switches.
    #[arg(long, default_value_t = 0.0)]
    pub delay: f64,
    /// What the user asks after each switch.
    #[arg(default_value = "Describe yourself in one sentence.")]
    pub text: String,
}

/// `yap personality`: one session, the persona switched mid-session; each reply is printed
/// under the persona it was asked with.
pub async fn personality(args: &PersonalityArgs) -> Result<()> {
    const STYLES: [&str; 4] = ["wholesome", "flirty", "savage", "nerdy"];
    let mut ws = connect(&args.client).await?;
    let session = format!("personality-{}", rand::random::<u32>());
    let timeout = Duration::from_secs_f64(args.client.recv_timeout_sec);
    for i in 0..=args.switches {
        let style = STYLES[i % STYLES.len()];
        let mut start = args.client.start_message(&session, &args.text, None);
        start["persona_style"] = json!(style);
        let m = run_turn(&mut ws, &start, timeout, |_| {}).await?;
        let effective = match &m.terminal {
            Some(ServerFrame::Done { .. }) => style,
            _ => "error",
        };
        println!("[{effective}] {}", m.text.trim().replace('\n', " "));
        if i < args.switches && args.delay > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(args.delay)).await;
        }
    }
    let _ = ws.send(Message::Text("__END__".into())).await;
    Ok(())
}
