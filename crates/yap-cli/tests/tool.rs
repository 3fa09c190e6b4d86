//! The tool model on the live server: toolcall ordering in the three deploy modes, threshold,
//! context budget, batching of concurrent turns, cancel and barge-in of pending classifications.
//! Uses the tiny random BERT parity fixture (deterministic) as the tool model; the real default
//! tool model is exercised by `real_tool_model_decides_screenshots` (needs
//! `YAP_DEFAULT_TOOL_MODEL`, which scripts/test.sh sets).
#![allow(clippy::unwrap_used, clippy::too_many_lines, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn fixture() -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../yap-tool/tests/fixtures/bert"
    )
    .to_owned()
}

fn kinds(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f["type"].as_str().unwrap_or("?").to_owned())
        .collect()
}

fn start(session: &str, text: &str) -> Value {
    json!({"type":"start","session_id":session,"user_utterance":text,
           "sampling":{"temperature":0.0}})
}

/// The frames of a both-mode turn: ack?, toolcall, token*, done — toolcall before any token.
fn assert_tool_first(frames: &[Value]) {
    let k = kinds(frames);
    let tool_at: Vec<usize> = k
        .iter()
        .enumerate()
        .filter(|(_, t)| *t == "toolcall")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(tool_at.len(), 1, "exactly one toolcall: {k:?}");
    let first_token = k
        .iter()
        .position(|t| t == "token")
        .expect("chat tokens stream");
    assert!(tool_at[0] < first_token, "toolcall before any token: {k:?}");
    assert_eq!(k.last().map(String::as_str), Some("done"), "{k:?}");
    let tc = &frames[tool_at[0]];
    assert!(tc["status"] == "yes" || tc["status"] == "no");
    let p = tc["raw"]["probability"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p));
    assert!(tc["raw"]["label"].is_string());
}

#[tokio::test]
async fn both_mode_sends_the_toolcall_before_any_token() {
    let fx = fixture();
    let r = server(&["--deploy-mode=both", &format!("--tool-model={fx}")]).await;
    let h = healthz(&r).await;
    assert_eq!(h["deploy_mode"], "both");
    assert_eq!(h["tool"]["labels"], json!(["no", "yes"]));
    let mut ws = connect(&r).await;
    for text in [
        "look at this!",
        "tell me a joke",
        "what do you think of my outfit?",
    ] {
        send(&mut ws, start("s1", text)).await;
        let frames = read_turn(&mut ws).await;
        assert_tool_first(&frames);
    }
    // Classifying first (TOOL_OVERLAP=false) keeps the same order.
    let r2 = server(&[
        "--deploy-mode=both",
        &format!("--tool-model={fx}"),
        "--tool-overlap=false",
    ])
    .await;
    let mut ws2 = connect(&r2).await;
    for text in ["look at this!", "tell me a joke"] {
        send(&mut ws2, start("seq", text)).await;
        assert_tool_first(&read_turn(&mut ws2).await);
    }
    // Chat streams after the toolcall for both answers: force each with the threshold.
    for (threshold, want) in [("0", "yes"), ("1", "no")] {
        let r = server(&[
            "--deploy-mode=both",
            &format!("--tool-model={fx}"),
            &format!("--tool-threshold={threshold}"),
        ])
        .await;
        let mut ws = connect(&r).await;
        send(&mut ws, start("t", "hello there")).await;
        let frames = read_turn(&mut ws).await;
        assert_tool_first(&frames);
        let tc = frames.iter().find(|f| f["type"] == "toolcall").unwrap();
        assert_eq!(tc["status"], want, "threshold {threshold}");
        assert_eq!(
            tc["raw"]["threshold"].as_f64().unwrap(),
            threshold.parse::<f64>().unwrap()
        );
    }
}

