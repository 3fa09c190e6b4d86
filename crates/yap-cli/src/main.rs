//! `yap`: run the server, its test clients and model tooling.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use yap_cli::bench::{self, BenchArgs};
use yap_cli::client::{self, ClientArgs};
use yap_cli::telemetry::{self, Sinks};
use yap_cli::tools::{self, LiveArgs, PersonalityArgs};
use yap_cli::{lifecycle, serve};

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "yap", version, about = "Real-time voice companion server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the server (embedded engine on the default model unless --model is given).
    Serve {
        /// Settings.
        #[command(flatten)]
        args: Box<serve::ServeArgs>,
        /// Run in the background: returns once /healthz is ready; `yap logs -f` follows the log,
        /// `yap stop` drains and stops it.
        #[arg(long)]
        detach: bool,
    },
    /// Stop the detached server: no new connections, running turns get SHUTDOWN_GRACE_S, then
    /// sockets close with 1001 and launched engines stop.
    Stop {
        /// Also delete the model and engine caches (Yap's default models, vLLM, FlashInfer,
        /// Triton, Hugging Face hub).
        #[arg(long)]
        purge: bool,
    },
    /// Stop the detached server and start it again with the same command line.
    Restart,
    /// Is a detached server running? Its address, health and log (exit 3 when none runs).
    Status,
    /// Print the server's log (the detached server's, else LOG_FILE, else server.log).
    Logs {
        /// Keep printing new lines (follows rotations).
        #[arg(short = 'f', long)]
        follow: bool,
        /// Lines to print first.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
        /// The log file (default: the detached server's).
        #[arg(long)]
        log_file: Option<PathBuf>,
    },
    /// Send one turn, print every frame and a metrics line.
    Warmup {
        #[command(flatten)]
        client: ClientArgs,
        /// What the user says.
        #[arg(default_value = "Hey, how is it going?")]
        text: String,
    },
    /// Measure TTFT, decode tokens/s and cancel latency at several concurrency levels.
    Bench(BenchArgs),
    /// Interactive terminal chat (/persona NAME, /cancel, /quit).
    Live(LiveArgs),
    /// A fixed 10-turn conversation: history, trimming and cached prefix per turn.
    Conversation {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Switch persona mid-session and show the replies follow.
    Personality(PersonalityArgs),
    /// Replay a labelled case file (JSONL) against a server: tool accuracy, confusion matrix,
    /// toolcall latency.
    ToolEval(yap_cli::tool_eval::ToolEvalArgs),
    /// Fit check: do weights + KV cache for CHAT_MAX_LEN × batch fit a GPU? Exit 1 if not.
    Check(yap_cli::check::CheckArgs),
    /// Model tooling: models, fetch-model, quantize (and make-test-model with dev-tools).
    #[command(flatten)]
    Model(yap_cli::model_tools::ModelCommand),
    /// Runs a launched engine for `yap serve`: dies with it and takes the engine's processes
    /// along (internal).
    #[command(hide = true)]
    EngineGuard(yap_remote::guard::GuardArgs),
    /// An OpenAI-compatible engine stand-in for tests (streams words; can stall, fail, die).
    #[cfg(feature = "dev-tools")]
    #[command(hide = true)]
    EngineDouble(yap_testkit::double::DoubleArgs),
}

/// Env names that are aliases of a `yap serve` flag's own env var (protocol-v1.md): when the
/// alias is set and the flag's own variable is not, the value is passed as the flag.
const ENV_ALIASES: [(&str, &str, &str); 2] = [
    (
        "HISTORY_MAX_TOKENS",
        "CHAT_HISTORY_MAX_TOKENS",
        "--chat-history-max-tokens",
    ),
    (
        "TOOL_DECISION_THRESHOLD",
        "TOOL_THRESHOLD",
        "--tool-threshold",
    ),
];

