//! `GET /metrics` on the real server (embedded engine on a generated tiny model, the tiny BERT
//! fixture as tool model): scrape, run turns of every kind, scrape again, and check every number
//! moved exactly as the turns say — including token sums equal to the `done` frames' usage.
//! Also `METRICS_API_KEY` and `HEALTH_ALLOWED_CIDRS`.
#![allow(clippy::unwrap_used, clippy::too_many_lines, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// One scrape: series (name + labels) → value.
#[derive(Debug, Clone, Default)]
struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut out = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let mut map = BTreeMap::new();
            for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once("=\"").unwrap();
                map.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
            }
            out.push((name.to_owned(), map, value.parse().unwrap()));
        }
        Self(out)
    }

    /// Sum over the series of `name` whose labels include `want`.
    fn get(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && want
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _, _)| n == name)
    }
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: x\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, buf.split_once("\r\n\r\n").unwrap().1.to_owned())
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, body) = get(addr, "/metrics", &[]).await;
    assert_eq!(status, 200, "{body}");
    Scrape::parse(&body)
}

fn v0_start(session: &str, text: &str, rid: &str) -> Value {
    json!({"type":"start","session_id":session,"user_utterance":text,"request_id":rid,
           "sampling":{"temperature":0.8}})
}

/// Reads frames until one of `kinds` arrives; returns all of them.
async fn read_until(ws: &mut yap_cli::client::Ws, kinds: &[&str]) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let f = recv(ws).await;
        let end = kinds.contains(&f["type"].as_str().unwrap_or(""));
        frames.push(f);
        if end {
            return frames;
        }
    }
}

fn usage_sum(frames: &[Value], field: &str) -> f64 {
    frames
        .iter()
        .filter(|f| f["type"] == "done")
        .filter_map(|f| f["usage"][field].as_f64())
        .sum()
}

fn both_mode(extra: &[&str]) -> Vec<String> {
    let fx = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../yap-tool/tests/fixtures/bert"
    );
    let mut v = vec![
        "--deploy-mode=both".to_owned(),
        format!("--tool-model={fx}"),
    ];
    v.extend(extra.iter().map(|s| (*s).to_owned()));
    v
}

