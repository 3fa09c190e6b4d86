//! Fit check: does a model (weights + KV cache for `CHAT_MAX_LEN` × batch) fit the GPU memory
//! fraction it is given? Computed from the model's `config.json` and the quantization, before
//! an engine is launched, so a deployment that would crash at load is refused with numbers.

use serde_json::Value;

/// Weight / KV precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// 16-bit (bf16 / fp16).
    Bf16,
    /// 8-bit (FP8 or INT8).
    Int8,
    /// 4-bit (AWQ, GPTQ, NVFP4, Q4).
    Int4,
}

impl Precision {
    /// Bytes per parameter (4-bit formats carry ~3% of scales and zeros on top).
    pub fn bytes(self) -> f64 {
        match self {
            Self::Bf16 => 2.0,
            Self::Int8 => 1.0,
            Self::Int4 => 0.53,
        }
    }
}

/// The shape of a transformer as far as memory is concerned.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelShape {
    /// Decoder layers.
    pub layers: u64,
    /// Hidden size.
    pub hidden: u64,
    /// Attention heads.
    pub heads: u64,
    /// Key/value heads.
    pub kv_heads: u64,
    /// Head dimension.
    pub head_dim: u64,
    /// Dense MLP size.
    pub intermediate: u64,
    /// Vocabulary.
    pub vocab: u64,
    /// Experts per MoE layer (0 = dense).
    pub experts: u64,
    /// MoE expert MLP size.
    pub expert_intermediate: u64,
    /// Tied input/output embeddings.
    pub tied_embeddings: bool,
}

fn get(cfg: &Value, keys: &[&str]) -> Option<u64> {
    let text = cfg.get("text_config");
    keys.iter().find_map(|k| {
        cfg.get(*k)
            .or_else(|| text.and_then(|t| t.get(*k)))
            .and_then(Value::as_u64)
    })
}

impl ModelShape {
    /// Reads an HF `config.json`.
    pub fn from_config(cfg: &Value) -> Result<Self, String> {
        let need =
            |keys: &[&str]| get(cfg, keys).ok_or_else(|| format!("config.json lacks {}", keys[0]));
        let layers = need(&["num_hidden_layers", "n_layer"])?;
        let hidden = need(&["hidden_size", "n_embd"])?;
        let heads = need(&["num_attention_heads", "n_head"])?;
        let kv_heads = get(cfg, &["num_key_value_heads"]).unwrap_or(heads);
        let head_dim = get(cfg, &["head_dim"]).unwrap_or(hidden / heads.max(1));
        let experts = get(
            cfg,
            &["num_experts", "num_local_experts", "n_routed_experts"],
        )
        .unwrap_or(0);
        Ok(Self {
            layers,
            hidden,
            heads,
            kv_heads,
            head_dim,
            intermediate: get(cfg, &["intermediate_size", "n_inner"]).unwrap_or(4 * hidden),
            vocab: need(&["vocab_size"])?,
            experts,
            expert_intermediate: get(cfg, &["moe_intermediate_size"]).unwrap_or(0),
            tied_embeddings: cfg
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }

    /// Parameters (attention, MLP or experts, embeddings).
    pub fn params(&self) -> u64 {
        let attn = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads);
        let mlp = if self.experts > 0 {
            self.experts * 3 * self.hidden * self.expert_intermediate + self.hidden * self.experts
        } else {
            3 * self.hidden * self.intermediate
        };
        let embed = self.vocab * self.hidden * if self.tied_embeddings { 1 } else { 2 };
        self.layers * (attn + mlp) + embed
    }

    /// KV cache bytes per token at a KV precision.
    pub fn kv_bytes_per_token(&self, kv: Precision) -> f64 {
        let elems = 2 * self.layers * self.kv_heads * self.head_dim;
        elems as f64 * if kv == Precision::Bf16 { 2.0 } else { 1.0 }
    }
}

/// A GPU: memory and compute capability.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpu {
    /// Name for messages.
    pub name: String,
    /// Memory in GiB.
    pub memory_gib: f64,
    /// Compute capability × 10 (sm80 = 80).
    pub sm: u32,
}

