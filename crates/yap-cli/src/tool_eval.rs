//! `yap tool-eval`: replays labelled turns against a running server and reports the tool model's
//! accuracy, precision / recall, per-category confusion matrices, false "yes" right after a
//! "yes", the worst mistakes and toolcall latency.
//!
//! Two line formats, mixed freely in one JSONL file:
//! - a **conversation** `{"id", "category"?, "steps": [{"user", "label": "yes"|"no", ...}]}` (the
//!   hand-written data set, `tools/tool-model/data/splits/*.jsonl`): its steps are sent in order
//!   as `start` messages of one session on one connection, so the server's history builds up as
//!   in a real conversation;
//! - a **case** `{"text", "history"?: "User: ...\nAssistant: ...", "expected": "yes"|"no"|bool,
//!   "category"?}`: one turn in a fresh session, with `history_text` when given.
//!
//! In `both` deployments the chat reply is cancelled as soon as the toolcall arrives.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use yap_protocol::{ErrorCode, ServerFrame, ToolStatus};

use crate::bench::percentile;
use crate::client::{self, ClientArgs};

/// Flags of `yap tool-eval`.
#[derive(Debug, Clone, Args)]
pub struct ToolEvalArgs {
    /// Connection flags (`--server`, `--api-key`, `--timeout`).
    #[command(flatten)]
    pub client: ClientArgs,
    /// Labelled JSONL files: conversations and/or cases (repeatable).
    #[arg(long, default_value = "tools/tool-model/data/eval-cases.jsonl")]
    pub cases: Vec<PathBuf>,
    /// Conversations (or cases) in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Run only the first N conversations / cases.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Exit with status 1 when accuracy is below this fraction.
    #[arg(long)]
    pub min_accuracy: Option<f64>,
    /// Exit with status 1 when any category's accuracy is below this fraction.
    #[arg(long)]
    pub min_category_accuracy: Option<f64>,
    /// Exit with status 1 when more than this fraction of the "no" steps right after a "yes"
    /// step are answered "yes".
    #[arg(long)]
    pub max_false_yes_after_yes: Option<f64>,
    /// How many of the most confident mistakes to print.
    #[arg(long, default_value_t = 20)]
    pub worst: usize,
    /// Write every step's verdict here (JSONL: conversation, index, label, predicted, p).
    #[arg(long)]
    pub predictions: Option<PathBuf>,
    /// Print every step, not only the worst mistakes.
    #[arg(long)]
    pub verbose: bool,
}

/// One labelled turn.
#[derive(Debug, Clone)]
pub struct Step {
    /// What the user says.
    pub text: String,
    /// Whether a screenshot is expected.
    pub expected: bool,
}

/// Turns sent in order through one session.
#[derive(Debug, Clone)]
pub struct Conversation {
    /// Its id (`case-N` for a lone case).
    pub id: String,
    /// Its category (`-` when the file gives none).
    pub category: String,
    /// Transcript sent as `history_text` with the first turn (cases only).
    pub history: Option<String>,
    /// The turns.
    pub steps: Vec<Step>,
}

fn label(v: &Value, line: usize) -> Result<bool> {
    Ok(match v {
        Value::Bool(b) => *b,
        Value::String(s) if s.eq_ignore_ascii_case("yes") => true,
        Value::String(s) if s.eq_ignore_ascii_case("no") => false,
        other => bail!("line {line}: a label must be yes/no, got {other}"),
    })
}

