//! End-to-end tests: the real server (embedded llama.cpp engine, axum transport) on an ephemeral
//! port, serving a tiny GGUF model that the test generates, driven by a WebSocket client.
#![allow(clippy::unwrap_used, clippy::too_many_lines, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_turn_streams_tokens_then_one_done_with_usage() {
    let r = server(&["--chat-max-out=24"]).await;
    assert_eq!(healthz(&r).await["status"], "ok");
    let mut ws = connect(&r).await;
    send(&mut ws, start("s1", "Hello there, who are you?", "r1")).await;
    let frames = read_turn(&mut ws).await;
    assert_eq!(frames[0]["type"], "ack");
    assert_eq!(frames[0]["request_id"], "r1");
    let tokens: Vec<&Value> = frames.iter().filter(|f| f["type"] == "token").collect();
    assert!(!tokens.is_empty());
    let done = frames.last().unwrap();
    assert_eq!(done["type"], "done", "{done}");
    assert_eq!(done["request_id"], "r1");
    assert!(done.get("cancelled").is_none());
    let usage = &done["usage"];
    assert_eq!(usage["completion_tokens"], 24);
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 10);
    assert!(usage["ttft_ms"].as_f64().unwrap() <= usage["total_ms"].as_f64().unwrap());
    assert_eq!(frames.iter().filter(|f| is_terminal(f)).count(), 1);
    // The connection stays usable after a turn.
    send(&mut ws, json!({"type":"ping"})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_turn_reuses_cached_prefix() {
    let r = server(&["--chat-max-out=16"]).await;
    let mut ws = connect(&r).await;
    send(
        &mut ws,
        start("cache", "Tell me about the weather today.", "a"),
    )
    .await;
    let first = read_turn(&mut ws).await;
    let u1 = &first.last().unwrap()["usage"];
    assert_eq!(u1["cached_prompt_tokens"], 0);
    send(&mut ws, start("cache", "And what about tomorrow?", "b")).await;
    let second = read_turn(&mut ws).await;
    let ack = &second[0];
    assert_eq!(ack["history_turns"], 2, "history holds turn one: {ack}");
    let u2 = &second.last().unwrap()["usage"];
    let cached = u2["cached_prompt_tokens"].as_u64().unwrap();
    let prompt = u2["prompt_tokens"].as_u64().unwrap();
    // Persona + turn one (prompt and reply) are reused; only the new user turn is prefilled.
    assert!(cached > 0 && cached < prompt, "cached {cached} of {prompt}");
    assert!(
        cached >= u1["prompt_tokens"].as_u64().unwrap() - 1,
        "{u1} vs {u2}"
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_session_shares_the_persona_prefix_of_another() {
    let r = server(&["--chat-max-out=8"]).await;
    let mut ws = connect(&r).await;
    let persona = "You are a cheerful pirate who loves the sea and tells tall tales of treasure.";
    let mut first = start("crew-1", "Ahoy, captain!", "1");
    first["persona_text"] = json!(persona);
    send(&mut ws, first).await;
    let u1 = read_turn(&mut ws).await.last().unwrap()["usage"].clone();
    assert_eq!(u1["cached_prompt_tokens"], 0);
    let mut second = start("crew-2", "Where is the gold?", "2");
    second["persona_text"] = json!(persona);
    send(&mut ws, second).await;
    let u2 = read_turn(&mut ws).await.last().unwrap()["usage"].clone();
    let cached = u2["cached_prompt_tokens"].as_u64().unwrap();
    assert!(cached >= 16, "a fresh session reused no prefix: {u2}");
    assert!(cached < u2["prompt_tokens"].as_u64().unwrap());
    let stats = &healthz(&r).await["engine_stats"];
    assert_eq!(stats["shared_prefix_tokens"].as_u64().unwrap(), cached);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_cancels_running_turn_before_the_new_one_streams() {
    let r = server(&["--chat-max-out=4000"]).await;
    let mut ws = connect(&r).await;
    send(
        &mut ws,
        start("barge", "Tell me a very long story.", "first"),
    )
    .await;
    // Wait until the first turn streams.
    loop {
        if recv(&mut ws).await["type"] == "token" {
            break;
        }
    }
    send(
        &mut ws,
        start("barge", "Stop, tell me a joke instead.", "second"),
    )
    .await;
    let t0 = Instant::now();
    // Frames of the first turn end with exactly one done{cancelled}.
    let mut first_tail = Vec::new();
    loop {
        let f = recv(&mut ws).await;
        let end = is_terminal(&f);
        first_tail.push(f);
        if end {
            break;
        }
    }
    let done = first_tail.last().unwrap();
    assert_eq!(done["type"], "done");
    assert_eq!(done["cancelled"], true);
    assert_eq!(done["request_id"], "first");
    assert!(
        first_tail
            .iter()
            .all(|f| f["type"] == "token" || is_terminal(f))
    );
    let barge_ms = t0.elapsed().as_secs_f64() * 1000.0;
    // Then the second turn: ack, tokens, then cancel it too.
    let ack = recv(&mut ws).await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["request_id"], "second");
    assert_eq!(recv(&mut ws).await["type"], "token");
    send(&mut ws, json!({"type":"cancel","request_id":"stop2"})).await;
    let mut rest = Vec::new();
    loop {
        let f = recv(&mut ws).await;
        let end = is_terminal(&f);
        rest.push(f);
        if end {
            break;
        }
    }
    let done2 = rest.last().unwrap();
    assert_eq!(done2["cancelled"], true);
    assert_eq!(done2["request_id"], "stop2");
    // Nothing else follows: a ping is answered next.
    send(&mut ws, json!({"type":"ping"})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");
    assert!(barge_ms < 5000.0);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_forms_with_nothing_running_get_a_cancelled_done() {
    let r = server(&["--chat-max-out=8"]).await;
    let mut ws = connect(&r).await;
    send(&mut ws, json!({"type":"cancel","request_id":"c1"})).await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"type":"done","cancelled":true,"request_id":"c1"})
    );
    send(&mut ws, json!({"cancel":true})).await;
    assert_eq!(recv(&mut ws).await, json!({"type":"done","cancelled":true}));
    send_raw(&mut ws, "__CANCEL__").await;
    assert_eq!(recv(&mut ws).await, json!({"type":"done","cancelled":true}));
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_and_end_sentinel_close_with_1000() {
    let r = server(&["--chat-max-out=8"]).await;
    for end in [r#"{"type":"end"}"#, "__END__"] {
        let mut ws = connect(&r).await;
        send(&mut ws, json!({"type":"ping"})).await;
        assert_eq!(recv(&mut ws).await, json!({"type":"pong"}));
        send_raw(&mut ws, end).await;
        let (frames, code) = recv_until_close(&mut ws).await;
        assert_eq!(
            frames,
            vec![json!({"type":"connection_closed","reason":"client_request"})]
        );
        assert_eq!(code, Some(1000));
    }
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_sessions_share_the_decode_batch() {
    let r = server(&["--chat-max-out=400"]).await;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let url = format!("ws://{}/ws?api_key={KEY}", r.addr);
        tasks.push(tokio::spawn(async move {
            let mut ws = tokio_tungstenite::connect_async(url).await.unwrap().0;
            send(
                &mut ws,
                start(&format!("conc-{i}"), "Talk to me about music.", "x"),
            )
            .await;
            let mut first = None;
            loop {
                let f = recv(&mut ws).await;
                if f["type"] == "token" && first.is_none() {
                    first = Some(Instant::now());
                }
                if is_terminal(&f) {
                    return (first.unwrap(), Instant::now(), f);
                }
            }
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    for (_, _, done) in &results {
        assert_eq!(done["type"], "done");
        assert_eq!(done["usage"]["completion_tokens"], 400);
    }
    // Every session was streaming before any finished: they ran at the same time.
    let last_first = results.iter().map(|r| r.0).max().unwrap();
    let first_end = results.iter().map(|r| r.1).min().unwrap();
    assert!(last_first < first_end, "sessions did not overlap");
    let stats = &healthz(&r).await["engine_stats"];
    assert!(
        stats["peak_batch_sequences"].as_u64().unwrap() >= 8,
        "decode steps never held all 8 sessions: {stats}"
    );
    eprintln!("8 sessions x 400 tokens in {:?}", t0.elapsed());
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_key_is_refused_with_1008_and_header_key_works() {
    let r = server(&["--chat-max-out=8"]).await;
    let url = format!("ws://{}/ws?api_key=wrong", r.addr);
    let mut ws = tokio_tungstenite::connect_async(url).await.unwrap().0;
    let (frames, code) = recv_until_close(&mut ws).await;
    assert_eq!(frames[0]["error_code"], "authentication_failed");
    assert_eq!(code, Some(1008));
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/ws", r.addr),
    )
    .unwrap();
    req.headers_mut().insert("x-api-key", KEY.parse().unwrap());
    let mut ws = tokio_tungstenite::connect_async(req).await.unwrap().0;
    send(&mut ws, json!({"type":"ping"})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_refusal_then_slot_returns() {
    let r = server(&[
        "--chat-max-out=8",
        "--max-concurrent-connections=1",
        "--ws-handshake-acquire-timeout-s=0.2",
    ])
    .await;
    let mut a = connect(&r).await;
    send(&mut a, json!({"type":"ping"})).await;
    recv(&mut a).await;
    let mut b = connect(&r).await;
    let (frames, code) = recv_until_close(&mut b).await;
    assert_eq!(frames[0]["error_code"], "server_at_capacity");
    assert_eq!(
        frames[0]["capacity"],
        json!({"active":1,"max":1,"available":0,"at_capacity":true})
    );
    assert_eq!(code, Some(1013));
    // Drop the first client abruptly; its slot comes back.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = connect(&r).await;
        send(&mut c, json!({"type":"ping"})).await;
        match tokio::time::timeout(T, c.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) if t.as_str().contains("pong") => break,
            _ => assert!(Instant::now() < deadline, "slot never returned"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_typed_errors_and_connection_survives() {
    let r = server(&["--chat-max-out=8", "--ws-max-message-bytes=1000"]).await;
    let mut ws = connect(&r).await;
    let cases = [
        ("{nope", "invalid_json"),
        (r#"{"type":"dance"}"#, "invalid_message"),
        (
            r#"{"type":"start","user_utterance":"x"}"#,
            "invalid_message",
        ),
        (
            r#"{"type":"start","session_id":"s","user_utterance":"x","sampling":{"temperature":9}}"#,
            "invalid_sampling",
        ),
    ];
    for (text, code) in cases {
        send_raw(&mut ws, text).await;
        let f = recv(&mut ws).await;
        assert_eq!(f["type"], "error");
        assert_eq!(f["error_code"], code, "{text}");
    }
    send_raw(&mut ws, &"x".repeat(5000)).await;
    assert_eq!(recv(&mut ws).await["error_code"], "message_too_large");
    ws.send(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(recv(&mut ws).await["error_code"], "invalid_message");
    send(&mut ws, start("after", "still there?", "z")).await;
    let frames = read_turn(&mut ws).await;
    assert_eq!(frames.last().unwrap()["type"], "done");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_closes_with_4000() {
    let r = server(&["--chat-max-out=8", "--ws-idle-timeout-s=0.3"]).await;
    let mut ws = connect(&r).await;
    let (frames, code) = recv_until_close(&mut ws).await;
    assert_eq!(
        frames,
        vec![json!({"type":"connection_closed","reason":"idle_timeout"})]
    );
    assert_eq!(code.map(CloseCode::from), Some(CloseCode::from(4000)));
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_persist_across_reconnects_and_warm_prefills() {
    let r = server(&["--chat-max-out=8"]).await;
    let mut ws = connect(&r).await;
    send(
        &mut ws,
        json!({"type":"warm_persona","session_id":"p","chat_prompt":"You are a pirate."}),
    )
    .await;
    send(&mut ws, json!({"type":"ping"})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");
    // Give the prefill a moment, then the first turn finds the persona cached.
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&mut ws, start("p", "Ahoy!", "1")).await;
    let t1 = read_turn(&mut ws).await;
    assert!(
        t1.last().unwrap()["usage"]["cached_prompt_tokens"]
            .as_u64()
            .unwrap()
            > 5
    );
    drop(ws);
    let mut ws = connect(&r).await;
    send(&mut ws, start("p", "Where were we?", "2")).await;
    let t2 = read_turn(&mut ws).await;
    assert_eq!(t2[0]["persona_style"], "custom");
    assert_eq!(t2[0]["history_turns"], 2);
    r.stop().await;
}

fn usage_of(frames: &[Value]) -> (u64, u64) {
    let u = &frames.last().unwrap()["usage"];
    (
        u["cached_prompt_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persona_swap_reprefills_only_from_the_change_and_history_is_reused() {
    let r = server(&["--chat-max-out=8"]).await;
    let mut ws = connect(&r).await;
    let alpha = "You speak softly and kindly to everyone you meet. Alpha.";
    let beta = "You speak softly and kindly to everyone you meet. Beta.";
    let mut s1 = start("swap", "Hello there.", "1");
    s1["persona_text"] = json!(alpha);
    send(&mut ws, s1).await;
    let (_, p1) = usage_of(&read_turn(&mut ws).await);
    // Same persona, same history: everything before the new user turn is reused.
    send(&mut ws, start("swap", "How are you?", "2")).await;
    let (c2, p2) = usage_of(&read_turn(&mut ws).await);
    assert!(
        c2 >= p1 - 1 && c2 < p2,
        "history not reused: {c2}/{p2} after {p1}"
    );
    // Persona swap: the shared words before the change stay cached, the rest is prefilled.
    send(
        &mut ws,
        json!({"type":"chat_prompt","session_id":"swap","chat_prompt":beta}),
    )
    .await;
    send(&mut ws, start("swap", "Still there?", "3")).await;
    let t3 = read_turn(&mut ws).await;
    let (c3, p3) = usage_of(&t3);
    assert_eq!(t3[0]["persona_style"], "custom");
    assert!(
        c3 >= 8,
        "the unchanged start of the persona was prefilled again: {c3}"
    );
    assert!(
        c3 < c2,
        "a changed persona cannot keep the old history cached: {c3} vs {c2}"
    );
    assert!(c3 < p3);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_trimmed_in_chunks_and_utterances_are_cut() {
    let r = server(&[
        "--chat-max-out=8",
        "--chat-history-max-tokens=300",
        "--history-retention-pct=50",
        "--user-utt-max-tokens=20",
    ])
    .await;
    let mut ws = connect(&r).await;
    let transcript: String = (0..30)
        .map(|i| format!("User: question number {i} about the weather\nAssistant: answer number {i} about the sun\n"))
        .collect();
    let mut s = start("trim", &"very long words ".repeat(200), "1");
    s["history_text"] = json!(transcript);
    send(&mut ws, s).await;
    let t1 = read_turn(&mut ws).await;
    let kept = t1[0]["history_turns"].as_u64().unwrap();
    assert!(kept > 0 && kept < 60, "history was not trimmed: {kept}");
    assert_eq!(
        kept % 2,
        0,
        "trimming keeps whole exchanges starting with a user turn"
    );
    let (_, prompt) = usage_of(&t1);
    // persona + ≤ 300 history tokens + ≤ 20 utterance tokens + template
    assert!(
        prompt < 700,
        "prompt of {prompt} tokens: utterance or history not cut"
    );
    // The next turn keeps the trimmed history byte-stable: its prefix is reused.
    send(&mut ws, start("trim", "and tomorrow?", "2")).await;
    let t2 = read_turn(&mut ws).await;
    let (cached, _) = usage_of(&t2);
    assert!(
        cached >= prompt - 1,
        "trimmed history not reused: {cached} of {prompt}"
    );
    r.stop().await;
}

/// One greedy WS turn of `session`; returns the reply text.
async fn greedy_turn(ws: &mut yap_cli::client::Ws, session: &str, text: &str) -> String {
    let mut m = start(session, text, "g");
    m["sampling"] = json!({"temperature": 0.0});
    send(ws, m).await;
    let frames = read_turn(ws).await;
    assert_eq!(frames.last().unwrap()["type"], "done", "{frames:?}");
    reply_text(&frames)
}

/// Sessions' turns, in order, on a server with one KV stream per sequence; `runner` keeps a
/// long OpenAI generation running meanwhile (so idle caches get moved out of its way).
async fn split_kv_replies(runner: bool) -> (Vec<String>, u64) {
    let r = server(&[
        "--kv-unified=false",
        "--max-sequences=5",
        "--kv-tokens=10240",
        "--chat-max-len=2048",
        "--chat-max-out=16",
    ])
    .await;
    let long = runner.then(|| {
        let addr = r.addr;
        tokio::spawn(async move {
            let body = json!({"messages":[{"role":"user","content":"Go on and on."}],
                              "max_tokens":1900,"temperature":0.0});
            let auth = format!("Bearer {KEY}");
            http_json(
                addr,
                "/v1/chat/completions",
                &body.to_string(),
                &[("Authorization", &auth)],
            )
            .await
        })
    });
    if runner {
        // The runner holds slot 0 before the sessions arrive.
        let t0 = Instant::now();
        while healthz(&r).await["engine_stats"]["active_generations"] == 0 {
            assert!(t0.elapsed() < T, "the runner never started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let mut ws = connect(&r).await;
    let mut replies = Vec::new();
    let script = [
        ("a", "Tell me about the sea."),
        ("b", "What is your favourite colour?"),
        ("c", "Sing me something."),
        ("a", "And then what?"),
        ("b", "Why that one?"),
        ("c", "Again, slower."),
        ("a", "One more thing."),
    ];
    for (session, text) in script {
        replies.push(greedy_turn(&mut ws, session, text).await);
    }
    let moves = healthz(&r).await["engine_stats"]["kv_moves"]
        .as_u64()
        .unwrap();
    if let Some(h) = long {
        let (status, _) = h.await.unwrap();
        assert_eq!(status, 200);
    }
    r.stop().await;
    (replies, moves)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_kv_streams_keep_every_sessions_cache_exact() {
    // Reference: the same turns with nothing else running, so no cache ever moves.
    let (alone, moves) = split_kv_replies(false).await;
    assert_eq!(moves, 0);
    // With a long generation in slot 0, each new session runs next to it, in slot 1, and the
    // idle caches there move up; returning sessions swap back down.
    let (beside, moves) = split_kv_replies(true).await;
    assert!(
        moves >= 3,
        "only {moves} moves: the test did not exercise them"
    );
    assert_eq!(alone, beside, "a moved cache changed a reply");
}
