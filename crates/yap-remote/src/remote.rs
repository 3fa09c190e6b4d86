//! A remote engine: one or more OpenAI-compatible servers (replicas) reached over HTTP.
//!
//! - Requests go to `/v1/completions` with the prompt as **token ids** (so the engine adds no
//!   second BOS and never re-tokenizes special-token text), streamed as SSE.
//! - Sessions are routed by rendezvous hashing of the cache key with a hash that is stable across
//!   builds (FNV-1a): a session's prefix stays hot on one replica; losing a replica moves only
//!   its own sessions. Unhealthy replicas are skipped; a replica that fails before streaming is
//!   failed over to the session's next choice; a saturated first choice yields to the
//!   least-loaded healthy replica.
//! - Cancellation: dropping the stream closes the HTTP request, which is how engines abort.
//! - Timeouts are per phase: connect, first byte (headers), and between two chunks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tracing::{debug, info, warn};
use yap_engine_api::{
    ChatEngine, EngineError, EngineEvent, EngineInfo, EngineRequest, EngineStats, EngineUsage,
    FinishReason, GenerationStream, Readiness, StreamSender,
};

/// Which server speaks at the other end (parameter names differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineFlavor {
    /// vLLM (`repetition_penalty`, `top_k` -1 = off). Also Yap and unknown servers.
    #[default]
    Vllm,
    /// SGLang (vLLM's names; `top_k` -1 = off).
    Sglang,
    /// llama.cpp's llama-server (`repeat_penalty`, `top_k` 0 = off, `cache_prompt`).
    LlamaServer,
    /// TensorRT-LLM's trtllm-serve (`repetition_penalty`; `top_k` left out when off: 0 / unset
    /// is its "off", -1 is not).
    Trtllm,
}

impl EngineFlavor {
    /// The flavor a `GET /v1/models` entry's `owned_by` names (`vllm`, `sglang`, `llamacpp`,
    /// `tensorrt_llm`), if it names one.
    pub fn from_owned_by(owned_by: &str) -> Option<Self> {
        let o = owned_by.to_ascii_lowercase();
        if o.contains("llama") {
            Some(Self::LlamaServer)
        } else if o.contains("sglang") {
            Some(Self::Sglang)
        } else if o.contains("tensorrt") || o.contains("trt") {
            Some(Self::Trtllm)
        } else if o.contains("vllm") {
            Some(Self::Vllm)
        } else {
            None
        }
    }
}

/// Settings of a remote engine.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// Base URLs of the replicas (`http://host:port`, with or without `/v1`).
    pub urls: Vec<String>,
    /// Value of the `model` field; empty = ask the engine (`GET /v1/models`).
    pub model: String,
    /// Parameter dialect.
    pub flavor: EngineFlavor,
    /// Take the dialect from the engine (`owned_by` of `GET /v1/models`, else llama-server's
    /// `GET /props`) instead of `flavor` (`--engine openai`).
    pub detect_flavor: bool,
    /// Health path tried on each replica (`/health`; Yap answers it too).
    pub health_path: String,
    /// Time between health checks.
    pub health_interval: Duration,
    /// In-flight requests above which a replica counts as saturated.
    pub max_inflight_per_replica: usize,
    /// TCP connect timeout (`ENGINE_CONNECT_TIMEOUT_S`).
    pub connect_timeout: Duration,
    /// Until the response headers arrive (`ENGINE_FIRST_BYTE_TIMEOUT_S`).
    pub first_byte_timeout: Duration,
    /// Between two streamed chunks (`ENGINE_CHUNK_TIMEOUT_S`).
    pub chunk_timeout: Duration,
    /// Context per sequence (`CHAT_MAX_LEN`).
    pub context_tokens: usize,
    /// Bearer token for the engines (`ENGINE_API_KEY`).
    pub api_key: Option<String>,
}

