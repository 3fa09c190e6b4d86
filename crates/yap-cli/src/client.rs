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
    let (ws, _) = tokio_tungstenite::connect_async(args.url())
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

/// Flags of `yap bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Connection flags.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Turns per concurrency level.
    #[arg(short = 'n', long, default_value_t = 16)]
    pub turns: usize,
    /// Concurrency levels, comma-separated (each level runs on its own connections).
    #[arg(short = 'c', long, default_value = "1,8", value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    /// Cancels measured per level (0 = skip the cancel phase).
    #[arg(long, default_value_t = 16)]
    pub cancels: usize,
    /// The user utterance.
    #[arg(default_value = "Tell me a short story about a dragon who learns to cook.")]
    pub text: String,
}

/// Nearest-rank percentile of unsorted values.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

#[derive(Debug, Default)]
struct LevelResult {
    ttft: Vec<f64>,
    per_session_tps: Vec<f64>,
    tokens: u64,
    errors: usize,
    wall_s: f64,
    cancel_ms: Vec<f64>,
}

async fn bench_worker(args: BenchArgs, worker: usize, turns: usize) -> Result<LevelResult> {
    let timeout = Duration::from_secs_f64(args.client.recv_timeout_sec);
    let mut r = LevelResult::default();
    for i in 0..turns {
        // A fresh connection per turn (outside the timing) stays clear of per-connection
        // message limits.
        let mut ws = connect(&args.client).await?;
        let session = format!("bench-{}-{worker}-{i}", rand::random::<u32>());
        let start = args.client.start_message(&session, &args.text, None);
        let m = run_turn(&mut ws, &start, timeout, |_| {}).await?;
        match (&m.terminal, m.ttfb_ms) {
            (Some(ServerFrame::Done { .. }), Some(ttft)) => {
                r.ttft.push(ttft);
                r.tokens += u64::from(m.completion_tokens);
                let decode_s = (m.total_ms - ttft) / 1000.0;
                if m.completion_tokens > 1 && decode_s > 0.0 {
                    r.per_session_tps
                        .push(f64::from(m.completion_tokens - 1) / decode_s);
                }
            }
            _ => r.errors += 1,
        }
        let _ = ws.send(Message::Text("__END__".into())).await;
    }
    Ok(r)
}

async fn cancel_worker(args: BenchArgs, worker: usize, count: usize) -> Result<Vec<f64>> {
    let timeout = Duration::from_secs_f64(args.client.recv_timeout_sec);
    let mut out = Vec::new();
    for i in 0..count {
        let mut ws = connect(&args.client).await?;
        let session = format!("cancel-{}-{worker}-{i}", rand::random::<u32>());
        let start = args.client.start_message(&session, &args.text, None);
        ws.send(Message::Text(start.to_string().into())).await?;
        // Wait for the first token, then cancel mid-stream.
        let mut streaming = false;
        while !streaming {
            let (frame, _) = recv_frame(&mut ws, timeout).await?;
            match frame {
                ServerFrame::Token { .. } => streaming = true,
                f if f.is_terminal() => break,
                _ => {}
            }
        }
        if !streaming {
            continue;
        }
        let t0 = Instant::now();
        ws.send(Message::Text(r#"{"type":"cancel"}"#.into()))
            .await?;
        loop {
            let (frame, _) = recv_frame(&mut ws, timeout).await?;
            if let ServerFrame::Done { cancelled, .. } = frame {
                if cancelled {
                    out.push(t0.elapsed().as_secs_f64() * 1000.0);
                }
                break;
            }
            if frame.is_terminal() {
                break;
            }
        }
        let _ = ws.send(Message::Text("__END__".into())).await;
    }
    Ok(out)
}

/// `yap bench`: TTFT, decode tokens/s and cancel latency per concurrency level.
pub async fn bench(args: &BenchArgs) -> Result<()> {
    println!(
        "{:>4} {:>6} {:>9} {:>9} {:>12} {:>12} {:>10} {:>11} {:>11} {:>6}",
        "conc",
        "turns",
        "ttft_p50",
        "ttft_p95",
        "tok/s/sess",
        "tok/s_aggr",
        "tokens",
        "cancel_p50",
        "cancel_p99",
        "errors"
    );
    for &c in &args.concurrency {
        let c = c.max(1);
        let per_worker = args.turns.div_ceil(c);
        let t0 = Instant::now();
        let mut handles = Vec::new();
        for w in 0..c {
            handles.push(tokio::spawn(bench_worker(args.clone(), w, per_worker)));
        }
        let mut level = LevelResult::default();
        for h in handles {
            let r = h.await??;
            level.ttft.extend(r.ttft);
            level.per_session_tps.extend(r.per_session_tps);
            level.tokens += r.tokens;
            level.errors += r.errors;
        }
        level.wall_s = t0.elapsed().as_secs_f64();
        if args.cancels > 0 {
            let per = args.cancels.div_ceil(c);
            let mut hs = Vec::new();
            for w in 0..c {
                hs.push(tokio::spawn(cancel_worker(args.clone(), w, per)));
            }
            for h in hs {
                level.cancel_ms.extend(h.await??);
            }
        }
        let tps_sess =
            level.per_session_tps.iter().sum::<f64>() / level.per_session_tps.len().max(1) as f64;
        println!(
            "{:>4} {:>6} {:>9.1} {:>9.1} {:>12.1} {:>12.1} {:>10} {:>11.2} {:>11.2} {:>6}",
            c,
            per_worker * c,
            percentile(&level.ttft, 50.0),
            percentile(&level.ttft, 95.0),
            tps_sess,
            level.tokens as f64 / level.wall_s,
            level.tokens,
            percentile(&level.cancel_ms, 50.0),
            percentile(&level.cancel_ms, 99.0),
            level.errors
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 95.0), 95.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn sentence_detection() {
        assert!(!has_sentence_end("Hello there"));
        assert!(has_sentence_end("Hello there."));
        assert!(has_sentence_end("Hi! How"));
        assert!(!has_sentence_end("3.14"));
    }
}