#[tokio::test]
async fn tool_mode_turn_is_toolcall_then_done_and_chat_mode_has_no_toolcall() {
    let fx = fixture();
    let r = server(&["--deploy-mode=tool", &format!("--tool-model={fx}")]).await;
    assert_eq!(healthz(&r).await["deploy_mode"], "tool");
    let mut ws = connect(&r).await;
    for text in ["look at this", "what's the capital of France?"] {
        send(&mut ws, start("tool", text)).await;
        let frames = read_turn(&mut ws).await;
        let k: Vec<String> = kinds(&frames).into_iter().filter(|t| t != "ack").collect();
        assert_eq!(k, ["toolcall", "done"], "{frames:?}");
        let done = frames.last().unwrap();
        assert!(done["usage"]["prompt_tokens"].as_u64().unwrap() > 2);
        assert_eq!(done["usage"]["completion_tokens"], 0);
    }
    // No chat model is deployed: the OpenAI API says so instead of generating.
    let (code, body) = http(r.addr, "GET", "/v1/models").await;
    assert!(code == 200 || code == 401, "{code} {body}");

    let r = server(&["--deploy-mode=chat", &format!("--tool-model={fx}")]).await;
    assert!(healthz(&r).await["tool"].is_null());
    let mut ws = connect(&r).await;
    send(&mut ws, start("chat", "look at this")).await;
    let frames = read_turn(&mut ws).await;
    let k = kinds(&frames);
    assert!(!k.contains(&"toolcall".to_owned()), "{k:?}");
    assert!(k.contains(&"token".to_owned()));
    assert_eq!(k.last().map(String::as_str), Some("done"));
}

#[tokio::test]
async fn concurrent_turns_are_classified_in_batches() {
    let fx = fixture();
    let r = server(&[
        "--deploy-mode=tool",
        &format!("--tool-model={fx}"),
        "--tool-batch-window-ms=200",
        "--tool-batch-adaptive=false",
    ])
    .await;
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(connect(&r).await);
    }
    for (i, ws) in conns.iter_mut().enumerate() {
        send(
            ws,
            start(&format!("b{i}"), &format!("turn number {i}, look at this")),
        )
        .await;
    }
    for ws in conns.iter_mut() {
        let k = kinds(&read_turn(ws).await);
        assert!(k.contains(&"toolcall".to_owned()), "{k:?}");
    }
    let h = healthz(&r).await;
    assert_eq!(h["tool"]["classified"], 8);
    assert!(h["tool"]["peak_batch"].as_u64().unwrap() >= 4, "{h}");
    assert!(h["tool"]["batches"].as_u64().unwrap() < 8, "{h}");
}