/// Parses a JSONL file of conversations and / or cases.
pub fn parse_cases(text: &str) -> Result<Vec<Conversation>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let n = i + 1;
        let v: Value = serde_json::from_str(line).with_context(|| format!("line {n}"))?;
        let category = v["category"].as_str().unwrap_or("-").to_owned();
        if let Some(steps) = v["steps"].as_array() {
            let steps = steps
                .iter()
                .map(|s| {
                    Ok(Step {
                        text: s["user"]
                            .as_str()
                            .with_context(|| format!("line {n}: a step without \"user\""))?
                            .to_owned(),
                        expected: label(&s["label"], n)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            if steps.is_empty() {
                bail!("line {n}: a conversation without steps");
            }
            out.push(Conversation {
                id: v["id"]
                    .as_str()
                    .map_or_else(|| format!("line-{n}"), str::to_owned),
                category,
                history: None,
                steps,
            });
        } else {
            let text = v["text"]
                .as_str()
                .with_context(|| format!("line {n}: neither \"steps\" nor \"text\""))?
                .to_owned();
            out.push(Conversation {
                id: format!("case-{n}"),
                category,
                history: v["history"].as_str().map(str::to_owned),
                steps: vec![Step {
                    text,
                    expected: label(&v["expected"], n)?,
                }],
            });
        }
    }
    Ok(out)
}

/// What the server answered for one step.
#[derive(Debug, Clone)]
struct Outcome {
    conversation: usize,
    step: usize,
    predicted: Option<bool>,
    probability: f64,
    ms: f64,
    error: Option<String>,
}

/// Sends one turn and reads it to its end. A `rate_limited` refusal is waited out and retried.
async fn run_step(
    ws: &mut client::Ws,
    args: &ClientArgs,
    session: &str,
    text: &str,
    history: Option<&str>,
) -> Result<(Option<bool>, f64, f64, Option<String>)> {
    let timeout = Duration::from_secs_f64(args.recv_timeout_sec);
    'retry: loop {
        let mut start = args.start_message(session, text, None);
        if let Some(h) = history {
            start["history_text"] = json!(h);
        }
        let t0 = Instant::now();
        ws.send(Message::Text(start.to_string().into())).await?;
        let (mut predicted, mut probability, mut ms) = (None, f64::NAN, f64::NAN);
        loop {
            let (frame, _) = client::recv_frame(ws, timeout).await?;
            match frame {
                ServerFrame::Toolcall { status, raw } => {
                    ms = t0.elapsed().as_secs_f64() * 1000.0;
                    predicted = Some(status == ToolStatus::Yes);
                    probability = raw["yes_probability"].as_f64().unwrap_or(f64::NAN);
                    // Only the verdict matters here: stop the chat reply if one follows.
                    ws.send(Message::Text(json!({"type":"cancel"}).to_string().into()))
                        .await?;
                }
                ServerFrame::Done { cancelled, .. } => {
                    if predicted.is_none() {
                        let e = "turn ended without a toolcall (is the tool model deployed?)";
                        return Ok((None, probability, ms, Some(e.into())));
                    }
                    if !cancelled {
                        // The turn had finished before our cancel arrived: the cancel gets its
                        // own done{cancelled} reply; read it so the next turn starts clean.
                        let _ = client::recv_frame(ws, timeout).await?;
                    }
                    return Ok((predicted, probability, ms, None));
                }
                ServerFrame::Error {
                    error_code: ErrorCode::RateLimited,
                    retry_after_ms,
                    ..
                } if predicted.is_none() => {
                    tokio::time::sleep(Duration::from_millis(retry_after_ms.unwrap_or(1000))).await;
                    continue 'retry;
                }
                ServerFrame::Error {
                    error_code,
                    message,
                    ..
                } => {
                    return Ok((
                        predicted,
                        probability,
                        ms,
                        Some(format!("{error_code}: {message}")),
                    ));
                }
                _ => {}
            }
        }
    }
}

/// Runs one conversation through one session on its own connection.
async fn run_conversation(
    args: &ClientArgs,
    index: usize,
    conv: &Conversation,
) -> Result<Vec<Outcome>> {
    let mut ws = client::connect(args).await?;
    let session = format!("tool-eval-{}-{index}", std::process::id());
    let mut out = Vec::new();
    for (i, step) in conv.steps.iter().enumerate() {
        let history = if i == 0 {
            conv.history.as_deref()
        } else {
            None
        };
        let (predicted, probability, ms, error) =
            run_step(&mut ws, args, &session, &step.text, history).await?;
        out.push(Outcome {
            conversation: index,
            step: i,
            predicted,
            probability,
            ms,
            error,
        });
    }
    let _ = ws.send(Message::Text("__END__".into())).await;
    Ok(out)
}

/// Counts of one slice of the results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Confusion {
    /// Expected yes, answered yes.
    pub tp: usize,
    /// Expected no, answered yes.
    pub fp: usize,
    /// Expected yes, answered no.
    pub fn_: usize,
    /// Expected no, answered no.
    pub tn: usize,
    /// No verdict (an error or no toolcall): counted as wrong.
    pub errors: usize,
}

