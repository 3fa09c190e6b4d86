//! The OpenAI-compatible HTTP API: `/v1/chat/completions`, `/v1/completions`, `/v1/models`.
//! Requests run through the core's one turn driver ([`yap_core::Core::complete`]); SSE streams
//! its frames. A client that disconnects drops the stream, which cancels the turn.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use yap_core::prompt::{ChatMessage, Role};
use yap_core::{CancelReason, CompletionInput, TurnError, TurnErrorKind, TurnFrame, TurnHandle};
use yap_engine_api::SamplingParams;
use yap_protocol::Usage;

use crate::AppState;
use crate::auth::{self, Verdict};

/// An OpenAI-shaped error response.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn bad(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            retry_after: None,
        }
    }

    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = match self.status {
            StatusCode::UNAUTHORIZED => "invalid_api_key",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::SERVICE_UNAVAILABLE => "engine_unavailable",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_exceeded",
            StatusCode::INTERNAL_SERVER_ERROR => "internal_error",
            _ => "invalid_request",
        };
        let body = json!({"error": {"message": self.message, "type": self.kind, "param": null, "code": code}});
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self
            .retry_after
            .or((self.status == StatusCode::TOO_MANY_REQUESTS).then_some(1))
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

impl From<TurnError> for ApiError {
    fn from(e: TurnError) -> Self {
        match e.kind {
            TurnErrorKind::EngineUnavailable => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", e.message)
            }
            TurnErrorKind::Internal => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.message)
            }
            _ => Self::bad(e.message),
        }
    }
}

fn authorize(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = auth::presented_key(headers, &std::collections::HashMap::new());
    let verdict = state
        .auth
        .check(&peer.ip().to_string(), presented.as_deref());
    if verdict != Verdict::Ok {
        crate::metrics::auth_failure("http");
    }
    match verdict {
        Verdict::Ok => Ok(()),
        Verdict::Denied => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "missing or invalid API key (Authorization: Bearer KEY, or X-API-Key)",
        )),
        Verdict::Blocked(wait) => Err(ApiError {
            retry_after: Some(wait.as_secs().max(1)),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "too many failed authentications from this address",
            )
        }),
    }
}

