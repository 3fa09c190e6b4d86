//! `yap serve`: configuration (flags with protocol.md env fallbacks) and wiring of engine,
//! core and transport.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use tokio::net::TcpListener;
use yap_core::{Core, CoreConfig, DeployMode};
use yap_engine::ChatEngine;
use yap_engine::launch::LaunchConfig;
use yap_engine::llama::{LlamaConfig, LlamaEngine};
use yap_engine::none::NoChatEngine;
use yap_engine::remote::{RemoteConfig, RemoteEngine};
use yap_engine::supervise::{RotatingLog, Supervisor, SupervisorConfig};
use yap_engine::{fit, launch};
use yap_server::{AppState, ServerConfig};
use yap_tool::{ServiceConfig, ToolModel, ToolService};

use crate::model_fetch;

/// Flags of `yap serve`; every one has the env var of protocol.md (or a `YAP_`/`EMBEDDED_` one).
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
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
    #[arg(long, env = "MAX_CONCURRENT_CONNECTIONS")]
    pub max_concurrent_connections: Option<usize>,
    /// Chat engine: `embedded` (llama.cpp in-process) or `openai` (remote OpenAI-compatible
    /// servers given by --engine-url).
    #[arg(long = "engine", env = "INFERENCE_ENGINE", default_value = "embedded")]
    pub engine: String,
    /// Remote engine base URL(s); repeat the flag or separate with commas for replicas.
    #[arg(long = "engine-url", env = "ENGINE_URLS", value_delimiter = ',')]
    pub engine_url: Vec<String>,
    /// Launched engines: the model vLLM serves (HF id or path) or the TRT engine directory.
    #[arg(long, env = "ENGINE_MODEL")]
    pub engine_model: Option<String>,
    /// Launched engines: the program to run instead of `vllm` / `trtllm-serve` (a venv path,
    /// a wrapper; split on spaces).
    #[arg(long, env = "ENGINE_BIN")]
    pub engine_bin: Option<String>,
    /// Launched engines: the child's port.
    #[arg(long, env = "ENGINE_PORT", default_value_t = 8001)]
    pub engine_port: u16,
    /// GPU memory fraction for the chat engine.
    #[arg(long, env = "CHAT_GPU_FRAC", default_value_t = 0.90)]
    pub chat_gpu_frac: f64,
    /// KV cache dtype for launched engines (`auto`, `fp8`).
    #[arg(long, env = "KV_DTYPE")]
    pub kv_dtype: Option<String>,
    /// vLLM: no CUDA graphs.
    #[arg(long, env = "ENFORCE_EAGER", default_value_t = false, action = clap::ArgAction::Set)]
    pub enforce_eager: bool,
    /// `4bit` or `8bit` for a model that is not pre-quantized.
    #[arg(long, env = "QUANTIZATION")]
    pub quantization: Option<String>,
    /// Most concurrent sequences of a launched engine (vLLM `--max-num-seqs`).
    #[arg(long, env = "ENGINE_MAX_SEQS")]
    pub engine_max_seqs: Option<u64>,
    /// TRT: runtime batch size (≤ the engine's built max).
    #[arg(long, env = "TRT_BATCH_SIZE")]
    pub trt_batch_size: Option<u64>,
    /// TRT: max batch size to build engines with.
    #[arg(long, env = "TRT_MAX_BATCH_SIZE")]
    pub trt_max_batch_size: Option<u64>,
    /// TRT: fraction of free GPU memory for the KV cache.
    #[arg(long, env = "TRT_KV_FREE_GPU_FRAC", default_value_t = 0.85)]
    pub trt_kv_free_gpu_frac: f64,
    /// Fit check: the served model's config.json (default: ENGINE_MODEL/config.json when local).
    #[arg(long, env = "ENGINE_MODEL_CONFIG")]
    pub engine_model_config: Option<PathBuf>,
    /// Fit check: GPU memory in GiB (default: nvidia-smi).
    #[arg(long, env = "GPU_MEMORY_GIB")]
    pub gpu_memory_gib: Option<f64>,
    /// Fit check: GPU compute capability ×10, e.g. 90 (default: nvidia-smi, else 90).
    #[arg(long, env = "GPU_SM")]
    pub gpu_sm: Option<u32>,
    /// The rotated log of launched engines (100 MB × 3 kept).
    #[arg(long, env = "LOG_FILE", default_value = "server.log")]
    pub log_file: PathBuf,
    /// Launched engines: print the derived command (after the fit check) and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds a launched engine may take to become healthy.
    #[arg(long, env = "ENGINE_STARTUP_TIMEOUT_S", default_value_t = 900.0)]
    pub engine_startup_timeout_s: f64,
    /// API key sent to remote engines (`Authorization: Bearer`).
    #[arg(long, env = "ENGINE_API_KEY", hide_env_values = true)]
    pub engine_api_key: Option<String>,
    /// Seconds between health checks of remote engine replicas.
    #[arg(long, env = "ENGINE_HEALTH_INTERVAL_S", default_value_t = 2.0)]
    pub engine_health_interval_s: f64,
    /// Model name sent to remote engines (default: the GGUF's name).
    #[arg(long, env = "ENGINE_MODEL_NAME")]
    pub engine_model_name: Option<String>,
    /// GGUF chat model (embedded engine: the weights; remote engines: its tokenizer and chat
    /// template). Default: Gemma 3 270M fetched into the cache on first use.
    #[arg(long = "model", env = "CHAT_MODEL")]
    pub model: Option<PathBuf>,
    /// Prompt + reply tokens per turn.
    #[arg(long, env = "CHAT_MAX_LEN", default_value_t = 5525)]
    pub chat_max_len: usize,
    /// Most reply tokens per turn.
    #[arg(long, env = "CHAT_MAX_OUT", default_value_t = 150)]
    pub chat_max_out: u32,
    /// Most persona tokens.
    #[arg(long, env = "CHAT_PROMPT_MAX_TOKENS", default_value_t = 1500)]
    pub chat_prompt_max_tokens: usize,
    /// History trim threshold in tokens (alias env `HISTORY_MAX_TOKENS`).
    #[arg(long, env = "CHAT_HISTORY_MAX_TOKENS")]
    pub chat_history_max_tokens: Option<usize>,
    /// Percent of the history threshold kept after a trim.
    #[arg(long, env = "HISTORY_RETENTION_PCT", default_value_t = 66)]
    pub history_retention_pct: usize,
    /// User utterance tokens kept (from the beginning).
    #[arg(long, env = "USER_UTT_MAX_TOKENS", default_value_t = 500)]
    pub user_utt_max_tokens: usize,
    /// Seconds to wait for a connection slot.
    #[arg(long, env = "WS_HANDSHAKE_ACQUIRE_TIMEOUT_S", default_value_t = 0.5)]
    pub ws_handshake_acquire_timeout_s: f64,
    /// Seconds without inbound messages before the server closes a connection.
    #[arg(long, env = "WS_IDLE_TIMEOUT_S", default_value_t = 150.0)]
    pub ws_idle_timeout_s: f64,
    /// Close code of an idle close.
    #[arg(long, env = "WS_CLOSE_IDLE_CODE", default_value_t = 4000)]
    pub ws_close_idle_code: u16,
    /// Largest inbound frame in bytes.
    #[arg(long, env = "WS_MAX_MESSAGE_BYTES", default_value_t = 65536)]
    pub ws_max_message_bytes: usize,
    /// Comma-separated allowed browser origins (empty = any).
    #[arg(long, env = "WS_ALLOWED_ORIGINS", default_value = "")]
    pub ws_allowed_origins: String,
    /// General messages per connection per window (0 disables).
    #[arg(long, env = "WS_MAX_MESSAGES_PER_WINDOW", default_value_t = 20)]
    pub ws_max_messages_per_window: usize,
    /// Window of the message limit, seconds.
    #[arg(long, env = "WS_MESSAGE_WINDOW_SECONDS", default_value_t = 60.0)]
    pub ws_message_window_seconds: f64,
    /// Cancels per connection per window (0 disables).
    #[arg(long, env = "WS_MAX_CANCELS_PER_WINDOW", default_value_t = 20)]
    pub ws_max_cancels_per_window: usize,
    /// Window of the cancel limit, seconds.
    #[arg(long, env = "WS_CANCEL_WINDOW_SECONDS", default_value_t = 60.0)]
    pub ws_cancel_window_seconds: f64,
    /// Failed authentications per client address per window (0 disables).
    #[arg(long, env = "WS_MAX_AUTH_FAILURES_PER_WINDOW", default_value_t = 10)]
    pub ws_max_auth_failures_per_window: usize,
    /// Window of the authentication-failure limit, seconds.
    #[arg(long, env = "WS_AUTH_FAILURE_WINDOW_SECONDS", default_value_t = 60.0)]
    pub ws_auth_failure_window_seconds: f64,
    /// Persona updates (`chat_prompt`) per session per window (0 disables).
    #[arg(long, env = "CHAT_PROMPT_UPDATE_MAX_PER_WINDOW", default_value_t = 4)]
    pub chat_prompt_update_max_per_window: usize,
    /// Window of the persona-update limit, seconds.
    #[arg(
        long,
        env = "CHAT_PROMPT_UPDATE_WINDOW_SECONDS",
        default_value_t = 60.0
    )]
    pub chat_prompt_update_window_seconds: f64,
    /// Embedded engine: KV cache cells shared by all sessions.
    #[arg(long, env = "EMBEDDED_KV_TOKENS", default_value_t = 32768)]
    pub kv_tokens: u32,
    /// Embedded engine: sessions kept in the KV cache at once.
    #[arg(long, env = "EMBEDDED_MAX_SEQUENCES", default_value_t = 32)]
    pub max_sequences: u32,
    /// Embedded engine: most tokens per decode step.
    #[arg(long, env = "EMBEDDED_BATCH_TOKENS", default_value_t = 512)]
    pub batch_tokens: u32,
    /// Embedded engine: CPU threads (0 = all cores).
    #[arg(long, env = "EMBEDDED_THREADS", default_value_t = 0)]
    pub threads: u32,
    /// Embedded engine: share cached prefixes across sessions.
    #[arg(long, env = "EMBEDDED_SHARE_PREFIXES", default_value_t = true, action = clap::ArgAction::Set)]
    pub share_prefixes: bool,
    /// Embedded engine: layers on the GPU (needs a `cuda` build).
    #[arg(long, env = "EMBEDDED_GPU_LAYERS", default_value_t = 0)]
    pub gpu_layers: u32,
    /// Sanitizer also spells numbers and symbols (`50%` → `fifty percent`).
    #[arg(long, env = "SANITIZE_VERBALIZE", default_value_t = false, action = clap::ArgAction::Set)]
    pub sanitize_verbalize: bool,
    /// Which models run: `both` (toolcall frame, then chat), `chat` (no toolcall), `tool`
    /// (toolcall + done; no chat model is loaded).
    #[arg(long, env = "DEPLOY_MODE", default_value = "both")]
    pub deploy_mode: String,
    /// Tool model: a Hugging Face sequence-classification folder (config.json with id2label,
    /// model.safetensors, tokenizer.json). Default: the project's screenshot-intent model
    /// (fetched and assembled on first use; see `yap fetch-model --tool`).
    #[arg(long, env = "TOOL_MODEL")]
    pub tool_model: Option<PathBuf>,
    /// Yes-probability at or above which the toolcall says yes.
    #[arg(long, env = "TOOL_THRESHOLD", default_value_t = 0.5)]
    pub tool_threshold: f32,
    /// Tokens of user-side context the tool model sees (newest kept). Default: the model's
    /// own limit (tokenizer `model_max_length`, else its position table), else 512.
    #[arg(long, env = "TOOL_HISTORY_TOKENS")]
    pub tool_history_tokens: Option<usize>,
    /// Threads of the tool model's own pool (0 = half the cores, at least 2 where there are 2,
    /// at most 4).
    #[arg(long, env = "TOOL_THREADS", default_value_t = 0)]
    pub tool_threads: usize,
    /// Micro-batch window: how long a classification waits for concurrent ones (ms).
    #[arg(long, env = "TOOL_BATCH_WINDOW_MS", default_value_t = 3.0)]
    pub tool_batch_window_ms: f64,
    /// Wait the batch window only under concurrency (a lone turn is classified at once); false:
    /// every batch waits the full window.
    #[arg(long, env = "TOOL_BATCH_ADAPTIVE", default_value_t = true, action = clap::ArgAction::Set)]
    pub tool_batch_adaptive: bool,
    /// In `both` mode, start the chat while the tool model classifies (true, default; tokens
    /// wait for the toolcall) or classify first, then start the chat (false: an earlier
    /// toolcall, a later first token).
    #[arg(long, env = "TOOL_OVERLAP", action = clap::ArgAction::Set)]
    pub tool_overlap: Option<bool>,
    /// Most classifications in one batch (1 = no batching).
    #[arg(long, env = "TOOL_MAX_BATCH", default_value_t = 16)]
    pub tool_max_batch: usize,
    /// Default sampling temperature.
    #[arg(long, env = "CHAT_TEMPERATURE", default_value_t = 0.7)]
    pub temperature: f32,
}

