//! Guards against a live server: rate limits, auth-failure limiting, origins, slot accounting
//! under abrupt disconnects, and a fuzz run of random hostile message sequences.
#![allow(clippy::unwrap_used, clippy::too_many_lines, missing_docs)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use yap_cli::serve::Running;

async fn connect_with(r: &Running, key: &str, origin: Option<&str>) -> yap_cli::client::Ws {
    let mut req = format!("ws://{}/ws?api_key={key}", r.addr)
        .into_client_request()
        .unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

/// Waits until the server holds no connection slot and runs no turn.
async fn wait_idle(r: &Running) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = healthz(r).await;
        if h["connections"]["active"] == 0 && h["running_turns"] == 0 {
            return h;
        }
        assert!(Instant::now() < deadline, "server never went idle: {h}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fills every slot: each connection answers a ping; one more is refused with 1013.
async fn fill_to_capacity(r: &Running, max: usize) {
    let mut held = Vec::new();
    for _ in 0..max {
        let mut ws = connect(r).await;
        send(&mut ws, json!({"type":"ping"})).await;
        assert_eq!(recv(&mut ws).await["type"], "pong");
        held.push(ws);
    }
    let mut extra = connect(r).await;
    let (frames, code) = recv_until_close(&mut extra).await;
    assert_eq!(frames[0]["error_code"], "server_at_capacity");
    assert_eq!(code, Some(1013));
    for mut ws in held {
        send_raw(&mut ws, "__END__").await;
        let _ = recv_until_close(&mut ws).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_and_cancel_limits_slide_and_keep_the_connection() {
    let r = server(&[
        "--chat-max-out=8",
        "--ws-max-messages-per-window=3",
        "--ws-message-window-seconds=1",
        "--ws-max-cancels-per-window=2",
        "--ws-cancel-window-seconds=60",
    ])
    .await;
    let mut ws = connect(&r).await;
    for _ in 0..3 {
        send_raw(&mut ws, "{bad").await;
        assert_eq!(recv(&mut ws).await["error_code"], "invalid_json");
    }
    send_raw(&mut ws, "{bad").await;
    let limited = recv(&mut ws).await;
    assert_eq!(limited["error_code"], "rate_limited");
    let retry = limited["retry_after_ms"].as_u64().unwrap();
    assert!(retry > 0 && retry <= 1000, "{limited}");
    // Keep-alives are not counted; the connection stays open.
    send(&mut ws, json!({"type":"ping"})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");
    // Two cancels pass, the third is limited (own window).
    for _ in 0..2 {
        send(&mut ws, json!({"type":"cancel"})).await;
        assert_eq!(recv(&mut ws).await["cancelled"], true);
    }
    send(&mut ws, json!({"type":"cancel"})).await;
    assert_eq!(recv(&mut ws).await["error_code"], "rate_limited");
    // After the window slides, messages pass again.
    tokio::time::sleep(Duration::from_millis(retry + 50)).await;
    send(&mut ws, start("after-limit", "hello", "ok")).await;
    let turn = read_turn(&mut ws).await;
    assert_eq!(turn.last().unwrap()["type"], "done");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persona_updates_are_limited_per_session() {
    let r = server(&["--chat-max-out=8", "--chat-prompt-update-max-per-window=2"]).await;
    let mut ws = connect(&r).await;
    for i in 0..2 {
        send(
            &mut ws,
            json!({"type":"chat_prompt","session_id":"a","chat_prompt":format!("Persona {i}")}),
        )
        .await;
    }
    send(
        &mut ws,
        json!({"type":"chat_prompt","session_id":"a","chat_prompt":"Persona 3"}),
    )
    .await;
    let f = recv(&mut ws).await;
    assert_eq!(f["error_code"], "rate_limited", "{f}");
    assert!(f["retry_after_ms"].as_u64().unwrap() > 0);
    // Another session is not affected; an over-long persona is refused with its counts.
    send(
        &mut ws,
        json!({"type":"chat_prompt","session_id":"b","chat_prompt":"Fine"}),
    )
    .await;
    send(
        &mut ws,
        json!({"type":"chat_prompt","session_id":"c","chat_prompt":"word ".repeat(3000)}),
    )
    .await;
    let f = recv(&mut ws).await;
    assert_eq!(f["error_code"], "invalid_message");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("CHAT_PROMPT_MAX_TOKENS"),
        "{f}"
    );
    // The last good persona of `a` is in effect.
    send(&mut ws, start("a", "hi", "1")).await;
    let turn = read_turn(&mut ws).await;
    assert_eq!(turn[0]["persona_style"], "custom");
    r.stop().await;
}

// The auth-failure limit (the right key is never refused) is in hardening.rs.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_origins_are_enforced() {
    let r = server(&[
        "--chat-max-out=8",
        "--ws-allowed-origins=https://app.example.com, https://b.example",
    ])
    .await;
    let mut bad = connect_with(&r, KEY, Some("https://evil.example")).await;
    let (frames, code) = recv_until_close(&mut bad).await;
    assert_eq!(frames[0]["error_code"], "authentication_failed");
    assert_eq!(code, Some(1008));
    for origin in [
        Some("https://app.example.com"),
        Some("https://b.example"),
        None,
    ] {
        let mut ws = connect_with(&r, KEY, origin).await;
        send(&mut ws, json!({"type":"ping"})).await;
        assert_eq!(recv(&mut ws).await["type"], "pong", "{origin:?}");
    }
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_disconnects_mid_stream_return_every_slot() {
    let max = 4;
    let r = server(&["--chat-max-out=4000", "--max-concurrent-connections=4"]).await;
    for round in 0..3 {
        let mut clients = Vec::new();
        for i in 0..max {
            let mut ws = connect(&r).await;
            send(
                &mut ws,
                start(&format!("kill-{round}-{i}"), "Tell me everything.", "k"),
            )
            .await;
            loop {
                if recv(&mut ws).await["type"] == "token" {
                    break;
                }
            }
            clients.push(ws);
        }
        assert_eq!(healthz(&r).await["running_turns"], max);
        // Vanish without a close frame: drop the TCP stream under the WebSocket.
        for ws in clients {
            let tcp = ws.into_inner();
            if let tokio_tungstenite::MaybeTlsStream::Plain(s) = tcp
                && let Ok(std_stream) = s.into_std()
            {
                // RST instead of FIN: the server sees the peer vanish.
                let _ = socket2::SockRef::from(&std_stream).set_linger(Some(Duration::ZERO));
                drop(std_stream);
            }
        }
        let h = wait_idle(&r).await;
        assert_eq!(h["connections"]["active"], 0);
        fill_to_capacity(&r, max).await;
        wait_idle(&r).await;
    }
    r.stop().await;
}

/// One random client message, hostile or not. Returns the text (or binary) and, for a valid
/// start, its request id.
fn hostile_message(rng: &mut StdRng, n: usize, sessions: &[&str]) -> (Message, Option<String>) {
    let session = sessions[rng.random_range(0..sessions.len())];
    let rid = format!("r{n}");
    let text = match rng.random_range(0..20) {
        0..=3 => {
            let m = json!({"type":"start","session_id":session,"user_utterance":"hi there","request_id":rid});
            return (Message::Text(m.to_string().into()), Some(rid));
        }
        4 => {
            let m = json!({"type":"start","session_id":session,"user_utterance":"x","request_id":rid,
                "sampling":{"temperature":rng.random_range(0.0..1.2),"top_k":rng.random_range(0..60)}});
            return (Message::Text(m.to_string().into()), Some(rid));
        }
        5 => json!({"type":"start","session_id":session,"user_utterance":"x","sampling":{"temperature":5}}).to_string(),
        6 => json!({"type":"cancel"}).to_string(),
        7 => "__CANCEL__".into(),
        8 => json!({"cancel":true}).to_string(),
        9 => json!({"type":"ping"}).to_string(),
        10 => json!({"type":"pong"}).to_string(),
        11 => json!({"type":"warm_persona","session_id":session,"chat_prompt":"You are calm."}).to_string(),
        12 => json!({"type":"chat_prompt","session_id":session,"chat_prompt":"You are loud."}).to_string(),
        13 => json!({"type":"start","session_id":123,"user_utterance":["no"]}).to_string(),
        14 => json!({"type":"nonsense","payload":{"deep":[1,2,{"x":null}]}}).to_string(),
        15 => "x".repeat(rng.random_range(2000..6000)),
        16 => return (Message::Binary(vec![0xff, 0x00, 0x13].into()), None),
        17 => {
            let len = rng.random_range(0..64);
            (0..len).map(|_| rng.random_range(' '..='~')).collect()
        }
        18 => json!({"type":"warm_history","history_text":"User: a\nAssistant: b"}).to_string(),
        _ => "{\"type\":\"start\",\"session_id\":\"s\"".into(),
    };
    (Message::Text(text.into()), None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzz_random_hostile_sequences_against_a_live_server() {
    let seed: u64 = std::env::var("YAP_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(99_538_089);
    let target_frames: usize = std::env::var("YAP_FUZZ_FRAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    eprintln!("fuzz seed {seed}, {target_frames} frames");
    let max = 4;
    let r = server(&[
        "--chat-max-out=6",
        "--max-concurrent-connections=4",
        "--ws-max-messages-per-window=0",
        "--ws-max-cancels-per-window=0",
        "--chat-prompt-update-max-per-window=0",
        "--ws-max-message-bytes=4096",
    ])
    .await;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sent = 0usize;
    let mut turns = 0usize;
    let mut conn_no = 0usize;
    while sent < target_frames {
        conn_no += 1;
        let mut ws = connect(&r).await;
        let sessions = ["fz-a", "fz-b", "fz-c"];
        let len = rng.random_range(10..80);
        let mut started: Vec<String> = Vec::new();
        for _ in 0..len {
            let (msg, rid) = hostile_message(&mut rng, sent, &sessions);
            ws.send(msg)
                .await
                .expect("server keeps the connection open");
            sent += 1;
            if let Some(rid) = rid {
                started.push(rid);
            }
        }
        // Quiesce: a cancel ends any running turn before the pong comes back. Waiting pongs are
        // coalesced (at most one queued), so read until a pong and then a quiet moment.
        send(&mut ws, json!({"type":"cancel"})).await;
        send(&mut ws, json!({"type":"ping"})).await;
        let mut terminals: HashMap<String, usize> = HashMap::new();
        let mut ponged = false;
        loop {
            let wait = if ponged {
                Duration::from_millis(500)
            } else {
                T
            };
            let Ok(next) = tokio::time::timeout(wait, ws.next()).await else {
                assert!(ponged, "no pong (conn {conn_no}, seed {seed})");
                break;
            };
            let Some(Ok(Message::Text(t))) = next else {
                continue;
            };
            let f: Value = serde_json::from_str(t.as_str()).unwrap();
            if f["type"] == "pong" {
                ponged = true;
                continue;
            }
            if is_terminal(&f)
                && let Some(rid) = f["request_id"].as_str()
            {
                *terminals.entry(rid.to_owned()).or_default() += 1;
            }
        }
        for rid in &started {
            assert_eq!(
                terminals.get(rid),
                Some(&1),
                "turn {rid} (conn {conn_no}, seed {seed})"
            );
        }
        turns += started.len();
        // Leave politely or vanish.
        if rng.random_bool(0.5) {
            send_raw(&mut ws, "__END__").await;
            let (_, code) = recv_until_close(&mut ws).await;
            assert_eq!(code, Some(1000));
        } else {
            drop(ws);
        }
    }
    let h = wait_idle(&r).await;
    assert_eq!(h["status"], "ok");
    fill_to_capacity(&r, max).await;
    eprintln!(
        "fuzz: {sent} frames over {conn_no} connections, {turns} turns, 0 panics, 0 leaked slots"
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_text_frame_gets_a_typed_error_and_1007() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let r = server(&["--chat-max-out=8"]).await;
    let mut ws = connect(&r).await;
    let frame = Frame::message(vec![0x7b, 0xff, 0xfe, 0x7d], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(frame)).await.unwrap();
    let (frames, code) = recv_until_close(&mut ws).await;
    assert_eq!(
        frames.first().map(|f| f["error_code"].clone()),
        Some(json!("invalid_message")),
        "{frames:?}"
    );
    assert_eq!(code, Some(1007));
    wait_idle(&r).await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_evicted_least_recently_used() {
    let r = server(&["--chat-max-out=8", "--max-sequences=2"]).await;
    let mut ws = connect(&r).await;
    let persona =
        |s: &str| format!("You are a companion who only talks about {s}, nothing else at all.");
    let mut turn = async |session: &str, topic: &str| -> (u64, u64) {
        let mut m = start(session, "Tell me more.", "x");
        m["persona_text"] = json!(persona(topic));
        send(&mut ws, m).await;
        let t = read_turn(&mut ws).await;
        let u = &t.last().unwrap()["usage"];
        (
            u["cached_prompt_tokens"].as_u64().unwrap(),
            u["prompt_tokens"].as_u64().unwrap(),
        )
    };
    let (_, p_a) = turn("lru-a", "volcanoes").await;
    turn("lru-b", "knitting").await;
    // a is still cached: its second turn reuses its whole first prompt.
    let (c, _) = turn("lru-a", "volcanoes").await;
    assert!(c >= p_a - 1, "a lost its cache too early: {c}");
    // c needs a slot: b is the least recently used and is evicted, a survives.
    turn("lru-c", "gardening").await;
    let (c_a, _) = turn("lru-a", "volcanoes").await;
    assert!(c_a >= p_a, "a was evicted instead of b: {c_a}");
    let (c_b, p_b) = turn("lru-b", "knitting").await;
    assert!(c_b < p_b / 2, "b should have been evicted: {c_b} of {p_b}");
    r.stop().await;
}