impl RemoteConfig {
    /// Defaults for some URLs.
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            model: String::new(),
            flavor: EngineFlavor::Vllm,
            detect_flavor: false,
            health_path: "/health".into(),
            health_interval: Duration::from_secs(2),
            max_inflight_per_replica: 64,
            connect_timeout: Duration::from_secs(2),
            first_byte_timeout: Duration::from_secs(30),
            chunk_timeout: Duration::from_secs(10),
            context_tokens: 5525,
            api_key: None,
        }
    }
}

/// One replica and its live state.
#[derive(Debug)]
pub struct Replica {
    base: String,
    healthy: AtomicBool,
    inflight: AtomicUsize,
    requests: AtomicU64,
}

impl Replica {
    fn new(url: &str) -> Self {
        let base = url.trim_end_matches('/').trim_end_matches("/v1").to_owned();
        Self {
            base,
            healthy: AtomicBool::new(true),
            inflight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
        }
    }

    fn mark(&self, ok: bool, why: &str) {
        let up = if ok { 1.0 } else { 0.0 };
        metrics::gauge!("yap_engine_replica_healthy", "replica" => self.base.clone()).set(up);
        let up = if ok { 1.0 } else { 0.0 };
        metrics::gauge!("yap_engine_replica_healthy", "replica" => self.base.clone()).set(up);
        if self.healthy.swap(ok, Ordering::AcqRel) != ok {
            if ok {
                info!(replica = %self.base, "replica healthy");
            } else {
                warn!(replica = %self.base, reason = %why, "replica marked down");
            }
        } else if !ok {
            debug!(replica = %self.base, reason = %why, "replica still down");
        }
    }
}

/// FNV-1a, 64 bit: a hash that is the same in every build (std's `DefaultHasher` may change).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Rendezvous (highest random weight) order of replicas for a key.
pub fn rendezvous_order(key: &str, bases: &[&str]) -> Vec<usize> {
    let mut scored: Vec<(u64, usize)> = bases
        .iter()
        .enumerate()
        .map(|(i, b)| (fnv1a(&[key.as_bytes(), b.as_bytes()]), i))
        .collect();
    scored.sort_by_key(|s| std::cmp::Reverse(s.0));
    scored.into_iter().map(|(_, i)| i).collect()
}

struct Shared {
    replicas: Vec<Replica>,
    client: reqwest::Client,
    config: RemoteConfig,
    generations: AtomicU64,
    active: AtomicU64,
    cached: AtomicU64,
}

/// The remote engine.
pub struct RemoteEngine {
    shared: Arc<Shared>,
    info: EngineInfo,
    health: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RemoteEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteEngine")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Drop for RemoteEngine {
    fn drop(&mut self) {
        self.health.abort();
    }
}

/// A replica is healthy when its health path answers 2xx, or else its `/readiness` does: a
/// router (vllm-router, sglang-router) answers 503 on `/health` as soon as one of its workers is
/// down, while it still serves every session on the others and says so on `/readiness`. Engines
/// have no `/readiness` (404), so a sick engine stays unhealthy (`/v1/models` would not do: vLLM's
/// API server lists its model even when its engine has died).
async fn check_health(shared: &Shared, r: &Replica) -> bool {
    let get = |path: &str| {
        let mut req = shared
            .client
            .get(format!("{}{path}", r.base))
            .timeout(Duration::from_secs(2));
        if let Some(key) = &shared.config.api_key {
            req = req.bearer_auth(key);
        }
        req.send()
    };
    let ok = match get(&shared.config.health_path).await {
        Ok(resp) if resp.status().is_success() => true,
        Ok(_) => matches!(get("/readiness").await, Ok(resp) if resp.status().is_success()),
        Err(_) => false,
    };
    r.mark(ok, "health check failed");
    ok
}

/// A GET of JSON from the first replica that answers it.
async fn get_json(shared: &Shared, path: &str) -> Option<Value> {
    for r in &shared.replicas {
        let url = format!("{}{path}", r.base);
        let mut get = shared.client.get(&url).timeout(Duration::from_secs(5));
        if let Some(key) = &shared.config.api_key {
            get = get.bearer_auth(key);
        }
        let Ok(resp) = get.send().await else { continue };
        if !resp.status().is_success() {
            continue;
        }
        if let Ok(v) = resp.json::<Value>().await {
            return Some(v);
        }
    }
    None
}

