//! Prometheus metrics: the process-wide recorder, `GET /metrics`, and the gauges read from live
//! state at scrape time.
//!
//! Every crate records through the `metrics` facade (`metrics::counter!` and friends); without an
//! installed recorder those calls do nothing. [`install`] installs the Prometheus recorder once
//! per process, with the deployment's global labels (`deploy_mode`, `engine`) and histogram
//! buckets, and describes every metric Yap emits ([`CATALOG`]). The names are the contract of
//! `deploy/grafana-dashboard.json` and `docs/operating.md`.
//!
//! Invariants: the recorder is installed at most once (later calls return the same handle); a
//! scrape never blocks a turn (gauges are plain loads; rendering runs on the request's task);
//! with `METRICS_API_KEY` set, `/metrics` answers 401 without that key (compared in constant
//! time), and failures count against the same per-address limit as other keys.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use crate::AppState;
use crate::auth::Verdict;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A monotonic counter (`_total`).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A histogram with buckets.
    Histogram,
}

/// Every metric Yap emits: name, kind, unit, labels (besides the global `deploy_mode` and
/// `engine`), help text.
pub const CATALOG: &[(&str, Kind, &str, &str)] = &[
    (
        "yap_toolcall_latency_seconds",
        Kind::Histogram,
        "dialect",
        "Turn start to the tool decision frame.",
    ),
    (
        "yap_time_to_first_token_seconds",
        Kind::Histogram,
        "dialect",
        "Turn start to the first reply token sent.",
    ),
    (
        "yap_time_to_first_sentence_seconds",
        Kind::Histogram,
        "dialect",
        "Turn start to the first token that ends a sentence (. ! ?).",
    ),
    (
        "yap_turn_duration_seconds",
        Kind::Histogram,
        "dialect, outcome",
        "Turn start to its terminal frame.",
    ),
    (
        "yap_max_inter_token_gap_seconds",
        Kind::Histogram,
        "dialect",
        "Largest gap between two reply tokens of a turn (one sample per turn with 2+ tokens).",
    ),
    (
        "yap_cancel_to_done_seconds",
        Kind::Histogram,
        "dialect, reason",
        "A cancel (client cancel, barge-in, disconnect, shutdown) to the turn's terminal frame.",
    ),
    (
        "yap_tool_batch_size",
        Kind::Histogram,
        "",
        "Utterances classified together in one tool model batch.",
    ),
    (
        "yap_engine_batch_sequences",
        Kind::Histogram,
        "",
        "Sequences sharing one decode step of the embedded engine.",
    ),
    (
        "yap_engine_step_seconds",
        Kind::Histogram,
        "phase",
        "Time of one decode step of the embedded engine, by phase: fill (building the batch), compute (llama_decode until the device is done), sample (sampling, detokenizing, sending).",
    ),
    (
        "yap_prompt_tokens",
        Kind::Histogram,
        "dialect",
        "Prompt tokens of a completed turn.",
    ),
    (
        "yap_cached_prompt_tokens",
        Kind::Histogram,
        "dialect",
        "Prompt tokens of a completed turn served from the prefix cache.",
    ),
    (
        "yap_completion_tokens",
        Kind::Histogram,
        "dialect",
        "Generated tokens of a completed turn.",
    ),
    (
        "yap_turns_total",
        Kind::Counter,
        "dialect, outcome, code",
        "Turns ended, by outcome (done, cancelled, error) and code (cancel reason or error kind).",
    ),
    (
        "yap_barge_ins_total",
        Kind::Counter,
        "dialect",
        "Turns cancelled because a newer turn of the same session started.",
    ),
    (
        "yap_auth_failures_total",
        Kind::Counter,
        "endpoint",
        "Requests with a missing or wrong key (ws, http, metrics).",
    ),
    (
        "yap_rate_limited_total",
        Kind::Counter,
        "dialect, limit",
        "Messages refused by a rate limit (messages, cancels, persona_updates).",
    ),
    (
        "yap_capacity_refusals_total",
        Kind::Counter,
        "endpoint",
        "Connections refused because every connection slot was taken (ws, http).",
    ),
    (
        "yap_slow_consumer_disconnects_total",
        Kind::Counter,
        "",
        "Connections dropped because their outbound queue overflowed.",
    ),
    (
        "yap_tool_timeouts_total",
        Kind::Counter,
        "",
        "Tool decisions later than TOOL_TIMEOUT_S (treated as no).",
    ),
    (
        "yap_tool_failures_total",
        Kind::Counter,
        "",
        "Tool classifications that failed.",
    ),
    (
        "yap_engine_restarts_total",
        Kind::Counter,
        "",
        "Restarts of a launched engine process.",
    ),
    (
        "yap_open_connections",
        Kind::Gauge,
        "",
        "Connections holding a slot (WebSockets and /v1 requests).",
    ),
    ("yap_running_turns", Kind::Gauge, "", "Turns running now."),
    (
        "yap_sessions",
        Kind::Gauge,
        "dialect",
        "Sessions held (v0: the session store; v1: started connections).",
    ),
    (
        "yap_kv_cells_used",
        Kind::Gauge,
        "",
        "KV cache cells in use in the embedded engine.",
    ),
    (
        "yap_kv_moves_total",
        Kind::Counter,
        "",
        "Idle caches the embedded engine moved between KV streams to keep running sequences together.",
    ),
    (
        "yap_engine_active_generations",
        Kind::Gauge,
        "",
        "Generations running or queued in the chat engine.",
    ),
    (
        "yap_engine_ready",
        Kind::Gauge,
        "",
        "1 when every model the deploy mode needs is loaded and the engine serves, else 0.",
    ),
    (
        "yap_engine_replica_healthy",
        Kind::Gauge,
        "replica",
        "1 when a remote engine replica passes its health check, else 0.",
    ),
    (
        "yap_build_info",
        Kind::Gauge,
        "version",
        "Always 1; the labels tell the version, deploy mode and engine.",
    ),
];