async fn both_server(extra: &[&str]) -> yap_cli::serve::Running {
    let args = both_mode(extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    server(&refs).await
}

/// Server A (12-token replies) runs complete turns of every dialect; server B (4000-token
/// replies) runs a barge-in, a cancel, rate-limited cancels and a refusal at capacity. Both
/// record into the process's one registry; every count below is a delta between two scrapes.
/// One test function: the gauges are process-wide and set at scrape time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_the_turns_say() {
    let a = both_server(&["--chat-max-out=12"]).await;
    let b = both_server(&[
        "--chat-max-out=4000",
        "--max-concurrent-connections=4",
        "--ws-handshake-acquire-timeout-s=0.2",
        "--ws-max-cancels-per-window=3",
    ])
    .await;
    let before = scrape(a.addr).await;
    assert_eq!(before.get("yap_engine_ready", &[]), 1.0);
    assert_eq!(before.get("yap_running_turns", &[]), 0.0);
    // Global labels on every series.
    assert!(
        before.0.iter().all(
            |(_, l, _)| l.get("deploy_mode").map(String::as_str) == Some("both")
                && l.get("engine").map(String::as_str) == Some("embedded")
        )
    );

    // A: two complete v0 turns on one session (the second reuses the cached prefix) ...
    let mut ws = connect(&a).await;
    let mut v0_frames = Vec::new();
    for (text, rid) in [
        ("Hello there, who are you?", "a"),
        ("And what do you like?", "b"),
    ] {
        send(&mut ws, v0_start("m1", text, rid)).await;
        v0_frames.extend(read_turn(&mut ws).await);
    }
    // ... one complete v1 turn ...
    let mut v1 = connect(&a).await;
    send(
        &mut v1,
        json!({"type":"start","v":1,"gender":"female","personality":"friendly",
        "chat_prompt":"You are a friendly companion."}),
    )
    .await;
    assert_eq!(recv(&mut v1).await["type"], "done");
    send(
        &mut v1,
        json!({"type":"message","v":1,"user_utterance":"Hi! How are you?"}),
    )
    .await;
    let v1_frames = read_until(&mut v1, &["done", "error"]).await;
    assert_eq!(v1_frames.last().unwrap()["type"], "done", "{v1_frames:?}");
    // ... and one OpenAI completion.
    let auth = format!("Bearer {KEY}");
    let body = json!({"prompt":"Once upon a time","max_tokens":5}).to_string();
    let (code, completion) = http_json(
        a.addr,
        "/v1/completions",
        &body,
        &[("Authorization", &auth)],
    )
    .await;
    assert_eq!(code, 200, "{completion}");

    // While v1's connection holds its session, the gauges see it.
    let mid = scrape(a.addr).await;
    assert_eq!(mid.get("yap_sessions", &[("dialect", "v1")]), 1.0);
    assert_eq!(mid.get("yap_sessions", &[("dialect", "v0")]), 1.0);
    assert_eq!(mid.get("yap_open_connections", &[]), 2.0);
    assert!(
        mid.get("yap_kv_cells_used", &[]) > 0.0,
        "the sessions hold KV cells"
    );

    // B: a long turn, barged in by a new start, which the client then cancels.
    let mut ws2 = connect(&b).await;
    send(
        &mut ws2,
        v0_start("m2", "Tell me a very long story about the sea.", "long1"),
    )
    .await;
    let _ = read_until(&mut ws2, &["token"]).await;
    assert_eq!(scrape(b.addr).await.get("yap_running_turns", &[]), 1.0);
    send(&mut ws2, v0_start("m2", "Stop, something else.", "long2")).await;
    let barged = read_until(&mut ws2, &["done"]).await;
    assert_eq!(barged.last().unwrap()["cancelled"], true, "{barged:?}");
    let _ = read_until(&mut ws2, &["toolcall"]).await;
    send(&mut ws2, json!({"type":"cancel","request_id":"c"})).await;
    let second = read_until(&mut ws2, &["done"]).await;
    assert_eq!(second.last().unwrap()["cancelled"], true, "{second:?}");
    // Three cancels per window: with the one above, two of these four are refused.
    for _ in 0..4 {
        send(&mut ws2, json!({"type":"cancel"})).await;
    }
    let mut limited = 0;
    for _ in 0..4 {
        if recv(&mut ws2).await["error_code"] == "rate_limited" {
            limited += 1;
        }
    }
    assert_eq!(limited, 2);
    // A bad key, then one connection more than B's four slots.
    let bad = tokio_tungstenite::connect_async(format!("ws://{}/ws?api_key=nope", b.addr))
        .await
        .unwrap()
        .0;
    drop(bad);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = connect(&b).await;
        send(&mut c, json!({"type":"ping"})).await;
        assert_eq!(recv(&mut c).await["type"], "pong");
        held.push(c);
    }
    let mut over = connect(&b).await;
    send(&mut over, json!({"type":"ping"})).await;
    let refusal = recv(&mut over).await;
    assert_eq!(refusal["error_code"], "server_at_capacity", "{refusal}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = scrape(a.addr).await;
    let d =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);

    // Outcomes.
    assert_eq!(
        d("yap_turns_total", &[("dialect", "v0"), ("outcome", "done")]),
        2.0
    );
    assert_eq!(
        d("yap_turns_total", &[("dialect", "v1"), ("outcome", "done")]),
        1.0
    );
    assert_eq!(
        d(
            "yap_turns_total",
            &[("dialect", "openai"), ("outcome", "done")]
        ),
        1.0
    );
    let v0_cancelled = |code| {
        d(
            "yap_turns_total",
            &[("dialect", "v0"), ("outcome", "cancelled"), ("code", code)],
        )
    };
    assert_eq!(v0_cancelled("superseded"), 1.0);
    assert_eq!(v0_cancelled("requested"), 1.0);
    assert_eq!(d("yap_turns_total", &[("outcome", "error")]), 0.0);
    assert_eq!(d("yap_barge_ins_total", &[("dialect", "v0")]), 1.0);
    for reason in ["superseded", "requested"] {
        let labels = [("dialect", "v0"), ("reason", reason)];
        assert_eq!(
            d("yap_cancel_to_done_seconds_count", &labels),
            1.0,
            "{reason}"
        );
        assert!(
            d("yap_cancel_to_done_seconds_sum", &labels) > 0.0,
            "{reason}"
        );
    }
    // Latencies: one sample per turn that reached the mark.
    assert_eq!(
        d("yap_toolcall_latency_seconds_count", &[("dialect", "v0")]),
        4.0
    );
    assert_eq!(
        d("yap_toolcall_latency_seconds_count", &[("dialect", "v1")]),
        1.0
    );
    assert!(
        d(
            "yap_time_to_first_token_seconds_count",
            &[("dialect", "v0")]
        ) >= 3.0
    );
    assert_eq!(
        d(
            "yap_time_to_first_token_seconds_count",
            &[("dialect", "v1")]
        ),
        1.0
    );
    assert_eq!(
        d(
            "yap_time_to_first_token_seconds_count",
            &[("dialect", "openai")]
        ),
        1.0
    );
    assert_eq!(
        d("yap_turn_duration_seconds_count", &[("dialect", "v0")]),
        4.0
    );
    assert_eq!(
        d(
            "yap_turn_duration_seconds_count",
            &[("dialect", "v0"), ("outcome", "cancelled")]
        ),
        2.0
    );
    assert!(d("yap_turn_duration_seconds_sum", &[("dialect", "v1")]) > 0.0);
    assert_eq!(
        d(
            "yap_max_inter_token_gap_seconds_count",
            &[("dialect", "v1")]
        ),
        1.0
    );
    // Token histograms: the sums are the usage the done frames reported.
    for field in ["prompt_tokens", "cached_prompt_tokens", "completion_tokens"] {
        assert_eq!(
            d(&format!("yap_{field}_sum"), &[("dialect", "v0")]),
            usage_sum(&v0_frames, field),
            "{field}"
        );
        assert_eq!(d(&format!("yap_{field}_count"), &[("dialect", "v0")]), 2.0);
    }
    assert_eq!(d("yap_completion_tokens_sum", &[("dialect", "v0")]), 24.0);
    assert!(
        d("yap_cached_prompt_tokens_sum", &[("dialect", "v0")]) > 0.0,
        "turn two reused"
    );
    assert_eq!(
        d("yap_completion_tokens_sum", &[("dialect", "openai")]),
        completion["usage"]["completion_tokens"].as_f64().unwrap()
    );
    // Engine and tool batches, refusals, limits.
    assert!(
        d("yap_engine_batch_sequences_count", &[]) >= 24.0,
        "one sample per decode step"
    );
    assert!(d("yap_engine_batch_sequences_sum", &[]) >= d("yap_engine_batch_sequences_count", &[]));
    assert!(d("yap_tool_batch_size_count", &[]) >= 1.0);
    assert_eq!(
        d("yap_tool_batch_size_sum", &[]),
        5.0,
        "five utterances classified"
    );
    assert_eq!(d("yap_auth_failures_total", &[("endpoint", "ws")]), 1.0);
    assert_eq!(d("yap_capacity_refusals_total", &[("endpoint", "ws")]), 1.0);
    assert_eq!(
        d(
            "yap_rate_limited_total",
            &[("dialect", "v0"), ("limit", "cancels")]
        ),
        2.0
    );
    assert_eq!(after.get("yap_running_turns", &[]), 0.0);
    assert!(after.has("yap_engine_active_generations"));
    // v1's session goes with its connection.
    v1.send(Message::Close(None)).await.unwrap();
    drop(v1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        scrape(a.addr)
            .await
            .get("yap_sessions", &[("dialect", "v1")]),
        0.0
    );
    drop((ws, ws2, held, over));
    a.stop().await;
    b.stop().await;
    metrics_key_and_health_cidrs_guard_their_endpoints().await;
}

