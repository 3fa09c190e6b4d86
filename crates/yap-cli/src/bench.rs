//! `yap bench`: latency percentiles, throughput and cancel-to-done latency over the WebSocket
//! protocol, at one or more concurrency levels.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use yap_protocol::ServerFrame;

use crate::client::{ClientArgs, TurnMetrics, connect, recv_frame, run_turn};

/// Flags of `yap bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Connection flags.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Turns per concurrency level.
    #[arg(short = 'n', long, default_value_t = 32)]
    pub turns: usize,
    /// Concurrency levels, comma-separated (each level runs on its own connections).
    #[arg(short = 'c', long, default_value = "1,8", value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    /// Two sequential turns per connection (same session); `[first]`/`[second]` tables show the
    /// second turn's gain from prefix reuse.
    #[arg(long)]
    pub double_ttfb: bool,
    /// Cancels measured per level: a `cancel` after the first token, timed to `done{cancelled}`.
    #[arg(long, default_value_t = 0)]
    pub cancels: usize,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Draw the latency distributions (CDFs per level) into this PNG file.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    /// The user utterance.
    #[arg(default_value = "Tell me a short story about a dragon who learns to cook.")]
    pub text: String,
}

/// Nearest-rank percentile of unsorted values (NaN when empty).
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

/// Per-metric samples of one table.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    toolcall_ttfb_ms: Vec<f64>,
    chat_ttfb_ms: Vec<f64>,
    first_sentence_ms: Vec<f64>,
    total_ms: Vec<f64>,
    cached_prompt_tokens: Vec<f64>,
    decode_tps: Vec<f64>,
    tokens: u64,
    turns: usize,
    errors: usize,
}

impl Samples {
    fn add(&mut self, m: &TurnMetrics) {
        match &m.terminal {
            Some(ServerFrame::Done {
                cancelled: false, ..
            }) => {
                self.turns += 1;
                if let Some(t) = m.toolcall_ms {
                    self.toolcall_ttfb_ms.push(t);
                }
                if let Some(t) = m.ttfb_ms {
                    self.chat_ttfb_ms.push(t);
                    let decode_s = (m.total_ms - t) / 1000.0;
                    if m.completion_tokens > 1 && decode_s > 0.0 {
                        self.decode_tps
                            .push(f64::from(m.completion_tokens - 1) / decode_s);
                    }
                }
                if let Some(t) = m.first_sentence_ms {
                    self.first_sentence_ms.push(t);
                }
                self.total_ms.push(m.total_ms);
                self.cached_prompt_tokens
                    .push(f64::from(m.cached_prompt_tokens));
                self.tokens += u64::from(m.completion_tokens);
            }
            _ => self.errors += 1,
        }
    }

    fn merge(&mut self, o: Samples) {
        self.toolcall_ttfb_ms.extend(o.toolcall_ttfb_ms);
        self.chat_ttfb_ms.extend(o.chat_ttfb_ms);
        self.first_sentence_ms.extend(o.first_sentence_ms);
        self.total_ms.extend(o.total_ms);
        self.cached_prompt_tokens.extend(o.cached_prompt_tokens);
        self.decode_tps.extend(o.decode_tps);
        self.tokens += o.tokens;
        self.turns += o.turns;
        self.errors += o.errors;
    }

    fn metrics(&self) -> Vec<(&'static str, &Vec<f64>)> {
        vec![
            ("toolcall_ttfb_ms", &self.toolcall_ttfb_ms),
            ("chat_ttfb_ms", &self.chat_ttfb_ms),
            ("first_sentence_ms", &self.first_sentence_ms),
            ("total_ms", &self.total_ms),
            ("cached_prompt_tokens", &self.cached_prompt_tokens),
        ]
    }

    fn json(&self, wall_s: f64) -> Value {
        let mut out = json!({
            "turns": self.turns,
            "errors": self.errors,
            "completion_tokens": self.tokens,
            "turns_per_s": self.turns as f64 / wall_s,
            "tokens_per_s_aggregate": self.tokens as f64 / wall_s,
            "decode_tokens_per_s_per_session": mean(&self.decode_tps),
        });
        for (name, v) in self.metrics() {
            out[name] = stats_json(v);
        }
        out
    }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn stats_json(v: &[f64]) -> Value {
    let f = |x: f64| if x.is_finite() { json!(x) } else { Value::Null };
    json!({"p50": f(percentile(v, 50.0)), "p95": f(percentile(v, 95.0)),
           "p99": f(percentile(v, 99.0)), "mean": f(mean(v)), "n": v.len()})
}

fn print_table(title: &str, s: &Samples, wall_s: f64) {
    println!(
        "{title} turns={} errors={} wall={wall_s:.2}s throughput={:.2} turns/s {:.1} tok/s aggregate, {} tok/s per session (decode)",
        s.turns,
        s.errors,
        s.turns as f64 / wall_s,
        s.tokens as f64 / wall_s,
        if s.decode_tps.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.1}", mean(&s.decode_tps))
        }
    );
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>9}",
        "metric", "p50", "p95", "p99", "mean"
    );
    for (name, v) in s.metrics() {
        if v.is_empty() {
            println!("{name:<22} {:>9} {:>9} {:>9} {:>9}", "-", "-", "-", "-");
        } else {
            println!(
                "{name:<22} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                percentile(v, 50.0),
                percentile(v, 95.0),
                percentile(v, 99.0),
                mean(v)
            );
        }
    }
}