/// HTTP requests share the connection slots of the WebSocket endpoint.
async fn acquire_slot(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    match tokio::time::timeout(
        state.config.acquire_timeout,
        Arc::clone(&state.slots).acquire_owned(),
    )
    .await
    {
        Ok(Ok(permit)) => Ok(permit),
        _ => {
            crate::metrics::capacity_refusal("http");
            Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!(
                    "server at capacity ({} connections); retry with backoff",
                    state.config.max_connections()
                ),
            ))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
    /// A prompt given as token ids (what engines such as vLLM accept too).
    Ids(Vec<u32>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    content: Option<Content>,
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The fields of both endpoints (unknown ones are ignored, as OpenAI servers do).
#[derive(Debug, Deserialize)]
struct Body {
    model: Option<String>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<f64>,
    min_p: Option<f64>,
    repetition_penalty: Option<f64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    seed: Option<f64>,
    max_tokens: Option<f64>,
    max_completion_tokens: Option<f64>,
    n: Option<f64>,
    stop: Option<OneOrMany>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    messages: Option<Vec<Message>>,
    prompt: Option<OneOrMany>,
}

/// Most stop strings and their longest length.
const MAX_STOPS: usize = 4;
const MAX_STOP_CHARS: usize = 128;

fn in_range(name: &str, v: Option<f64>, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
    match v {
        Some(x) if !x.is_finite() || x < lo || x > hi => Err(ApiError::bad(format!(
            "`{name}`={x} is outside [{lo}, {hi}]"
        ))),
        other => Ok(other),
    }
}

fn sampling(base: SamplingParams, b: &Body) -> Result<SamplingParams, ApiError> {
    let mut s = base;
    let set = |dst: &mut f32, v: Option<f64>| {
        if let Some(v) = v {
            *dst = v as f32;
        }
    };
    set(
        &mut s.temperature,
        in_range("temperature", b.temperature, 0.0, 2.0)?,
    );
    set(&mut s.top_p, in_range("top_p", b.top_p, 0.0, 1.0)?);
    set(&mut s.min_p, in_range("min_p", b.min_p, 0.0, 1.0)?);
    set(
        &mut s.repetition_penalty,
        in_range("repetition_penalty", b.repetition_penalty, 0.5, 2.0)?,
    );
    set(
        &mut s.presence_penalty,
        in_range("presence_penalty", b.presence_penalty, -2.0, 2.0)?,
    );
    set(
        &mut s.frequency_penalty,
        in_range("frequency_penalty", b.frequency_penalty, -2.0, 2.0)?,
    );
    if let Some(k) = in_range("top_k", b.top_k, 0.0, 1000.0)? {
        s.top_k = k as i32;
    }
    if let Some(seed) = in_range("seed", b.seed, 0.0, f64::from(u32::MAX))? {
        s.seed = Some(seed as u32);
    }
    Ok(s)
}

fn stops(b: &Body) -> Result<Vec<String>, ApiError> {
    let list = match &b.stop {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s.clone()],
        Some(OneOrMany::Many(v)) => v.clone(),
        Some(OneOrMany::Ids(_)) => return Err(ApiError::bad("`stop` must be a string or strings")),
    };
    if list.len() > MAX_STOPS || list.iter().any(|s| s.chars().count() > MAX_STOP_CHARS) {
        return Err(ApiError::bad(format!(
            "`stop` must be at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS} characters"
        )));
    }
    Ok(list.into_iter().filter(|s| !s.is_empty()).collect())
}

fn messages(list: Vec<Message>) -> Result<Vec<ChatMessage>, ApiError> {
    if list.is_empty() {
        return Err(ApiError::bad("`messages` must not be empty"));
    }
    let out: Vec<ChatMessage> = list
        .into_iter()
        .map(|m| {
            let role = match m.role.as_str() {
                "system" | "developer" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => return Err(ApiError::bad(format!("unsupported message role `{other}`"))),
            };
            let text = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => parts
                    .into_iter()
                    .filter(|p| p.kind == "text")
                    .filter_map(|p| p.text)
                    .collect::<Vec<_>>()
                    .join("\n"),
            };
            Ok(ChatMessage::new(role, text))
        })
        .collect::<Result<_, _>>()?;
    if !out.iter().any(|m| m.role == Role::User) {
        return Err(ApiError::bad(
            "messages must contain at least one user message",
        ));
    }
    Ok(out)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

/// The core's completion input from a request body.
fn completion_input(
    state: &AppState,
    b: Body,
    kind: Kind,
) -> Result<(CompletionInput, bool, bool, String), ApiError> {
    if b.n.is_some_and(|n| n != 1.0) {
        return Err(ApiError::bad("only n=1 is supported"));
    }
    let max = in_range("max_completion_tokens", b.max_completion_tokens, 1.0, 1e9)?.or(in_range(
        "max_tokens",
        b.max_tokens,
        1.0,
        1e9,
    )?);
    let sampling = sampling(state.core.sampling_for(None, None), &b)?;
    let stop = stops(&b)?;
    let (mut msgs, mut raw, mut ids) = (None, None, None);
    match kind {
        Kind::Chat => {
            msgs =
                Some(messages(b.messages.ok_or_else(|| {
                    ApiError::bad("`messages` must be an array")
                })?)?)
        }
        Kind::Text => match b.prompt {
            Some(OneOrMany::One(p)) => raw = Some(p),
            Some(OneOrMany::Many(mut v)) if v.len() == 1 => raw = v.pop(),
            Some(OneOrMany::Ids(v)) if !v.is_empty() => ids = Some(v),
            _ => {
                return Err(ApiError::bad(
                    "`prompt` must be a string or an array of token ids",
                ));
            }
        },
    }
    if raw.as_deref() == Some("") {
        return Err(ApiError::bad("prompt must not be empty"));
    }
    let model = b.model.unwrap_or_else(|| state.core.model_name());
    let include_usage = b.stream_options.unwrap_or_default().include_usage;
    let input = CompletionInput {
        messages: msgs,
        raw_prompt: raw,
        prompt_ids: ids,
        sampling,
        max_tokens: max.map(|m| m as u32),
        stop,
    };
    Ok((input, b.stream, include_usage, model))
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_prompt_tokens},
    })
}

fn finish_name(u: &Usage, max: Option<u32>) -> &'static str {
    if max.is_some_and(|m| u.completion_tokens >= m) {
        "length"
    } else {
        "stop"
    }
}

/// A running completion: its frames, the turn, and the slot it holds.
struct Running {
    rx: mpsc::Receiver<TurnFrame>,
    turn: TurnHandle,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Running {
    fn drop(&mut self) {
        // The client is gone (or the response is done): stop the generation.
        self.turn.cancel(CancelReason::Disconnected);
    }
}

struct Shape {
    kind: Kind,
    id: String,
    model: String,
    created: u64,
    max: Option<u32>,
}

impl Shape {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        match self.kind {
            Kind::Chat => {
                json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            }
            Kind::Text => {
                json!({"id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model, "choices": [{"index": 0, "text": delta.get("content").cloned().unwrap_or(json!("")),
                "finish_reason": finish, "logprobs": null}]})
            }
        }
    }

    /// SSE events of one frame (and whether the stream is over).
    fn events(&self, frame: TurnFrame, include_usage: bool) -> (Vec<Event>, bool) {
        let data = |v: Value| Event::default().data(v.to_string());
        match frame {
            TurnFrame::Token(t) => (vec![data(self.chunk(json!({"content": t}), None))], false),
            TurnFrame::Done(u) => {
                let mut evs = vec![data(self.chunk(json!({}), Some(finish_name(&u, self.max))))];
                if include_usage {
                    let mut last = self.chunk(json!({}), None);
                    last["choices"] = json!([]);
                    last["usage"] = usage_json(&u);
                    evs.push(data(last));
                }
                evs.push(Event::default().data("[DONE]"));
                (evs, true)
            }
            TurnFrame::Error(e) => {
                let err = json!({"error": {"message": e.message, "type": "server_error", "code": "engine_unavailable"}});
                (vec![data(err), Event::default().data("[DONE]")], true)
            }
            TurnFrame::Cancelled(CancelReason::Shutdown) => {
                let err = json!({"error": {"message": "the server is shutting down; retry", "type": "server_error", "code": "server_shutdown"}});
                (vec![data(err), Event::default().data("[DONE]")], true)
            }
            TurnFrame::Cancelled(_) => (Vec::new(), true),
            _ => (Vec::new(), false),
        }
    }
}

