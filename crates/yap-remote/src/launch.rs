//! Command lines for external engines: `vllm serve` and `trtllm-serve` (and `trtllm-build`),
//! derived from Yap's settings. Pure functions, so every deployment's command is testable.

use serde_json::Value;

use crate::fit::{detect_quantization, eight_bit_format};

/// Which external engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// vLLM (`vllm serve`).
    Vllm,
    /// TensorRT-LLM (`trtllm-serve`).
    Trt,
}

/// Settings that shape an engine's command line.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    /// Model id or path (vLLM), engine directory (TRT).
    pub model: String,
    /// Name clients and Yap use for the model.
    pub served_name: String,
    /// Bind address of the child.
    pub host: String,
    /// Port of the child.
    pub port: u16,
    /// `CHAT_MAX_LEN`.
    pub max_len: u64,
    /// `CHAT_GPU_FRAC` (vLLM) / `TRT_KV_FREE_GPU_FRAC` (TRT).
    pub gpu_frac: f64,
    /// `KV_DTYPE` (`auto`, `fp8`, ...).
    pub kv_dtype: Option<String>,
    /// `ENFORCE_EAGER`.
    pub enforce_eager: bool,
    /// Requested quantization (`4bit` / `8bit`) for a model that is not pre-quantized.
    pub quantization: Option<String>,
    /// GPU compute capability × 10 (picks the 8-bit format).
    pub gpu_sm: u32,
    /// Most concurrent sequences (vLLM `--max-num-seqs`; TRT `TRT_BATCH_SIZE`).
    pub max_seqs: Option<u64>,
    /// `TRT_MAX_BATCH_SIZE` (baked into a TRT engine at build time).
    pub trt_max_batch: Option<u64>,
    /// Tokenizer path for TRT (the HF folder the engine was built from).
    pub tokenizer: Option<String>,
}

