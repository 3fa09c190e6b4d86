//! Rebuilds a fine-tuned classifier folder from a base checkpoint and a small delta (what
//! `tools/tool-model/export.py --ship` writes): `W' = W + B·A` for every projection with low-rank
//! factors (LoRA, or a fully fine-tuned weight's delta compressed by SVD), every other tensor of
//! the delta taken as is (biases, LayerNorms, position embeddings, pooler, classification head),
//! and the `yap_*` metadata (input format, tuned threshold) written into config.json.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::{Value, json};

use crate::ToolError;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ToolError + '_ {
    move |source| ToolError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The `__metadata__` map of a safetensors buffer.
pub fn safetensors_metadata(bytes: &[u8]) -> HashMap<String, String> {
    let Some(len) = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
    else {
        return HashMap::new();
    };
    let header = bytes.get(8..8 + len as usize).unwrap_or_default();
    serde_json::from_slice::<Value>(header)
        .ok()
        .and_then(|v| v.get("__metadata__").cloned())
        .and_then(|m| serde_json::from_value(m).ok())
        .unwrap_or_default()
}

/// Writes `out` = `base` (a BERT checkpoint folder) with `adapter` merged in, as a
/// `BertForSequenceClassification` folder with labels `no` / `yes`.
pub fn merge_adapter(base: &Path, adapter: &[u8], out: &Path) -> Result<(), ToolError> {
    let dev = Device::Cpu;
    let base_weights = base.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&base_weights, &dev)?;
    let delta = candle_core::safetensors::load_buffer(adapter, &dev)?;
    let meta = safetensors_metadata(adapter);
    let mut merged: HashMap<String, Tensor> = HashMap::new();
    for (key, t) in tensors {
        if !matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16) {
            continue;
        }
        let name = if key.starts_with("bert.") {
            key
        } else {
            format!("bert.{key}")
        };
        let mut t = t.to_dtype(DType::F32)?;
        if let (Some(a), Some(b)) = (
            delta.get(&format!("{name}.lora_a")),
            delta.get(&format!("{name}.lora_b")),
        ) {
            t = (t + b.to_dtype(DType::F32)?.matmul(&a.to_dtype(DType::F32)?)?)?;
        }
        merged.insert(name, t);
    }
    let lora_pairs = delta.keys().filter(|k| k.ends_with(".lora_a")).count();
    if lora_pairs == 0 {
        return Err(ToolError::Config("adapter holds no LoRA factors".into()));
    }
    for (key, t) in &delta {
        if !key.ends_with(".lora_a") && !key.ends_with(".lora_b") {
            merged.insert(key.clone(), t.to_dtype(DType::F32)?);
        }
    }
    std::fs::create_dir_all(out).map_err(io(out))?;
    candle_core::safetensors::save(&merged, out.join("model.safetensors"))?;
    let cfg_path = base.join("config.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).map_err(io(&cfg_path))?)
            .map_err(|e| ToolError::Config(format!("{}: {e}", cfg_path.display())))?;
    if let Some(obj) = cfg.as_object_mut() {
        obj.insert(
            "architectures".into(),
            json!(["BertForSequenceClassification"]),
        );
        obj.insert("id2label".into(), json!({"0": "no", "1": "yes"}));
        obj.insert("label2id".into(), json!({"no": 0, "yes": 1}));
        obj.remove("_name_or_path");
        // The input format and tuned threshold the model was trained and exported with.
        for (key, value) in &meta {
            if !key.starts_with("yap_") {
                continue;
            }
            let v = match key.as_str() {
                "yap_history_join" => json!(value),
                _ => serde_json::from_str::<Value>(value).unwrap_or_else(|_| json!(value)),
            };
            obj.insert(key.clone(), v);
        }
    }
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| ToolError::Config(e.to_string()))?;
    std::fs::write(out.join("config.json"), text).map_err(io(out))?;
    let tok = base.join("tokenizer.json");
    std::fs::copy(&tok, out.join("tokenizer.json")).map_err(io(&tok))?;
    let tc_path = base.join("tokenizer_config.json");
    let mut tc: Value = std::fs::read_to_string(&tc_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| json!({}));
    if let (Some(obj), Some(n)) = (
        tc.as_object_mut(),
        meta.get("yap_max_tokens")
            .or_else(|| meta.get("max_tokens"))
            .and_then(|m| m.parse::<u64>().ok()),
    ) {
        obj.insert("model_max_length".into(), json!(n));
    }
    let text = serde_json::to_string_pretty(&tc).map_err(|e| ToolError::Config(e.to_string()))?;
    std::fs::write(out.join("tokenizer_config.json"), text).map_err(io(out))?;
    Ok(())
}