/// The first model a replica lists at `GET /v1/models`: its id and `owned_by`.
async fn served_model(shared: &Shared) -> Option<(String, String)> {
    let v = get_json(shared, "/v1/models").await?;
    let id = v.pointer("/data/0/id").and_then(Value::as_str)?;
    let owner = v.pointer("/data/0/owned_by").and_then(Value::as_str);
    Some((id.to_owned(), owner.unwrap_or_default().to_owned()))
}

/// The engine's dialect from what it says about itself.
async fn detect_flavor(shared: &Shared, owned_by: &str) -> Option<EngineFlavor> {
    if let Some(f) = EngineFlavor::from_owned_by(owned_by) {
        return Some(f);
    }
    // llama-server answers `GET /props` with its build and default generation settings.
    let props = get_json(shared, "/props").await?;
    (props.get("default_generation_settings").is_some() || props.get("build_info").is_some())
        .then_some(EngineFlavor::LlamaServer)
}

impl RemoteEngine {
    /// Connects to the replicas (waits for one health check round). Needs a Tokio runtime.
    pub async fn start(mut config: RemoteConfig) -> Result<Self, EngineError> {
        if config.urls.is_empty() {
            return Err(EngineError::Unavailable("no engine URL given".into()));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| EngineError::Unavailable(format!("http client: {e}")))?;
        let mut shared = Shared {
            replicas: config.urls.iter().map(|u| Replica::new(u)).collect(),
            client,
            config: config.clone(),
            generations: AtomicU64::new(0),
            active: AtomicU64::new(0),
            cached: AtomicU64::new(0),
        };
        for r in &shared.replicas {
            check_health(&shared, r).await;
        }
        let listed = if config.model.is_empty() || config.detect_flavor {
            served_model(&shared).await
        } else {
            None
        };
        if config.model.is_empty() {
            config.model = listed.as_ref().map(|l| l.0.clone()).unwrap_or_default();
            if config.model.is_empty() {
                warn!("no model name given and the engine lists none at GET /v1/models");
            } else {
                info!(model = %config.model, "serving the engine's model (GET /v1/models)");
            }
        }
        if config.detect_flavor {
            let owner = listed.as_ref().map(|l| l.1.as_str()).unwrap_or_default();
            if let Some(f) = detect_flavor(&shared, owner).await {
                config.flavor = f;
            }
            info!(flavor = ?config.flavor, owned_by = %owner, "engine dialect");
        }
        shared.config = config.clone();
        let shared = Arc::new(shared);
        let bg = Arc::clone(&shared);
        let health = tokio::spawn(async move {
            loop {
                tokio::time::sleep(bg.config.health_interval).await;
                for r in &bg.replicas {
                    check_health(&bg, r).await;
                }
            }
        });
        let info = EngineInfo {
            kind: "remote".into(),
            model: config.model.clone(),
            context_tokens: config.context_tokens,
        };
        Ok(Self {
            shared,
            info,
            health,
        })
    }

    /// Per replica: (base URL, healthy, in-flight, requests served).
    pub fn replica_states(&self) -> Vec<(String, bool, usize, u64)> {
        self.shared
            .replicas
            .iter()
            .map(|r| {
                (
                    r.base.clone(),
                    r.healthy.load(Ordering::Acquire),
                    r.inflight.load(Ordering::Acquire),
                    r.requests.load(Ordering::Acquire),
                )
            })
            .collect()
    }
}

/// The candidates for a key: rendezvous order over healthy replicas; when the first is
/// saturated, the least-loaded healthy replica goes first.
fn candidates(shared: &Shared, key: &str) -> Vec<usize> {
    let bases: Vec<&str> = shared.replicas.iter().map(|r| r.base.as_str()).collect();
    let mut order: Vec<usize> = rendezvous_order(key, &bases)
        .into_iter()
        .filter(|&i| shared.replicas[i].healthy.load(Ordering::Acquire))
        .collect();
    if let Some(&first) = order.first() {
        let max = shared.config.max_inflight_per_replica;
        if shared.replicas[first].inflight.load(Ordering::Acquire) >= max
            && let Some(pos) = (0..order.len())
                .min_by_key(|&p| shared.replicas[order[p]].inflight.load(Ordering::Acquire))
        {
            let least = order.remove(pos);
            order.insert(0, least);
        }
    }
    order
}