async fn worker(args: BenchArgs, worker: usize, turns: usize) -> Result<(Samples, Samples)> {
    let timeout = Duration::from_secs_f64(args.client.recv_timeout_sec);
    let (mut first, mut second) = (Samples::default(), Samples::default());
    let tag: u32 = rand::random();
    for i in 0..turns {
        // A fresh connection and session per turn (or per pair with --double-ttfb), opened
        // outside the timing, stays clear of per-connection message limits.
        let mut ws = connect(&args.client).await?;
        let session = format!("bench-{tag}-{worker}-{i}");
        let start = args.client.start_message(&session, &args.text, None);
        first.add(&run_turn(&mut ws, &start, timeout, |_| {}).await?);
        if args.double_ttfb {
            let start = args
                .client
                .start_message(&session, "And then what happened?", None);
            second.add(&run_turn(&mut ws, &start, timeout, |_| {}).await?);
        }
        let _ = ws.send(Message::Text("__END__".into())).await;
    }
    Ok((first, second))
}

async fn cancel_worker(args: BenchArgs, worker: usize, count: usize) -> Result<Vec<f64>> {
    let timeout = Duration::from_secs_f64(args.client.recv_timeout_sec);
    let mut out = Vec::new();
    let tag: u32 = rand::random();
    for i in 0..count {
        let mut ws = connect(&args.client).await?;
        let session = format!("cancel-{tag}-{worker}-{i}");
        let start = args.client.start_message(&session, &args.text, None);
        ws.send(Message::Text(start.to_string().into())).await?;
        let mut streaming = false;
        while !streaming {
            let (frame, _) = recv_frame(&mut ws, timeout).await?;
            match frame {
                ServerFrame::Token { .. } => streaming = true,
                f if f.is_terminal() => break,
                _ => {}
            }
        }
        if streaming {
            let t0 = Instant::now();
            ws.send(Message::Text(r#"{"type":"cancel"}"#.into()))
                .await?;
            loop {
                let (frame, _) = recv_frame(&mut ws, timeout).await?;
                if let ServerFrame::Done { cancelled, .. } = frame {
                    if cancelled {
                        out.push(t0.elapsed().as_secs_f64() * 1000.0);
                    }
                    break;
                }
                if frame.is_terminal() {
                    break;
                }
            }
        }
        let _ = ws.send(Message::Text("__END__".into())).await;
    }
    Ok(out)
}

/// Runs the benchmark and prints tables (or JSON).
pub async fn bench(args: &BenchArgs) -> Result<()> {
    let mut report = Vec::new();
    let mut curves: Vec<(String, Samples)> = Vec::new();
    for &c in &args.concurrency {
        let c = c.max(1);
        let per_worker = args.turns.div_ceil(c);
        let t0 = Instant::now();
        let handles: Vec<_> = (0..c)
            .map(|w| tokio::spawn(worker(args.clone(), w, per_worker)))
            .collect();
        let (mut first, mut second) = (Samples::default(), Samples::default());
        for h in handles {
            let (f, s) = h.await??;
            first.merge(f);
            second.merge(s);
        }
        let wall_s = t0.elapsed().as_secs_f64();
        let mut cancel_ms = Vec::new();
        if args.cancels > 0 {
            let per = args.cancels.div_ceil(c);
            let hs: Vec<_> = (0..c)
                .map(|w| tokio::spawn(cancel_worker(args.clone(), w, per)))
                .collect();
            for h in hs {
                cancel_ms.extend(h.await??);
            }
        }
        if args.plot.is_some() {
            if args.double_ttfb {
                curves.push((format!("c={c} first"), first.clone()));
                curves.push((format!("c={c} second"), second.clone()));
            } else {
                curves.push((format!("c={c}"), first.clone()));
            }
        }
        if args.json {
            let mut level =
                json!({"concurrency": c, "wall_s": wall_s, "first": first.json(wall_s)});
            if args.double_ttfb {
                level["second"] = second.json(wall_s);
            }
            if !cancel_ms.is_empty() {
                level["cancel_to_done_ms"] = stats_json(&cancel_ms);
            }
            report.push(level);
            continue;
        }
        println!("== concurrency {c} ==");
        if args.double_ttfb {
            print_table("[first]", &first, wall_s);
            print_table("[second]", &second, wall_s);
        } else {
            print_table("[turns]", &first, wall_s);
        }
        if !cancel_ms.is_empty() {
            println!(
                "{:<22} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                "cancel_to_done_ms",
                percentile(&cancel_ms, 50.0),
                percentile(&cancel_ms, 95.0),
                percentile(&cancel_ms, 99.0),
                mean(&cancel_ms)
            );
        }
        println!();
    }
    if args.json {
        println!("{}", json!({"text": args.text, "levels": report}));
    }
    if let Some(path) = &args.plot {
        let panel = |name: &'static str, pick: fn(&Samples) -> &Vec<f64>| {
            let series = curves
                .iter()
                .map(|(label, s)| (label.clone(), pick(s).clone()))
                .collect();
            (name, series)
        };
        let panels = vec![
            panel("chat_ttfb_ms", |s| &s.chat_ttfb_ms),
            panel("first_sentence_ms", |s| &s.first_sentence_ms),
            panel("total_ms", |s| &s.total_ms),
        ];
        crate::plot::draw(path, &panels)?;
        eprintln!("plot written to {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 95.0), 95.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