/// Which 8-bit format the engines should use on a GPU.
pub fn eight_bit_format(sm: u32) -> &'static str {
    if sm >= 89 {
        "fp8"
    } else if sm >= 80 {
        "int8-sq / w8a16"
    } else {
        "int8 (weight-only)"
    }
}

/// Detects the quantization from a model name (protocol.md's rules).
pub fn detect_quantization(model: &str) -> Option<&'static str> {
    let m = model.to_ascii_lowercase();
    let has = |k: &str| m.contains(k);
    if has("trt") && has("awq") {
        Some("trt-awq")
    } else if has("trt")
        && (has("fp8") || has("8bit") || has("8-bit") || has("int8") || has("int-8"))
    {
        Some("trt-8bit")
    } else if has("awq") {
        Some("awq")
    } else if has("gptq") {
        Some("gptq")
    } else if has("w4a16") || has("nvfp4") || has("compressed-tensors") || has("autoround") {
        Some("4bit")
    } else if has("gguf") {
        Some("gguf")
    } else if has("fp8") {
        Some("fp8")
    } else {
        None
    }
}

/// Weight precision implied by a quantization tag.
pub fn weight_precision(quant: Option<&str>) -> Precision {
    match quant {
        Some("awq" | "gptq" | "4bit" | "trt-awq" | "gguf") => Precision::Int4,
        Some("fp8" | "trt-8bit" | "8bit") => Precision::Int8,
        _ => Precision::Bf16,
    }
}

/// What is checked.
#[derive(Debug, Clone)]
pub struct FitRequest {
    /// The model.
    pub shape: ModelShape,
    /// Weight precision.
    pub weights: Precision,
    /// KV cache precision (`KV_DTYPE`).
    pub kv: Precision,
    /// The GPU.
    pub gpu: Gpu,
    /// Memory fraction for this engine (`CHAT_GPU_FRAC`).
    pub fraction: f64,
    /// Tokens per sequence (`CHAT_MAX_LEN`).
    pub max_len: u64,
    /// Concurrent full-length sequences wanted (batch).
    pub batch: u64,
}

/// The verdict with its numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct FitReport {
    /// Weight GiB.
    pub weights_gib: f64,
    /// KV bytes per token.
    pub kv_bytes_per_token: f64,
    /// GiB the engine may use.
    pub budget_gib: f64,
    /// GiB left for the KV cache after weights and runtime overhead.
    pub kv_budget_gib: f64,
    /// Full-length sequences the KV cache holds.
    pub sequences: u64,
    /// Whether `batch` sequences of `max_len` fit.
    pub fits: bool,
    /// A human explanation (the refusal names the settings to change).
    pub message: String,
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
/// CUDA context, activations and allocator slack (GiB).
const OVERHEAD_GIB: f64 = 1.5;