/// A running server.
pub struct Running {
    /// The bound address.
    pub addr: std::net::SocketAddr,
    /// The serving task.
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The engine.
    pub engine: Arc<dyn ChatEngine>,
    /// The launched engine process, when Yap runs one.
    pub supervisor: Option<Arc<Supervisor>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Running {
    /// Stops accepting and waits for the server to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
        self.task.abort();
        if let Some(sup) = self.supervisor.take() {
            sup.stop().await;
        }
    }
}

/// Loads the engine and binds the listener; serving starts in a task.
/// Loads the tool model and starts its batching thread pool.
async fn start_tool(args: &ServeArgs) -> Result<Arc<ToolService>> {
    let dir = match &args.tool_model {
        Some(d) => d.clone(),
        None => tokio::task::spawn_blocking(model_fetch::ensure_default_tool_model)
            .await
            .context("tool model fetch task")??,
    };
    let threads = if args.tool_threads > 0 {
        args.tool_threads
    } else {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        (cores / 2).clamp(2, 4).min(cores)
    };
    let config = ServiceConfig {
        threads,
        batch_window: Duration::from_secs_f64(args.tool_batch_window_ms.max(0.0) / 1000.0),
        max_batch: args.tool_max_batch.max(1),
        adaptive: args.tool_batch_adaptive,
    };
    let history_tokens = args.tool_history_tokens;
    let d = dir.clone();
    let model = tokio::task::spawn_blocking(move || ToolModel::load(&d, history_tokens))
        .await
        .context("tool model load task")?
        .with_context(|| format!("loading the tool model from {}", dir.display()))?;
    tracing::info!(
        tool_model = %dir.display(),
        classifier = ?model.classifier(),
        max_tokens = model.max_tokens(),
        threads,
        window_ms = args.tool_batch_window_ms,
        max_batch = config.max_batch,
        "tool model loaded"
    );
    Ok(ToolService::start(model, config)?)
}