/// On shutdown, a completion runs on for up to `SHUTDOWN_GRACE_S`, then is cancelled (its stream
/// ends with an error event and `[DONE]`).
fn drain_on_shutdown(state: &AppState, turn: &TurnHandle) {
    let (stop, grace, turn) = (
        state.shutdown.clone(),
        state.config.shutdown_grace,
        turn.clone(),
    );
    tokio::spawn(async move {
        tokio::select! {
            _ = turn.wait() => {}
            () = stop.cancelled() => {
                if tokio::time::timeout(grace, turn.wait()).await.is_err() {
                    turn.cancel(CancelReason::Shutdown);
                }
            }
        }
    });
}

fn sse(running: Running, shape: Shape, include_usage: bool) -> Response {
    let first = (shape.kind == Kind::Chat)
        .then(|| shape.chunk(json!({"role": "assistant", "content": ""}), None));
    let head =
        stream::iter(first.map(|v| Ok::<_, Infallible>(Event::default().data(v.to_string()))));
    let body = stream::unfold(Some((running, shape)), move |st| async move {
        let (mut running, shape) = st?;
        let frame = running.rx.recv().await?;
        let (evs, end) = shape.events(frame, include_usage);
        Some((evs, (!end).then_some((running, shape))))
    })
    .flat_map(|evs| stream::iter(evs.into_iter().map(Ok)));
    let mut resp = Sse::new(head.chain(body)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

async fn collect(mut running: Running, shape: &Shape) -> Result<Value, ApiError> {
    let mut text = String::new();
    while let Some(frame) = running.rx.recv().await {
        match frame {
            TurnFrame::Token(t) => text.push_str(&t),
            TurnFrame::Done(u) => {
                let finish = finish_name(&u, shape.max);
                let choice = match shape.kind {
                    Kind::Chat => {
                        json!({"index": 0, "message": {"role": "assistant", "content": text},
                        "finish_reason": finish, "logprobs": null})
                    }
                    Kind::Text => {
                        json!({"index": 0, "text": text, "finish_reason": finish, "logprobs": null})
                    }
                };
                let object = if shape.kind == Kind::Chat {
                    "chat.completion"
                } else {
                    "text_completion"
                };
                return Ok(
                    json!({"id": shape.id, "object": object, "created": shape.created, "model": shape.model,
                    "choices": [choice], "usage": usage_json(&u)}),
                );
            }
            TurnFrame::Error(e) => return Err(e.into()),
            TurnFrame::Cancelled(_) => break,
            _ => {}
        }
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "the request ended early",
    ))
}

async fn run(
    state: AppState,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Bytes,
    kind: Kind,
) -> Result<Response, ApiError> {
    authorize(&state, peer, &headers)?;
    if !state.core.readiness().is_ready() || state.core.format().is_none() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the chat engine is not running",
        ));
    }
    let permit = acquire_slot(&state).await?;
    let parsed: Body = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("invalid request body: {e}")))?;
    let (input, stream, include_usage, model) = completion_input(&state, parsed, kind)?;
    let (tx, rx) = mpsc::channel(state.config.max_queued_frames.max(16));
    let max = input.max_tokens.or(Some(state.core.config().chat_max_out));
    let turn = state.core.complete(input, Arc::new(tx));
    drain_on_shutdown(&state, &turn);
    let prefix = if kind == Kind::Chat {
        "chatcmpl"
    } else {
        "cmpl"
    };
    let shape = Shape {
        kind,
        id: format!(
            "{prefix}-{:016x}",
            turn.id() ^ now_s().wrapping_mul(1_000_003)
        ),
        model,
        created: now_s(),
        max,
    };
    let running = Running {
        rx,
        turn,
        _permit: permit,
    };
    if stream {
        return Ok(sse(running, shape, include_usage));
    }
    Ok(Json(collect(running, &shape).await?).into_response())
}

pub(crate) async fn chat_completions(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    run(state, peer, headers, body, Kind::Chat)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub(crate) async fn completions(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    run(state, peer, headers, body, Kind::Text)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub(crate) async fn models(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = authorize(&state, peer, &headers) {
        return e.into_response();
    }
    let name = state.core.model_name();
    Json(json!({"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "yap"}]})).into_response()
}

pub(crate) async fn not_found() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "no such endpoint",
    )
    .into_response()
}