impl Confusion {
    fn add(&mut self, expected: bool, predicted: Option<bool>) {
        match (expected, predicted) {
            (true, Some(true)) => self.tp += 1,
            (false, Some(true)) => self.fp += 1,
            (true, Some(false)) => self.fn_ += 1,
            (false, Some(false)) => self.tn += 1,
            (_, None) => self.errors += 1,
        }
    }

    /// Steps counted.
    pub fn total(&self) -> usize {
        self.tp + self.fp + self.fn_ + self.tn + self.errors
    }

    /// Right answers over all steps (errors count as wrong).
    pub fn accuracy(&self) -> f64 {
        (self.tp + self.tn) as f64 / self.total().max(1) as f64
    }

    /// Of the "yes" answers, how many were right.
    pub fn precision(&self) -> f64 {
        self.tp as f64 / (self.tp + self.fp).max(1) as f64
    }

    /// Of the expected "yes", how many were answered "yes".
    pub fn recall(&self) -> f64 {
        self.tp as f64 / (self.tp + self.fn_).max(1) as f64
    }
}

/// The numbers of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Over all steps.
    pub overall: Confusion,
    /// By category.
    pub categories: BTreeMap<String, Confusion>,
    /// "No" steps right after a "yes" step of the same conversation: answered "yes", of.
    pub false_yes_after_yes: (usize, usize),
}

impl Report {
    /// The fraction of "no" steps right after a "yes" step that were answered "yes".
    pub fn false_yes_after_yes_rate(&self) -> f64 {
        self.false_yes_after_yes.0 as f64 / self.false_yes_after_yes.1.max(1) as f64
    }
}