struct InflightGuard<'a>(&'a Replica, &'a AtomicU64);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
        self.1.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The request body in the engine's dialect.
fn request_body(config: &RemoteConfig, request: &EngineRequest) -> Value {
    let s = &request.sampling;
    let mut body = json!({
        "model": config.model,
        "prompt": request.prompt,
        "max_tokens": request.max_new_tokens.max(1),
        "temperature": s.temperature,
        "top_p": s.top_p,
        "min_p": s.min_p,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "stream": true,
        "stream_options": {"include_usage": true},
        "user": request.cache_key,
    });
    match config.flavor {
        EngineFlavor::LlamaServer => {
            body["repeat_penalty"] = json!(s.repetition_penalty);
            body["top_k"] = json!(s.top_k.max(0));
            body["cache_prompt"] = json!(true);
        }
        EngineFlavor::Vllm | EngineFlavor::Sglang => {
            body["repetition_penalty"] = json!(s.repetition_penalty);
            body["top_k"] = json!(if s.top_k > 0 { s.top_k } else { -1 });
        }
        EngineFlavor::Trtllm => {
            body["repetition_penalty"] = json!(s.repetition_penalty);
            if s.top_k > 0 {
                body["top_k"] = json!(s.top_k);
            }
        }
    }
    if let Some(seed) = s.seed {
        body["seed"] = json!(seed);
    }
    body
}

/// Posts to one replica; `Err((message, try_next))` when it cannot serve.
async fn post(
    shared: &Shared,
    replica: &Replica,
    session: &str,
    body: &Value,
) -> Result<reqwest::Response, (String, bool)> {
    let url = format!("{}/v1/completions", replica.base);
    // One routing key, under every name a router reads: vllm-router's `consistent_hash` policy
    // (`x-session-id`, or the body's `user`), sglang-router's `manual` policy
    // (`x-smg-routing-key`), and Yap's own `x-yap-session`.
    let mut post = shared
        .client
        .post(&url)
        .header("x-yap-session", session)
        .header("x-session-id", session)
        .header("x-smg-routing-key", session)
        .json(body);
    if let Some(key) = &shared.config.api_key {
        post = post.bearer_auth(key);
    }
    match tokio::time::timeout(shared.config.first_byte_timeout, post.send()).await {
        Err(_) => {
            replica.mark(false, "no response headers in time");
            Err((format!("{} sent no headers in time", replica.base), true))
        }
        Ok(Err(e)) => {
            replica.mark(false, &format!("request failed: {e}"));
            Err((format!("{} unreachable: {e}", replica.base), true))
        }
        Ok(Ok(r)) if r.status().is_success() => Ok(r),
        Ok(Ok(r)) => {
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            let msg = format!(
                "{} answered {status}: {}",
                replica.base,
                text.chars().take(200).collect::<String>()
            );
            Err((msg, status.is_server_error()))
        }
    }
}

async fn run_request(
    shared: Arc<Shared>,
    session: String,
    body: Value,
    order: Vec<usize>,
    tx: StreamSender,
) {
    let mut last_err = EngineError::Unavailable("no healthy replica".into());
    for idx in order {
        let replica = &shared.replicas[idx];
        replica.inflight.fetch_add(1, Ordering::AcqRel);
        shared.active.fetch_add(1, Ordering::AcqRel);
        let _guard = InflightGuard(replica, &shared.active);
        let resp = tokio::select! {
            () = tx.cancelled() => return,
            r = post(&shared, replica, &session, &body) => r,
        };
        match resp {
            Ok(resp) => {
                replica.requests.fetch_add(1, Ordering::AcqRel);
                stream_response(&shared, resp, &tx).await;
                return;
            }
            Err((msg, true)) => last_err = EngineError::Unavailable(msg),
            Err((msg, false)) => {
                last_err = EngineError::Rejected(msg);
                break;
            }
        }
    }
    tx.send(EngineEvent::Failed(last_err));
}

