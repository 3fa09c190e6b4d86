//! The real default chat model (Qwen2.5-Coder-1.5B-Instruct Q4_K_M) behind the WebSocket:
//! factual answers, a joke that is a joke, short spoken-style replies, and persona styles that
//! change the tone. Needs the model file: `scripts/test.sh` fetches it and sets
//! `YAP_DEFAULT_MODEL`; without it the tests are ignored.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use serde_json::{Value, json};

/// One greedy turn in a fresh session; returns (reply text, done frame).
async fn ask(
    ws: &mut yap_cli::client::Ws,
    session: &str,
    text: &str,
    style: Option<&str>,
) -> (String, Value) {
    let mut start = json!({"type":"start","session_id":session,"user_utterance":text,
        "sampling":{"temperature":0.0}});
    if let Some(s) = style {
        start["persona_style"] = json!(s);
    }
    send(ws, start).await;
    let frames = read_turn(ws).await;
    let done = frames.last().unwrap().clone();
    assert_eq!(done["type"], "done", "{done}");
    let text = reply_text(&frames);
    eprintln!(
        "[{}] {text:?} -> {:?}",
        style.unwrap_or("default"),
        text.trim()
    );
    (text, done)
}

fn has_any(text: &str, words: &[&str]) -> bool {
    let lower = text.to_lowercase();
    words.iter().any(|w| lower.contains(w))
}

async fn real_server() -> yap_cli::serve::Running {
    let model = std::env::var("YAP_DEFAULT_MODEL")
        .expect("YAP_DEFAULT_MODEL must point at the default model (scripts/test.sh sets it)");
    let flag = format!("--model={model}");
    server(&[flag.as_str(), "--chat-max-out=80", "--threads=2"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the default model; run by scripts/test.sh with --include-ignored"]
async fn default_model_answers_coherently() {
    let r = real_server().await;
    let mut ws = connect(&r).await;

    let (columbus, done) = ask(&mut ws, "columbus", "who was Columbus?", None).await;
    assert!(
        has_any(
            &columbus,
            &["explorer", "america", "sail", "1492", "navigator", "voyage"]
        ),
        "off-topic: {columbus:?}"
    );
    // Short and spoken: it ended on its own, well inside the reply budget, with no markup.
    assert!(
        done["usage"]["completion_tokens"].as_u64().unwrap() < 80,
        "{done}"
    );
    assert!(
        !columbus.contains('*') && !columbus.contains('#'),
        "{columbus:?}"
    );

    let (paris, _) = ask(&mut ws, "paris", "What is the capital of France?", None).await;
    assert!(has_any(&paris, &["paris"]), "{paris:?}");

    // A joke is a joke: a set-up and a punchline, not a story.
    let (joke, done) = ask(&mut ws, "joke", "Tell me a joke.", None).await;
    assert!(
        joke.contains('?') || has_any(&joke, &["because", "knock knock", "walks into"]),
        "no joke shape: {joke:?}"
    );
    assert!(joke.split_whitespace().count() >= 6, "{joke:?}");
    assert!(
        done["usage"]["completion_tokens"].as_u64().unwrap() < 80,
        "{done}"
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the default model; run by scripts/test.sh with --include-ignored"]
async fn persona_style_changes_the_tone() {
    let r = real_server().await;
    let mut ws = connect(&r).await;
    let line = "I burned the pasta again tonight.";
    let (kind, _) = ask(&mut ws, "tone-wholesome", line, Some("wholesome")).await;
    let (savage, _) = ask(&mut ws, "tone-savage", line, Some("savage")).await;
    let (nerdy, _) = ask(&mut ws, "tone-nerdy", line, Some("nerdy")).await;
    assert_ne!(kind, savage);
    assert_ne!(savage, nerdy);
    // Wholesome comforts; savage roasts (no comforting opener); nerdy brings the science.
    assert!(
        has_any(
            &kind,
            &[
                "don't worry",
                "it's okay",
                "that's okay",
                "happen",
                "next time",
                "you'll",
                "you got",
                "you've got",
                "learning"
            ]
        ),
        "wholesome did not comfort: {kind:?}"
    );
    assert!(
        !has_any(&savage, &["don't worry", "it's okay"]),
        "savage comforted: {savage:?}"
    );
    assert!(
        has_any(
            &nerdy,
            &[
                "starch",
                "maillard",
                "science",
                "fact",
                "water",
                "temperature",
                "boil",
                "chemical",
                "degrees"
            ]
        ),
        "nerdy without the nerd: {nerdy:?}"
    );
    r.stop().await;
}