/// Checks a deployment.
pub fn check(r: &FitRequest) -> FitReport {
    let weights_gib = r.shape.params() as f64 * r.weights.bytes() / GIB;
    let kv_per_token = r.shape.kv_bytes_per_token(r.kv);
    let budget_gib = r.gpu.memory_gib * r.fraction;
    let kv_budget_gib = budget_gib - weights_gib - OVERHEAD_GIB;
    let per_seq_gib = kv_per_token * r.max_len as f64 / GIB;
    let sequences = if kv_budget_gib > 0.0 {
        (kv_budget_gib / per_seq_gib).floor() as u64
    } else {
        0
    };
    let fits = sequences >= r.batch.max(1);
    let head = format!(
        "{}: weights {weights_gib:.1} GiB + KV {:.0} KiB/token × {} tokens × {} seqs = {:.1} GiB; budget {:.1} GiB ({:.0}% of {:.0} GiB, {OVERHEAD_GIB} GiB overhead) holds {sequences} full-length sequences",
        r.gpu.name,
        kv_per_token / 1024.0,
        r.max_len,
        r.batch,
        weights_gib + per_seq_gib * r.batch as f64,
        budget_gib,
        r.fraction * 100.0,
        r.gpu.memory_gib,
    );
    let message = if fits {
        format!("fits — {head}")
    } else if kv_budget_gib <= 0.0 {
        format!(
            "does not fit — {head}. The weights alone exceed the budget: use a 4-bit or 8-bit checkpoint (8-bit here: {}), raise CHAT_GPU_FRAC, or use a larger GPU",
            eight_bit_format(r.gpu.sm)
        )
    } else {
        let max_len_fit = (kv_budget_gib * GIB / kv_per_token / r.batch.max(1) as f64) as u64;
        format!(
            "does not fit — {head}. Lower CHAT_MAX_LEN to ≤ {max_len_fit}, lower the batch (TRT_MAX_BATCH_SIZE / max sequences) to ≤ {sequences}, set KV_DTYPE=fp8, raise CHAT_GPU_FRAC, or quantize the weights"
        )
    };
    FitReport {
        weights_gib,
        kv_bytes_per_token: kv_per_token,
        budget_gib,
        kv_budget_gib,
        sequences,
        fits,
        message,
    }
}