/// What one SSE data line means.
fn parse_chunk(
    data: &str,
    usage: &mut EngineUsage,
    reason: &mut FinishReason,
) -> Result<Option<String>, EngineError> {
    let Ok(v) = serde_json::from_str::<Value>(data) else {
        return Ok(None);
    };
    if let Some(err) = v.get("error") {
        return Err(EngineError::Unavailable(format!("engine error: {err}")));
    }
    let mut text = None;
    if let Some(choice) = v.pointer("/choices/0") {
        if let Some(t) = choice.get("text").and_then(Value::as_str)
            && !t.is_empty()
        {
            text = Some(t.to_owned());
        }
        match choice.get("finish_reason").and_then(Value::as_str) {
            Some("length") => *reason = FinishReason::Length,
            Some(_) => *reason = FinishReason::Stop,
            None => {}
        }
    }
    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
        let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0) as u32;
        *usage = EngineUsage {
            prompt_tokens: n("/prompt_tokens"),
            completion_tokens: n("/completion_tokens"),
            cached_prompt_tokens: n("/prompt_tokens_details/cached_tokens"),
        };
    }
    Ok(text)
}

async fn stream_response(shared: &Shared, resp: reqwest::Response, tx: &StreamSender) {
    // Dropping the response (or its stream) closes the connection: that is how the engine
    // learns of a cancellation.
    let mut events = resp.bytes_stream().eventsource();
    let mut usage = EngineUsage::default();
    let mut reason = FinishReason::Stop;
    let mut pieces = 0u32;
    let limit = shared.config.chunk_timeout;
    loop {
        let next = tokio::select! {
            () = tx.cancelled() => return,
            n = tokio::time::timeout(limit, events.next()) => n,
        };
        let event = match next {
            Err(_) => Err(EngineError::Unavailable(format!("no chunk for {limit:?}"))),
            Ok(None) => Err(EngineError::Unavailable(
                "engine closed the stream before [DONE]".into(),
            )),
            Ok(Some(Err(e))) => Err(EngineError::Unavailable(format!("stream broke: {e}"))),
            Ok(Some(Ok(ev))) => Ok(ev),
        };
        let event = match event {
            Ok(ev) => ev,
            Err(e) => {
                tx.send(EngineEvent::Failed(e));
                return;
            }
        };
        if event.data.trim() == "[DONE]" {
            if usage.completion_tokens == 0 {
                usage.completion_tokens = pieces;
            }
            shared
                .cached
                .fetch_add(u64::from(usage.cached_prompt_tokens), Ordering::Relaxed);
            tx.send(EngineEvent::Finished { usage, reason });
            return;
        }
        match parse_chunk(&event.data, &mut usage, &mut reason) {
            Ok(Some(text)) => {
                pieces += 1;
                tx.send(EngineEvent::Text(text));
            }
            Ok(None) => {}
            Err(e) => {
                tx.send(EngineEvent::Failed(e));
                return;
            }
        }
    }
}

impl ChatEngine for RemoteEngine {
    fn info(&self) -> EngineInfo {
        self.info.clone()
    }

    fn readiness(&self) -> Readiness {
        if self
            .shared
            .replicas
            .iter()
            .any(|r| r.healthy.load(Ordering::Acquire))
        {
            Readiness::Ready
        } else {
            Readiness::Down("no engine replica is healthy".into())
        }
    }