/// `METRICS_API_KEY` and `HEALTH_ALLOWED_CIDRS` (run after the turns: the registry and its
/// gauges are the process's, so the servers of this file are never scraped concurrently).
async fn metrics_key_and_health_cidrs_guard_their_endpoints() {
    let r = both_server(&[
        "--metrics-api-key=scrape-me",
        "--health-allowed-cidrs=10.0.0.0/8",
    ])
    .await;
    let (code, _) = get(r.addr, "/metrics", &[]).await;
    assert_eq!(code, 401);
    let (code, _) = get(r.addr, "/metrics", &[("Authorization", "Bearer wrong")]).await;
    assert_eq!(code, 401);
    let (code, body) = get(r.addr, "/metrics", &[("Authorization", "Bearer scrape-me")]).await;
    assert_eq!(code, 200);
    let s = Scrape::parse(&body);
    assert_eq!(
        s.get("yap_auth_failures_total", &[("endpoint", "metrics")]),
        2.0
    );
    let (code, _) = get(r.addr, "/metrics?api_key=scrape-me", &[]).await;
    assert_eq!(code, 200);
    // 127.0.0.1 is outside 10.0.0.0/8.
    let (code, body) = get(r.addr, "/healthz", &[]).await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(get(r.addr, "/health", &[]).await.0, 403);
    r.stop().await;
    let r = both_server(&["--health-allowed-cidrs=10.0.0.0/8, 127.0.0.0/8"]).await;
    assert_eq!(get(r.addr, "/healthz", &[]).await.0, 200);
    // No key configured: /metrics is open.
    assert_eq!(get(r.addr, "/metrics", &[]).await.0, 200);
    r.stop().await;
}
