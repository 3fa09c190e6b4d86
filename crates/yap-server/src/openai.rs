//! The OpenAI-compatible HTTP API: `/v1/chat/completions`, `/v1/completions`, `/v1/models`.
//! Same engines and API key as the WebSocket protocol; SSE streaming; a client disconnect drops
//! the generation stream, which aborts the generation.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;
use yap_core::{CompletionParams, TurnError};
use yap_engine::{ChatMessage, EngineEvent, FinishReason, GenerationStream, Role};
use yap_protocol::ErrorCode;

use crate::AppState;

/// An OpenAI-shaped error response.
pub(crate) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    param: Option<&'static str>,
}

impl ApiError {
    fn bad(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param,
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
            _ => "invalid_request",
        };
        let body = json!({"error": {
            "message": self.message, "type": self.kind, "param": self.param, "code": code,
        }});
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

impl From<TurnError> for ApiError {
    fn from(e: TurnError) -> Self {
        match e.code {
            ErrorCode::EngineUnavailable => Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                kind: "server_error",
                message: e.message,
                param: None,
            },
            ErrorCode::InternalError => Self {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                kind: "server_error",
                message: e.message,
                param: None,
            },
            _ => Self::bad(e.message, None),
        }
    }
}

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let key = bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    let ok = key.is_some_and(|k| bool::from(k.as_bytes().ct_eq(state.config.api_key.as_bytes())));
    if ok {
        Ok(())
    } else {
        Err(ApiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "invalid_request_error",
            message: "missing or invalid API key (Authorization: Bearer KEY, or X-API-Key)".into(),
            param: None,
        })
    }
}

fn ready(state: &AppState) -> Result<(), ApiError> {
    if state.core.engine().is_ready() {
        Ok(())
    } else {
        Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "server_error",
            message: "the chat engine is not running".into(),
            param: None,
        })
    }
}

/// HTTP requests share the connection slots of the WebSocket endpoint.
async fn acquire_slot(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    match tokio::time::timeout(
        state.config.acquire_timeout,
        std::sync::Arc::clone(&state.slots).acquire_owned(),
    )
    .await
    {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "rate_limit_error",
            message: format!(
                "server at capacity ({} connections); retry with backoff",
                state.config.max_connections
            ),
            param: None,
        }),
    }
}

fn parse_body(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad(
            "the request body must be a JSON object",
            None,
        )),
        Err(e) => Err(ApiError::bad(format!("invalid JSON body: {e}"), None)),
    }
}

fn num(
    body: &Map<String, Value>,
    key: &'static str,
    lo: f64,
    hi: f64,
) -> Result<Option<f64>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let v = n.as_f64().unwrap_or(f64::NAN);
            if v.is_finite() && (lo..=hi).contains(&v) {
                Ok(Some(v))
            } else {
                Err(ApiError::bad(
                    format!("`{key}`={v} is outside [{lo}, {hi}]"),
                    Some(key),
                ))
            }
        }
        Some(_) => Err(ApiError::bad(
            format!("`{key}` must be a number"),
            Some(key),
        )),
    }
}

struct Request {
    params: CompletionParams,
    stream: bool,
    include_usage: bool,
    model: String,
}

fn parse_common(state: &AppState, body: &Map<String, Value>) -> Result<Request, ApiError> {
    let mut sampling = state.core.config().default_sampling.clone();
    if let Some(v) = num(body, "temperature", 0.0, 2.0)? {
        sampling.temperature = v as f32;
    }
    if let Some(v) = num(body, "top_p", 0.0, 1.0)? {
        sampling.top_p = v as f32;
    }
    if let Some(v) = num(body, "top_k", 0.0, 1000.0)? {
        sampling.top_k = v as i32;
    }
    if let Some(v) = num(body, "min_p", 0.0, 1.0)? {
        sampling.min_p = v as f32;
    }
    if let Some(v) = num(body, "repetition_penalty", 0.5, 2.0)? {
        sampling.repetition_penalty = v as f32;
    }
    if let Some(v) = num(body, "presence_penalty", -2.0, 2.0)? {
        sampling.presence_penalty = v as f32;
    }
    if let Some(v) = num(body, "frequency_penalty", -2.0, 2.0)? {
        sampling.frequency_penalty = v as f32;
    }
    if let Some(v) = num(body, "seed", 0.0, u32::MAX as f64)? {
        sampling.seed = Some(v as u32);
    }
    let max_tokens = num(body, "max_completion_tokens", 1.0, 1e9)?
        .or(num(body, "max_tokens", 1.0, 1e9)?)
        .map(|v| v as u32);
    if let Some(n) = num(body, "n", 1.0, 1e9)?
        && n != 1.0
    {
        return Err(ApiError::bad("only n=1 is supported", Some("n")));
    }
    let stop = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.len() <= 4 => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::bad("`stop` must hold strings", Some("stop")))?,
        Some(_) => {
            return Err(ApiError::bad(
                "`stop` must be a string or an array of at most 4 strings",
                Some("stop"),
            ));
        }
    };
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad("`stream` must be a boolean", Some("stream"))),
    };
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| state.core.model_name());
    Ok(Request {
        params: CompletionParams {
            sampling,
            max_tokens,
            stop,
        },
        stream,
        include_usage,
        model,
    })
}