    fn generate(&self, request: EngineRequest) -> Result<GenerationStream, EngineError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| EngineError::Unavailable("no async runtime".into()))?;
        let order = candidates(&self.shared, &request.cache_key);
        if order.is_empty() {
            return Err(EngineError::Unavailable("no healthy engine replica".into()));
        }
        let total = request.prompt.len() + request.max_new_tokens as usize;
        if total > self.info.context_tokens {
            return Err(EngineError::ContextOverflow {
                prompt: total,
                context: self.info.context_tokens,
            });
        }
        let body = request_body(&self.shared.config, &request);
        let (stream, tx) = GenerationStream::channel();
        self.shared.generations.fetch_add(1, Ordering::Relaxed);
        debug!(key = %request.cache_key, replica = order[0], "remote generation");
        runtime.spawn(run_request(
            Arc::clone(&self.shared),
            request.cache_key,
            body,
            order,
            tx,
        ));
        Ok(stream)
    }

    fn release(&self, _cache_key: &str) {}

    fn stats(&self) -> EngineStats {
        EngineStats {
            active_generations: self.shared.active.load(Ordering::Relaxed),
            generations: self.shared.generations.load(Ordering::Relaxed),
            cached_prompt_tokens: self.shared.cached.load(Ordering::Relaxed),
            ..EngineStats::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(n: usize, max_inflight: usize) -> Shared {
        let mut config = RemoteConfig::new((0..n).map(|i| format!("http://r{i}:1")).collect());
        config.max_inflight_per_replica = max_inflight;
        Shared {
            replicas: config.urls.iter().map(|u| Replica::new(u)).collect(),
            client: reqwest::Client::new(),
            config,
            generations: AtomicU64::new(0),
            active: AtomicU64::new(0),
            cached: AtomicU64::new(0),
        }
    }

    #[test]
    fn candidates_skip_unhealthy_and_prefer_least_loaded_when_saturated() {
        let s = shared(3, 2);
        let natural = candidates(&s, "session-x");
        assert_eq!(natural.len(), 3);
        // The session's first choice goes down: its next choice serves, nothing else moves.
        s.replicas[natural[0]]
            .healthy
            .store(false, Ordering::Release);
        assert_eq!(candidates(&s, "session-x"), natural[1..].to_vec());
        s.replicas[natural[0]]
            .healthy
            .store(true, Ordering::Release);
        // The first choice is saturated: the least-loaded healthy replica goes first.
        s.replicas[natural[0]].inflight.store(2, Ordering::Release);
        s.replicas[natural[1]].inflight.store(1, Ordering::Release);
        s.replicas[natural[2]].inflight.store(0, Ordering::Release);
        assert_eq!(candidates(&s, "session-x")[0], natural[2]);
        // Not saturated: stickiness wins over load.
        s.replicas[natural[0]].inflight.store(1, Ordering::Release);
        assert_eq!(candidates(&s, "session-x")[0], natural[0]);
    }

    /// FNV-1a 64 of `session-42` + separator + `http://a:1` + separator, computed independently
    /// (Python: `h = (h ^ b) * 0x100000001b3 mod 2^64` per byte, `0xff` after each part).
    const PINNED: u64 = 15_152_052_410_954_057_396;

    #[test]
    fn hash_is_pinned_across_builds() {
        // FNV-1a with a separator per part: these values must never change, or every deployed
        // session would move to another replica on upgrade.
        assert_eq!(fnv1a(&[b"session-42", b"http://a:1"]), PINNED);
        assert_eq!(
            fnv1a(&[b"session-42", b"http://b:1"]),
            18_127_412_212_976_794_375
        );
        assert_eq!(
            fnv1a(&[b"session-42", b"http://c:1"]),
            7_571_588_175_798_113_274
        );
        // So the placement of this session over these replicas is fixed too: b, a, c.
        let order = rendezvous_order("session-42", &["http://a:1", "http://b:1", "http://c:1"]);
        assert_eq!(order, vec![1, 0, 2]);
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
    }

    #[test]
    fn flavors_are_detected_from_owned_by() {
        assert_eq!(
            EngineFlavor::from_owned_by("vllm"),
            Some(EngineFlavor::Vllm)
        );
        assert_eq!(
            EngineFlavor::from_owned_by("sglang"),
            Some(EngineFlavor::Sglang)
        );
        assert_eq!(
            EngineFlavor::from_owned_by("llamacpp"),
            Some(EngineFlavor::LlamaServer)
        );
        assert_eq!(
            EngineFlavor::from_owned_by("tensorrt_llm"),
            Some(EngineFlavor::Trtllm)
        );
        assert_eq!(EngineFlavor::from_owned_by("yap"), None);
    }

    #[test]
    fn each_engine_gets_its_parameter_names() {
        let mut req = EngineRequest {
            cache_key: "s".into(),
            prompt: vec![2, 5],
            prompt_text: "x".into(),
            sampling: yap_engine_api::SamplingParams::default(),
            max_new_tokens: 4,
        };
        req.sampling.top_k = 0;
        let mut c = RemoteConfig::new(vec!["http://x:1".into()]);
        let body = |c: &RemoteConfig| request_body(c, &req);
        c.flavor = EngineFlavor::Sglang;
        assert_eq!(body(&c)["top_k"], -1);
        assert!(body(&c).get("repetition_penalty").is_some());
        c.flavor = EngineFlavor::Trtllm;
        assert!(
            body(&c).get("top_k").is_none(),
            "trtllm-serve: -1 is not off"
        );
        assert!(body(&c).get("repetition_penalty").is_some());
        c.flavor = EngineFlavor::LlamaServer;
        assert_eq!(body(&c)["top_k"], 0);
        assert_eq!(body(&c)["cache_prompt"], true);
        req.sampling.top_k = 40;
        c.flavor = EngineFlavor::Trtllm;
        assert_eq!(request_body(&c, &req)["top_k"], 40);
    }

    #[test]
    fn llama_server_gets_its_own_parameter_names() {
        let req = EngineRequest {
            cache_key: "s".into(),
            prompt: vec![1, 2, 3],
            prompt_text: "abc".into(),
            sampling: yap_engine_api::SamplingParams::default(),
            max_new_tokens: 8,
        };
        let mut c = RemoteConfig::new(vec!["http://x:1".into()]);
        c.flavor = EngineFlavor::LlamaServer;
        let b = request_body(&c, &req);
        assert!(b.get("repeat_penalty").is_some() && b.get("repetition_penalty").is_none());
        assert_eq!(b["prompt"], json!([1, 2, 3]));
        assert_eq!(b["user"], "s");
        c.flavor = EngineFlavor::Vllm;
        let b = request_body(&c, &req);
        assert!(b.get("repetition_penalty").is_some() && b.get("repeat_penalty").is_none());
    }

    #[test]
    fn rendezvous_is_stable_and_spreads() {
        let bases = ["http://a:1", "http://b:1", "http://c:1"];
        let mut first = [0usize; 3];
        for i in 0..3000 {
            let key = format!("session-{i}");
            let o = rendezvous_order(&key, &bases);
            assert_eq!(o, rendezvous_order(&key, &bases));
            first[o[0]] += 1;
        }
        for n in first {
            assert!((800..1200).contains(&n), "uneven spread {first:?}");
        }
        // Removing a replica only moves the keys that were on it.
        let two = ["http://a:1", "http://b:1"];
        for i in 0..500 {
            let key = format!("session-{i}");
            let o3 = rendezvous_order(&key, &bases);
            if o3[0] != 2 {
                assert_eq!(two[rendezvous_order(&key, &two)[0]], bases[o3[0]]);
            }
        }
    }
    /// A `tracing` writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_replica_found_dead_by_a_request_is_marked_down_with_a_warning() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = Shared {
            replicas: vec![Replica::new(&format!("http://127.0.0.1:{port}"))],
            client: reqwest::Client::new(),
            config: RemoteConfig::new(vec![]),
            generations: AtomicU64::new(0),
            active: AtomicU64::new(0),
            cached: AtomicU64::new(0),
        };
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            // Healthy as far as the health checker knows; the request finds it dead.
            assert!(s.replicas[0].healthy.load(Ordering::Acquire));
            let r = rt.block_on(post(&s, &s.replicas[0], "sess", &json!({})));
            assert!(matches!(r, Err((_, true))));
        });
        assert!(!s.replicas[0].healthy.load(Ordering::Acquire));
        let log = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(
            log.contains("WARN")
                && log.contains("replica marked down")
                && log.contains("request failed"),
            "{log}"
        );
    }
}