/// Known GPUs by name (for `--gpu NAME` without nvidia-smi).
pub fn known_gpu(name: &str) -> Option<Gpu> {
    let n = name.to_ascii_lowercase();
    let (label, mem, sm) = match n.as_str() {
        "p40" => ("Tesla P40", 24.0, 61),
        "3060" | "rtx3060" => ("RTX 3060 12GB", 12.0, 86),
        "3090" | "rtx3090" | "4090" | "rtx4090" => ("24 GB RTX", 24.0, 86),
        "l4" => ("L4", 24.0, 89),
        "a10" | "a10g" => ("A10G", 24.0, 86),
        "l40s" => ("L40S", 48.0, 89),
        "a100-40" => ("A100 40GB", 40.0, 80),
        "a100" | "a100-80" => ("A100 80GB", 80.0, 80),
        "h100" => ("H100 80GB", 80.0, 90),
        "h200" => ("H200", 141.0, 90),
        _ => return None,
    };
    Some(Gpu {
        name: label.into(),
        memory_gib: mem * 1e9 / GIB,
        sm,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }
    fn mistral_nemo_12b() -> Value {
        load(include_str!(
            "../../../docs/model-configs/mistral-nemo-12b.json"
        ))
    }
    fn qwen3_8b() -> Value {
        load(include_str!("../../../docs/model-configs/qwen3-8b.json"))
    }
    fn qwen3_30b_a3b() -> Value {
        load(include_str!(
            "../../../docs/model-configs/qwen3-30b-a3b.json"
        ))
    }

    fn req(cfg: Value, weights: Precision, gpu: &str, max_len: u64, batch: u64) -> FitReport {
        check(&FitRequest {
            shape: ModelShape::from_config(&cfg).unwrap(),
            weights,
            kv: Precision::Bf16,
            gpu: known_gpu(gpu).unwrap(),
            fraction: 0.90,
            max_len,
            batch,
        })
    }

    #[test]
    fn parameter_counts_match_the_published_sizes() {
        let b = |cfg: Value| ModelShape::from_config(&cfg).unwrap().params() as f64 / 1e9;
        assert!(
            (b(mistral_nemo_12b()) - 12.2).abs() < 0.4,
            "{}",
            b(mistral_nemo_12b())
        );
        assert!((b(qwen3_8b()) - 8.2).abs() < 0.4, "{}", b(qwen3_8b()));
        assert!(
            (b(qwen3_30b_a3b()) - 30.5).abs() < 1.0,
            "{}",
            b(qwen3_30b_a3b())
        );
    }

    #[test]
    fn kv_bytes_per_token() {
        let s = ModelShape::from_config(&mistral_nemo_12b()).unwrap();
        assert_eq!(s.kv_bytes_per_token(Precision::Bf16), 163_840.0); // 2*40*8*128*2
        assert_eq!(s.kv_bytes_per_token(Precision::Int8), 81_920.0);
        let m = ModelShape::from_config(&qwen3_30b_a3b()).unwrap();
        assert_eq!(m.kv_bytes_per_token(Precision::Bf16), 98_304.0); // 2*48*4*128*2
    }

    #[test]
    fn nemo_12b_on_24gb_is_refused_at_16k_and_fits_on_80gb() {
        let r = req(mistral_nemo_12b(), Precision::Bf16, "p40", 16384, 1);
        assert!(!r.fits);
        assert!(
            r.message.contains("does not fit") && r.message.contains("4-bit"),
            "{}",
            r.message
        );
        let r = req(mistral_nemo_12b(), Precision::Int8, "3090", 16384, 8);
        assert!(!r.fits);
        assert!(r.message.contains("CHAT_MAX_LEN"), "{}", r.message);
        let r = req(mistral_nemo_12b(), Precision::Bf16, "a100", 16384, 8);
        assert!(r.fits, "{}", r.message);
        assert!(r.sequences >= 8);
        let r = req(mistral_nemo_12b(), Precision::Bf16, "h100", 16384, 8);
        assert!(r.fits, "{}", r.message);
    }

    #[test]
    fn quantized_and_moe_models() {
        let r = req(qwen3_8b(), Precision::Int4, "3090", 8192, 8);
        assert!(r.fits, "{}", r.message);
        let r = req(qwen3_8b(), Precision::Bf16, "3060", 8192, 1);
        assert!(!r.fits, "{}", r.message);
        let r = req(qwen3_30b_a3b(), Precision::Bf16, "l40s", 8192, 4);
        assert!(!r.fits, "a 61 GB MoE does not fit 48 GB: {}", r.message);
        let r = req(qwen3_30b_a3b(), Precision::Int4, "l40s", 8192, 16);
        assert!(r.fits, "{}", r.message);
        let r = req(qwen3_30b_a3b(), Precision::Bf16, "h100", 8192, 8);
        assert!(r.fits, "{}", r.message);
        let r = req(qwen3_30b_a3b(), Precision::Bf16, "h100", 8192, 16);
        assert!(!r.fits && r.sequences == 11, "{}", r.message);
    }

    #[test]
    fn eight_bit_format_by_arch() {
        assert_eq!(eight_bit_format(90), "fp8");
        assert_eq!(eight_bit_format(89), "fp8");
        assert_eq!(eight_bit_format(80), "int8-sq / w8a16");
        assert_eq!(eight_bit_format(61), "int8 (weight-only)");
    }

    #[test]
    fn quantization_detection() {
        let cases = [
            ("Qwen/Qwen3-8B-AWQ", Some("awq")),
            ("org/model-w4a16", Some("4bit")),
            ("org/model-NVFP4", Some("4bit")),
            ("org/model-compressed-tensors", Some("4bit")),
            ("org/model-autoround", Some("4bit")),
            ("TheBloke/model-GPTQ", Some("gptq")),
            ("org/model-trt-awq", Some("trt-awq")),
            ("org/model-trt-fp8", Some("trt-8bit")),
            ("org/model-trt-int8", Some("trt-8bit")),
            ("org/model-TRT-8bit", Some("trt-8bit")),
            ("org/model-GGUF", Some("gguf")),
            ("mistralai/Mistral-Nemo-Instruct-2407", None),
        ];
        for (name, q) in cases {
            assert_eq!(detect_quantization(name), q, "{name}");
        }
    }
}
