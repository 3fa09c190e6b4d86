//! `yap quantize` output loads and generates in the embedded engine (llama.cpp), and
//! `QUANTIZATION=4bit|8bit` on an unquantized GGUF quantizes once, next to the input.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use serde_json::json;
use yap_llama::gguf::{GgmlType, GgufHeader};
use yap_llama::quantize::{QuantType, quantize_file};

fn weight_types(path: &std::path::Path) -> Vec<GgmlType> {
    let h = GgufHeader::read_file(path).unwrap();
    h.tensors
        .iter()
        .filter(|t| t.n_dims() >= 2)
        .map(|t| t.ty)
        .collect()
}

async fn one_turn(model: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let flag = format!("--model={}", model.display());
    let mut args = vec![flag.as_str(), "--chat-max-out=6"];
    args.extend_from_slice(extra);
    let r = server(&args).await;
    let mut ws = connect(&r).await;
    send(
        &mut ws,
        json!({"type":"start","session_id":"q","user_utterance":"Hello there, how are you today?"}),
    )
    .await;
    let frames = read_turn(&mut ws).await;
    r.stop().await;
    frames.last().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantized_models_load_and_generate() {
    let dir = std::env::temp_dir().join(format!("yap-quant-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f32_model = tiny_model();
    for (ty, want) in [
        (QuantType::Q8_0, GgmlType::Q8_0),
        // rows of 64 values: Q4_K falls back to Q5_0, the output to Q8_0 (as llama.cpp does)
        (QuantType::Q4_K_M, GgmlType::Q5_0),
    ] {
        let out = dir.join(format!("tiny.{}.gguf", ty.name()));
        let report = quantize_file(&f32_model, &out, ty, &mut |_| {}).unwrap();
        assert!(report.output_bytes < report.input_bytes / 2, "{report:?}");
        assert!(
            weight_types(&out).contains(&want),
            "{:?}",
            weight_types(&out)
        );
        let done = one_turn(&out, &[]).await;
        assert_eq!(done["type"], "done", "{done}");
        assert!(
            done["usage"]["completion_tokens"].as_u64().unwrap() > 0,
            "{done}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantization_env_quantizes_once_next_to_the_input() {
    let dir = std::env::temp_dir().join(format!("yap-quant-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("tiny.gguf");
    std::fs::copy(tiny_model(), &model).unwrap();
    let done = one_turn(&model, &["--quantization=8bit"]).await;
    assert_eq!(done["type"], "done", "{done}");
    let cached = dir.join("tiny.q8_0.gguf");
    assert!(cached.is_file());
    assert!(weight_types(&cached).iter().all(|t| *t == GgmlType::Q8_0));
    let first = std::fs::metadata(&cached).unwrap().modified().unwrap();
    // Second start: the cached file is used as it is.
    let done = one_turn(&model, &["--quantization=8bit"]).await;
    assert_eq!(done["type"], "done", "{done}");
    assert_eq!(
        std::fs::metadata(&cached).unwrap().modified().unwrap(),
        first
    );
    // A quantized GGUF is served as it is.
    let done = one_turn(&cached, &["--quantization=4bit"]).await;
    assert_eq!(done["type"], "done", "{done}");
    assert!(!dir.join("tiny.q8_0.q4_k_m.gguf").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
