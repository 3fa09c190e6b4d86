//! The remote (OpenAI-compatible) engine against real HTTP servers: the engine double started as
//! a child process, and another Yap.
#![cfg(feature = "dev-tools")]
#![allow(clippy::unwrap_used, clippy::too_many_lines, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

struct Double {
    addr: SocketAddr,
    child: Child,
}

impl Drop for Double {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn double(token_ms: u64) -> Double {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_yap"))
        .args([
            "engine-double",
            "--port",
            &port.to_string(),
            "--token-ms",
            &token_ms.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "double did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Double { addr, child }
}

fn url(d: &Double) -> String {
    format!("--engine-url=http://{}", d.addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_turns_stream_report_usage_and_cancel_fast() {
    let d = double(2).await;
    let r = server(&["--engine=openai", &url(&d), "--chat-max-out=12"]).await;
    assert_eq!(healthz(&r).await["engine"], "remote");
    let mut ws = connect(&r).await;
    send(&mut ws, start("rem", "hello", "1")).await;
    let frames = read_turn(&mut ws).await;
    let text = reply_text(&frames);
    assert_eq!(
        text,
        (0..12)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let usage = &frames.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 12);
    assert!(
        usage["cached_prompt_tokens"].as_u64().unwrap() > 0,
        "{usage}"
    );
    r.stop().await;

    // Barge-in and cancel against the double: done{cancelled} is immediate and the engine sees
    // the disconnect.
    let r = server(&[
        "--engine=openai",
        &url(&d),
        "--chat-max-out=4000",
        "--ws-max-messages-per-window=0",
        "--ws-max-cancels-per-window=0",
    ])
    .await;
    let mut ws = connect(&r).await;
    let mut lat = Vec::new();
    for i in 0..50 {
        send(&mut ws, start("cancel-me", "talk", &format!("c{i}"))).await;
        while recv(&mut ws).await["type"] != "token" {}
        let t0 = Instant::now();
        send(&mut ws, json!({"type":"cancel"})).await;
        loop {
            let f = recv(&mut ws).await;
            if f["type"] == "done" {
                assert_eq!(f["cancelled"], true);
                break;
            }
        }
        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let p99 = lat[(lat.len() * 99).div_ceil(100) - 1];
    eprintln!(
        "remote cancel-to-done p50 {:.2} ms p99 {:.2} ms",
        lat[lat.len() / 2],
        p99
    );
    assert!(p99 < 30.0, "cancel-to-done p99 {p99} ms");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_, stats) = http(d.addr, "GET", "/stats").await;
        if stats["active"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the double still streams aborted requests: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_keep_sessions_sticky_and_fail_over() {
    let a = double(1).await;
    let b = double(1).await;
    let r = server(&[
        "--engine=openai",
        &format!("--engine-url=http://{},http://{}", a.addr, b.addr),
        "--chat-max-out=4",
        "--engine-health-interval-s=0.1",
        "--ws-max-messages-per-window=0",
    ])
    .await;
    let mut ws = connect(&r).await;
    for turn in 0..2 {
        for s in 0..8 {
            send(
                &mut ws,
                start(&format!("sticky-{s}"), "hi", &format!("{turn}")),
            )
            .await;
            assert_eq!(read_turn(&mut ws).await.last().unwrap()["type"], "done");
        }
    }
    let (_, sa) = http(a.addr, "GET", "/stats").await;
    let (_, sb) = http(b.addr, "GET", "/stats").await;
    for s in 0..8 {
        let key = format!("sticky-{s}");
        let on_a = sa["sessions"][&key].as_u64().unwrap_or(0);
        let on_b = sb["sessions"][&key].as_u64().unwrap_or(0);
        assert!(
            (on_a, on_b) == (2, 0) || (on_a, on_b) == (0, 2),
            "{key} split: {on_a}/{on_b}"
        );
    }
    assert!(
        sa["requests"].as_u64().unwrap() > 0 && sb["requests"].as_u64().unwrap() > 0,
        "no spread"
    );
    // A replica dies: every session keeps working on the other.
    let _ = http(a.addr, "POST", "/control/die").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for s in 0..8 {
        send(
            &mut ws,
            start(&format!("sticky-{s}"), "still there?", "after"),
        )
        .await;
        let f = read_turn(&mut ws).await;
        assert_eq!(f.last().unwrap()["type"], "done", "{f:?}");
    }
    assert_eq!(healthz(&r).await["status"], "ok");
    // The other one fails with errors: turns end with engine_unavailable, never hang.
    let _ = http(b.addr, "POST", "/control/error").await;
    send(&mut ws, start("sticky-0", "and now?", "err")).await;
    let f = read_turn(&mut ws).await;
    let last = f.last().unwrap();
    assert_eq!(last["error_code"], "engine_unavailable", "{last}");
    assert_eq!(last["request_id"], "err");
    // Unhealthy everywhere: /healthz says 503.
    let _ = http(b.addr, "POST", "/control/sick").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (code, _) = http(r.addr, "GET", "/healthz").await;
        if code == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "healthz never turned 503");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = ws.send(Message::Text("__END__".into())).await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yap_serves_as_the_remote_engine_of_another_yap() {
    let backend = server(&["--chat-max-out=8"]).await;
    let key = format!("--engine-api-key={KEY}");
    let front = server(&[
        "--engine=openai",
        &format!("--engine-url=http://{}/v1", backend.addr),
        "--chat-max-out=8",
        &key,
    ])
    .await;
    let mut ws = connect(&front).await;
    send(&mut ws, start("chain", "Tell me about the weather.", "1")).await;
    let t1 = read_turn(&mut ws).await;
    assert_eq!(t1.last().unwrap()["type"], "done", "{t1:?}");
    send(&mut ws, start("chain", "And tomorrow?", "2")).await;
    let t2 = read_turn(&mut ws).await;
    let u = &t2.last().unwrap()["usage"];
    assert_eq!(u["completion_tokens"], 8);
    assert!(
        u["cached_prompt_tokens"].as_u64().unwrap() > 0,
        "backend prefix cache not reused: {u}"
    );
    front.stop().await;
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_are_per_phase_not_one_total_cap() {
    // 40 tokens 40 ms apart: a 1.6 s reply through 0.5 s first-byte and chunk timeouts.
    let d = double(40).await;
    let r = server(&[
        "--engine=openai",
        &url(&d),
        "--chat-max-out=40",
        "--engine-first-byte-timeout-s=0.5",
        "--engine-chunk-timeout-s=0.5",
    ])
    .await;
    let mut ws = connect(&r).await;
    let t0 = Instant::now();
    send(&mut ws, start("slow", "hello", "long")).await;
    let f = read_turn(&mut ws).await;
    let last = f.last().unwrap();
    assert_eq!(last["type"], "done", "{last}");
    assert_eq!(last["usage"]["completion_tokens"], 40, "{last}");
    assert!(t0.elapsed() > Duration::from_millis(1500));
    // A replica that sends headers and then nothing: the turn ends after the chunk timeout.
    let _ = http(d.addr, "POST", "/control/stall").await;
    let t0 = Instant::now();
    send(&mut ws, start("slow", "again", "stalled")).await;
    let f = read_turn(&mut ws).await;
    let last = f.last().unwrap();
    assert_eq!(last["error_code"], "engine_unavailable", "{last}");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_model_name_comes_from_the_engine_when_none_is_given() {
    // Issue 13 #8: the name was the local model file's ("tiny"); vLLM answers 404 to that.
    let d = double(1).await;
    let r = server(&["--engine=openai", &url(&d), "--chat-max-out=4"]).await;
    let mut ws = connect(&r).await;
    send(&mut ws, start("name", "hello", "1")).await;
    let frames = read_turn(&mut ws).await;
    assert_eq!(frames.last().unwrap()["type"], "done", "{frames:?}");
    let (_, last) = http(d.addr, "GET", "/last").await;
    assert_eq!(last["model"], "double-model", "{last}");
    r.stop().await;
}
