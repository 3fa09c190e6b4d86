//! Settings of external engines (flattened into `yap serve`) and the launch plan they give:
//! the derived command line after the fit check.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use yap_engine_api::config::parse_seconds;

use crate::fit;
use crate::launch::{self, LaunchConfig};
use crate::remote::{EngineFlavor, RemoteConfig};

/// Where a remote engine is and how to talk to it.
#[derive(Debug, Clone, Args)]
pub struct RemoteArgs {
    /// Remote engine base URL(s); repeat the flag or separate with commas for replicas.
    #[arg(long = "engine-url", env = "ENGINE_URLS", value_delimiter = ',')]
    pub engine_url: Vec<String>,
    /// Model name sent to remote engines (default: the first id of the engine's `/v1/models`).
    #[arg(long, env = "ENGINE_MODEL_NAME")]
    pub engine_model_name: Option<String>,
    /// API key sent to remote engines (`Authorization: Bearer`).
    #[arg(long, env = "ENGINE_API_KEY", hide_env_values = true)]
    pub engine_api_key: Option<String>,
    /// Seconds between health checks of remote engine replicas.
    #[arg(long = "engine-health-interval-s", env = "ENGINE_HEALTH_INTERVAL_S", default_value = "2", value_parser = parse_seconds)]
    pub health_interval: Duration,
    /// Seconds to open a TCP connection to an engine.
    #[arg(long = "engine-connect-timeout-s", env = "ENGINE_CONNECT_TIMEOUT_S", default_value = "2", value_parser = parse_seconds)]
    pub connect_timeout: Duration,
    /// Seconds until an engine's response headers arrive (prefill included).
    #[arg(long = "engine-first-byte-timeout-s", env = "ENGINE_FIRST_BYTE_TIMEOUT_S", default_value = "30", value_parser = parse_seconds)]
    pub first_byte_timeout: Duration,
    /// Seconds between two streamed chunks before the replica counts as stalled.
    #[arg(long = "engine-chunk-timeout-s", env = "ENGINE_CHUNK_TIMEOUT_S", default_value = "10", value_parser = parse_seconds)]
    pub chunk_timeout: Duration,
}

impl RemoteArgs {
    /// The remote engine's configuration.
    pub fn config(&self, flavor: EngineFlavor, context_tokens: usize) -> RemoteConfig {
        let mut c = RemoteConfig::new(self.engine_url.clone());
        c.model = self.engine_model_name.clone().unwrap_or_default();
        c.flavor = flavor;
        c.api_key = self.engine_api_key.clone();
        c.health_interval = self.health_interval.max(Duration::from_millis(50));
        c.connect_timeout = self.connect_timeout;
        c.first_byte_timeout = self.first_byte_timeout;
        c.chunk_timeout = self.chunk_timeout;
        c.context_tokens = context_tokens;
        c
    }
}

