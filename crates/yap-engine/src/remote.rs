//! A remote engine: any OpenAI-compatible server (vLLM, trtllm-serve, SGLang, llama.cpp server,
//! another Yap) reached over HTTP, one or many replicas.
//!
//! Yap renders the prompt itself (the model's template, from a local GGUF of the same model) and
//! sends it to `/v1/completions`, so the persona/history layout and the engines' prefix caches
//! behave as with the embedded engine. Streaming SSE is parsed into text pieces; an abort drops
//! the request, which closes the connection (vLLM and trtllm-serve abort on disconnect).
//!
//! Replicas: sessions are routed by rendezvous hashing on the cache key (so a session's prefix
//! stays hot on one replica); unhealthy replicas are skipped (health checks run in the
//! background), a replica that fails before streaming is failed over to the next in the
//! session's order, and a saturated replica hands new turns to the least-loaded healthy one.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::text::TextModel;
use crate::{
    AbortHandle, ChatEngine, ChatMessage, EngineError, EngineEvent, EngineInfo, EngineStats,
    EngineUsage, FinishReason, GenerateRequest, GenerationStream,
};

/// Settings of a remote engine.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// Base URLs of the replicas (`http://host:port`, with or without `/v1`).
    pub urls: Vec<String>,
    /// Value of the `model` field in requests.
    pub model: String,
    /// Health path tried on each replica (`/health`; Yap answers it too).
    pub health_path: String,
    /// Seconds between health checks.
    pub health_interval: Duration,
    /// In-flight requests above which a replica counts as saturated.
    pub max_inflight_per_replica: usize,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Time allowed until the response headers arrive.
    pub request_timeout: Duration,
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
            model: "default".into(),
            health_path: "/health".into(),
            health_interval: Duration::from_secs(2),
            max_inflight_per_replica: 64,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
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
}

/// Rendezvous (highest random weight) order of replicas for a key.
pub fn rendezvous_order(key: &str, bases: &[&str]) -> Vec<usize> {
    let mut scored: Vec<(u64, usize)> = bases
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut h = DefaultHasher::new();
            key.hash(&mut h);
            b.hash(&mut h);
            (h.finish(), i)
        })
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
    text: TextModel,
    shared: Arc<Shared>,
    info: EngineInfo,
    health: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RemoteEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteEngine")
            .field("info", &self.info)
            .finish()
    }
}

impl Drop for RemoteEngine {
    fn drop(&mut self) {
        self.health.abort();
    }
}

async fn check_health(shared: &Shared, r: &Replica) -> bool {
    let url = format!("{}{}", r.base, shared.config.health_path);
    let ok = matches!(
        shared.client.get(&url).timeout(Duration::from_secs(2)).send().await,
        Ok(resp) if resp.status().is_success()
    );
    let was = r.healthy.swap(ok, Ordering::AcqRel);
    if was != ok {
        if ok {
            tracing::info!(replica = %r.base, "replica healthy");
        } else {
            warn!(replica = %r.base, "replica unhealthy");
        }
    }
    ok
}

