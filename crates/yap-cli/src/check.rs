//! `yap check`: the fit check as a command.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use yap_remote::fit::{self, FitRequest, Gpu, ModelShape, Precision};

/// Flags of `yap check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// The model's config.json.
    #[arg(long)]
    pub config: PathBuf,
    /// Model name (quantization is detected from it: awq, gptq, fp8, ...).
    #[arg(long, default_value = "")]
    pub model: String,
    /// `4bit` / `8bit` for a model that is not pre-quantized.
    #[arg(long, env = "QUANTIZATION")]
    pub quantization: Option<String>,
    /// A known GPU (p40, 3060, 3090, l4, a10g, l40s, a100-40, a100, h100, h200).
    #[arg(long)]
    pub gpu: Option<String>,
    /// GPU memory in GiB (instead of --gpu).
    #[arg(long)]
    pub gpu_memory_gib: Option<f64>,
    /// Compute capability ×10 with --gpu-memory-gib.
    #[arg(long, default_value_t = 90)]
    pub gpu_sm: u32,
    /// Memory fraction for the chat engine.
    #[arg(long, env = "CHAT_GPU_FRAC", default_value_t = 0.90)]
    pub frac: f64,
    /// Tokens per sequence.
    #[arg(long, env = "CHAT_MAX_LEN", default_value_t = yap_core::config::defaults::CHAT_MAX_LEN as u64)]
    pub max_len: u64,
    /// Concurrent full-length sequences.
    #[arg(long, default_value_t = 1)]
    pub batch: u64,
    /// KV cache dtype (`auto` or `fp8`).
    #[arg(long, env = "KV_DTYPE", default_value = "auto")]
    pub kv_dtype: String,
}

/// Prints the report; returns whether it fits.
pub fn run(args: &CheckArgs) -> Result<bool> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    let shape = ModelShape::from_config(&json).map_err(anyhow::Error::msg)?;
    let gpu = match (&args.gpu, args.gpu_memory_gib) {
        (Some(name), _) => fit::known_gpu(name).with_context(|| format!("unknown GPU `{name}`"))?,
        (None, Some(mem)) => Gpu {
            name: format!("GPU {mem:.0} GiB sm{}", args.gpu_sm),
            memory_gib: mem,
            sm: args.gpu_sm,
        },
        (None, None) => bail!("give --gpu NAME or --gpu-memory-gib N"),
    };
    let quant = fit::detect_quantization(&args.model).or(args.quantization.as_deref());
    let report = fit::check(&FitRequest {
        shape: shape.clone(),
        weights: fit::weight_precision(quant),
        kv: if args.kv_dtype == "fp8" {
            Precision::Int8
        } else {
            Precision::Bf16
        },
        gpu: gpu.clone(),
        fraction: args.frac,
        max_len: args.max_len,
        batch: args.batch,
    });
    println!(
        "model: {:.2} B parameters, {} layers, {} KV heads × {} dims; weights {:?}; 8-bit format on sm{}: {}",
        shape.params() as f64 / 1e9,
        shape.layers,
        shape.kv_heads,
        shape.head_dim,
        fit::weight_precision(quant),
        gpu.sm,
        fit::eight_bit_format(gpu.sm)
    );
    println!("{}", report.message);
    Ok(report.fits)
}
