//! The `yap` client subcommands run as processes against a live test server.
#![allow(clippy::unwrap_used, clippy::too_many_lines, missing_docs)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use yap_cli::serve::Running;

fn yap(r: &Running, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_yap"));
    cmd.args(args)
        .arg(format!("--server=ws://{}/ws", r.addr))
        .arg(format!("--api-key={KEY}"))
        .env_remove("SERVER_WS_URL")
        .env("YAP_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

async fn output(mut cmd: Command) -> String {
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("client finished in time")
        .expect("client ran");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "client failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_prints_frames_and_metrics() {
    let r = server(&["--chat-max-out=12"]).await;
    let out = output(yap(&r, &["warmup", "who was Columbus?"])).await;
    assert!(
        out.lines().any(|l| l.starts_with(r#"{"type":"ack""#)),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with(r#"{"type":"token""#)),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with(r#"{"type":"done""#)),
        "{out}"
    );
    let metrics = out
        .lines()
        .find(|l| l.starts_with("metrics: "))
        .expect("metrics line");
    for key in [
        "ttfb_ms=",
        "first_sentence_ms=",
        "total_ms=",
        "chunks=",
        "chars=",
    ] {
        assert!(metrics.contains(key), "{metrics}");
    }
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_tables_and_json_show_second_turn_reuse() {
    // Replies long enough that a cancel after the first token lands mid-stream.
    let r = server(&["--chat-max-out=600"]).await;
    let out = output(yap(
        &r,
        &[
            "bench",
            "-n",
            "4",
            "-c",
            "1,2",
            "--double-ttfb",
            "--cancels",
            "2",
        ],
    ))
    .await;
    for needle in [
        "== concurrency 1 ==",
        "== concurrency 2 ==",
        "[first] turns=4 errors=0",
        "[second] turns=4 errors=0",
        "chat_ttfb_ms",
        "first_sentence_ms",
        "total_ms",
        "toolcall_ttfb_ms",
        "cancel_to_done_ms",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
    let json = output(yap(
        &r,
        &["bench", "-n", "2", "-c", "2", "--double-ttfb", "--json"],
    ))
    .await;
    let v: Value = serde_json::from_str(json.trim()).expect("one JSON object");
    let level = &v["levels"][0];
    assert_eq!(level["concurrency"], 2);
    assert_eq!(level["first"]["errors"], 0);
    assert!(level["first"]["chat_ttfb_ms"]["p95"].as_f64().is_some());
    // A first turn shares at most the persona prefix of other sessions; the second turn of a
    // session also reuses its own first exchange.
    let first = level["first"]["cached_prompt_tokens"]["p50"]
        .as_f64()
        .unwrap();
    let second = level["second"]["cached_prompt_tokens"]["p50"]
        .as_f64()
        .unwrap();
    assert!(second > first, "{level}");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_table_shows_history_growth_and_cache() {
    let r = server(&["--chat-max-out=12"]).await;
    let out = output(yap(&r, &["conversation"])).await;
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 10, "{out}");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0], (i + 1).to_string());
        assert_eq!(
            row[1],
            (2 * i).to_string(),
            "history grows by one exchange: {out}"
        );
        let cached: u64 = row[3].parse().unwrap();
        assert_eq!(cached > 0, i > 0, "row {}: {out}", i + 1);
    }
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personality_switches_persona_mid_session() {
    let r = server(&["--chat-max-out=8"]).await;
    let out = output(yap(
        &r,
        &["personality", "--switches", "3", "--delay", "0.05"],
    ))
    .await;
    let tags: Vec<&str> = out.lines().filter_map(|l| l.split(']').next()).collect();
    assert_eq!(
        tags,
        ["[wholesome", "[flirty", "[savage", "[nerdy"],
        "{out}"
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_streams_switches_persona_and_quits() {
    let r = server(&["--chat-max-out=8"]).await;
    let mut cmd = yap(&r, &["live", "--prompt-mode", "chat"]);
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for line in ["hello there", "/persona nerdy", "tell me a fact", "/cancel"] {
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    stdin.write_all(b"/quit\n").await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("(persona: nerdy)"), "{text}");
    assert_eq!(
        text.matches("tokens, ttft").count(),
        2,
        "two replies streamed: {text}"
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_eval_reports_accuracy_confusion_and_latency() {
    let fx = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../yap-tool/tests/fixtures/bert"
    );
    let cases = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tools/tool-model/data/eval-cases.jsonl"
    );
    // Both modes: in `both` the chat reply is cancelled once the toolcall is in.
    for mode in ["tool", "both"] {
        let r = server(&[
            &format!("--deploy-mode={mode}"),
            &format!("--tool-model={fx}"),
        ])
        .await;
        let out = output(yap(
            &r,
            &[
                "tool-eval",
                "--cases",
                cases,
                "--concurrency",
                "3",
                "--limit",
                "12",
                "--timeout",
                "30",
            ],
        ))
        .await;
        assert!(out.contains("12 steps in 12 conversations/cases"), "{out}");
        let acc = out
            .lines()
            .find(|l| l.starts_with("accuracy: "))
            .expect("accuracy line");
        assert!(acc.contains("of 12), errors: 0"), "{mode}: {out}");
        assert!(out.contains("confusion matrix"), "{out}");
        assert!(
            out.contains("expected yes") && out.contains("expected no"),
            "{out}"
        );
        assert!(out.contains("toolcall latency ms: p50"), "{out}");
        r.stop().await;
    }
    // A chat-only server has no tool model: every case is an error, and --min-accuracy fails.
    let r = server(&[]).await;
    let mut cmd = yap(
        &r,
        &[
            "tool-eval",
            "--cases",
            cases,
            "--limit",
            "2",
            "--min-accuracy",
            "0.5",
        ],
    );
    let out = cmd.output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("errors: 2"));
    r.stop().await;
}
