//! The defects an outside probe found (issue 10), each against a live server: the session race,
//! slow readers, idle sockets before the upgrade and fd exhaustion, unbounded session state,
//! the auth-failure lockout, WebSocket protocol errors and close handshakes, verbatim request
//! ids, config values that used to panic.
#![allow(clippy::unwrap_used, clippy::too_many_lines, missing_docs)]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Waits until the server runs no turn and its engine no generation.
async fn wait_quiet(r: &yap_cli::serve::Running) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = healthz(r).await;
        if h["running_turns"] == 0 && h["engine_stats"]["active_generations"] == 0 {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "turns or generations left running: {h}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads frames until `terminals` terminal frames arrived; fails on anything after the last.
async fn read_terminals(ws: &mut yap_cli::client::Ws, terminals: usize) -> Vec<Value> {
    let mut frames = Vec::new();
    let mut seen = 0;
    while seen < terminals {
        let f = recv(ws).await;
        if is_terminal(&f) {
            seen += 1;
        }
        frames.push(f);
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_on_one_session_from_many_connections_orphan_nothing() {
    let r = server(&[
        "--chat-max-out=400",
        "--ws-max-messages-per-window=0",
        "--ws-max-cancels-per-window=0",
    ])
    .await;
    for trial in 0..20 {
        let session = format!("race-{trial}");
        let mut tasks = Vec::new();
        for c in 0..8 {
            let (addr, session) = (r.addr, session.clone());
            tasks.push(tokio::spawn(async move {
                let url = format!("ws://{addr}/ws?api_key={KEY}");
                let mut ws = tokio_tungstenite::connect_async(url).await.unwrap().0;
                send(
                    &mut ws,
                    start(&session, "tell me a long story", &format!("a{c}")),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                send(
                    &mut ws,
                    start(&session, "no wait, a joke", &format!("b{c}")),
                )
                .await;
                send(
                    &mut ws,
                    json!({"type":"cancel","request_id":format!("c{c}")}),
                )
                .await;
                // Two turns started: two terminals; the cancel adds one when nothing ran.
                let mut frames = read_terminals(&mut ws, 2).await;
                let extra = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
                if let Ok(Some(Ok(Message::Text(t)))) = extra {
                    frames.push(serde_json::from_str(t.as_str()).unwrap());
                }
                frames
            }));
        }
        for t in tasks {
            let frames = t.await.unwrap();
            let terminals = frames.iter().filter(|f| is_terminal(f)).count();
            assert!((2..=3).contains(&terminals), "{frames:?}");
            let last_terminal = frames.iter().rposition(is_terminal).unwrap();
            assert!(
                frames[last_terminal + 1..].is_empty(),
                "frames after the end: {frames:?}"
            );
        }
        wait_quiet(&r).await;
    }
    r.stop().await;
}

/// A `yap serve` child process on the tiny model.
struct Child2 {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Child2 {
    fn rss_mb(&self) -> f64 {
        let pid = self.child.id().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap();
        kb / 1024.0
    }
}

impl Drop for Child2 {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Starts `yap serve` (optionally under `ulimit -n`) and waits for its address.
async fn spawn_yap(extra: &[&str], nofile: Option<u32>) -> Child2 {
    let model = tiny_model();
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--host=127.0.0.1".into(),
        "--port=0".into(),
        format!("--api-key={KEY}"),
        "--max-concurrent-connections=16".into(),
        format!("--model={}", model.display()),
        "--threads=1".into(),
        "--deploy-mode=chat".into(),
        "--log-file=/dev/null".into(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let bin = env!("CARGO_BIN_EXE_yap");
    let mut cmd = match nofile {
        Some(n) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                .arg(bin)
                .args(&args);
            c
        }
        None => {
            let mut c = Command::new(bin);
            c.args(&args);
            c
        }
    };
    let mut child = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .env("YAP_LOG", "info")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
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
    Child2 { child, addr }
}

async fn get_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    tokio::time::timeout(Duration::from_secs(5), http(addr, "GET", path))
        .await
        .expect("answered in time")
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_is_dropped_and_memory_stays_bounded() {
    let y = spawn_yap(&["--ws-max-messages-per-window=5"], None).await;
    // Warm up, then take the baseline.
    for _ in 0..3 {
        assert_eq!(get_status(y.addr, "/healthz").await, 200);
    }
    let baseline = y.rss_mb();
    let url = format!("ws://{}/ws?api_key={KEY}", y.addr);
    let mut ws = tokio_tungstenite::connect_async(url).await.unwrap().0;
    // Never read; flood pings and starts (each refused start queues an error frame).
    let t0 = Instant::now();
    let mut sent = 0u64;
    let mut dropped = false;
    while t0.elapsed() < Duration::from_secs(30) {
        let msg = if sent.is_multiple_of(2) {
            json!({"type":"ping"})
        } else {
            start("slow", &"x".repeat(2000), "s")
        };
        match tokio::time::timeout(
            Duration::from_secs(2),
            ws.send(Message::Text(msg.to_string().into())),
        )
        .await
        {
            Ok(Ok(())) => sent += 1,
            _ => {
                dropped = true;
                break;
            }
        }
    }
    let peak = y.rss_mb();
    assert!(
        dropped,
        "the server kept a reader that never reads ({sent} messages sent)"
    );
    assert!(
        peak < baseline + 100.0,
        "RSS {baseline:.0} MB → {peak:.0} MB"
    );
    // The slot came back.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, h) = http(y.addr, "GET", "/healthz").await;
        if h["connections"]["active"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("slow reader: {sent} messages before the drop; RSS {baseline:.1} → {peak:.1} MB");
}

/// Raises this process's open-file limit to its hard limit.
fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    getrlimit(Resource::RLIMIT_NOFILE).unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_sockets_do_not_lock_out_health_checks_or_clients() {
    assert!(
        raise_nofile() > 1100,
        "this test needs more than 1100 open files"
    );
    let y = spawn_yap(&["--http-header-timeout-s=30"], Some(128)).await;
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(y.addr).await.unwrap());
    }
    // Some idle ones also send half a header.
    for s in idle.iter_mut().take(100) {
        let _ = s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await;
    }
    let t0 = Instant::now();
    assert_eq!(get_status(y.addr, "/healthz").await, 200);
    let healthz_ms = t0.elapsed().as_millis();
    let url = format!("ws://{}/ws?api_key={KEY}", y.addr);
    let mut ws = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .unwrap()
    .unwrap()
    .0;
    send(&mut ws, json!({"type":"ping"})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");
    eprintln!(
        "1000 idle sockets under a 128-fd limit: /healthz in {healthz_ms} ms, client admitted"
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_trickling_sockets_are_closed_after_the_header_timeout() {
    let r = server(&["--http-header-timeout-s=0.5"]).await;
    let mut silent = TcpStream::connect(r.addr).await.unwrap();
    let mut partial = TcpStream::connect(r.addr).await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    for s in [&mut silent, &mut partial] {
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("closed in time");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_sessions_stay_within_the_session_memory() {
    let y = spawn_yap(
        &[
            "--session-cache-mb=8",
            "--ws-max-messages-per-window=0",
            "--chat-prompt-update-max-per-window=0",
        ],
        None,
    )
    .await;
    let baseline = y.rss_mb();
    let persona = "You are a cheerful companion who loves puns. ".repeat(20);
    let mut tasks = Vec::new();
    for c in 0..4 {
        let (addr, persona) = (y.addr, persona.clone());
        tasks.push(tokio::spawn(async move {
            let url = format!("ws://{addr}/ws?api_key={KEY}");
            let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            let (mut tx, mut rx) = ws.split();
            let drain = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
            for i in 0..25_000 {
                let m = json!({"type":"chat_prompt","session_id":format!("s-{c}-{i}"),"chat_prompt":persona});
                tx.send(Message::Text(m.to_string().into())).await.unwrap();
            }
            tx.send(Message::Text(r#"{"type":"ping"}"#.into())).await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            drain.abort();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (_, h) = http(y.addr, "GET", "/healthz").await;
    let sessions = h["sessions"].as_u64().unwrap();
    let peak = y.rss_mb();
    eprintln!("100k sessions: {sessions} kept; RSS {baseline:.1} → {peak:.1} MB");
    assert!(sessions < 20_000, "{h}");
    assert!(peak < baseline + 64.0, "RSS {baseline:.0} → {peak:.0} MB");
}

#[tokio::test]
async fn the_right_key_is_admitted_after_failures_and_v1_routes_are_limited_too() {
    let r = server(&["--ws-max-auth-failures-per-window=3"]).await;
    for _ in 0..5 {
        let url = format!("ws://{}/ws?api_key=wrong", r.addr);
        let _ = tokio_tungstenite::connect_async(url).await;
    }
    let mut ws = connect(&r).await;
    send(&mut ws, json!({"type":"ping"})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");
    let mut bearer = format!("ws://{}/ws", r.addr).into_client_request().unwrap();
    bearer
        .headers_mut()
        .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    let mut ws = tokio_tungstenite::connect_async(bearer).await.unwrap().0;
    send(&mut ws, json!({"type":"ping"})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");
    // /v1: failures are limited too (429), the right key still works.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            http_with(
                r.addr,
                "GET",
                "/v1/models",
                &[("Authorization", "Bearer nope")],
            )
            .await
            .0,
        );
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    let (ok, _) = http_with(
        r.addr,
        "GET",
        "/v1/models",
        &[("Authorization", &format!("Bearer {KEY}"))],
    )
    .await;
    assert_eq!(ok, 200);
    r.stop().await;
}

/// A raw WebSocket: the upgrade by hand, then bytes.
async fn raw_ws(addr: std::net::SocketAddr, extra: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /ws?api_key={KEY} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

/// A masked client frame.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let n = payload.len();
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n < 65536 {
        f.push(0x80 | 126);
        f.extend((n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend((n as u64).to_be_bytes());
    }
    let mask = [1u8, 2, 3, 4];
    f.extend(mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads server frames until a close; returns the text frames and the close code.
async fn read_until_close(s: &mut TcpStream) -> (Vec<String>, Option<u16>) {
    let mut texts = Vec::new();
    loop {
        let mut h = [0u8; 2];
        if tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut h))
            .await
            .ok()
            .and_then(Result::ok)
            .is_none()
        {
            return (texts, None);
        }
        let mut n = u64::from(h[1] & 0x7f);
        if n == 126 {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).await.unwrap();
            n = u64::from(u16::from_be_bytes(l));
        } else if n == 127 {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).await.unwrap();
            n = u64::from_be_bytes(l);
        }
        let mut payload = vec![0u8; n as usize];
        s.read_exact(&mut payload).await.unwrap();
        match h[0] & 0x0f {
            0x1 => texts.push(String::from_utf8_lossy(&payload).into_owned()),
            0x8 => {
                return (
                    texts,
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
                );
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn websocket_protocol_errors_get_their_close_codes_and_a_client_close_is_echoed() {
    let r = server(&[]).await;
    // Unmasked frame → 1002.
    let (mut s, head) = raw_ws(r.addr, "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    assert_eq!(read_until_close(&mut s).await.1, Some(1002));
    // Reserved opcode → 1002.
    let (mut s, _) = raw_ws(r.addr, "").await;
    s.write_all(&frame(0x3, b"x")).await.unwrap();
    assert_eq!(read_until_close(&mut s).await.1, Some(1002));
    // Control frame over 125 bytes → 1002.
    let (mut s, _) = raw_ws(r.addr, "").await;
    s.write_all(&frame(0x9, &[b'p'; 126])).await.unwrap();
    assert_eq!(read_until_close(&mut s).await.1, Some(1002));
    // A frame over the transport limit (1 MiB here) → 1009.
    let (mut s, _) = raw_ws(r.addr, "").await;
    let _ = s.write_all(&frame(0x1, &vec![b'a'; 2 << 20])).await;
    assert_eq!(read_until_close(&mut s).await.1, Some(1009));
    // The client's close is echoed with its code.
    let (mut s, _) = raw_ws(r.addr, "").await;
    s.write_all(&frame(0x8, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    assert_eq!(read_until_close(&mut s).await.1, Some(1000));
    r.stop().await;
}

#[tokio::test]
async fn a_half_closed_client_still_gets_its_replies() {
    let r = server(&["--chat-max-out=8"]).await;
    let (mut s, _) = raw_ws(r.addr, "").await;
    let msg = start("half", "hello", "h1").to_string();
    s.write_all(&frame(0x1, msg.as_bytes())).await.unwrap();
    s.write_all(&frame(0x1, br#"{"type":"ping"}"#))
        .await
        .unwrap();
    s.shutdown().await.unwrap(); // FIN: nothing more from us, but we still read
    let (texts, code) = read_until_close(&mut s).await;
    let frames: Vec<Value> = texts
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
    assert!(frames.iter().any(|f| f["type"] == "pong"), "{frames:?}");
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "done" && f["request_id"] == "h1"),
        "{frames:?}"
    );
    assert_eq!(code, Some(1000));
    r.stop().await;
}

#[tokio::test]
async fn two_origin_headers_are_refused_and_request_ids_echo_verbatim() {
    let r = server(&[
        "--ws-allowed-origins=https://app.example",
        "--chat-max-out=4",
    ])
    .await;
    let (mut s, _) = raw_ws(
        r.addr,
        "Origin: https://app.example\r\nOrigin: https://evil.example\r\n",
    )
    .await;
    let (texts, code) = read_until_close(&mut s).await;
    assert_eq!(code, Some(1008));
    assert!(texts[0].contains("origin"), "{texts:?}");
    let mut ws = connect(&r).await;
    send_raw(&mut ws, r#"{"type":"start","session_id":"rid","user_utterance":"hi","request_id":9007199254740993123}"#).await;
    let frames = read_turn(&mut ws).await;
    let done = frames.last().unwrap();
    assert_eq!(done["type"], "done");
    // Compare the raw text: a float would print differently.
    assert!(
        serde_json::to_string(&done["request_id"])
            .unwrap()
            .contains("9007199254740993123"),
        "{done}"
    );
    send_raw(
        &mut ws,
        r#"{"type":"cancel","request_id":123456789012345678901234567890}"#,
    )
    .await;
    let raw = match ws.next().await.unwrap().unwrap() {
        Message::Text(t) => t.to_string(),
        other => panic!("{other:?}"),
    };
    assert!(
        raw.contains("\"request_id\":123456789012345678901234567890"),
        "{raw}"
    );
    r.stop().await;
}

#[tokio::test]
async fn durations_that_used_to_panic_are_refused_with_a_message() {
    for bad in [
        "--ws-idle-timeout-s=-1",
        "--ws-handshake-acquire-timeout-s=NaN",
        "--engine-startup-timeout-s=inf",
        "--tool-timeout-s=-0.5",
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_yap"))
            .args(["serve", bad])
            .env("TEXT_API_KEY", "k")
            .env("MAX_CONCURRENT_CONNECTIONS", "1")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("seconds") && !err.contains("panicked"),
            "{bad}: {err}"
        );
    }
}

#[tokio::test]
async fn openai_stop_lists_are_bounded() {
    let r = server(&[]).await;
    let key = format!("Bearer {KEY}");
    let body = json!({"prompt":"hi","max_tokens":4,"stop":["a","b","c","d","e"]}).to_string();
    let (status, v) = http_json(r.addr, "/v1/completions", &body, &[("Authorization", &key)]).await;
    assert_eq!(status, 400, "{v}");
    let body = json!({"prompt":"hi","max_tokens":4,"stop":["x".repeat(500)]}).to_string();
    assert_eq!(
        http_json(r.addr, "/v1/completions", &body, &[("Authorization", &key)])
            .await
            .0,
        400
    );
    let body = json!({"prompt":"hi","max_tokens":4,"stop":["\n\n"]}).to_string();
    assert_eq!(
        http_json(r.addr, "/v1/completions", &body, &[("Authorization", &key)])
            .await
            .0,
        200
    );
    r.stop().await;
}
