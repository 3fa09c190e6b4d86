//! `GET /healthz` (and `/health`): 200 once every deployed engine is ready, 503 with the reason
//! while loading or down.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use yap_engine_api::Readiness;

use crate::AppState;

/// The health body and status of a server.
pub(crate) fn health(state: &AppState) -> (StatusCode, Value) {
    let core = state.core();
    let engine = core.engine();
    let info = engine.info();
    let stats = engine.stats();
    let readiness = core.readiness();
    let (status, reason) = match &readiness {
        Readiness::Ready => ("ok", None),
        Readiness::Loading(r) => ("loading", Some(r.clone())),
        Readiness::Down(r) => ("unavailable", Some(r.clone())),
    };
    let body = json!({
        "status": status,
        "reason": reason,
        "engine": info.kind,
        "model": info.model,
        "deploy_mode": core.config().deploy_mode.as_str(),
        "connections": {"active": state.active_connections(), "max": state.config.max_connections()},
        "running_turns": core.running_turns(),
        "sessions": core.sessions().len(),
        "engine_stats": {
            "active_generations": stats.active_generations,
            "steps": stats.steps,
            "peak_batch_sequences": stats.peak_batch_sequences,
            "generations": stats.generations,
            "cached_prompt_tokens": stats.cached_prompt_tokens,
            "shared_prefix_tokens": stats.shared_prefix_tokens,
            "kv_cells_used": stats.kv_cells_used,
            "restarts": stats.restarts,
        },
        "tool": core.tool().map(|t| {
            let mut d = t.describe();
            if let Some(o) = d.as_object_mut() {
                o.insert("threshold".into(), json!(core.threshold()));
                o.insert("timeouts".into(), json!(core.counters().tool_timeouts.load(std::sync::atomic::Ordering::Relaxed)));
            }
            d
        }),
    });
    let code = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}

pub(crate) async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let (code, body) = health(&state);
    (code, Json(body))
}