/// How Yap launches and supervises an engine process.
#[derive(Debug, Clone, Args)]
pub struct LaunchArgs {
    /// Launched engines: the model vLLM serves (HF id or path) or the TRT engine directory.
    #[arg(long, env = "ENGINE_MODEL")]
    pub engine_model: Option<String>,
    /// Launched engines: the program to run instead of `vllm` / `trtllm-serve` (split on spaces).
    #[arg(long, env = "ENGINE_BIN")]
    pub engine_bin: Option<String>,
    /// Launched engines: extra arguments appended to the derived command (split on spaces).
    #[arg(long, env = "ENGINE_EXTRA_ARGS", allow_hyphen_values = true)]
    pub engine_extra_args: Option<String>,
    /// Launched engines: the child's port.
    #[arg(long, env = "ENGINE_PORT", default_value_t = 8001)]
    pub engine_port: u16,
    /// GPU memory fraction for the chat engine.
    #[arg(long, env = "CHAT_GPU_FRAC", default_value_t = 0.90)]
    pub chat_gpu_frac: f64,
    /// KV cache dtype for launched engines (`auto`, `fp8`).
    #[arg(long, env = "KV_DTYPE")]
    pub kv_dtype: Option<String>,
    /// vLLM: no CUDA graphs.
    #[arg(long, env = "ENFORCE_EAGER", default_value_t = false, action = clap::ArgAction::Set)]
    pub enforce_eager: bool,
    /// `4bit` or `8bit` for a model that is not pre-quantized.
    #[arg(long, env = "QUANTIZATION")]
    pub quantization: Option<String>,
    /// Most concurrent sequences of a launched engine (vLLM `--max-num-seqs`).
    #[arg(long, env = "ENGINE_MAX_SEQS")]
    pub engine_max_seqs: Option<u64>,
    /// TRT: runtime batch size (≤ the engine's built max).
    #[arg(long, env = "TRT_BATCH_SIZE")]
    pub trt_batch_size: Option<u64>,
    /// TRT: max batch size to build engines with.
    #[arg(long, env = "TRT_MAX_BATCH_SIZE")]
    pub trt_max_batch_size: Option<u64>,
    /// TRT: fraction of free GPU memory for the KV cache.
    #[arg(long, env = "TRT_KV_FREE_GPU_FRAC", default_value_t = 0.85)]
    pub trt_kv_free_gpu_frac: f64,
    /// Fit check: the served model's config.json (default: ENGINE_MODEL/config.json when local).
    #[arg(long, env = "ENGINE_MODEL_CONFIG")]
    pub engine_model_config: Option<PathBuf>,
    /// Fit check: GPU memory in GiB (default: nvidia-smi).
    #[arg(long, env = "GPU_MEMORY_GIB")]
    pub gpu_memory_gib: Option<f64>,
    /// Fit check: GPU compute capability ×10, e.g. 90 (default: nvidia-smi, else 90).
    #[arg(long, env = "GPU_SM")]
    pub gpu_sm: Option<u32>,
    /// Launched engines: the `yap` binary that runs the engine guard (default: this binary).
    #[arg(long, env = "ENGINE_GUARD_BIN", hide = true)]
    pub engine_guard_bin: Option<PathBuf>,
    /// Launched engines: seconds between SIGTERM and SIGKILL when the engine is stopped.
    #[arg(long = "engine-stop-grace-s", env = "ENGINE_STOP_GRACE_S", default_value = "10", value_parser = parse_seconds)]
    pub stop_grace: Duration,
    /// Seconds a launched engine may take to become healthy.
    #[arg(long = "engine-startup-timeout-s", env = "ENGINE_STARTUP_TIMEOUT_S", default_value = "900", value_parser = parse_seconds)]
    pub startup_timeout: Duration,
}

/// Why no engine can be launched.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct LaunchError(pub String);

/// What to run, decided before anything is started.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchPlan {
    /// The command line.
    pub command: Vec<String>,
    /// The fit check's verdict, when it ran.
    pub fit: Option<String>,
    /// TRT: the options file the command refers to.
    pub trt_options: bool,
}

impl LaunchArgs {
    /// The guard program and its subcommand: `ENGINE_GUARD_BIN`, else this executable when it
    /// is `yap`; `None` when neither is known (the engine then runs without a guard).
    pub fn guard_command(&self) -> Option<Vec<String>> {
        let bin = self.engine_guard_bin.clone().or_else(|| {
            let exe = std::env::current_exe().ok()?;
            let name = exe.file_name()?.to_str()?;
            (name == "yap" || name.starts_with("yap-")).then_some(exe)
        })?;
        Some(vec![bin.display().to_string(), "engine-guard".into()])
    }
}

/// GPU memory (GiB) and compute capability from nvidia-smi, when there is one.
pub fn query_gpu() -> Option<(f64, u32)> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=memory.total,compute_cap",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.lines().next()?.split(',').map(str::trim);
    let mib: f64 = parts.next()?.parse().ok()?;
    let cap: f64 = parts.next()?.parse().ok()?;
    Some((mib / 1024.0, (cap * 10.0).round() as u32))
}

impl LaunchArgs {
    fn launch_config(&self, model: &str, max_len: u64, sm: u32) -> LaunchConfig {
        let mut cfg = LaunchConfig::new(model);
        cfg.port = self.engine_port;
        cfg.max_len = max_len;
        cfg.kv_dtype.clone_from(&self.kv_dtype);
        cfg.enforce_eager = self.enforce_eager;
        cfg.quantization.clone_from(&self.quantization);
        cfg.gpu_sm = sm;
        cfg.trt_max_batch = self.trt_max_batch_size;
        cfg
    }