/// Histogram buckets of latencies, seconds.
const SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
    10.0, 30.0, 60.0,
];
/// Histogram buckets of decode-step phases, seconds (sub-millisecond on a GPU).
const STEP: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 1.0,
];
/// Histogram buckets of token counts.
const TOKENS: &[f64] = &[
    0.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
    32768.0,
];
/// Histogram buckets of batch sizes.
const BATCH: &[f64] = &[
    1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0, 128.0, 256.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

fn builder(global: &[(&str, String)]) -> PrometheusBuilder {
    let mut b = PrometheusBuilder::new();
    for (k, v) in global {
        b = b.add_global_label(*k, v.clone());
    }
    // A full name sorts before any suffix in the exporter, so it wins over `_seconds`.
    let sets = [
        (Matcher::Full("yap_engine_step_seconds".into()), STEP),
        (Matcher::Suffix("_seconds".into()), SECONDS),
        (Matcher::Suffix("_tokens".into()), TOKENS),
        (Matcher::Suffix("_batch_size".into()), BATCH),
        (Matcher::Suffix("_batch_sequences".into()), BATCH),
    ];
    for (m, buckets) in sets {
        // Only an empty bucket list is refused; ours are constants.
        b = match b.set_buckets_for_metric(m, buckets) {
            Ok(b) => b,
            Err(_) => PrometheusBuilder::new(),
        };
    }
    b
}

fn describe() {
    for &(name, kind, _, help) in CATALOG {
        match kind {
            Kind::Counter => describe_counter!(name, Unit::Count, help),
            Kind::Gauge => describe_gauge!(name, help),
            Kind::Histogram if name.ends_with("_seconds") => {
                describe_histogram!(name, Unit::Seconds, help);
            }
            Kind::Histogram => describe_histogram!(name, Unit::Count, help),
        }
    }
}

/// Installs the process-wide Prometheus recorder (once; later calls return the first handle)
/// with `global` labels on every series, and starts its upkeep thread.
pub fn install(global: &[(&str, String)]) -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let handle = match builder(global).install_recorder() {
            Ok(h) => h,
            Err(e) => {
                // Another recorder owns the facade: render our own (empty) registry.
                tracing::warn!(error = %e, "a metrics recorder is already installed; /metrics shows none of Yap's metrics");
                builder(global).build_recorder().handle()
            }
        };
        describe();
        gauge!("yap_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        let h = handle.clone();
        // Drains histogram samples even when nobody scrapes, so memory stays bounded.
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    h.run_upkeep();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "metrics upkeep thread did not start");
        }
        handle
    })
}

/// Counts a message refused by a rate limit.
pub(crate) fn rate_limited(dialect: &'static str, limit: &'static str) {
    counter!("yap_rate_limited_total", "dialect" => dialect, "limit" => limit).increment(1);
}

/// Counts a request with a missing or wrong key.
pub(crate) fn auth_failure(endpoint: &'static str) {
    counter!("yap_auth_failures_total", "endpoint" => endpoint).increment(1);
}

