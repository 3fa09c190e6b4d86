//! Transport: axum `/ws` (both protocol dialects), `/healthz`, the OpenAI-compatible `/v1/*`.
//! This crate only translates between sockets and [`yap_core::Core`]: it never touches tokens
//! or a model.
//!
//! Invariants: every connection (WebSocket or HTTP request) holds one of the
//! `MAX_CONCURRENT_CONNECTIONS` slots while it runs and returns it however it ends; a correct
//! API key is never refused by the authentication-failure limit; outbound queues are bounded.

pub mod auth;
mod http;
pub mod limits;
pub mod listen;
pub mod metrics;
mod openai;
pub mod ws;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use clap::Args;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use yap_core::Core;
use yap_engine_api::config::parse_seconds;

/// Transport settings (env names from protocol.md / protocol-v1.md).
#[derive(Debug, Clone, Args)]
pub struct ServerConfig {
    /// Address to bind.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Port to bind (0 = any free port).
    #[arg(long, env = "PORT", default_value_t = 8000)]
    pub port: u16,
    /// API key clients must present (required).
    #[arg(long, env = "TEXT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Global connection slots (required).
    #[arg(
        long = "max-concurrent-connections",
        env = "MAX_CONCURRENT_CONNECTIONS"
    )]
    pub max_connections: Option<usize>,
    /// Seconds to wait for a connection slot.
    #[arg(long = "ws-handshake-acquire-timeout-s", env = "WS_HANDSHAKE_ACQUIRE_TIMEOUT_S",
        default_value = "0.5", value_parser = parse_seconds)]
    pub acquire_timeout: Duration,
    /// Seconds without inbound messages before the server closes a connection.
    #[arg(long = "ws-idle-timeout-s", env = "WS_IDLE_TIMEOUT_S", default_value = "150",
        value_parser = parse_seconds)]
    pub idle_timeout: Duration,
    /// Close code of an idle close.
    #[arg(long = "ws-close-idle-code", env = "WS_CLOSE_IDLE_CODE", default_value_t = yap_protocol::close_code::IDLE)]
    pub idle_close_code: u16,
    /// Largest inbound frame in bytes.
    #[arg(
        long = "ws-max-message-bytes",
        env = "WS_MAX_MESSAGE_BYTES",
        default_value_t = 65536
    )]
    pub max_message_bytes: usize,
    /// Comma-separated allowed browser origins (empty = any).
    #[arg(
        long = "ws-allowed-origins",
        env = "WS_ALLOWED_ORIGINS",
        default_value = "",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,
    /// The protocol v1 version accepted in `v`.
    #[arg(
        long = "ws-protocol-version",
        env = "WS_PROTOCOL_VERSION",
        default_value_t = 1
    )]
    pub protocol_version: i64,
    /// Rate-limit settings.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Most frames waiting for a slow reader before its connection is dropped (1008).
    #[arg(
        long = "ws-max-queued-frames",
        env = "WS_MAX_QUEUED_FRAMES",
        default_value_t = 1024
    )]
    pub max_queued_frames: usize,
    /// Most bytes waiting for a slow reader before its connection is dropped (1008).
    #[arg(long = "ws-max-queued-bytes", env = "WS_MAX_QUEUED_BYTES", default_value_t = 1 << 20)]
    pub max_queued_bytes: usize,
    /// Seconds a TCP connection may stay without a request in progress (headers not complete,
    /// or an idle keep-alive) before it is closed.
    #[arg(long = "http-header-timeout-s", env = "HTTP_HEADER_TIMEOUT_S", default_value = "10",
        value_parser = parse_seconds)]
    pub header_timeout: Duration,
    /// Seconds running turns may take to finish when the server shuts down (then sockets close
    /// with 1001).
    #[arg(long = "shutdown-grace-s", env = "SHUTDOWN_GRACE_S", default_value = "10", value_parser = parse_seconds)]
    pub shutdown_grace: Duration,
    /// Most TCP connections held before their WebSocket upgrade (idle ones are evicted first).
    #[arg(
        long = "max-pending-connections",
        env = "MAX_PENDING_CONNECTIONS",
        default_value_t = 512
    )]
    pub max_pending: usize,
    /// Key for `GET /metrics` (unset: open, like `/healthz`).
    #[arg(long, env = "METRICS_API_KEY", hide_env_values = true)]
    pub metrics_api_key: Option<String>,
    /// Comma-separated CIDRs (or addresses) allowed to read `/healthz`; others get 403
    /// (unset: anyone).
    #[arg(long = "health-allowed-cidrs", env = "HEALTH_ALLOWED_CIDRS", value_parser = http::parse_cidrs)]
    pub health_allowed_cidrs: Option<http::Cidrs>,
}