    /// The command of a launched `vllm` or `trt` engine, after the fit check (vLLM).
    pub fn plan(&self, engine: &str, max_len: u64) -> Result<LaunchPlan, LaunchError> {
        let err = |m: String| LaunchError(m);
        let Some(model) = self.engine_model.clone() else {
            return Err(err(format!(
                "--engine {engine} needs --engine-model (ENGINE_MODEL): the model or engine directory"
            )));
        };
        let gpu = query_gpu();
        let sm = self.gpu_sm.or(gpu.map(|g| g.1)).unwrap_or(90);
        let mut cfg = self.launch_config(&model, max_len, sm);
        let (mut command, trt_options) = if engine == "vllm" {
            cfg.gpu_frac = self.chat_gpu_frac;
            cfg.max_seqs = self.engine_max_seqs;
            (launch::vllm_command(&cfg).map_err(err)?, false)
        } else {
            cfg.gpu_frac = self.trt_kv_free_gpu_frac;
            cfg.max_seqs = self.trt_batch_size;
            let path = PathBuf::from(&model).join("config.json");
            let text = std::fs::read_to_string(&path)
                .map_err(|e| err(format!("reading {}: {e}", path.display())))?;
            let engine_cfg: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| err(format!("{}: {e}", path.display())))?;
            let max = launch::trt_engine_max_batch(&engine_cfg).unwrap_or(0);
            tracing::info!(engine_max_batch = max, runtime_batch = ?cfg.max_seqs, "TRT batch sizes");
            (
                launch::trtllm_command(&cfg, &engine_cfg).map_err(err)?,
                true,
            )
        };
        let fit = if engine == "vllm" {
            self.fit(&model, max_len, sm, gpu.map(|g| g.0))?
        } else {
            None
        };
        if let Some(bin) = &self.engine_bin {
            let mut prefix: Vec<String> = bin.split_whitespace().map(str::to_owned).collect();
            command.remove(0);
            prefix.extend(command);
            command = prefix;
        }
        if let Some(extra) = &self.engine_extra_args {
            command.extend(extra.split_whitespace().map(str::to_owned));
        }
        Ok(LaunchPlan {
            command,
            fit,
            trt_options,
        })
    }

    /// The fit check, when the model's config and the GPU memory are known.
    fn fit(
        &self,
        model: &str,
        max_len: u64,
        sm: u32,
        detected: Option<f64>,
    ) -> Result<Option<String>, LaunchError> {
        let config_path = self
            .engine_model_config
            .clone()
            .or_else(|| Some(PathBuf::from(model).join("config.json")).filter(|p| p.is_file()));
        let (Some(path), Some(mem)) = (config_path, self.gpu_memory_gib.or(detected)) else {
            tracing::warn!(
                "fit check skipped: no config.json or GPU memory known (ENGINE_MODEL_CONFIG, GPU_MEMORY_GIB)"
            );
            return Ok(None);
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| LaunchError(format!("reading {}: {e}", path.display())))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| LaunchError(e.to_string()))?;
        let quant = fit::detect_quantization(model).or(self.quantization.as_deref());
        let report = fit::check(&fit::FitRequest {
            shape: fit::ModelShape::from_config(&json).map_err(LaunchError)?,
            weights: fit::weight_precision(quant),
            kv: if self.kv_dtype.as_deref() == Some("fp8") {
                fit::Precision::Int8
            } else {
                fit::Precision::Bf16
            },
            gpu: fit::Gpu {
                name: format!("GPU ({mem:.0} GiB, sm{sm})"),
                memory_gib: mem,
                sm,
            },
            fraction: self.chat_gpu_frac,
            max_len,
            batch: self.engine_max_seqs.unwrap_or(1),
        });
        if !report.fits {
            return Err(LaunchError(format!(
                "refusing to launch: {}",
                report.message
            )));
        }
        tracing::info!("{}", report.message);
        Ok(Some(report.message))
    }
}