/// Starts the server (and any launched engine); returns once it listens.
pub async fn start(args: ServeArgs) -> Result<Running> {
    let Some(api_key) = args.api_key.clone().filter(|k| !k.is_empty()) else {
        bail!("TEXT_API_KEY is required (set the env var or pass --api-key)");
    };
    let Some(max_conn) = args.max_concurrent_connections.filter(|n| *n > 0) else {
        bail!("MAX_CONCURRENT_CONNECTIONS is required (a positive number)");
    };
    if !["embedded", "openai", "vllm", "trt"].contains(&args.engine.as_str()) {
        bail!(
            "engine `{}` is not available; use `embedded`, `vllm`, `trt`, or `openai` with --engine-url",
            args.engine
        );
    }
    let Some(deploy_mode) = DeployMode::parse(&args.deploy_mode) else {
        bail!(
            "DEPLOY_MODE `{}` is not one of both, chat, tool",
            args.deploy_mode
        );
    };
    if !(0.0..=1.0).contains(&args.tool_threshold) {
        bail!(
            "TOOL_THRESHOLD must be within [0, 1], got {}",
            args.tool_threshold
        );
    }
    let history_max = args
        .chat_history_max_tokens
        .or_else(|| {
            std::env::var("HISTORY_MAX_TOKENS")
                .ok()
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(3000);
    let model_path = match &args.model {
        Some(p) => p.clone(),
        None if !deploy_mode.has_chat() => PathBuf::new(),
        None => tokio::task::spawn_blocking(model_fetch::ensure_default_model)
            .await
            .context("model fetch task")??,
    };
    let mut supervisor = None;
    let mut args = args;
    if deploy_mode.has_chat() && (args.engine == "vllm" || args.engine == "trt") {
        let sup = launch_engine(&args).await?;
        args.engine_url = vec![format!("http://127.0.0.1:{}", args.engine_port)];
        if args.engine_model_name.is_none() {
            args.engine_model_name = args.engine_model.clone();
        }
        supervisor = Some(Arc::new(sup));
    }
    let engine: Arc<dyn ChatEngine> = if !deploy_mode.has_chat() {
        Arc::new(NoChatEngine)
    } else if args.engine != "embedded" {
        if args.engine_url.is_empty() {
            bail!("--engine openai needs --engine-url (ENGINE_URLS)");
        }
        let mut remote = RemoteConfig::new(args.engine_url.clone());
        remote.context_tokens = args.chat_max_len;
        remote.api_key = args.engine_api_key.clone();
        remote.health_interval = Duration::from_secs_f64(args.engine_health_interval_s.max(0.05));
        remote.model = args.engine_model_name.clone().unwrap_or_else(|| {
            model_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        Arc::new(RemoteEngine::start(remote, &model_path).await?)
    } else {
        let mut llama = LlamaConfig::new(&model_path);
        llama.kv_tokens = args.kv_tokens;
        llama.max_sequences = args.max_sequences;
        llama.max_sequence_tokens = args.chat_max_len as u32;
        llama.batch_tokens = args.batch_tokens;
        llama.threads = args.threads;
        llama.gpu_layers = args.gpu_layers;
        llama.share_prefixes = args.share_prefixes;
        Arc::new(
            tokio::task::spawn_blocking(move || LlamaEngine::start(llama))
                .await
                .context("engine start task")??,
        )
    };
    let tool = if deploy_mode.has_tool() {
        Some(start_tool(&args).await?)
    } else {
        None
    };
    let mut core_config = CoreConfig {
        chat_max_len: args.chat_max_len,
        chat_max_out: args.chat_max_out,
        persona_max_tokens: args.chat_prompt_max_tokens,
        history_max_tokens: history_max,
        history_retention_pct: args.history_retention_pct,
        user_utt_max_tokens: args.user_utt_max_tokens,
        ..CoreConfig::default()
    };
    core_config.default_sampling.temperature = args.temperature;
    core_config.verbalize = args.sanitize_verbalize;
    core_config.deploy_mode = deploy_mode;
    core_config.tool_threshold = args.tool_threshold;
    core_config.tool_overlap = args.tool_overlap.unwrap_or(true);
    let core = Core::with_tool(Arc::clone(&engine), tool, core_config);
    let mut server = ServerConfig::new(api_key, max_conn);
    server.acquire_timeout = Duration::from_secs_f64(args.ws_handshake_acquire_timeout_s.max(0.0));
    server.idle_timeout = Duration::from_secs_f64(args.ws_idle_timeout_s.max(0.001));
    server.idle_close_code = args.ws_close_idle_code;
    server.max_message_bytes = args.ws_max_message_bytes;
    let secs = |s: f64| Duration::from_secs_f64(s.max(0.0));
    server.messages_per_window = (
        args.ws_max_messages_per_window,
        secs(args.ws_message_window_seconds),
    );
    server.cancels_per_window = (
        args.ws_max_cancels_per_window,
        secs(args.ws_cancel_window_seconds),
    );
    server.auth_failures_per_window = (
        args.ws_max_auth_failures_per_window,
        secs(args.ws_auth_failure_window_seconds),
    );
    server.persona_updates_per_window = (
        args.chat_prompt_update_max_per_window,
        secs(args.chat_prompt_update_window_seconds),
    );
    server.allowed_origins = args
        .ws_allowed_origins
        .split(',')
        .map(|s| s.trim().trim_end_matches('/').to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let listener = TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("binding {}:{}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let state = AppState::new(core, server);
    let task = tokio::spawn(yap_server::serve(listener, state, async move {
        let _ = rx.await;
    }));
    Ok(Running {
        addr,
        task,
        engine,
        supervisor,
        shutdown: Some(tx),
    })
}

static LOG: std::sync::OnceLock<Arc<RotatingLog>> = std::sync::OnceLock::new();

/// The process-wide `server.log` (rotated at 100 MB, 3 kept): Yap's own log lines and the
/// output of launched engines go to this one file.
pub fn shared_log(path: &std::path::Path) -> Result<Arc<RotatingLog>> {
    if let Some(log) = LOG.get() {
        return Ok(Arc::clone(log));
    }
    let log = Arc::new(RotatingLog::open(path, 100 * 1024 * 1024, 3)?);
    Ok(Arc::clone(LOG.get_or_init(|| log)))
}

/// GPU memory (GiB) and compute capability from nvidia-smi, when there is one.
fn query_gpu() -> Option<(f64, u32)> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=memory.total,compute_cap",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.lines().next()?.split(',').map(str::trim);
    let mib: f64 = parts.next()?.parse().ok()?;
    let cap: f64 = parts.next()?.parse().ok()?;
    Some((mib / 1024.0, (cap * 10.0).round() as u32))
}

/// Derives the engine command, checks the fit, and starts the supervised child.
async fn launch_engine(args: &ServeArgs) -> Result<Supervisor> {
    let Some(model) = args.engine_model.clone() else {
        bail!(
            "--engine {} needs --engine-model (ENGINE_MODEL): the model or engine directory",
            args.engine
        );
    };
    let gpu = query_gpu();
    let sm = args.gpu_sm.or(gpu.map(|g| g.1)).unwrap_or(90);
    let mut cfg = LaunchConfig::new(&model);
    cfg.port = args.engine_port;
    cfg.max_len = args.chat_max_len as u64;
    cfg.kv_dtype = args.kv_dtype.clone();
    cfg.enforce_eager = args.enforce_eager;
    cfg.quantization = args.quantization.clone();
    cfg.gpu_sm = sm;
    cfg.trt_max_batch = args.trt_max_batch_size;
    let mut command = if args.engine == "vllm" {
        cfg.gpu_frac = args.chat_gpu_frac;
        cfg.max_seqs = args.engine_max_seqs;
        launch::vllm_command(&cfg).map_err(anyhow::Error::msg)?
    } else {
        cfg.gpu_frac = args.trt_kv_free_gpu_frac;
        cfg.max_seqs = args.trt_batch_size;
        let engine_cfg_path = PathBuf::from(&model).join("config.json");
        let engine_cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&engine_cfg_path)
                .with_context(|| format!("reading {}", engine_cfg_path.display()))?,
        )?;
        let max = launch::trt_engine_max_batch(&engine_cfg).unwrap_or(0);
        tracing::info!(engine_max_batch = max, runtime_batch = ?cfg.max_seqs, "TRT batch sizes");
        if !args.dry_run {
            std::fs::write("yap-trt-options.yaml", launch::TRT_OPTIONS_YAML)?;
        }
        launch::trtllm_command(&cfg, &engine_cfg).map_err(anyhow::Error::msg)?
    };
    // Fit check before launching, when the model's config is at hand.
    let config_path = args
        .engine_model_config
        .clone()
        .or_else(|| Some(PathBuf::from(&model).join("config.json")).filter(|p| p.is_file()));
    let memory = args.gpu_memory_gib.or(gpu.map(|g| g.0));
    match (config_path, memory) {
        (Some(path), Some(mem)) if args.engine == "vllm" => {
            let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
            let quant = fit::detect_quantization(&model).or(args.quantization.as_deref());
            let report = fit::check(&fit::FitRequest {
                shape: fit::ModelShape::from_config(&json).map_err(anyhow::Error::msg)?,
                weights: fit::weight_precision(quant),
                kv: if args.kv_dtype.as_deref() == Some("fp8") {
                    fit::Precision::Int8
                } else {
                    fit::Precision::Bf16
                },
                gpu: fit::Gpu {
                    name: format!("GPU ({mem:.0} GiB, sm{sm})"),
                    memory_gib: mem,
                    sm,
                },
                fraction: args.chat_gpu_frac,
                max_len: args.chat_max_len as u64,
                batch: args.engine_max_seqs.unwrap_or(1),
            });
            if !report.fits {
                bail!("refusing to launch: {}", report.message);
            }
            if args.dry_run {
                eprintln!("fit check: {}", report.message);
            }
            tracing::info!("{}", report.message);
        }
        _ => tracing::warn!(
            "fit check skipped: no config.json or GPU memory known (ENGINE_MODEL_CONFIG, GPU_MEMORY_GIB)"
        ),
    }
    if let Some(bin) = &args.engine_bin {
        let mut prefix: Vec<String> = bin.split_whitespace().map(str::to_owned).collect();
        if args.engine == "vllm" {
            command.remove(0); // `vllm`; `serve ...` stays
        } else {
            command.remove(0);
        }
        prefix.extend(command);
        command = prefix;
    }
    if args.dry_run {
        println!("{}", command.join(" "));
        std::process::exit(0);
    }
    tracing::info!(command = %command.join(" "), "launching engine");
    let log = shared_log(&args.log_file)?;
    let sup = Supervisor::start(
        SupervisorConfig {
            command,
            health_url: format!("http://127.0.0.1:{}/health", args.engine_port),
            label: args.engine.clone(),
            startup_timeout: Duration::from_secs_f64(args.engine_startup_timeout_s),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            grace: Duration::from_secs(10),
        },
        log,
    )
    .await?;
    Ok(sup)
}
