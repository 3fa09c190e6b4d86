//! `yap tool-eval`: replays a labelled case file against a running server and reports the tool
//! model's accuracy, confusion matrix and toolcall latency.
//!
//! Case file: JSON lines `{"text": "...", "history"?: "User: ...\nAssistant: ...", "expected":
//! "yes"|"no"}` (`expected` may also be a boolean). Each case runs in a fresh session; in `both`
//! deployments the chat reply is cancelled as soon as the toolcall arrives.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use yap_protocol::{ServerFrame, ToolStatus};

use crate::bench::percentile;
use crate::client::{self, ClientArgs};

/// Flags of `yap tool-eval`.
#[derive(Debug, Clone, Args)]
pub struct ToolEvalArgs {
    /// Connection flags (`--server`, `--api-key`, `--timeout`).
    #[command(flatten)]
    pub client: ClientArgs,
    /// The labelled case file (JSONL).
    #[arg(long, default_value = "tools/tool-model/data/eval-cases.jsonl")]
    pub cases: PathBuf,
    /// Cases in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Run only the first N cases.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Exit with status 1 when accuracy is below this fraction.
    #[arg(long)]
    pub min_accuracy: Option<f64>,
    /// Print every case, not only the misclassified ones.
    #[arg(long)]
    pub verbose: bool,
}

/// One labelled case.
#[derive(Debug, Clone)]
pub struct Case {
    /// What the user says.
    pub text: String,
    /// Earlier conversation (transcript), if any.
    pub history: Option<String>,
    /// Whether a screenshot is expected.
    pub expected: bool,
}

/// Parses a JSONL case file.
pub fn parse_cases(text: &str) -> Result<Vec<Case>> {
    let mut cases = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).with_context(|| format!("line {}", i + 1))?;
        let text = v["text"]
            .as_str()
            .with_context(|| format!("line {}: no \"text\"", i + 1))?
            .to_owned();
        let expected = match &v["expected"] {
            Value::Bool(b) => *b,
            Value::String(s) if s.eq_ignore_ascii_case("yes") => true,
            Value::String(s) if s.eq_ignore_ascii_case("no") => false,
            other => bail!("line {}: \"expected\" must be yes/no, got {other}", i + 1),
        };
        let history = v["history"].as_str().map(str::to_owned);
        cases.push(Case {
            text,
            history,
            expected,
        });
    }
    Ok(cases)
}

struct Outcome {
    case: usize,
    predicted: Option<bool>,
    probability: f64,
    ms: f64,
    error: Option<String>,
}

async fn run_case(
    ws: &mut client::Ws,
    args: &ClientArgs,
    id: usize,
    case: &Case,
) -> Result<Outcome> {
    let session = format!("tool-eval-{}-{id}", std::process::id());
    let mut start = args.start_message(&session, &case.text, None);
    if let Some(h) = &case.history {
        start["history_text"] = json!(h);
    }
    let timeout = Duration::from_secs_f64(args.recv_timeout_sec);
    let t0 = Instant::now();
    ws.send(Message::Text(start.to_string().into())).await?;
    let mut out = Outcome {
        case: id,
        predicted: None,
        probability: f64::NAN,
        ms: f64::NAN,
        error: None,
    };
    loop {
        let (frame, _) = client::recv_frame(ws, timeout).await?;
        match frame {
            ServerFrame::Toolcall { status, raw } => {
                out.ms = t0.elapsed().as_secs_f64() * 1000.0;
                out.predicted = Some(status == ToolStatus::Yes);
                out.probability = raw["yes_probability"].as_f64().unwrap_or(f64::NAN);
                // Only the verdict matters here: stop the chat reply if one follows.
                ws.send(Message::Text(json!({"type":"cancel"}).to_string().into()))
                    .await?;
            }
            ServerFrame::Done { cancelled, .. } => {
                if out.predicted.is_some() {
                    if !cancelled {
                        // The turn had finished before our cancel arrived: the cancel gets its
                        // own done{cancelled} reply; read it so the next case starts clean.
                        let _ = client::recv_frame(ws, timeout).await?;
                    }
                } else {
                    out.error =
                        Some("turn ended without a toolcall (is the tool model deployed?)".into());
                }
                return Ok(out);
            }
            ServerFrame::Error {
                error_code,
                message,
                ..
            } => {
                out.error = Some(format!("{error_code}: {message}"));
                return Ok(out);
            }
            _ => {}
        }
    }
}

