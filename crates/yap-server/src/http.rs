//! `GET /healthz` (and `/health`): 200 once every deployed engine is ready, 503 with the reason
//! while loading or down; 403 for a client outside `HEALTH_ALLOWED_CIDRS` when that is set.

use std::net::{IpAddr, SocketAddr};

use axum::Json;
use axum::extract::{ConnectInfo, State};
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
            "kv_moves": stats.kv_moves,
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

pub(crate) async fn healthz(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> impl IntoResponse {
    if let Some(allowed) = &state.config.health_allowed_cidrs
        && !allowed.contains(peer.ip())
    {
        let body = json!({"status": "forbidden", "reason": "address not in HEALTH_ALLOWED_CIDRS"});
        return (StatusCode::FORBIDDEN, Json(body));
    }
    let (code, body) = health(&state);
    (code, Json(body))
}

/// A list of networks (`HEALTH_ALLOWED_CIDRS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidrs(pub Vec<ipnet::IpNet>);

impl Cidrs {
    /// Whether `ip` is in one of the networks (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// Parses `10.0.0.0/8, 127.0.0.1, ::1/128`: networks or single addresses, comma-separated.
pub fn parse_cidrs(s: &str) -> Result<Cidrs, String> {
    let mut nets = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let net = match part.parse::<ipnet::IpNet>() {
            Ok(n) => n,
            Err(_) => part
                .parse::<IpAddr>()
                .map(ipnet::IpNet::from)
                .map_err(|_| format!("`{part}` is neither a CIDR (10.0.0.0/8) nor an address"))?,
        };
        nets.push(net);
    }
    if nets.is_empty() {
        return Err("no network given (unset HEALTH_ALLOWED_CIDRS to allow anyone)".into());
    }
    Ok(Cidrs(nets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_match() {
        let c = parse_cidrs("10.0.0.0/8, 127.0.0.1 ,::1").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(c.contains("127.0.0.1".parse().unwrap()));
        assert!(!c.contains("127.0.0.2".parse().unwrap()));
        assert!(c.contains("::1".parse().unwrap()));
        assert!(c.contains("::ffff:10.9.9.9".parse().unwrap()), "v4-mapped");
        assert!(!c.contains("192.168.1.1".parse().unwrap()));
        assert!(parse_cidrs("10.0.0.0/33").is_err());
        assert!(parse_cidrs("nope").is_err());
        assert!(parse_cidrs(" , ").is_err());
    }
}