impl RemoteEngine {
    /// Connects to the replicas (waits for one health check round); `vocab` is the served
    /// model's GGUF or HF folder (`tokenizer.json`, `tokenizer_config.json`), for the tokenizer
    /// and chat template. Needs a Tokio runtime.
    pub async fn start(config: RemoteConfig, vocab: &Path) -> Result<Self, EngineError> {
        if config.urls.is_empty() {
            return Err(EngineError::Unavailable("no engine URL given".into()));
        }
        let text = TextModel::load(vocab)?;
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| EngineError::Unavailable(format!("http client: {e}")))?;
        let shared = Arc::new(Shared {
            replicas: config.urls.iter().map(|u| Replica::new(u)).collect(),
            client,
            config: config.clone(),
            generations: AtomicU64::new(0),
            active: AtomicU64::new(0),
            cached: AtomicU64::new(0),
        });
        for r in &shared.replicas {
            check_health(&shared, r).await;
        }
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
            stop_sequences: text.stops.clone(),
        };
        Ok(Self {
            text,
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

async fn run_request(
    shared: Arc<Shared>,
    session: String,
    body: Value,
    order: Vec<usize>,
    tx: mpsc::UnboundedSender<EngineEvent>,
    abort: AbortHandle,
) {
    let mut last_err = String::from("no healthy replica");
    for idx in order {
        let replica = &shared.replicas[idx];
        replica.inflight.fetch_add(1, Ordering::AcqRel);
        shared.active.fetch_add(1, Ordering::AcqRel);
        let _guard = InflightGuard(replica, &shared.active);
        let url = format!("{}/v1/completions", replica.base);
        let mut post = shared
            .client
            .post(&url)
            .timeout(shared.config.request_timeout)
            .header("x-yap-session", session.as_str())
            .json(&body);
        if let Some(key) = &shared.config.api_key {
            post = post.bearer_auth(key);
        }
        let send = post.send();
        let resp = tokio::select! {
            _ = abort.aborted() => return,
            r = send => r,
        };
        let resp = match resp {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                last_err = format!(
                    "{} answered {status}: {}",
                    replica.base,
                    text.chars().take(200).collect::<String>()
                );
                if status.is_server_error() {
                    continue; // another replica may serve it
                }
                break;
            }
            Err(e) => {
                // Could not reach it: mark it down and fail over.
                replica.healthy.store(false, Ordering::Release);
                last_err = format!("{} unreachable: {e}", replica.base);
                continue;
            }
        };
        replica.requests.fetch_add(1, Ordering::AcqRel);
        stream_response(&shared, resp, &tx, &abort).await;
        return;
    }
    let _ = tx.send(EngineEvent::Failed(EngineError::Unavailable(last_err)));
}

async fn stream_response(
    shared: &Shared,
    resp: reqwest::Response,
    tx: &mpsc::UnboundedSender<EngineEvent>,
    abort: &AbortHandle,
) {
    // Dropping `resp` (or its stream) closes the connection: that is how the engine learns of
    // an abort.
    let mut bytes = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut usage = EngineUsage::default();
    let mut reason = FinishReason::Stop;
    let mut generated = 0u32;
    loop {
        let chunk = tokio::select! {
            _ = abort.aborted() => return,
            c = bytes.next() => c,
        };
        let chunk = match chunk {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                let _ = tx.send(EngineEvent::Failed(EngineError::Unavailable(format!(
                    "stream broke: {e}"
                ))));
                return;
            }
            None => break,
        };
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim().strip_prefix("data:").map(str::trim) else {
                continue;
            };
            if data == "[DONE]" {
                if usage.completion_tokens == 0 {
                    usage.completion_tokens = generated;
                }
                shared
                    .cached
                    .fetch_add(u64::from(usage.cached_prompt_tokens), Ordering::Relaxed);
                let _ = tx.send(EngineEvent::Finished { usage, reason });
                return;
            }
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if let Some(err) = v.get("error") {
                let _ = tx.send(EngineEvent::Failed(EngineError::Unavailable(format!(
                    "engine error: {err}"
                ))));
                return;
            }
            if let Some(choice) = v.pointer("/choices/0") {
                if let Some(t) = choice.get("text").and_then(Value::as_str)
                    && !t.is_empty()
                {
                    generated += 1;
                    let _ = tx.send(EngineEvent::Text(t.to_owned()));
                }
                match choice.get("finish_reason").and_then(Value::as_str) {
                    Some("length") => reason = FinishReason::Length,
                    Some(_) => reason = FinishReason::Stop,
                    None => {}
                }
            }
            if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0) as u32;
                usage = EngineUsage {
                    prompt_tokens: n("/prompt_tokens"),
                    completion_tokens: n("/completion_tokens"),
                    cached_prompt_tokens: n("/prompt_tokens_details/cached_tokens"),
                };
            }
        }
    }
    let _ = tx.send(EngineEvent::Failed(EngineError::Unavailable(
        "engine closed the stream before [DONE]".into(),
    )));
}

impl ChatEngine for RemoteEngine {
    fn info(&self) -> EngineInfo {
        self.info.clone()
    }

    fn is_ready(&self) -> bool {
        self.shared
            .replicas
            .iter()
            .any(|r| r.healthy.load(Ordering::Acquire))
    }

    fn render(&self, messages: &[ChatMessage]) -> Result<String, EngineError> {
        self.text.render(messages)
    }

    fn count_tokens(&self, text: &str) -> usize {
        self.text.count_tokens(text)
    }

    fn truncate_tokens(&self, text: &str, max_tokens: usize, keep_start: bool) -> String {
        self.text.truncate_tokens(text, max_tokens, keep_start)
    }

    fn generate(&self, request: GenerateRequest) -> Result<GenerationStream, EngineError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| EngineError::Unavailable("no async runtime".into()))?;
        let order = candidates(&self.shared, &request.cache_key);
        if order.is_empty() {
            return Err(EngineError::Unavailable("no healthy engine replica".into()));
        }
        let prompt_tokens = self.text.count_prompt_tokens(&request.prompt);
        if prompt_tokens + request.max_new_tokens as usize > self.info.context_tokens {
            return Err(EngineError::ContextOverflow {
                prompt: prompt_tokens + request.max_new_tokens as usize,
                context: self.info.context_tokens,
            });
        }
        let s = &request.sampling;
        let mut stop = self.info.stop_sequences.clone();
        stop.extend(request.stop);
        let mut body = json!({
            "model": self.shared.config.model,
            "prompt": request.prompt,
            "max_tokens": request.max_new_tokens.max(1),
            "temperature": s.temperature,
            "top_p": s.top_p,
            "top_k": if s.top_k > 0 { s.top_k } else { -1 },
            "min_p": s.min_p,
            "repetition_penalty": s.repetition_penalty,
            "presence_penalty": s.presence_penalty,
            "frequency_penalty": s.frequency_penalty,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if !stop.is_empty() {
            body["stop"] = json!(stop);
        }
        if let Some(seed) = s.seed {
            body["seed"] = json!(seed);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let abort = AbortHandle::new();
        self.shared.generations.fetch_add(1, Ordering::Relaxed);
        debug!(key = %request.cache_key, replica = order[0], "remote generation");
        runtime.spawn(run_request(
            Arc::clone(&self.shared),
            request.cache_key.clone(),
            body,
            order,
            tx,
            abort.clone(),
        ));
        Ok(GenerationStream::new(rx, abort))
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
}