fn message_text(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

fn parse_messages(body: &Map<String, Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let Some(Value::Array(items)) = body.get("messages") else {
        return Err(ApiError::bad(
            "`messages` must be an array",
            Some("messages"),
        ));
    };
    if items.is_empty() {
        return Err(ApiError::bad(
            "`messages` must not be empty",
            Some("messages"),
        ));
    }
    items
        .iter()
        .map(|m| {
            let role = match m.get("role").and_then(Value::as_str) {
                Some("system" | "developer") => Role::System,
                Some("user") => Role::User,
                Some("assistant") => Role::Assistant,
                other => {
                    return Err(ApiError::bad(
                        format!("unsupported message role {other:?}"),
                        Some("messages"),
                    ));
                }
            };
            let text = m
                .get("content")
                .and_then(message_text)
                .ok_or_else(|| ApiError::bad("message content must be text", Some("messages")))?;
            Ok(ChatMessage::new(role, text))
        })
        .collect()
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn finish_name(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Prefilled => "stop",
    }
}

fn usage_json(u: &yap_engine::EngineUsage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_prompt_tokens},
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

async fn collect(
    mut stream: GenerationStream,
) -> Result<(String, yap_engine::EngineUsage, FinishReason), ApiError> {
    let mut text = String::new();
    while let Some(ev) = stream.next().await {
        match ev {
            EngineEvent::Text(t) => text.push_str(&t),
            EngineEvent::Finished { usage, reason } => return Ok((text, usage, reason)),
            EngineEvent::Failed(e) => return Err(TurnError::from(e).into()),
        }
    }
    Err(ApiError::from(TurnError {
        code: ErrorCode::EngineUnavailable,
        message: "engine stopped during the request".into(),
    }))
}

fn sse_stream(
    permit: tokio::sync::OwnedSemaphorePermit,
    stream: GenerationStream,
    kind: Kind,
    id: String,
    model: String,
    include_usage: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let created = now_s();
    let chunk = move |delta: Value, finish: Option<&str>| -> Value {
        match kind {
            Kind::Chat => json!({"id": id, "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
            Kind::Text => json!({"id": id, "object": "text_completion", "created": created,
                "model": model, "choices": [{"index": 0, "text": delta.get("content").cloned().unwrap_or(json!("")),
                "finish_reason": finish, "logprobs": null}]}),
        }
    };
    let first =
        (kind == Kind::Chat).then(|| chunk(json!({"role": "assistant", "content": ""}), None));
    let head = stream::iter(first.map(|v| Ok(Event::default().data(v.to_string()))));
    // The slot is held for as long as the stream lives (dropped with it on disconnect).
    let body = stream::unfold(Some((stream, chunk, permit)), move |state| async move {
        let (mut stream, chunk, permit) = state?;
        match stream.next().await {
            Some(EngineEvent::Text(t)) => {
                let ev = Event::default().data(chunk(json!({"content": t}), None).to_string());
                Some((vec![ev], Some((stream, chunk, permit))))
            }
            Some(EngineEvent::Finished { usage, reason }) => {
                let mut evs = vec![Event::default().data(chunk(json!({}), Some(finish_name(reason))).to_string())];
                if include_usage {
                    let mut last = chunk(json!({}), None);
                    last["choices"] = json!([]);
                    last["usage"] = usage_json(&usage);
                    evs.push(Event::default().data(last.to_string()));
                }
                evs.push(Event::default().data("[DONE]"));
                Some((evs, None))
            }
            Some(EngineEvent::Failed(e)) => {
                let err = json!({"error": {"message": e.to_string(), "type": "server_error", "code": "engine_unavailable"}});
                Some((vec![Event::default().data(err.to_string()), Event::default().data("[DONE]")], None))
            }
            None => None,
        }
    })
    .flat_map(|evs| stream::iter(evs.into_iter().map(Ok)));
    head.chain(body)
}

fn sse_response(s: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    let mut resp = Sse::new(s).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

async fn run(
    state: AppState,
    headers: HeaderMap,
    body: Bytes,
    kind: Kind,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    ready(&state)?;
    let permit = acquire_slot(&state).await?;
    let body = parse_body(&body)?;
    let req = parse_common(&state, &body)?;
    let stream = match kind {
        Kind::Chat => state
            .core
            .complete_chat(parse_messages(&body)?, req.params)?,
        Kind::Text => {
            let prompt = match body.get("prompt") {
                Some(Value::String(p)) => p.clone(),
                Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
                    a[0].as_str().unwrap_or_default().to_owned()
                }
                _ => return Err(ApiError::bad("`prompt` must be a string", Some("prompt"))),
            };
            state.core.complete_text(prompt, req.params)?
        }
    };
    let id = format!(
        "{}-{:016x}",
        if kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        },
        rand_id()
    );
    if req.stream {
        return Ok(sse_response(sse_stream(
            permit,
            stream,
            kind,
            id,
            req.model,
            req.include_usage,
        )));
    }
    let (text, usage, reason) = collect(stream).await?;
    drop(permit);
    let choice = match kind {
        Kind::Chat => json!({"index": 0, "message": {"role": "assistant", "content": text},
            "finish_reason": finish_name(reason), "logprobs": null}),
        Kind::Text => {
            json!({"index": 0, "text": text, "finish_reason": finish_name(reason), "logprobs": null})
        }
    };
    let object = if kind == Kind::Chat {
        "chat.completion"
    } else {
        "text_completion"
    };
    Ok(Json(
        json!({"id": id, "object": object, "created": now_s(), "model": req.model,
        "choices": [choice], "usage": usage_json(&usage)}),
    )
    .into_response())
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    now_s().wrapping_mul(1_000_003) ^ NEXT.fetch_add(1, Ordering::Relaxed)
}

pub(crate) async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    run(state, headers, body, Kind::Chat)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub(crate) async fn completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    run(state, headers, body, Kind::Text)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub(crate) async fn models(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    let name = state.core.model_name();
    Json(json!({"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "yap"}]}))
        .into_response()
}

pub(crate) async fn not_found() -> Response {
    ApiError {
        status: StatusCode::NOT_FOUND,
        kind: "invalid_request_error",
        message: "no such endpoint".into(),
        param: None,
    }
    .into_response()
}