/// Runs the evaluation and prints the report.
#[allow(clippy::too_many_lines)] // split up by the conversation-file rewrite of tool-eval (issue 12)
pub async fn run(args: &ToolEvalArgs) -> Result<bool> {
    let text = std::fs::read_to_string(&args.cases)
        .with_context(|| format!("reading {}", args.cases.display()))?;
    let mut cases = parse_cases(&text)?;
    if let Some(n) = args.limit {
        cases.truncate(n);
    }
    if cases.is_empty() {
        bail!("no cases in {}", args.cases.display());
    }
    let cases = Arc::new(cases);
    let next = Arc::new(Mutex::new(0usize));
    let results = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1).min(cases.len()) {
        let (cases, next, results, cargs) = (
            Arc::clone(&cases),
            Arc::clone(&next),
            Arc::clone(&results),
            args.client.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = {
                    let mut n = next.lock().await;
                    let i = *n;
                    *n += 1;
                    i
                };
                let Some(case) = cases.get(i) else { break };
                // A connection per case (outside the timing), like `yap bench`: the server's
                // per-connection message limits then never interfere.
                let mut ws = client::connect(&cargs).await?;
                let outcome = run_case(&mut ws, &cargs, i, case).await?;
                let _ = ws.send(Message::Text("__END__".into())).await;
                results.lock().await.push(outcome);
            }
            anyhow::Ok(())
        }));
    }
    for w in workers {
        w.await.context("worker")??;
    }
    let wall = started.elapsed().as_secs_f64();
    let mut results = std::mem::take(&mut *results.lock().await);
    results.sort_by_key(|o| o.case);
    let (mut tp, mut fp, mut fn_, mut tn, mut errors) = (0, 0, 0, 0, 0);
    let mut latencies = Vec::new();
    println!("cases: {} from {}", results.len(), args.cases.display());
    for o in &results {
        let case = &cases[o.case];
        let Some(pred) = o.predicted else {
            errors += 1;
            println!(
                "  ERROR  {:?}: {}",
                case.text,
                o.error.as_deref().unwrap_or("?")
            );
            continue;
        };
        latencies.push(o.ms);
        match (case.expected, pred) {
            (true, true) => tp += 1,
            (false, true) => fp += 1,
            (true, false) => fn_ += 1,
            (false, false) => tn += 1,
        }
        if pred != case.expected || args.verbose {
            println!(
                "  {} expected={} got={} p(yes)={:.3} {:?}{}",
                if pred == case.expected {
                    "ok   "
                } else {
                    "WRONG"
                },
                yes_no(case.expected),
                yes_no(pred),
                o.probability,
                case.text,
                case.history
                    .as_deref()
                    .map(|h| format!(" (history: {h:?})"))
                    .unwrap_or_default()
            );
        }
    }
    let judged = tp + fp + fn_ + tn;
    let accuracy = if judged + errors > 0 {
        (tp + tn) as f64 / (judged + errors) as f64
    } else {
        0.0
    };
    println!();
    println!(
        "accuracy: {:.3} ({} of {}), errors: {errors}",
        accuracy,
        tp + tn,
        judged + errors
    );
    println!("confusion matrix (rows expected, columns predicted):");
    println!("               pred yes   pred no");
    println!("  expected yes {tp:>8} {fn_:>9}");
    println!("  expected no  {fp:>8} {tn:>9}");
    let precision = tp as f64 / (tp + fp).max(1) as f64;
    let recall = tp as f64 / (tp + fn_).max(1) as f64;
    println!("precision {precision:.3}, recall {recall:.3}");
    if !latencies.is_empty() {
        println!(
            "toolcall latency ms: p50 {:.1}, p95 {:.1}, max {:.1}  ({} cases in {:.1} s at concurrency {})",
            percentile(&latencies, 50.0),
            percentile(&latencies, 95.0),
            latencies.iter().copied().fold(0.0, f64::max),
            results.len(),
            wall,
            args.concurrency
        );
    }
    Ok(args.min_accuracy.is_none_or(|m| accuracy >= m))
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cases() {
        let c = parse_cases(
            "{\"text\":\"look\",\"expected\":\"yes\"}\n\n{\"text\":\"joke\",\"history\":\"User: hi\",\"expected\":false}\n",
        )
        .unwrap();
        assert_eq!(c.len(), 2);
        assert!(c[0].expected && !c[1].expected);
        assert_eq!(c[1].history.as_deref(), Some("User: hi"));
        assert!(parse_cases("{\"text\":\"x\",\"expected\":\"maybe\"}").is_err());
        assert!(parse_cases("{\"expected\":\"yes\"}").is_err());
    }
}