#[tokio::test]
async fn cancel_and_barge_in_abort_a_pending_classification() {
    let fx = fixture();
    // A fixed (non-adaptive) long window keeps the classification pending.
    for mode in ["tool", "both"] {
        let r = server(&[
            &format!("--deploy-mode={mode}"),
            &format!("--tool-model={fx}"),
            "--tool-batch-window-ms=1500",
            "--tool-batch-adaptive=false",
        ])
        .await;
        let mut ws = connect(&r).await;
        send(&mut ws, start("c", "look at this")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = Instant::now();
        send(&mut ws, json!({"type":"cancel","request_id":"x1"})).await;
        let frames = read_turn(&mut ws).await;
        let k = kinds(&frames);
        assert!(
            !k.contains(&"toolcall".to_owned()) && !k.contains(&"token".to_owned()),
            "{mode}: {k:?}"
        );
        let done = frames.last().unwrap();
        assert_eq!(done["cancelled"], true);
        assert_eq!(done["request_id"], "x1");
        assert!(
            t.elapsed() < Duration::from_millis(700),
            "{mode}: cancel took {:?}",
            t.elapsed()
        );
        // Barge-in: the pending turn ends cancelled, the new one gets its toolcall.
        send(&mut ws, start("c", "look at this")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        send(&mut ws, start("c", "and now this")).await;
        let first = read_turn(&mut ws).await;
        assert_eq!(
            first.last().unwrap()["cancelled"],
            true,
            "{mode}: {first:?}"
        );
        assert!(!kinds(&first).contains(&"toolcall".to_owned()));
        let second = read_turn(&mut ws).await;
        assert!(
            kinds(&second).contains(&"toolcall".to_owned()),
            "{mode}: {second:?}"
        );
        assert_eq!(second.last().unwrap()["type"], "done");
        tokio::time::sleep(Duration::from_millis(1600)).await;
        let h = healthz(&r).await;
        assert!(
            h["tool"]["skipped_cancelled"].as_u64().unwrap() >= 2,
            "{mode}: withdrawn from the batcher: {h}"
        );
    }
}

#[tokio::test]
async fn tool_context_keeps_the_newest_tokens_within_the_budget() {
    let fx = fixture();
    let r = server(&[
        "--deploy-mode=tool",
        &format!("--tool-model={fx}"),
        "--tool-history-tokens=12",
    ])
    .await;
    assert_eq!(healthz(&r).await["tool"]["max_tokens"], 12);
    let mut ws = connect(&r).await;
    let history = "User: look at this outfit what do you think\nAssistant: Nice!\n".repeat(20);
    send(
        &mut ws,
        json!({"type":"start","session_id":"h","user_utterance":"tell me a joke",
                          "history_text": history}),
    )
    .await;
    let frames = read_turn(&mut ws).await;
    let tc = frames
        .iter()
        .find(|f| f["type"] == "toolcall")
        .expect("toolcall");
    assert_eq!(tc["raw"]["tokens"], 12, "{tc}");
    send(&mut ws, start("short", "hi")).await;
    let frames = read_turn(&mut ws).await;
    let tc = frames
        .iter()
        .find(|f| f["type"] == "toolcall")
        .expect("toolcall");
    assert!(tc["raw"]["tokens"].as_u64().unwrap() < 12, "{tc}");
}

#[tokio::test]
async fn bad_tool_settings_are_refused_at_startup() {
    let fx = fixture();
    let e = try_server(&["--deploy-mode=sometimes"])
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("DEPLOY_MODE"), "{e}");
    let e = try_server(&[
        "--deploy-mode=both",
        &format!("--tool-model={fx}"),
        "--tool-threshold=1.5",
    ])
    .await
    .err()
    .expect("refused")
    .to_string();
    assert!(e.contains("TOOL_THRESHOLD"), "{e}");
    let e = try_server(&["--deploy-mode=tool", "--tool-model=/nonexistent/tool"])
        .await
        .err()
        .expect("refused");
    assert!(format!("{e:#}").contains("/nonexistent/tool"), "{e:#}");
}

#[tokio::test]
#[ignore = "needs the real default tool model: YAP_DEFAULT_TOOL_MODEL=$(yap fetch-model --tool)"]
async fn real_tool_model_decides_screenshots() {
    let dir = std::env::var("YAP_DEFAULT_TOOL_MODEL").expect("YAP_DEFAULT_TOOL_MODEL");
    let r = server(&["--deploy-mode=tool", &format!("--tool-model={dir}")]).await;
    let mut ws = connect(&r).await;
    let cases = [
        (
            "can you look at my outfit and tell me what you think?",
            None,
            "yes",
        ),
        ("what does this error on my screen mean", None, "yes"),
        ("tell me a joke", None, "no"),
        ("what's the capital of France?", None, "no"),
        (
            "what do you think?",
            Some("User: I just finished my drawing\nAssistant: Ooh!"),
            "yes",
        ),
        (
            "what do you think?",
            Some("User: I might change careers\nAssistant: Big step."),
            "no",
        ),
    ];
    for (i, (text, history, want)) in cases.iter().enumerate() {
        let mut msg = start(&format!("real{i}"), text);
        if let Some(h) = history {
            msg["history_text"] = json!(h);
        }
        send(&mut ws, msg).await;
        let frames = read_turn(&mut ws).await;
        let tc = frames
            .iter()
            .find(|f| f["type"] == "toolcall")
            .expect("toolcall");
        assert_eq!(tc["status"], *want, "{text} ({history:?}): {tc}");
    }
}

#[test]
#[ignore = "needs the real default tool model: YAP_DEFAULT_TOOL_MODEL=$(yap fetch-model --tool)"]
fn default_tool_model_matches_transformers() {
    let dir = std::env::var("YAP_DEFAULT_TOOL_MODEL").expect("YAP_DEFAULT_TOOL_MODEL");
    let worst = yap_cli::model_fetch::tool_model_parity(std::path::Path::new(&dir)).unwrap();
    println!("assembled default tool model: max |Δlogit| vs transformers = {worst:e}");
    assert!(worst < 1e-4, "{worst}");
}