/// Counts a connection refused for want of a slot.
pub(crate) fn capacity_refusal(endpoint: &'static str) {
    counter!("yap_capacity_refusals_total", "endpoint" => endpoint).increment(1);
}

/// Counts a connection dropped because its reader fell behind.
pub(crate) fn slow_consumer() {
    counter!("yap_slow_consumer_disconnects_total").increment(1);
}

/// Sets the gauges that mirror live state.
fn sample(state: &AppState) {
    let core = state.core();
    let stats = core.engine().stats();
    gauge!("yap_open_connections").set(state.active_connections() as f64);
    gauge!("yap_running_turns").set(core.running_turns() as f64);
    gauge!("yap_sessions", "dialect" => "v0").set(core.sessions().len() as f64);
    gauge!("yap_kv_cells_used").set(stats.kv_cells_used as f64);
    counter!("yap_kv_moves_total").absolute(stats.kv_moves);
    gauge!("yap_engine_active_generations").set(stats.active_generations as f64);
    let ready = if core.readiness().is_ready() {
        1.0
    } else {
        0.0
    };
    gauge!("yap_engine_ready").set(ready);
}

/// `GET /metrics`: the Prometheus text exposition.
pub(crate) async fn handler(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(guard) = &state.metrics_auth {
        let presented = crate::auth::presented_key(&headers, &query);
        match guard.check(&peer.ip().to_string(), presented.as_deref()) {
            Verdict::Ok => {}
            Verdict::Denied => {
                auth_failure("metrics");
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer".to_owned())],
                    "missing or invalid METRICS_API_KEY\n",
                )
                    .into_response();
            }
            Verdict::Blocked(wait) => {
                auth_failure("metrics");
                let secs = wait.as_secs().max(1).to_string();
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, secs)],
                    "too many failed authentications from this address\n",
                )
                    .into_response();
            }
        }
    }
    sample(&state);
    let body = install(&[]).render();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_names_are_prometheus_names_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for &(name, kind, _, help) in CATALOG {
            assert!(seen.insert(name), "{name} twice");
            assert!(name.starts_with("yap_"), "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{name}"
            );
            assert_eq!(kind == Kind::Counter, name.ends_with("_total"), "{name}");
            assert!(!help.is_empty());
        }
    }

    /// The base names a text mentions (`yap_x_bucket` / `_sum` / `_count` → `yap_x`).
    fn mentioned(text: &str) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        for (i, _) in text.match_indices("yap_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if text[i + name.len()..].starts_with("::") {
                continue; // a module path in a log line (`yap_cli::serve`), not a metric
            }
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name)
                .to_owned();
            out.insert(base);
        }
        out
    }

    #[test]
    fn the_dashboard_and_the_docs_use_only_cataloged_metrics() {
        let names: std::collections::BTreeSet<String> =
            CATALOG.iter().map(|c| c.0.to_owned()).collect();
        let dashboard = include_str!("../../../deploy/grafana/yap-dashboard.json");
        let used = mentioned(dashboard);
        let unknown: Vec<&String> = used.difference(&names).collect();
        assert!(
            unknown.is_empty(),
            "dashboard uses unknown metrics: {unknown:?}"
        );
        assert!(used.len() >= 20, "{used:?}");
        let docs = include_str!("../../../docs/operating.md");
        let documented = mentioned(docs);
        let missing: Vec<&String> = names.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "metrics missing from docs/operating.md: {missing:?}"
        );
        let stale: Vec<&String> = documented.difference(&names).collect();
        assert!(
            stale.is_empty(),
            "docs/operating.md names unknown metrics: {stale:?}"
        );
    }

    #[test]
    fn histograms_render_as_histograms_with_buckets() {
        let recorder = builder(&[("deploy_mode", "both".to_owned())]).build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!("yap_time_to_first_token_seconds", "dialect" => "v1").record(0.12);
            metrics::histogram!("yap_prompt_tokens", "dialect" => "v1").record(300.0);
            metrics::histogram!("yap_tool_batch_size").record(3.0);
        });
        let text = handle.render();
        assert!(
            text.contains(
                "yap_time_to_first_token_seconds_bucket{deploy_mode=\"both\",dialect=\"v1\",le=\"0.15\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "yap_time_to_first_token_seconds_bucket{deploy_mode=\"both\",dialect=\"v1\",le=\"0.1\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "yap_prompt_tokens_bucket{deploy_mode=\"both\",dialect=\"v1\",le=\"512\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("yap_tool_batch_size_bucket{deploy_mode=\"both\",le=\"3\"} 1"),
            "{text}"
        );
    }
}
