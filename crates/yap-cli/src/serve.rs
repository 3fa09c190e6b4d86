//! `yap serve`: the settings of every crate flattened into one command, and the wiring of
//! engine, tool model, core and transport.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use yap_core::prompt::PromptFormat;
use yap_core::tool::SharedClassifier;
use yap_core::{Core, CoreConfig};
use yap_engine_api::{DeferredEngine, ModelText, NoChatEngine, Readiness, SharedEngine};
use yap_llama::{EmbeddedArgs, LlamaEngine};
use yap_remote::RemoteEngine;
use yap_remote::args::{LaunchArgs, RemoteArgs};
use yap_remote::remote::EngineFlavor;
use yap_remote::supervise::{SupervisedEngine, Supervisor, SupervisorConfig};
use yap_server::{AppState, ServerConfig};
use yap_tool::{ToolArgs, ToolModel, ToolService};

use crate::model_fetch;

/// Which chat engine (`INFERENCE_ENGINE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "kebab-case")]
pub enum EngineKind {
    /// llama.cpp inside Yap.
    Embedded,
    /// Any OpenAI-compatible server(s) given by `--engine-url` (vLLM's parameter names).
    Openai,
    /// vLLM: launched and supervised (or attached with `--engine-url`).
    Vllm,
    /// TensorRT-LLM's trtllm-serve: launched and supervised (or attached).
    Trt,
    /// SGLang, attached by URL.
    Sglang,
    /// llama.cpp's llama-server, attached by URL.
    LlamaServer,
}

impl EngineKind {
    fn flavor(self) -> EngineFlavor {
        match self {
            Self::LlamaServer => EngineFlavor::LlamaServer,
            Self::Sglang => EngineFlavor::Sglang,
            Self::Trt => EngineFlavor::Trtllm,
            _ => EngineFlavor::Vllm,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::Openai => "openai",
            Self::Vllm => "vllm",
            Self::Trt => "trt",
            Self::Sglang => "sglang",
            Self::LlamaServer => "llama-server",
        }
    }
}

/// Chat engine settings.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Chat engine: `embedded`, `openai`, `vllm`, `trt`, `sglang`, `llama-server`.
    #[arg(long = "engine", env = "INFERENCE_ENGINE", value_enum, ignore_case = true, default_value_t = EngineKind::Embedded)]
    pub kind: EngineKind,
    /// GGUF chat model (embedded: the weights; remote engines: its tokenizer and chat template,
    /// or an HF folder). Default: the default model, fetched into the cache on first use.
    #[arg(long = "model", env = "CHAT_MODEL")]
    pub model: Option<PathBuf>,
    /// The embedded engine.
    #[command(flatten)]
    pub embedded: EmbeddedArgs,
    /// Remote engines.
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Launched engines.
    #[command(flatten)]
    pub launch: LaunchArgs,
}

/// Flags of `yap serve`; every one has its env var.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Transport.
    #[command(flatten)]
    pub server: ServerConfig,
    /// Turns, budgets, sessions.
    #[command(flatten)]
    pub core: CoreConfig,
    /// Chat engine.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Tool model.
    #[command(flatten)]
    pub tool: ToolArgs,
    /// The rotated log of Yap and launched engines (100 MB × 3 kept).
    #[arg(long, env = "LOG_FILE", default_value = "server.log")]
    pub log_file: PathBuf,
    /// Launched engines: print the derived command (after the fit check) and exit.
    #[arg(long)]
    pub dry_run: bool,
}

/// A running server.
pub struct Running {
    /// The bound address.
    pub addr: std::net::SocketAddr,
    /// The serving task.
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The engine.
    pub engine: SharedEngine,
    /// The core.
    pub core: Arc<Core>,
    /// The launched engine process, when Yap runs one.
    pub supervisor: Option<Arc<Supervisor>>,
    /// The transport's state (open connections).
    pub state: AppState,
    shutdown: CancellationToken,
}

impl Running {
    /// Graceful drain: stops accepting; running turns get `SHUTDOWN_GRACE_S` to finish, then
    /// are cancelled with a terminal frame; sockets close with 1001; then a launched engine
    /// stops. Returns once every connection is closed (or the grace plus a margin is over).
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let margin = std::time::Duration::from_secs(5);
        let deadline = tokio::time::Instant::now() + self.state.shutdown_grace() + margin;
        let _ = tokio::time::timeout_at(deadline, &mut self.task).await;
        self.task.abort();
        while (self.core.running_turns() > 0 || self.state.active_connections() > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tracing::info!(
            running_turns = self.core.running_turns(),
            open_connections = self.state.active_connections(),
            "drained"
        );
        if let Some(sup) = self.supervisor.take() {
            sup.stop().await;
        }
    }
}