impl LaunchConfig {
    /// Defaults for a model.
    pub fn new(model: impl Into<String>) -> Self {
        let model = model.into();
        Self {
            served_name: model.clone(),
            model,
            host: "127.0.0.1".into(),
            port: 8001,
            max_len: 5525,
            gpu_frac: 0.90,
            kv_dtype: None,
            enforce_eager: false,
            quantization: None,
            gpu_sm: 90,
            max_seqs: None,
            trt_max_batch: None,
            tokenizer: None,
        }
    }
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

/// The vLLM quantization method for a model (explicit, never left to vLLM to guess).
pub fn vllm_quantization(cfg: &LaunchConfig) -> Result<Option<String>, String> {
    let detected = detect_quantization(&cfg.model);
    let method = match detected {
        Some("awq") => Some("awq_marlin"),
        Some("gptq") => Some("gptq_marlin"),
        Some("4bit") => {
            let m = cfg.model.to_ascii_lowercase();
            if m.contains("nvfp4") {
                Some("modelopt_fp4")
            } else if m.contains("autoround") {
                Some("auto-round")
            } else {
                Some("compressed-tensors")
            }
        }
        Some("fp8") => Some("fp8"),
        Some("gguf") => Some("gguf"),
        Some(other) => {
            return Err(format!(
                "{other} checkpoints are for TensorRT-LLM, not vLLM"
            ));
        }
        None => match cfg.quantization.as_deref() {
            None | Some("") | Some("none") => None,
            // FP8 weights: W8A8 on sm89/sm90, weight-only W8A16 (Marlin) on sm80.
            Some("8bit") => Some("fp8"),
            Some("4bit") => {
                return Err(format!(
                    "vLLM cannot quantize {} to 4-bit at load: use a pre-quantized AWQ/GPTQ checkpoint (a name with `awq` or `gptq`)",
                    cfg.model
                ));
            }
            Some(q) => return Err(format!("unknown quantization `{q}` (use 4bit or 8bit)")),
        },
    };
    Ok(method.map(str::to_owned))
}

/// `vllm serve ...` for a configuration.
pub fn vllm_command(cfg: &LaunchConfig) -> Result<Vec<String>, String> {
    let mut cmd = vec![
        s("vllm"),
        s("serve"),
        cfg.model.clone(),
        s("--host"),
        cfg.host.clone(),
        s("--port"),
        s(cfg.port),
        s("--served-model-name"),
        cfg.served_name.clone(),
        s("--max-model-len"),
        s(cfg.max_len),
        s("--gpu-memory-utilization"),
        format!("{:.2}", cfg.gpu_frac),
        s("--enable-prefix-caching"),
        // Without it vLLM never reports `usage.prompt_tokens_details.cached_tokens`.
        s("--enable-prompt-tokens-details"),
    ];
    if let Some(q) = vllm_quantization(cfg)? {
        cmd.extend([s("--quantization"), q]);
    }
    if let Some(kv) = cfg
        .kv_dtype
        .as_deref()
        .filter(|k| !k.is_empty() && *k != "auto")
    {
        cmd.extend([s("--kv-cache-dtype"), kv.to_owned()]);
    }
    if let Some(n) = cfg.max_seqs {
        cmd.extend([s("--max-num-seqs"), s(n)]);
    }
    if cfg.enforce_eager {
        cmd.push(s("--enforce-eager"));
    }
    Ok(cmd)
}

/// Reads `build_config.max_batch_size` from a TRT engine's `config.json`.
pub fn trt_engine_max_batch(engine_config: &Value) -> Option<u64> {
    engine_config
        .pointer("/build_config/max_batch_size")
        .or_else(|| engine_config.get("max_batch_size"))
        .and_then(Value::as_u64)
}

/// `trtllm-serve ...` for a built engine; `engine_config` is its `config.json`.
/// `TRT_BATCH_SIZE` must not exceed the engine's baked-in maximum.
pub fn trtllm_command(cfg: &LaunchConfig, engine_config: &Value) -> Result<Vec<String>, String> {
    let engine_max = trt_engine_max_batch(engine_config).ok_or_else(|| {
        format!(
            "{}/config.json has no build_config.max_batch_size; rebuild the engine with TRT_MAX_BATCH_SIZE set",
            cfg.model
        )
    })?;
    let batch = cfg.max_seqs.unwrap_or(engine_max);
    if batch > engine_max {
        return Err(format!(
            "TRT_BATCH_SIZE={batch} exceeds the engine's max_batch_size={engine_max} (baked in at build time): lower TRT_BATCH_SIZE or rebuild with TRT_MAX_BATCH_SIZE ≥ {batch}"
        ));
    }
    let mut cmd = vec![
        s("trtllm-serve"),
        cfg.model.clone(),
        s("--host"),
        cfg.host.clone(),
        s("--port"),
        s(cfg.port),
        s("--backend"),
        s("trt"),
        s("--max_batch_size"),
        s(batch),
        s("--max_seq_len"),
        s(cfg.max_len),
        s("--kv_cache_free_gpu_memory_fraction"),
        format!("{:.2}", cfg.gpu_frac),
        s("--extra_llm_api_options"),
        s("yap-trt-options.yaml"),
    ];
    if let Some(t) = &cfg.tokenizer {
        cmd.extend([s("--tokenizer"), t.clone()]);
    }
    Ok(cmd)
}

/// The `--extra_llm_api_options` file: KV block reuse on (prefix cache).
pub const TRT_OPTIONS_YAML: &str = "kv_cache_config:\n  enable_block_reuse: true\n";

/// `trtllm-build ...` to build an engine from a converted checkpoint; `TRT_MAX_BATCH_SIZE`
/// is required.
pub fn trtllm_build_command(
    checkpoint_dir: &str,
    output_dir: &str,
    cfg: &LaunchConfig,
) -> Result<Vec<String>, String> {
    let max_batch = cfg
        .trt_max_batch
        .ok_or("TRT_MAX_BATCH_SIZE is required to build a TensorRT-LLM engine")?;
    Ok(vec![
        s("trtllm-build"),
        s("--checkpoint_dir"),
        s(checkpoint_dir),
        s("--output_dir"),
        s(output_dir),
        s("--max_batch_size"),
        s(max_batch),
        s("--max_seq_len"),
        s(cfg.max_len),
        s("--use_paged_context_fmha"),
        s("enable"),
        s("--gemm_plugin"),
        s("auto"),
    ])
}

/// The TRT quantization recipe for `4bit` / `8bit` on a GPU (for the checkpoint conversion).
pub fn trt_quant_recipe(quant: &str, sm: u32) -> Result<&'static str, String> {
    match quant {
        "4bit" => Ok("int4_awq"),
        "8bit" if sm >= 89 => Ok("fp8"),
        "8bit" => Ok("int8_sq"),
        other => Err(format!(
            "unknown quantization `{other}` (use 4bit or 8bit); 8-bit here: {}",
            eight_bit_format(sm)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn joined(v: Result<Vec<String>, String>) -> String {
        v.map(|v| v.join(" "))
            .unwrap_or_else(|e| format!("ERR {e}"))
    }

    #[test]
    fn vllm_commands() {
        let mut awq = LaunchConfig::new("Qwen/Qwen3-8B-AWQ");
        awq.max_len = 8192;
        awq.gpu_frac = 0.70;
        awq.kv_dtype = Some("fp8".into());
        awq.max_seqs = Some(32);
        assert_eq!(
            joined(vllm_command(&awq)),
            "vllm serve Qwen/Qwen3-8B-AWQ --host 127.0.0.1 --port 8001 --served-model-name Qwen/Qwen3-8B-AWQ \
             --max-model-len 8192 --gpu-memory-utilization 0.70 --enable-prefix-caching \
             --enable-prompt-tokens-details --quantization awq_marlin --kv-cache-dtype fp8 --max-num-seqs 32"
        );
        let mut nemo = LaunchConfig::new("mistralai/Mistral-Nemo-Instruct-2407");
        nemo.quantization = Some("8bit".into());
        nemo.gpu_sm = 80;
        nemo.enforce_eager = true;
        let c = joined(vllm_command(&nemo));
        assert!(
            c.ends_with(
                "--enable-prefix-caching --enable-prompt-tokens-details --quantization fp8 --enforce-eager"
            ),
            "{c}"
        );
        let plain = joined(vllm_command(&LaunchConfig::new("Qwen/Qwen3-30B-A3B")));
        assert!(!plain.contains("--quantization"), "{plain}");
        for (name, method) in [
            ("TheBloke/x-GPTQ", "gptq_marlin"),
            ("org/x-w4a16", "compressed-tensors"),
            ("org/x-NVFP4", "modelopt_fp4"),
            ("org/x-autoround", "auto-round"),
        ] {
            assert!(
                joined(vllm_command(&LaunchConfig::new(name)))
                    .contains(&format!("--quantization {method}")),
                "{name}"
            );
        }
        let mut four = LaunchConfig::new("mistralai/Mistral-Nemo-Instruct-2407");
        four.quantization = Some("4bit".into());
        assert!(joined(vllm_command(&four)).starts_with("ERR vLLM cannot quantize"));
    }

    #[test]
    fn trt_commands_check_the_engine_batch() {
        let engine = json!({"build_config": {"max_batch_size": 16, "max_seq_len": 8192}});
        let mut cfg = LaunchConfig::new("/engines/nemo-12b-trt-fp8");
        cfg.max_len = 8192;
        cfg.gpu_frac = 0.85;
        cfg.max_seqs = Some(8);
        cfg.tokenizer = Some("/models/Mistral-Nemo-Instruct-2407".into());
        assert_eq!(
            joined(trtllm_command(&cfg, &engine)),
            "trtllm-serve /engines/nemo-12b-trt-fp8 --host 127.0.0.1 --port 8001 --backend trt \
             --max_batch_size 8 --max_seq_len 8192 --kv_cache_free_gpu_memory_fraction 0.85 \
             --extra_llm_api_options yap-trt-options.yaml --tokenizer /models/Mistral-Nemo-Instruct-2407"
        );
        cfg.max_seqs = Some(32);
        let err = joined(trtllm_command(&cfg, &engine));
        assert!(
            err.contains("TRT_BATCH_SIZE=32 exceeds the engine's max_batch_size=16"),
            "{err}"
        );
        assert!(
            joined(trtllm_command(&cfg, &json!({}))).contains("no build_config.max_batch_size")
        );
        cfg.trt_max_batch = None;
        assert!(trtllm_build_command("ck", "out", &cfg).is_err());
        cfg.trt_max_batch = Some(16);
        assert!(joined(trtllm_build_command("ck", "out", &cfg)).contains("--max_batch_size 16"));
        assert_eq!(trt_quant_recipe("8bit", 90), Ok("fp8"));
        assert_eq!(trt_quant_recipe("8bit", 80), Ok("int8_sq"));
        assert_eq!(trt_quant_recipe("4bit", 86), Ok("int4_awq"));
    }
}