/// Rate limits (a limit or window of 0 disables it).
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// General messages per connection per window.
    #[arg(
        long = "ws-max-messages-per-window",
        env = "WS_MAX_MESSAGES_PER_WINDOW",
        default_value_t = 20
    )]
    pub messages: usize,
    /// Window of the message limit, seconds (default: `WS_RATE_LIMIT_WINDOW`, else 60).
    #[arg(long = "ws-message-window-seconds", env = "WS_MESSAGE_WINDOW_SECONDS", value_parser = parse_seconds)]
    pub messages_window: Option<Duration>,
    /// Cancels per connection per window.
    #[arg(
        long = "ws-max-cancels-per-window",
        env = "WS_MAX_CANCELS_PER_WINDOW",
        default_value_t = 20
    )]
    pub cancels: usize,
    /// Window of the cancel limit, seconds (default: `WS_RATE_LIMIT_WINDOW`, else 60).
    #[arg(long = "ws-cancel-window-seconds", env = "WS_CANCEL_WINDOW_SECONDS", value_parser = parse_seconds)]
    pub cancels_window: Option<Duration>,
    /// Failed authentications per client address per window.
    #[arg(
        long = "ws-max-auth-failures-per-window",
        env = "WS_MAX_AUTH_FAILURES_PER_WINDOW",
        default_value_t = 10
    )]
    pub auth_failures: usize,
    /// Window of the authentication-failure limit, seconds (default: `WS_RATE_LIMIT_WINDOW`,
    /// else 60).
    #[arg(long = "ws-auth-failure-window-seconds", env = "WS_AUTH_FAILURE_WINDOW_SECONDS", value_parser = parse_seconds)]
    pub auth_failures_window: Option<Duration>,
    /// The shared window of the three limits above when theirs is not set (protocol v1).
    #[arg(long = "ws-rate-limit-window", env = "WS_RATE_LIMIT_WINDOW", default_value = "60", value_parser = parse_seconds)]
    pub shared_window: Duration,
    /// Persona updates (`chat_prompt`) per session per window.
    #[arg(
        long = "chat-prompt-update-max-per-window",
        env = "CHAT_PROMPT_UPDATE_MAX_PER_WINDOW",
        default_value_t = 4
    )]
    pub persona_updates: usize,
    /// Window of the persona-update limit, seconds.
    #[arg(long = "chat-prompt-update-window-seconds", env = "CHAT_PROMPT_UPDATE_WINDOW_SECONDS", default_value = "60",
        value_parser = parse_seconds)]
    pub persona_updates_window: Duration,
}

impl ServerConfig {
    /// Defaults (and env) with the given key and connection limit.
    pub fn new(api_key: impl Into<String>, max_connections: usize) -> Result<Self, clap::Error> {
        #[derive(clap::Parser)]
        struct W {
            #[command(flatten)]
            c: ServerConfig,
        }
        let mut c = <W as clap::Parser>::try_parse_from(["yap"])?.c;
        c.api_key = Some(api_key.into());
        c.max_connections = Some(max_connections);
        Ok(c)
    }

    /// `MAX_CONCURRENT_CONNECTIONS`.
    pub fn max_connections(&self) -> usize {
        self.max_connections.unwrap_or(0)
    }
}

/// Shared state of the server.
#[derive(Debug, Clone)]
pub struct AppState {
    core: Arc<Core>,
    config: Arc<ServerConfig>,
    slots: Arc<Semaphore>,
    auth: Arc<auth::AuthGuard>,
    persona_updates: Arc<Mutex<limits::KeyedWindows>>,
    metrics_auth: Option<Arc<auth::AuthGuard>>,
    shutdown: CancellationToken,
}

impl AppState {
    /// State over a core.
    pub fn new(core: Arc<Core>, config: ServerConfig) -> Self {
        let slots = Arc::new(Semaphore::new(config.max_connections()));
        let l = &config.limits;
        let auth = auth::AuthGuard::new(
            config.api_key.clone().unwrap_or_default(),
            l.auth_failures,
            l.auth_failures_window.unwrap_or(l.shared_window),
        );
        let persona = limits::KeyedWindows::new(l.persona_updates, l.persona_updates_window);
        let metrics_auth = config
            .metrics_api_key
            .clone()
            .filter(|k| !k.is_empty())
            .map(|k| {
                Arc::new(auth::AuthGuard::new(
                    k,
                    l.auth_failures,
                    l.auth_failures_window.unwrap_or(l.shared_window),
                ))
            });
        Self {
            core,
            config: Arc::new(config),
            slots,
            auth: Arc::new(auth),
            persona_updates: Arc::new(Mutex::new(persona)),
            metrics_auth,
            shutdown: CancellationToken::new(),
        }
    }

    /// Connections holding a slot now.
    pub fn active_connections(&self) -> usize {
        self.config.max_connections() - self.slots.available_permits()
    }

    /// The core.
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// `SHUTDOWN_GRACE_S`.
    pub fn shutdown_grace(&self) -> Duration {
        self.config.shutdown_grace
    }

    /// Cancelled when the server shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// The axum router with every endpoint.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(http::healthz))
        .route("/health", get(http::healthz))
        .route("/metrics", get(metrics::handler))
        .route("/ws", get(ws::handler))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::models))
        .fallback(openai::not_found)
        .with_state(state)
}

/// Serves until `shutdown` is cancelled: accepts connections with the listener's bounds.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let limits = listen::ListenLimits {
        idle: state.config.header_timeout,
        max_pending: state.config.max_pending.max(1),
    };
    let stop = state.shutdown.clone();
    let app = router(state);
    let result = listen::serve(listener, app, limits, shutdown).await;
    stop.cancel();
    result
}

/// The address a listener is bound to, for logs.
pub fn describe(addr: SocketAddr) -> String {
    format!("ws://{addr}/ws, http://{addr}/healthz, http://{addr}/v1, http://{addr}/metrics")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        let c = ServerConfig::new("k", 4).unwrap();
        assert_eq!(c.max_connections(), 4);
        assert_eq!(c.acquire_timeout, Duration::from_millis(500));
        assert_eq!(c.idle_timeout, Duration::from_secs(150));
        assert_eq!(c.limits.messages, 20);
        assert!(c.allowed_origins.is_empty() || c.allowed_origins == [String::new()]);
    }
}