/// Loads the tool model and starts its batching pool.
async fn start_tool(args: &ToolArgs) -> Result<SharedClassifier> {
    let dir = match &args.tool_model {
        Some(d) => d.clone(),
        None => tokio::task::spawn_blocking(model_fetch::ensure_default_tool_model)
            .await
            .context("tool model fetch task")??,
    };
    let config = args.service_config();
    let history_tokens = args.tool_history_tokens;
    let d = dir.clone();
    let model = tokio::task::spawn_blocking(move || ToolModel::load(&d, history_tokens))
        .await
        .context("tool model load task")?
        .with_context(|| format!("loading the tool model from {}", dir.display()))?;
    tracing::info!(tool_model = %dir.display(), classifier = ?model.classifier(), max_tokens = model.max_tokens(),
        threads = config.threads, max_batch = config.max_batch, "tool model loaded");
    Ok(ToolService::start(model, config)?)
}

/// The tokenizer and template of the served model: a GGUF (vocabulary only) or an HF folder.
fn model_text(path: &std::path::Path) -> Result<ModelText> {
    if path.is_dir() {
        Ok(yap_core::prompt::hf::load(path)?)
    } else {
        Ok(yap_llama::vocab::load_model_text(path)?)
    }
}

/// Builds the chat engine (and its prompt format) the deployment needs.
async fn start_engine(
    args: &ServeArgs,
    model_path: PathBuf,
) -> Result<(SharedEngine, PromptFormat, Option<Arc<Supervisor>>)> {
    let e = &args.engine;
    if e.kind == EngineKind::Embedded {
        let cfg = e.embedded.config(model_path, args.core.chat_max_len as u32);
        let engine = tokio::task::spawn_blocking(move || LlamaEngine::start(cfg))
            .await
            .context("engine start task")??;
        let format = PromptFormat::new(engine.model_text())?;
        return Ok((Arc::new(engine), format, None));
    }
    let mut supervisor = None;
    let mut remote_args = e.remote.clone();
    if matches!(e.kind, EngineKind::Vllm | EngineKind::Trt) && remote_args.engine_url.is_empty() {
        let sup = launch_engine(args).await?;
        remote_args.engine_url = vec![format!("http://127.0.0.1:{}", e.launch.engine_port)];
        if remote_args.engine_model_name.is_none() {
            remote_args
                .engine_model_name
                .clone_from(&e.launch.engine_model);
        }
        supervisor = Some(Arc::new(sup));
    }
    if remote_args.engine_url.is_empty() {
        bail!(
            "--engine {} needs --engine-url (ENGINE_URLS)",
            e.kind.name()
        );
    }
    let format = PromptFormat::new(model_text(&model_path)?)?;
    let mut config = remote_args.config(e.kind.flavor(), args.core.chat_max_len);
    // `--engine openai`: the parameter dialect comes from the engine itself.
    config.detect_flavor = e.kind == EngineKind::Openai;
    let remote = RemoteEngine::start(config).await?;
    let engine: SharedEngine = match &supervisor {
        Some(sup) => Arc::new(SupervisedEngine::new(remote, Arc::clone(sup))),
        None => Arc::new(remote),
    };
    Ok((engine, format, supervisor))
}

