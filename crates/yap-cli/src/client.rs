//! WebSocket test clients: `yap warmup` and `yap bench`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yap_protocol::ServerFrame;

/// A client WebSocket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connection flags shared by the clients.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Server WebSocket URL.
    #[arg(
        long = "server",
        alias = "url",
        env = "SERVER_WS_URL",
        default_value = "ws://127.0.0.1:8000/ws"
    )]
    pub server: String,
    /// API key.
    #[arg(long, env = "TEXT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Assistant gender (woman/man).
    #[arg(long, env = "GENDER")]
    pub gender: Option<String>,
    /// Persona style (wholesome, flirty, savage, nerdy, ...).
    #[arg(long, alias = "persona", env = "PERSONALITY")]
    pub personality: Option<String>,
    /// Seconds to wait for each frame.
    #[arg(long = "timeout", env = "RECV_TIMEOUT_SEC", default_value_t = 60.0)]
    pub recv_timeout_sec: f64,
}

impl ClientArgs {
    fn url(&self) -> String {
        match &self.api_key {
            Some(key) if !self.server.contains("api_key=") => {
                let sep = if self.server.contains('?') { '&' } else { '?' };
                format!("{}{sep}api_key={key}", self.server)
            }
            _ => self.server.clone(),
        }
    }

    /// A `start` message for a session.
    pub fn start_message(&self, session_id: &str, text: &str, request_id: Option<&str>) -> Value {
        let mut m = json!({"type": "start", "session_id": session_id, "user_utterance": text});
        if let Some(g) = &self.gender {
            m["gender"] = json!(g);
        }
        if let Some(p) = &self.personality {
            m["persona_style"] = json!(p);
        }
        if let Some(r) = request_id {
            m["request_id"] = json!(r);
        }
        m
    }
}

/// Opens a connection.
pub async fn connect(args: &ClientArgs) -> Result<Ws> {
    let (ws, _) = tokio_tungstenite::connect_async_with_config(args.url(), None, true)
        .await
        .with_context(|| format!("connecting to {}", args.server))?;
    Ok(ws)
}

/// Receives the next protocol frame (skipping transport pings), with a timeout.
pub async fn recv_frame(ws: &mut Ws, timeout: Duration) -> Result<(ServerFrame, String)> {
    loop {
        let msg = tokio::time::timeout(timeout, ws.next())
            .await
            .context("timed out waiting for a frame")?
            .context("connection closed")??;
        match msg {
            Message::Text(t) => {
                let frame: ServerFrame = serde_json::from_str(t.as_str())
                    .with_context(|| format!("unparseable frame: {t}"))?;
                return Ok((frame, t.to_string()));
            }
            Message::Close(c) => bail!("server closed the connection: {c:?}"),
            _ => {}
        }
    }
}

/// Timings and counts of one turn as a client sees them.
#[derive(Debug, Clone, Default)]
pub struct TurnMetrics {
    /// Milliseconds to the first token frame.
    pub ttfb_ms: Option<f64>,
    /// Milliseconds until the text first holds a finished sentence.
    pub first_sentence_ms: Option<f64>,
    /// Milliseconds to the terminal frame.
    pub total_ms: f64,
    /// Token frames.
    pub chunks: usize,
    /// Characters of text.
    pub chars: usize,
    /// The text.
    pub text: String,
    /// Milliseconds to the toolcall frame, when one came.
    pub toolcall_ms: Option<f64>,
    /// Prompt tokens from usage.
    pub prompt_tokens: u32,
    /// History messages the server held (from the ack).
    pub history_turns: Option<u64>,
    /// Completion tokens from usage.
    pub completion_tokens: u32,
    /// Cached prompt tokens from usage.
    pub cached_prompt_tokens: u32,
    /// The terminal frame.
    pub terminal: Option<ServerFrame>,
}

fn has_sentence_end(text: &str) -> bool {
    let t = text.trim_end();
    t.contains(". ") || t.contains("! ") || t.contains("? ") || t.ends_with(['.', '!', '?'])
}

/// Sends a start and reads the turn to its terminal frame; `on_frame` sees every raw frame.
pub async fn run_turn(
    ws: &mut Ws,
    start: &Value,
    timeout: Duration,
    mut on_frame: impl FnMut(&str),
) -> Result<TurnMetrics> {
    let t0 = Instant::now();
    ws.send(Message::Text(start.to_string().into())).await?;
    let mut m = TurnMetrics::default();
    loop {
        let (frame, raw) = recv_frame(ws, timeout).await?;
        on_frame(&raw);
        let now = t0.elapsed().as_secs_f64() * 1000.0;
        match &frame {
            ServerFrame::Toolcall { .. } => {
                m.toolcall_ms.get_or_insert(now);
            }
            ServerFrame::Ack { history_turns, .. } => {
                m.history_turns = history_turns.map(u64::from);
            }
            ServerFrame::Token { text } => {
                m.ttfb_ms.get_or_insert(now);
                m.chunks += 1;
                m.chars += text.chars().count();
                m.text.push_str(text);
                if m.first_sentence_ms.is_none() && has_sentence_end(&m.text) {
                    m.first_sentence_ms = Some(now);
                }
            }
            ServerFrame::Done { usage, .. } => {
                if let Some(u) = usage {
                    m.prompt_tokens = u.prompt_tokens;
                    m.completion_tokens = u.completion_tokens;
                    m.cached_prompt_tokens = u.cached_prompt_tokens;
                }
                m.total_ms = now;
                if m.first_sentence_ms.is_none() && !m.text.is_empty() {
                    m.first_sentence_ms = Some(now);
                }
                m.terminal = Some(frame);
                return Ok(m);
            }
            ServerFrame::Error { .. } => {
                m.total_ms = now;
                m.terminal = Some(frame);
                return Ok(m);
            }
            _ => {}
        }
    }
}

/// `yap warmup`: one turn, every frame printed, then a metrics line.
pub async fn warmup(args: &ClientArgs, text: &str) -> Result<()> {
    let mut ws = connect(args).await?;
    let session = format!("warmup-{}", rand::random::<u32>());
    let start = args.start_message(&session, text, None);
    let timeout = Duration::from_secs_f64(args.recv_timeout_sec);
    let m = run_turn(&mut ws, &start, timeout, |raw| println!("{raw}")).await?;
    let _ = ws.send(Message::Text("__END__".into())).await;
    println!();
    println!("reply: {}", m.text.trim());
    println!(
        "metrics: ttfb_ms={:.1} first_sentence_ms={:.1} total_ms={:.1} chunks={} chars={}",
        m.ttfb_ms.unwrap_or(f64::NAN),
        m.first_sentence_ms.unwrap_or(f64::NAN),
        m.total_ms,
        m.chunks,
        m.chars
    );
    if let Some(ServerFrame::Error {
        error_code,
        message,
        ..
    }) = &m.terminal
    {
        bail!("turn failed: {error_code}: {message}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentence_detection() {
        assert!(!has_sentence_end("Hello there"));
        assert!(has_sentence_end("Hello there."));
        assert!(has_sentence_end("Hi! How"));
        assert!(!has_sentence_end("3.14"));
    }
}
