//! OTLP traces from the real `yap` binary: a small OTLP/HTTP receiver (an axum route decoding the
//! protobuf export) collects the spans of one v1 turn and one v0 turn, and the test checks the
//! tree connection → turn → tool / prefill / decode, its attributes and the service name. Without
//! `OTEL_EXPORTER_OTLP_ENDPOINT` no exporter thread exists.
#![allow(clippy::unwrap_used, clippy::too_many_lines, missing_docs)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A received span, flattened.
#[derive(Debug, Clone)]
struct Span {
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
    name: String,
    attrs: HashMap<String, String>,
    service: String,
    start: u64,
    end: u64,
}

fn text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

/// Starts the receiver; returns its address and the spans it collects.
async fn receiver() -> (std::net::SocketAddr, Arc<Mutex<Vec<Span>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&spans);
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sink = Arc::clone(&sink);
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut out = sink.lock().unwrap();
                for rs in req.resource_spans {
                    let res = rs
                        .resource
                        .map(|r| attrs(&r.attributes))
                        .unwrap_or_default();
                    let service = res.get("service.name").cloned().unwrap_or_default();
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            out.push(Span {
                                trace: s.trace_id,
                                id: s.span_id,
                                parent: s.parent_span_id,
                                name: s.name,
                                attrs: attrs(&s.attributes),
                                service: service.clone(),
                                start: s.start_time_unix_nano,
                                end: s.end_time_unix_nano,
                            });
                        }
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, spans)
}

/// `yap serve` (both mode, tiny chat model, BERT fixture tool model) in the foreground.
async fn spawn_yap(envs: &[(&str, String)]) -> (Child, std::net::SocketAddr) {
    let fx = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../yap-tool/tests/fixtures/bert"
    );
    let dir = std::env::temp_dir().join(format!("yap-traces-{}", std::process::id()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_yap"));
    cmd.args([
        "serve",
        "--host=127.0.0.1",
        "--port=0",
        "--deploy-mode=both",
        "--threads=1",
        "--kv-tokens=16384",
        "--chat-max-len=4096",
        "--chat-max-out=8",
    ])
    .arg(format!("--model={}", tiny_model().display()))
    .arg(format!("--tool-model={fx}"))
    .arg(format!("--log-file={}", dir.join("server.log").display()))
    .env("TEXT_API_KEY", KEY)
    .env("MAX_CONCURRENT_CONNECTIONS", "8")
    .env("YAP_LOG", "info")
    .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
    .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    .stderr(std::process::Stdio::piped())
    .stdout(std::process::Stdio::null())
    .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("ws://").nth(1) {
                return rest.split('/').next().unwrap().parse().unwrap();
            }
        }
        panic!("yap exited before listening");
    })
    .await
    .unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_owned())
        .collect()
}

async fn sigterm_and_wait(mut child: Child) {
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_turn_exports_the_span_tree_over_otlp_http() {
    let (otlp, spans) = receiver().await;
    let (child, addr) = spawn_yap(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
        ("OTEL_SERVICE_NAME", "yap-trace-test".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ])
    .await;
    assert!(
        thread_names(child.id().unwrap())
            .iter()
            .any(|n| n.starts_with("OpenTelemetry")),
        "the batch exporter runs"
    );
    let url = format!("ws://{addr}/ws?api_key={KEY}");
    // A v1 turn.
    let mut v1 = tokio_tungstenite::connect_async(&url).await.unwrap().0;
    send(
        &mut v1,
        json!({"type":"start","v":1,"gender":"female","personality":"friendly",
        "chat_prompt":"You are a friendly companion."}),
    )
    .await;
    assert_eq!(recv(&mut v1).await["type"], "done");
    send(
        &mut v1,
        json!({"type":"message","v":1,"user_utterance":"Look at this!"}),
    )
    .await;
    let mut kinds = Vec::new();
    loop {
        let f = recv(&mut v1).await;
        kinds.push(f["type"].as_str().unwrap().to_owned());
        if f["type"] == "done" {
            break;
        }
    }
    // A v0 turn on another connection.
    let mut v0 = tokio_tungstenite::connect_async(&url).await.unwrap().0;
    send(&mut v0, start("t0", "Hello there", "r0")).await;
    let frames = read_turn(&mut v0).await;
    let completion = frames.last().unwrap()["usage"]["completion_tokens"].clone();
    drop((v1, v0));
    // SIGTERM: the server drains and flushes its spans on the way out.
    sigterm_and_wait(child).await;

    let spans = spans.lock().unwrap().clone();
    let by_id: HashMap<Vec<u8>, &Span> = spans.iter().map(|s| (s.id.clone(), s)).collect();
    let turns: Vec<&Span> = spans.iter().filter(|s| s.name == "turn").collect();
    assert_eq!(
        turns.len(),
        2,
        "{:#?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    for turn in &turns {
        let dialect = turn.attrs["dialect"].as_str();
        assert!(dialect == "v0" || dialect == "v1", "{turn:?}");
        assert_eq!(turn.service, "yap-trace-test");
        assert_eq!(turn.attrs["outcome"], "done", "{turn:?}");
        assert_eq!(turn.attrs["completion_tokens"], "8", "{turn:?}");
        assert!(turn.attrs["prompt_tokens"].parse::<u64>().unwrap() > 5);
        // Parent: the connection.
        let conn = by_id
            .get(&turn.parent)
            .expect("the turn's parent was exported");
        assert_eq!(conn.name, "connection");
        assert_eq!(conn.attrs["dialect"], dialect);
        assert!(conn.attrs["peer"].starts_with("127.0.0.1:"));
        assert_eq!(conn.trace, turn.trace);
        assert!(conn.start <= turn.start && turn.end <= conn.end);
        // Children: tool, prefill, decode — in that order of start, inside the turn.
        let mut children: Vec<&Span> = spans.iter().filter(|s| s.parent == turn.id).collect();
        children.sort_by_key(|s| s.start);
        let names: Vec<&str> = children.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"tool"), "{names:?}");
        let prefill = names.iter().position(|n| *n == "prefill").expect("prefill");
        let decode = names.iter().position(|n| *n == "decode").expect("decode");
        assert!(prefill < decode, "{names:?}");
        for c in &children {
            assert_eq!(c.trace, turn.trace);
            assert!(
                turn.start <= c.start && c.end <= turn.end,
                "{c:?} inside {turn:?}"
            );
        }
        let tool = children.iter().find(|s| s.name == "tool").unwrap();
        assert!(tool.attrs["decision"] == "true" || tool.attrs["decision"] == "false");
        let p = children[prefill];
        assert_eq!(p.attrs["prompt_tokens"], turn.attrs["prompt_tokens"]);
        assert!(children[decode].attrs["pieces"].parse::<u64>().unwrap() >= 1);
        assert!(p.end <= children[decode].start);
    }
    let v0 = turns.iter().find(|t| t.attrs["dialect"] == "v0").unwrap();
    assert_eq!(v0.attrs["completion_tokens"], completion.to_string());
    assert_eq!(v0.attrs["session"], "t0");
    assert!(kinds.contains(&"tool".to_owned()) && kinds.contains(&"final".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_exported() {
    let (child, _addr) = spawn_yap(&[]).await;
    let names = thread_names(child.id().unwrap());
    assert!(
        !names.iter().any(|n| n.starts_with("OpenTelemetry")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("yap-log-writer")),
        "{names:?}"
    );
    sigterm_and_wait(child).await;
}