/// Loads what the deploy mode needs into a core that is already serving (503 meanwhile).
async fn load(
    args: &ServeArgs,
    core: &Arc<Core>,
    deferred: &DeferredEngine,
) -> Result<Option<Arc<Supervisor>>> {
    let mode = args.core.deploy_mode;
    let mut supervisor = None;
    if mode.has_chat() {
        let model_path = match &args.engine.model {
            Some(p) => {
                let p = p.clone();
                tokio::task::spawn_blocking(move || crate::models::resolve(&p))
                    .await
                    .context("model resolve task")??
            }
            None => {
                deferred.report(Readiness::Loading("fetching the default chat model".into()));
                tokio::task::spawn_blocking(model_fetch::ensure_default_model)
                    .await
                    .context("model fetch task")??
            }
        };
        let model_path = if args.engine.kind == EngineKind::Embedded {
            let q = args.engine.launch.quantization.clone();
            tokio::task::spawn_blocking(move || {
                crate::models::embedded_model(&model_path, q.as_deref())
            })
            .await
            .context("quantize task")??
        } else {
            model_path
        };
        deferred.report(Readiness::Loading(format!(
            "loading {}",
            model_path.display()
        )));
        let (engine, format, sup) = start_engine(args, model_path).await?;
        core.set_format(format);
        deferred.set(engine);
        supervisor = sup;
    }
    if mode.has_tool() {
        core.set_tool(start_tool(&args.tool).await?);
    }
    Ok(supervisor)
}

/// Starts the server: listens at once (`/healthz` answers 503 `loading` meanwhile), loads the
/// engine and models, and returns once everything is ready — or the loading error, after
/// closing the listener.
pub async fn start(args: ServeArgs) -> Result<Running> {
    if args.server.api_key.as_deref().is_none_or(str::is_empty) {
        bail!("TEXT_API_KEY is required (set the env var or pass --api-key)");
    }
    if args.server.max_connections.is_none_or(|n| n == 0) {
        bail!("MAX_CONCURRENT_CONNECTIONS is required (a positive number)");
    }
    let listener = TcpListener::bind((args.server.host.as_str(), args.server.port))
        .await
        .with_context(|| format!("binding {}:{}", args.server.host, args.server.port))?;
    let addr = listener.local_addr()?;
    let deferred = Arc::new(DeferredEngine::new("starting"));
    let engine: SharedEngine = if args.core.deploy_mode.has_chat() {
        deferred.clone()
    } else {
        Arc::new(NoChatEngine)
    };
    let core = Core::new(Arc::clone(&engine), None, None, args.core.clone());
    let shutdown = CancellationToken::new();
    let state = AppState::new(Arc::clone(&core), args.server.clone());
    let engine_label = if args.core.deploy_mode.has_chat() {
        args.engine.kind.name()
    } else {
        "none"
    };
    yap_server::metrics::install(&[
        ("deploy_mode", args.core.deploy_mode.as_str().to_owned()),
        ("engine", engine_label.to_owned()),
    ]);
    let task = tokio::spawn(yap_server::serve(listener, state.clone(), shutdown.clone()));
    tracing::info!(%addr, "listening; loading models");
    match load(&args, &core, &deferred).await {
        Ok(supervisor) => Ok(Running {
            addr,
            task,
            engine,
            core,
            supervisor,
            state,
            shutdown,
        }),
        Err(e) => {
            deferred.report(Readiness::Down(format!("{e:#}")));
            shutdown.cancel();
            let _ = task.await;
            Err(e)
        }
    }
}

/// Derives the engine command, checks the fit, and starts the supervised child.
async fn launch_engine(args: &ServeArgs) -> Result<Supervisor> {
    let kind = args.engine.kind.name();
    let plan = args
        .engine
        .launch
        .plan(kind, args.core.chat_max_len as u64)
        .map_err(anyhow::Error::msg)?;
    if plan.trt_options && !args.dry_run {
        std::fs::write("yap-trt-options.yaml", yap_remote::launch::TRT_OPTIONS_YAML)?;
    }
    if args.dry_run {
        if let Some(fit) = &plan.fit {
            eprintln!("fit check: {fit}");
        }
        println!("{}", plan.command.join(" "));
        std::process::exit(0);
    }
    tracing::info!(command = %plan.command.join(" "), "launching engine");
    let launch = &args.engine.launch;
    let port = launch.engine_port;
    let guard = launch.guard_command().unwrap_or_else(|| {
        tracing::warn!("no `yap` binary known for the engine guard (ENGINE_GUARD_BIN): the engine will not die with Yap if Yap is killed");
        Vec::new()
    });
    let sup = Supervisor::start(SupervisorConfig {
        command: plan.command,
        guard,
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        health_url: format!("http://127.0.0.1:{port}/health"),
        label: kind.to_owned(),
        startup_timeout: launch.startup_timeout,
        backoff_initial: std::time::Duration::from_millis(250),
        backoff_max: std::time::Duration::from_secs(30),
        grace: launch.stop_grace,
    })
    .await?;
    Ok(sup)
}