fn tally(convs: &[Conversation], results: &[Outcome]) -> Report {
    let mut r = Report::default();
    for o in results {
        let conv = &convs[o.conversation];
        let step = &conv.steps[o.step];
        r.overall.add(step.expected, o.predicted);
        r.categories
            .entry(conv.category.clone())
            .or_default()
            .add(step.expected, o.predicted);
        if o.step > 0 && conv.steps[o.step - 1].expected && !step.expected {
            r.false_yes_after_yes.1 += 1;
            if o.predicted != Some(false) {
                r.false_yes_after_yes.0 += 1;
            }
        }
    }
    r
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Runs the evaluation and prints the report; false when a floor is not met.
#[allow(clippy::too_many_lines)]
pub async fn run(args: &ToolEvalArgs) -> Result<bool> {
    let mut convs = Vec::new();
    for path in &args.cases {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        convs.extend(parse_cases(&text).with_context(|| path.display().to_string())?);
    }
    if let Some(n) = args.limit {
        convs.truncate(n);
    }
    if convs.is_empty() {
        bail!("no cases");
    }
    let convs = Arc::new(convs);
    let next = Arc::new(Mutex::new(0usize));
    let results = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1).min(convs.len()) {
        let (convs, next, results, cargs) = (
            Arc::clone(&convs),
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
                let Some(conv) = convs.get(i) else { break };
                let outcomes = run_conversation(&cargs, i, conv).await?;
                results.lock().await.extend(outcomes);
            }
            anyhow::Ok(())
        }));
    }
    for w in workers {
        w.await.context("worker")??;
    }
    let wall = started.elapsed().as_secs_f64();
    let mut results = std::mem::take(&mut *results.lock().await);
    results.sort_by_key(|o| (o.conversation, o.step));
    let report = tally(&convs, &results);
    let files: Vec<String> = args.cases.iter().map(|p| p.display().to_string()).collect();
    println!(
        "{} steps in {} conversations/cases from {}",
        results.len(),
        convs.len(),
        files.join(", ")
    );
    if let Some(path) = &args.predictions {
        let mut text = String::new();
        for o in &results {
            let conv = &convs[o.conversation];
            text.push_str(
                &json!({"conversation": conv.id, "category": conv.category, "index": o.step,
                        "label": u8::from(conv.steps[o.step].expected),
                        "predicted": o.predicted.map(u8::from), "p": o.probability})
                .to_string(),
            );
            text.push('\n');
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    // Mistakes, the most confident first; errors first of all.
    let mut wrong: Vec<&Outcome> = results
        .iter()
        .filter(|o| o.predicted != Some(convs[o.conversation].steps[o.step].expected))
        .collect();
    let confidence = |o: &Outcome| match o.predicted {
        Some(true) => o.probability,
        Some(false) => 1.0 - o.probability,
        None => 2.0,
    };
    wrong.sort_by(|a, b| confidence(b).total_cmp(&confidence(a)));
    let show = |o: &Outcome| {
        let conv = &convs[o.conversation];
        let step = &conv.steps[o.step];
        let ok = o.predicted == Some(step.expected);
        let before = if o.step > 0 {
            format!(" (after {:?})", conv.steps[o.step - 1].text)
        } else {
            String::new()
        };
        if o.predicted.is_none() {
            println!(
                "  ERROR  {} #{}: {:?}: {}",
                conv.id,
                o.step,
                step.text,
                o.error.as_deref().unwrap_or("no verdict")
            );
        } else {
            println!(
                "  {} {} #{} expected={} got={} p(yes)={:.3} {:?}{before}",
                if ok { "ok   " } else { "WRONG" },
                conv.id,
                o.step,
                yes_no(step.expected),
                yes_no(o.predicted == Some(true)),
                o.probability,
                step.text,
            );
        }
    };
    if args.verbose {
        for o in &results {
            show(o);
        }
    } else if !wrong.is_empty() {
        println!(
            "worst mistakes ({} of {}, most confident first):",
            args.worst.min(wrong.len()),
            wrong.len()
        );
        for o in wrong.iter().take(args.worst) {
            show(o);
        }
    }
    let all = report.overall;
    println!();
    println!(
        "accuracy: {:.4} ({} of {}), errors: {}",
        all.accuracy(),
        all.tp + all.tn,
        all.total(),
        all.errors
    );
    println!("confusion matrix (rows expected, columns predicted):");
    println!("               pred yes   pred no");
    println!("  expected yes {:>8} {:>9}", all.tp, all.fn_);
    println!("  expected no  {:>8} {:>9}", all.fp, all.tn);
    println!(
        "precision {:.3}, recall {:.3}",
        all.precision(),
        all.recall()
    );
    let (fy, of) = report.false_yes_after_yes;
    println!(
        "false yes right after a yes: {:.4} ({fy} of {of} \"no\" steps that follow a \"yes\")",
        report.false_yes_after_yes_rate()
    );
    println!();
    println!(
        "{:<26} {:>6} {:>9} {:>5} {:>5} {:>5} {:>5} {:>10} {:>7}",
        "category", "steps", "accuracy", "tp", "fp", "fn", "tn", "precision", "recall"
    );
    for (name, c) in &report.categories {
        println!(
            "{name:<26} {:>6} {:>9.3} {:>5} {:>5} {:>5} {:>5} {:>10.3} {:>7.3}",
            c.total(),
            c.accuracy(),
            c.tp,
            c.fp,
            c.fn_,
            c.tn,
            c.precision(),
            c.recall()
        );
    }
    let latencies: Vec<f64> = results
        .iter()
        .filter(|o| o.predicted.is_some())
        .map(|o| o.ms)
        .collect();
    if !latencies.is_empty() {
        println!(
            "toolcall latency ms: p50 {:.1}, p95 {:.1}, max {:.1}  ({} steps in {:.1} s at concurrency {})",
            percentile(&latencies, 50.0),
            percentile(&latencies, 95.0),
            latencies.iter().copied().fold(0.0, f64::max),
            results.len(),
            wall,
            args.concurrency
        );
    }
    let mut pass = true;
    if let Some(m) = args.min_accuracy
        && all.accuracy() < m
    {
        println!("FAIL: accuracy {:.4} < {m}", all.accuracy());
        pass = false;
    }
    if let Some(m) = args.min_category_accuracy {
        for (name, c) in &report.categories {
            if c.accuracy() < m {
                println!("FAIL: category {name} accuracy {:.4} < {m}", c.accuracy());
                pass = false;
            }
        }
    }
    if let Some(m) = args.max_false_yes_after_yes
        && report.false_yes_after_yes_rate() > m
    {
        println!(
            "FAIL: false yes after a yes {:.4} > {m}",
            report.false_yes_after_yes_rate()
        );
        pass = false;
    }
    Ok(pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cases_and_conversations() {
        let c = parse_cases(
            "{\"text\":\"look\",\"expected\":\"yes\"}\n\n{\"text\":\"joke\",\"history\":\"User: hi\",\"expected\":false}\n\
             {\"id\":\"c1\",\"category\":\"apps\",\"steps\":[{\"user\":\"look at this\",\"assistant\":\"ok\",\"label\":\"yes\"},{\"user\":\"thanks\",\"label\":\"no\"}]}\n",
        )
        .unwrap();
        assert_eq!(c.len(), 3);
        assert!(c[0].steps[0].expected && !c[1].steps[0].expected);
        assert_eq!(c[1].history.as_deref(), Some("User: hi"));
        assert_eq!(c[2].id, "c1");
        assert_eq!(c[2].category, "apps");
        assert_eq!(c[2].steps.len(), 2);
        assert!(c[2].steps[0].expected && !c[2].steps[1].expected);
        assert!(parse_cases("{\"text\":\"x\",\"expected\":\"maybe\"}").is_err());
        assert!(parse_cases("{\"expected\":\"yes\"}").is_err());
        assert!(
            parse_cases("{\"id\":\"x\",\"steps\":[{\"user\":\"a\",\"label\":\"perhaps\"}]}")
                .is_err()
        );
    }

    #[test]
    fn tallies_categories_and_false_yes_after_yes() {
        let convs = parse_cases(
            "{\"id\":\"a\",\"category\":\"x\",\"steps\":[{\"user\":\"1\",\"label\":\"yes\"},{\"user\":\"2\",\"label\":\"no\"},{\"user\":\"3\",\"label\":\"no\"}]}\n\
             {\"id\":\"b\",\"category\":\"y\",\"steps\":[{\"user\":\"1\",\"label\":\"yes\"},{\"user\":\"2\",\"label\":\"no\"}]}\n",
        )
        .unwrap();
        let o = |conversation, step, predicted| Outcome {
            conversation,
            step,
            predicted,
            probability: 0.5,
            ms: 1.0,
            error: None,
        };
        let results = [
            o(0, 0, Some(true)),
            o(0, 1, Some(true)),
            o(0, 2, Some(true)),
            o(1, 0, Some(false)),
            o(1, 1, None),
        ];
        let r = tally(&convs, &results);
        assert_eq!(r.overall.total(), 5);
        assert_eq!(r.overall.tp, 1);
        assert_eq!(r.overall.fp, 2);
        assert_eq!(r.overall.fn_, 1);
        assert_eq!(r.overall.errors, 1);
        assert!((r.overall.accuracy() - 0.2).abs() < 1e-9);
        assert!((r.categories["x"].accuracy() - 1.0 / 3.0).abs() < 1e-9);
        // Step a#1 follows a yes and was answered yes; b#1 follows a yes and has no verdict;
        // a#2 follows a "no" step and does not count.
        assert_eq!(r.false_yes_after_yes, (2, 2));
    }
}
