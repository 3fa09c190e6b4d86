//! `yap engine-double`: a small OpenAI-compatible engine stand-in for tests of the remote
//! engine, routing and supervision. It streams `/v1/completions` word by word and can be told
//! (`POST /control/{ok,stall,error,sick,die}`) to stall, fail, report unhealthy or exit.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Args;
use futures_util::stream;
use serde_json::{Value, json};

/// Flags of `yap engine-double`.
#[derive(Debug, Clone, Args)]
pub struct DoubleArgs {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind (else the `--port` among the engine-style arguments).
    #[arg(long)]
    pub port: Option<u16>,
    /// Milliseconds between streamed tokens.
    #[arg(long, default_value_t = 2)]
    pub token_ms: u64,
    /// Start two helper processes like a real engine's workers (`sleep`): one in the double's
    /// process group and one in a session of its own (`setsid`), which no group kill reaches.
    /// Their pids are listed at `GET /stats` (`helpers`).
    #[arg(long)]
    pub spawn_grandchild: bool,
    /// Milliseconds to wait before listening, like an engine loading its weights.
    #[arg(long, default_value_t = 0)]
    pub startup_ms: u64,
    /// Anything else (engine-style arguments when launched as a fake `vllm serve`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub rest: Vec<String>,
}

#[derive(Default)]
struct DoubleState {
    mode: Mutex<String>,
    token_ms: u64,
    active: AtomicUsize,
    requests: AtomicU64,
    sessions: Mutex<HashMap<String, u64>>,
    last: Mutex<Value>,
    helpers: Vec<u32>,
    /// Kept, never waited for: cleaning them up is the supervisor's job.
    _helper_children: Vec<std::process::Child>,
}

struct ActiveGuard(Arc<DoubleState>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

fn mode(s: &DoubleState) -> String {
    s.mode.lock().map(|m| m.clone()).unwrap_or_default()
}

async fn health(State(s): State<Arc<DoubleState>>) -> Response {
    if mode(&s) == "sick" {
        (StatusCode::SERVICE_UNAVAILABLE, "sick").into_response()
    } else {
        Json(json!({"status": "ok"})).into_response()
    }
}

async fn control(State(s): State<Arc<DoubleState>>, Path(m): Path<String>) -> Response {
    if m == "die" {
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            std::process::exit(1);
        });
    }
    if let Ok(mut cur) = s.mode.lock() {
        *cur = m.clone();
    }
    Json(json!({"mode": m})).into_response()
}

async fn last(State(s): State<Arc<DoubleState>>) -> Response {
    let v = s.last.lock().map(|l| l.clone()).unwrap_or(Value::Null);
    Json(v).into_response()
}

async fn models() -> Response {
    Json(json!({"object": "list", "data": [{"id": "double-model", "object": "model"}]}))
        .into_response()
}

async fn stats(State(s): State<Arc<DoubleState>>) -> Response {
    let sessions = s.sessions.lock().map(|m| m.clone()).unwrap_or_default();
    Json(json!({
        "active": s.active.load(Ordering::Acquire),
        "requests": s.requests.load(Ordering::Acquire),
        "sessions": sessions,
        "mode": mode(&s),
        "pid": std::process::id(),
        "helpers": s.helpers,
    }))
    .into_response()
}

async fn completions(
    State(s): State<Arc<DoubleState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    s.requests.fetch_add(1, Ordering::AcqRel);
    if let Some(key) = headers.get("x-yap-session").and_then(|v| v.to_str().ok())
        && let Ok(mut m) = s.sessions.lock()
    {
        *m.entry(key.to_owned()).or_default() += 1;
    }
    match mode(&s).as_str() {
        "error" => return (StatusCode::INTERNAL_SERVER_ERROR, "injected failure").into_response(),
        "stall" => {
            s.active.fetch_add(1, Ordering::AcqRel);
            let guard = ActiveGuard(Arc::clone(&s));
            let never = stream::unfold(guard, |g| async move {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Some((Ok::<_, Infallible>(Event::default().data("{}")), g))
            });
            return Sse::new(never).into_response();
        }
        _ => {}
    }
    let max = body.get("max_tokens").and_then(Value::as_u64).unwrap_or(16);
    let prompt_tokens = match body.get("prompt") {
        Some(Value::Array(ids)) => ids.len() as u64,
        Some(Value::String(p)) => p.split_whitespace().count() as u64,
        _ => 0,
    };
    if let Ok(mut last) = s.last.lock() {
        *last = body.clone();
    }
    s.active.fetch_add(1, Ordering::AcqRel);
    let guard = ActiveGuard(Arc::clone(&s));
    let pause = Duration::from_millis(s.token_ms);
    let events = stream::unfold((0u64, Some(guard)), move |(i, guard)| async move {
        let guard = guard?;
        if i < max {
            tokio::time::sleep(pause).await;
            let finish = if i + 1 == max {
                json!("length")
            } else {
                Value::Null
            };
            let v = json!({"object": "text_completion", "choices": [{"index": 0, "text": format!("w{i} "), "finish_reason": finish}]});
            Some((
                vec![Event::default().data(v.to_string())],
                (i + 1, Some(guard)),
            ))
        } else {
            let usage = json!({"object": "text_completion", "choices": [], "usage": {
                "prompt_tokens": prompt_tokens, "completion_tokens": max,
                "total_tokens": prompt_tokens + max,
                "prompt_tokens_details": {"cached_tokens": prompt_tokens / 2}}});
            drop(guard);
            Some((
                vec![
                    Event::default().data(usage.to_string()),
                    Event::default().data("[DONE]"),
                ],
                (i + 1, None),
            ))
        }
    });
    let flat = futures_util::StreamExt::flat_map(events, |evs| {
        stream::iter(evs.into_iter().map(Ok::<_, Infallible>))
    });
    Sse::new(flat).into_response()
}

/// Starts the helper processes of `--spawn-grandchild`; they are never waited for (the point
/// is that someone else must clean them up).
fn spawn_helpers() -> Result<Vec<std::process::Child>> {
    let mut children = Vec::new();
    for argv in [&["sleep", "3600"][..], &["setsid", "sleep", "3600"][..]] {
        let child = std::process::Command::new(argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {argv:?}"))?;
        children.push(child);
    }
    Ok(children)
}

/// Serves until killed.
pub async fn run(args: &DoubleArgs) -> Result<()> {
    let helpers = if args.spawn_grandchild {
        spawn_helpers()?
    } else {
        Vec::new()
    };
    let state = Arc::new(DoubleState {
        mode: Mutex::new("ok".into()),
        token_ms: args.token_ms,
        helpers: helpers.iter().map(std::process::Child::id).collect(),
        _helper_children: helpers,
        ..DoubleState::default()
    });
    let app = Router::new()
        .route("/health", get(health))
        .route("/stats", get(stats))
        .route("/last", get(last))
        .route("/v1/models", get(models))
        .route("/control/{mode}", post(control))
        .route("/v1/completions", post(completions))
        .with_state(state);
    let port = args
        .port
        .or_else(|| {
            let i = args.rest.iter().position(|a| a == "--port")?;
            args.rest.get(i + 1)?.parse().ok()
        })
        .context("--port is required")?;
    eprintln!("engine-double args: {}", args.rest.join(" "));
    tokio::time::sleep(std::time::Duration::from_millis(args.startup_ms)).await;
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), port)).await?;
    eprintln!("engine-double listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