/// The command line with alias env vars turned into flags of `serve`.
fn argv_with_aliases() -> Vec<std::ffi::OsString> {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let Some(at) = argv.iter().position(|a| a == "serve") else {
        return argv;
    };
    for (alias, own, flag) in ENV_ALIASES {
        let given = argv.iter().any(|a| a.to_string_lossy().starts_with(flag));
        if given || std::env::var_os(own).is_some() {
            continue;
        }
        if let Some(v) = std::env::var_os(alias) {
            let mut f = std::ffi::OsString::from(format!("{flag}="));
            f.push(v);
            argv.insert(at + 1, f);
        }
    }
    argv
}

/// Where this command logs: `yap serve` to stderr (unless detached) and its rotated log file;
/// every other command (and the parent of `serve --detach`) to stderr only.
fn sinks(cli: &Cli) -> Sinks<'_> {
    match &cli.command {
        Command::Serve {
            args,
            detach: false,
        } => Sinks {
            stderr: !lifecycle::is_detached_child(),
            file: Some(&args.log_file),
        },
        _ => Sinks {
            stderr: true,
            file: None,
        },
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse_from(argv_with_aliases());
    // Before the runtime: the span exporter's HTTP client is a blocking one.
    let guard = telemetry::init(&sinks(&cli))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(run(cli));
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    let code = result.unwrap_or_else(|e| {
        tracing::error!("{e:#}");
        1
    });
    drop(guard);
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

/// `yap serve` in the foreground (or as the detached child): serve until SIGINT/SIGTERM, then
/// drain.
async fn serve_foreground(args: serve::ServeArgs) -> Result<()> {
    let mut record = if lifecycle::is_detached_child() {
        Some(lifecycle::child_begin(
            &args.log_file,
            args.server.shutdown_grace,
        )?)
    } else {
        None
    };
    // The handlers exist before anyone learns the address: a SIGTERM sent right after the
    // "listening" line drains instead of killing the process.
    let stop = shutdown_signal();
    let running = serve::start(args).await?;
    tracing::info!(addr = %running.addr, "yap listening: {}", yap_server::describe(running.addr));
    if let Some(r) = record.as_mut() {
        r.ready(running.addr)?;
    }
    stop.await;
    tracing::info!(
        running_turns = running.core.running_turns(),
        "shutting down: draining running turns"
    );
    running.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// Runs a command; the process exit code.
async fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Serve { args, detach: true } => {
            let child = lifecycle::child_args(&std::env::args_os().collect::<Vec<_>>());
            lifecycle::detach(child, &std::env::current_dir()?, &args.log_file).await?;
        }
        Command::Serve {
            args,
            detach: false,
        } => serve_foreground(*args).await?,
        Command::Stop { purge } => {
            lifecycle::stop().await?;
            if purge {
                lifecycle::purge()?;
            }
        }
        Command::Restart => lifecycle::restart().await?,
        Command::Status => {
            if !lifecycle::status().await? {
                return Ok(3);
            }
        }
        Command::Logs {
            follow,
            lines,
            log_file,
        } => {
            let path = log_file.unwrap_or_else(lifecycle::log_path);
            tokio::task::spawn_blocking(move || lifecycle::logs(&path, lines, follow)).await??;
        }
        Command::Warmup { client, text } => client::warmup(&client, &text).await?,
        Command::Bench(args) => bench::bench(&args).await?,
        Command::Live(args) => tools::live(&args).await?,
        Command::Conversation { client } => tools::conversation(&client).await?,
        Command::Personality(args) => tools::personality(&args).await?,
        Command::ToolEval(args) => {
            if !yap_cli::tool_eval::run(&args).await? {
                return Ok(1);
            }
        }
        Command::Check(args) => {
            if !yap_cli::check::run(&args)? {
                return Ok(1);
            }
        }
        Command::Model(cmd) => {
            tokio::task::spawn_blocking(move || yap_cli::model_tools::run(cmd)).await??;
        }
        Command::EngineGuard(args) => std::process::exit(yap_remote::guard::run(&args).await?),
        #[cfg(feature = "dev-tools")]
        Command::EngineDouble(args) => yap_testkit::double::run(&args).await?,
    }
    Ok(0)
}

/// Registers the SIGINT and SIGTERM handlers now (not when first polled); the future resolves on
/// either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(term) => {}
                () = wait(int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
