//! Logging and tracing of the `yap` process: one `tracing` subscriber with up to three layers.
//!
//! - **stderr** (not for a detached server, whose stderr is its log file);
//! - **the log file** (`yap serve` only): `server.log`, rotated by size (100 MB × 3 kept, see
//!   [`crate::logging`]), written by a background thread (`tracing-appender`'s non-blocking
//!   writer), so a turn never waits on the disk. Launched engines' output arrives as events of
//!   target `engine` and lands in the same file;
//! - **OTLP traces** when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//!   is set: the spans connection → turn → tool / prefill / decode, batched and exported over
//!   OTLP/HTTP (protobuf) under `OTEL_SERVICE_NAME` (default `yap`). When unset, no exporter,
//!   no thread and no layer exist.
//!
//! `LOG_FORMAT=json` makes the stderr and file layers write one JSON object per line;
//! `YAP_LOG` filters them (default `info`).
//!
//! Invariants: the returned [`Telemetry`] guard must live until the process ends; dropping it
//! flushes the log writer and the span exporter. Build it before the Tokio runtime starts and
//! drop it after the runtime is gone (the exporter's HTTP client is a blocking one).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::filter::{EnvFilter, FilterFn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::logging::{RotatingLog, SharedLog};

/// Size at which `server.log` rotates.
pub const LOG_MAX_BYTES: u64 = 100 * 1024 * 1024;
/// Rotated files kept (`server.log.1` … `.3`).
pub const LOG_KEEP: usize = 3;
/// Log lines the non-blocking writer buffers before it drops new ones (never blocking a turn).
const LOG_BUFFER_LINES: usize = 128_000;

/// Log line format (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (default).
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `LOG_FORMAT` from the environment (`text` or `json`; unset = text).
    pub fn from_env() -> Result<Self> {
        Self::parse(std::env::var("LOG_FORMAT").ok().as_deref())
    }

    /// A `LOG_FORMAT` value (`None` or empty = text).
    pub fn parse(value: Option<&str>) -> Result<Self> {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("" | "text" | "plain") => Ok(Self::Text),
            Some("json") => Ok(Self::Json),
            Some(other) => bail!("LOG_FORMAT must be `text` or `json`, not `{other}`"),
        }
    }
}

/// What the process logs to.
#[derive(Debug, Clone, Default)]
pub struct Sinks<'a> {
    /// Write to stderr.
    pub stderr: bool,
    /// Also write to this rotated log file.
    pub file: Option<&'a Path>,
}

/// Keeps the log writer and the span exporter alive; flushes both when dropped.
#[must_use = "dropping the guard stops logging to the file and exporting spans"]
pub struct Telemetry {
    log: Option<WorkerGuard>,
    tracer: Option<SdkTracerProvider>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("file", &self.log.is_some())
            .field("otlp", &self.tracer.is_some())
            .finish()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.tracer.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("yap: flushing traces failed: {e}");
        }
        drop(self.log.take());
    }
}

fn env_filter() -> EnvFilter {
    EnvFilter::try_from_env("YAP_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,llama_cpp_2=warn,llama-cpp-2=warn"))
}

type Boxed = Box<dyn Layer<Registry> + Send + Sync>;

/// A formatting layer over `writer` in `format`, filtered by `YAP_LOG`.
fn fmt_layer<W>(writer: W, format: LogFormat, ansi: bool) -> Boxed
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let base = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => base.with_filter(env_filter()).boxed(),
        LogFormat::Json => base
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(env_filter())
            .boxed(),
    }
}

/// Whether OTLP export is configured.
pub fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()))
}

/// The OTLP/HTTP span pipeline: Yap's spans (targets `yap*`, INFO and above) and its warnings.
fn otlp_layer<S>() -> Result<(impl Layer<S> + Send + Sync, SdkTracerProvider)>
where
    S: Subscriber + for<'s> LookupSpan<'s> + Send + Sync,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .context("building the OTLP span exporter (OTEL_EXPORTER_OTLP_ENDPOINT)")?;
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "yap".to_owned());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("yap");
    let filter = FilterFn::new(|m| {
        m.target().starts_with("yap")
            && (m.is_span() && m.level() <= &tracing::Level::INFO
                || m.level() <= &tracing::Level::WARN)
    });
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(filter);
    Ok((layer, provider))
}

/// Installs the process's subscriber. Call once, before the Tokio runtime starts.
pub fn init(sinks: &Sinks<'_>) -> Result<Telemetry> {
    let format = LogFormat::from_env()?;
    let mut layers: Vec<Boxed> = Vec::new();
    let mut guard = None;
    if sinks.stderr {
        let ansi =
            format == LogFormat::Text && std::io::IsTerminal::is_terminal(&std::io::stderr());
        layers.push(fmt_layer(std::io::stderr, format, ansi));
    }
    if let Some(path) = sinks.file {
        let log = Arc::new(RotatingLog::open(path, LOG_MAX_BYTES, LOG_KEEP)?);
        let (writer, g) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(LOG_BUFFER_LINES)
            .thread_name("yap-log-writer")
            .finish(SharedLog(log));
        layers.push(fmt_layer(writer, format, false));
        guard = Some(g);
    }
    let mut tracer = None;
    if otlp_configured() {
        let (layer, provider) = otlp_layer()?;
        layers.push(layer.boxed());
        tracer = Some(provider);
    }
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .context("installing the tracing subscriber")?;
    install_panic_hook();
    Ok(Telemetry { log: guard, tracer })
}

/// Panics are logged (so a detached server's crash is in its log) before the default report.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(target: "yap::panic", "{info}");
        default(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_parses() {
        assert_eq!(LogFormat::parse(None).unwrap(), LogFormat::Text);
        assert_eq!(LogFormat::parse(Some(" JSON ")).unwrap(), LogFormat::Json);
        assert_eq!(LogFormat::parse(Some("text")).unwrap(), LogFormat::Text);
        assert!(LogFormat::parse(Some("xml")).is_err());
    }
}
