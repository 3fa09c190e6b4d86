//! Transport: the axum server. `GET /healthz`, and `GET /ws` speaking the turn protocol of
//! `protocol.md`. This crate moves frames between sockets and [`yap_core::Core`]; it never
//! touches a model.

pub mod limits;
mod openai;
mod ws;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use yap_core::Core;

/// Transport settings (env names from protocol.md).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `TEXT_API_KEY`.
    pub api_key: String,
    /// `MAX_CONCURRENT_CONNECTIONS`.
    pub max_connections: usize,
    /// `WS_HANDSHAKE_ACQUIRE_TIMEOUT_S`.
    pub acquire_timeout: Duration,
    /// `WS_IDLE_TIMEOUT_S`.
    pub idle_timeout: Duration,
    /// `WS_CLOSE_IDLE_CODE`.
    pub idle_close_code: u16,
    /// `WS_MAX_MESSAGE_BYTES`.
    pub max_message_bytes: usize,
    /// `WS_ALLOWED_ORIGINS` (empty = any).
    pub allowed_origins: Vec<String>,
    /// `WS_MAX_MESSAGES_PER_WINDOW` / `WS_MESSAGE_WINDOW_SECONDS` (0 disables).
    pub messages_per_window: (usize, Duration),
    /// `WS_MAX_CANCELS_PER_WINDOW` / `WS_CANCEL_WINDOW_SECONDS`.
    pub cancels_per_window: (usize, Duration),
    /// `WS_MAX_AUTH_FAILURES_PER_WINDOW` / `WS_AUTH_FAILURE_WINDOW_SECONDS`, per client address.
    pub auth_failures_per_window: (usize, Duration),
    /// `CHAT_PROMPT_UPDATE_MAX_PER_WINDOW` / `CHAT_PROMPT_UPDATE_WINDOW_SECONDS`, per session.
    pub persona_updates_per_window: (usize, Duration),
}

impl ServerConfig {
    /// Defaults from protocol.md with the given key and connection limit.
    pub fn new(api_key: impl Into<String>, max_connections: usize) -> Self {
        Self {
            api_key: api_key.into(),
            max_connections,
            acquire_timeout: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(150),
            idle_close_code: yap_protocol::close_code::IDLE,
            max_message_bytes: 65536,
            allowed_origins: Vec::new(),
            messages_per_window: (20, Duration::from_secs(60)),
            cancels_per_window: (20, Duration::from_secs(60)),
            auth_failures_per_window: (10, Duration::from_secs(60)),
            persona_updates_per_window: (4, Duration::from_secs(60)),
        }
    }
}

/// Shared state of the server.
#[derive(Debug, Clone)]
pub struct AppState {
    core: Arc<Core>,
    config: Arc<ServerConfig>,
    slots: Arc<Semaphore>,
    auth_failures: Arc<Mutex<limits::KeyedWindows>>,
    persona_updates: Arc<Mutex<limits::KeyedWindows>>,
}

impl AppState {
    /// State over a core.
    pub fn new(core: Arc<Core>, config: ServerConfig) -> Self {
        let slots = Arc::new(Semaphore::new(config.max_connections));
        let (af, afw) = config.auth_failures_per_window;
        let (pu, puw) = config.persona_updates_per_window;
        Self {
            core,
            config: Arc::new(config),
            slots,
            auth_failures: Arc::new(Mutex::new(limits::KeyedWindows::new(af, afw))),
            persona_updates: Arc::new(Mutex::new(limits::KeyedWindows::new(pu, puw))),
        }
    }

    /// Connections holding a slot now.
    pub fn active_connections(&self) -> usize {
        self.config.max_connections - self.slots.available_permits()
    }
}

/// The axum router with every endpoint.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/health", get(healthz))
        .route("/ws", get(ws::handler))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::models))
        .fallback(openai::not_found)
        .with_state(state)
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let info = state.core.engine().info();
    let ready = state.core.engine().is_ready();
    let stats = state.core.engine().stats();
    let body = json!({
        "status": if ready { "ok" } else { "unavailable" },
        "engine": info.kind,
        "model": info.model,
        "connections": {
            "active": state.active_connections(),
            "max": state.config.max_connections,
        },
        "running_turns": state.core.running_turns(),
        "engine_stats": {
            "active_generations": stats.active_generations,
            "steps": stats.steps,
            "peak_batch_sequences": stats.peak_batch_sequences,
            "generations": stats.generations,
            "cached_prompt_tokens": stats.cached_prompt_tokens,
            "shared_prefix_tokens": stats.shared_prefix_tokens,
        },
        "deploy_mode": match state.core.config().deploy_mode {
            yap_core::DeployMode::Both => "both",
            yap_core::DeployMode::Chat => "chat",
            yap_core::DeployMode::Tool => "tool",
        },
        "tool": state.core.tool().map(|t| {
            let st = t.stats();
            json!({
                "model": t.name(),
                "labels": t.labels(),
                "max_tokens": t.max_tokens(),
                "threshold": state.core.config().tool_threshold,
                "classified": st.classified,
                "batches": st.batches,
                "peak_batch": st.peak_batch,
                "skipped_cancelled": st.skipped_cancelled,
            })
        }),
        "reason": if ready { None } else { Some("chat engine is not running") },
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Frames are small and latency is the product: no Nagle delay on any connection.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
