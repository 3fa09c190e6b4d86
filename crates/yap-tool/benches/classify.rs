//! Tool classification latency and throughput: 1 vs 16 concurrent turns, batching on vs off.
//!
//!     YAP_TOOL_MODEL=$(cargo run --release --bin yap -- fetch-model --tool) \
//!         cargo bench -p yap-tool --bench classify
//!
//! Each "turn" submits one context through the [`ToolService`] (as the server does) and waits for
//! its verdict. Prints p50/p99 latency and classifications per second.
#![allow(clippy::unwrap_used, clippy::too_many_lines, missing_docs)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use yap_tool::{ServiceConfig, ToolModel, ToolService};

const UTTERANCES: [&str; 8] = [
    "hey can you look at this outfit and tell me what you think",
    "tell me a joke about pirates",
    "what's the capital of France",
    "what does this error on my screen mean",
    "I had a really long day at work and I just want to relax",
    "does my haircut look okay",
    "how do I make pancakes",
    "can you read what it says here",
];

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

async fn run(
    service: &Arc<ToolService>,
    concurrency: usize,
    per_task: usize,
    history: bool,
) -> (Vec<f64>, f64) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let s = Arc::clone(service);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for i in 0..per_task {
                let text = UTTERANCES[(t + i) % UTTERANCES.len()].to_owned();
                // With history: the previous utterance as the earlier user turn (what the
                // default model reads), as in a running conversation.
                let earlier = if history {
                    vec![UTTERANCES[(t + i + 3) % UTTERANCES.len()].to_owned()]
                } else {
                    Vec::new()
                };
                let t0 = Instant::now();
                s.classify(yap_tool::ToolInput {
                    history: earlier,
                    utterance: text,
                })
                .await
                .expect("classify");
                lat.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    (all, rate)
}

#[tokio::main]
async fn main() {
    let Some(dir) = std::env::var_os("YAP_TOOL_MODEL").map(PathBuf::from) else {
        eprintln!("set YAP_TOOL_MODEL to a tool model folder (yap fetch-model --tool); skipping");
        return;
    };
    let threads: usize = std::env::var("TOOL_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    println!("model {} | threads {threads}", dir.display());
    println!(
        "{:<28} {:>9} {:>9} {:>12} {:>11}",
        "case", "p50 ms", "p99 ms", "classif/s", "peak batch"
    );
    let mut rates = Vec::new();
    for (label, window_ms, max_batch, conc, per, history) in [
        ("1 turn, batching on", 3, 16, 1, 100, false),
        ("1 turn, no window", 0, 1, 1, 100, false),
        ("1 turn + 1 history turn", 3, 16, 1, 100, true),
        ("16 turns, batching on", 3, 16, 16, 25, false),
        ("16 turns, batching off", 0, 1, 16, 25, false),
        ("16 turns + history, batched", 3, 16, 16, 25, true),
    ] {
        let model = ToolModel::load(&dir, None).expect("load");
        let service = ToolService::start(
            model,
            ServiceConfig {
                threads,
                batch_window: Duration::from_millis(window_ms),
                max_batch,
                adaptive: true,
            },
        )
        .expect("start");
        run(&service, conc, 3, history).await; // warm up
        let before = service.stats();
        let (mut lat, rate) = run(&service, conc, per, history).await;
        let after = service.stats();
        let p50 = pct(&mut lat, 0.5);
        let p99 = pct(&mut lat, 0.99);
        println!(
            "{label:<28} {p50:>9.2} {p99:>9.2} {rate:>12.1} {:>11}",
            after.peak_batch.max(before.peak_batch)
        );
        rates.push(rate);
    }
    println!(
        "batching gain at 16 turns: {:.2}x throughput (on/off)",
        rates[3] / rates[4]
    );
}
