//! `yap quantize`: GGUF → GGUF quantization with llama.cpp's own recipe.
//!
//! llama-cpp-2 has no safe binding of `llama_model_quantize`, and the workspace forbids
//! `unsafe`, so this module reproduces what llama.cpp's quantizer does without an importance
//! matrix, in safe Rust:
//! - the tensor order (`llama_model_loader::weights_map`: non-block tensors first, then block
//!   by block, by name), the copied metadata with `general.quantization_version` and
//!   `general.file_type` set last, alignment and zero padding;
//! - the per-tensor type choice of `llama_tensor_get_type` for the supported file types
//!   (Q4_K_M's Q6_K for `output`, for half of `attn_v`/`ffn_down` by `use_more_bits`, …) and the
//!   fallback for rows that are not a multiple of the block size;
//! - the reference row quantizers ([`kernels`]).
//!
//! Invariant: for the same input, the output is byte-identical to `llama-quantize IN OUT TYPE`
//! of the vendored llama.cpp (checked by `scripts/check-quantize.sh`).

pub mod kernels;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::str::FromStr;

use half::{bf16, f16};
use rayon::prelude::*;

use crate::gguf::{self, GgmlType, GgufError, GgufHeader, Kv, TensorInfo};

/// Errors of quantizing.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    /// Reading or writing.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// I/O outside GGUF parsing.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The input cannot be quantized this way.
    #[error("{0}")]
    Unsupported(String),
}

/// A target file type (llama.cpp's `LLAMA_FTYPE_MOSTLY_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum QuantType {
    /// Q4_K mostly; Q6_K for output, half of attn_v and ffn_down.
    Q4_K_M,
    /// Q4_K mostly; Q5_K for the first attn_v / ffn_down layers.
    Q4_K_S,
    /// Q5_K mostly; Q6_K for output, half of attn_v and ffn_down.
    Q5_K_M,
    /// Q5_K; Q6_K output.
    Q5_K_S,
    /// Q6_K.
    Q6_K,
    /// Q8_0.
    Q8_0,
}

/// The names accepted by `--type`, in `QuantType` order.
pub const QUANT_TYPE_NAMES: [&str; 6] = ["q4_k_m", "q4_k_s", "q5_k_m", "q5_k_s", "q6_k", "q8_0"];

impl FromStr for QuantType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "q4_k_m" | "q4_k" => Self::Q4_K_M,
            "q4_k_s" => Self::Q4_K_S,
            "q5_k_m" | "q5_k" => Self::Q5_K_M,
            "q5_k_s" => Self::Q5_K_S,
            "q6_k" => Self::Q6_K,
            "q8_0" => Self::Q8_0,
            other => {
                return Err(format!(
                    "unknown quantization type `{other}` (one of {})",
                    QUANT_TYPE_NAMES.join(", ")
                ));
            }
        })
    }
}

impl QuantType {
    /// llama.cpp's `llama_ftype` value (written to `general.file_type`).
    pub fn ftype(self) -> u32 {
        match self {
            Self::Q8_0 => 7,
            Self::Q4_K_S => 14,
            Self::Q4_K_M => 15,
            Self::Q5_K_S => 16,
            Self::Q5_K_M => 17,
            Self::Q6_K => 18,
        }
    }

    /// The lower-case name (`q4_k_m`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Q4_K_M => QUANT_TYPE_NAMES[0],
            Self::Q4_K_S => QUANT_TYPE_NAMES[1],
            Self::Q5_K_M => QUANT_TYPE_NAMES[2],
            Self::Q5_K_S => QUANT_TYPE_NAMES[3],
            Self::Q6_K => QUANT_TYPE_NAMES[4],
            Self::Q8_0 => QUANT_TYPE_NAMES[5],
        }
    }

    fn default_type(self) -> GgmlType {
        match self {
            Self::Q4_K_M | Self::Q4_K_S => GgmlType::Q4_K,
            Self::Q5_K_M | Self::Q5_K_S => GgmlType::Q5_K,
            Self::Q6_K => GgmlType::Q6_K,
            Self::Q8_0 => GgmlType::Q8_0,
        }
    }
}

/// Where quantization is, for a progress display.
#[derive(Debug, Clone)]
pub struct Progress<'a> {
    /// The tensor being written.
    pub tensor: &'a str,
    /// Its type in the output.
    pub ty: GgmlType,
    /// Input bytes processed so far (this tensor included).
    pub done_bytes: u64,
    /// Input bytes in all.
    pub total_bytes: u64,
}

/// What a quantization produced.
#[derive(Debug, Clone)]
pub struct QuantizeReport {
    /// Input file size.
    pub input_bytes: u64,
    /// Output file size.
    pub output_bytes: u64,
    /// Tensors per output type.
    pub types: BTreeMap<&'static str, usize>,
}

/// Broad tensor categories (llama.cpp's `tensor_get_category`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cat {
    Output,
    TokenEmbd,
    AttnQkv,
    AttnKvB,
    AttnV,
    AttnK,
    AttnOutput,
    FfnDown,
    Other,
}

fn category(name: &str) -> Cat {
    if name == "output.weight" {
        return Cat::Output;
    }
    if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        return Cat::TokenEmbd;
    }
    let table = [
        ("attn_qkv.weight", Cat::AttnQkv),
        ("attn_kv_b.weight", Cat::AttnKvB),
        ("attn_v.weight", Cat::AttnV),
        ("attn_k.weight", Cat::AttnK),
        ("attn_q.weight", Cat::Other),
        ("attn_output.weight", Cat::AttnOutput),
        ("ffn_up", Cat::Other),
        ("ffn_gate", Cat::Other),
        ("ffn_down", Cat::FfnDown),
    ];
    table
        .iter()
        .find(|(pat, _)| name.contains(pat))
        .map_or(Cat::Other, |(_, c)| *c)
}

/// llama.cpp's `tensor_allows_quantization` for the architectures Yap serves.
fn allows_quantization(t: &TensorInfo) -> bool {
    const KEEP: [&str; 14] = [
        "_norm.weight",
        "ffn_gate_inp.weight",
        "ffn_gate_tid2eid.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "shortconv.conv.weight",
        "time_mix_",
        "attn_rel_b.weight",
        ".position_embd",
        ".rel_pos",
        ".patch_embd",
        ".patch_merger",
    ];
    t.n_dims() >= 2
        && t.name.ends_with("weight")
        && t.name != "position_embd.weight"
        && t.name != "token_types.weight"
        && !KEEP.iter().any(|k| t.name.contains(k))
}

/// The model facts the type rules need.
struct Model {
    arch: String,
    n_layer: u64,
    n_expert: u64,
    tied_embeddings: bool,
    n_attention_wv: u64,
}

/// Counters that the rules advance tensor by tensor, as in llama.cpp.
#[derive(Default)]
struct Counters {
    i_attention_wv: u64,
    i_ffn_down: u64,
}

fn use_more_bits(i: u64, n: u64) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i as i64 - (n / 8) as i64).rem_euclid(3) == 2
}

fn layer_of(name: &str) -> Option<u64> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// `llama_tensor_get_type_impl` restricted to the supported file types.
fn rule_type(m: &Model, c: &mut Counters, q: QuantType, t: &TensorInfo) -> GgmlType {
    let mut ty = q.default_type();
    let falcon = m.arch == "falcon";
    let cat = category(&t.name);
    let attn_v_like = matches!(cat, Cat::AttnV | Cat::AttnQkv | Cat::AttnKvB);
    if cat == Cat::Output || (m.tied_embeddings && cat == Cat::TokenEmbd) {
        let nx = t.dims[0];
        if falcon || !nx.is_multiple_of(ty.block_size()) {
            ty = GgmlType::Q8_0;
        } else if ty != GgmlType::Q8_0 {
            ty = GgmlType::Q6_K;
        }
    } else if cat == Cat::TokenEmbd {
    } else if attn_v_like {
        let more = use_more_bits(c.i_attention_wv, m.n_attention_wv);
        if matches!(q, QuantType::Q4_K_M | QuantType::Q5_K_M) && more {
            ty = GgmlType::Q6_K;
        } else if q == QuantType::Q4_K_S && c.i_attention_wv < 4 {
            ty = GgmlType::Q5_K;
        }
        let is_70b = m.arch == "llama" && m.n_layer == 80;
        if is_70b && ty == GgmlType::Q4_K {
            ty = GgmlType::Q5_K;
        }
        if m.n_expert == 8 {
            ty = GgmlType::Q8_0;
        }
        c.i_attention_wv += 1;
    } else if cat == Cat::AttnK {
        if m.n_expert == 8 {
            ty = GgmlType::Q8_0;
        }
    } else if cat == Cat::FfnDown {
        let i_layer = if m.n_expert > 1 {
            layer_of(&t.name).unwrap_or(c.i_ffn_down)
        } else {
            c.i_ffn_down
        };
        let n = m.n_layer;
        match q {
            QuantType::Q4_K_M if falcon => {
                ty = if i_layer < n / 16 {
                    GgmlType::Q6_K
                } else if use_more_bits(i_layer, n) {
                    GgmlType::Q5_K
                } else {
                    GgmlType::Q4_K
                };
            }
            QuantType::Q4_K_M | QuantType::Q5_K_M if use_more_bits(i_layer, n) => {
                ty = GgmlType::Q6_K;
            }
            QuantType::Q4_K_S if !falcon && i_layer < n / 8 => ty = GgmlType::Q5_K,
            _ => {}
        }
        c.i_ffn_down += 1;
    } else if cat == Cat::AttnOutput
        && !falcon
        && m.n_expert == 8
        && matches!(q, QuantType::Q4_K_S | QuantType::Q4_K_M)
    {
        ty = GgmlType::Q5_K;
    }
    fallback(t, ty)
}

/// `tensor_type_fallback`: a type whose block does not divide the row length.
fn fallback(t: &TensorInfo, ty: GgmlType) -> GgmlType {
    let ncols = t.dims[0];
    if ncols.is_multiple_of(ty.block_size()) {
        return ty;
    }
    let alt = match ty {
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        other => other,
    };
    if ncols.is_multiple_of(alt.block_size()) {
        alt
    } else {
        GgmlType::F16
    }
}

/// The tensors in llama.cpp's loader order with the type each gets.
fn plan(h: &GgufHeader, q: QuantType) -> Result<Vec<(TensorInfo, TensorInfo)>, QuantizeError> {
    let arch = h
        .arch()
        .ok_or_else(|| QuantizeError::Unsupported("no general.architecture".into()))?
        .to_owned();
    let key_u64 = |k: &str| h.get(&format!("{arch}.{k}")).and_then(Kv::as_u64);
    let mut tensors = h.tensors.clone();
    tensors.sort_by(|a, b| {
        let la = layer_of(&a.name).map_or(-1, |l| l as i64);
        let lb = layer_of(&b.name).map_or(-1, |l| l as i64);
        la.cmp(&lb).then_with(|| a.name.cmp(&b.name))
    });
    let model = Model {
        n_layer: key_u64("block_count").unwrap_or(0),
        n_expert: key_u64("expert_count").unwrap_or(0),
        tied_embeddings: !tensors.iter().any(|t| t.name == "output.weight"),
        n_attention_wv: tensors
            .iter()
            .filter(|t| matches!(category(&t.name), Cat::AttnV | Cat::AttnQkv | Cat::AttnKvB))
            .count() as u64,
        arch,
    };
    let mut counters = Counters::default();
    let mut out = Vec::with_capacity(tensors.len());
    for t in tensors {
        let ty = if allows_quantization(&t) {
            rule_type(&model, &mut counters, q, &t)
        } else {
            t.ty
        };
        if ty != t.ty && t.ty.is_quantized() {
            return Err(QuantizeError::Unsupported(format!(
                "{} is already {}; quantize from an F32/F16/BF16 GGUF",
                t.name,
                t.ty.name()
            )));
        }
        let mut o = t.clone();
        o.ty = ty;
        out.push((t, o));
    }
    Ok(out)
}

/// The metadata of the output: the input's, split keys dropped, quantization version and file
/// type replaced and appended last (as `gguf_set_val_u32` does).
fn output_kvs(h: &GgufHeader, q: QuantType) -> Vec<Kv> {
    const DROP: [&str; 5] = [
        "general.quantization_version",
        "general.file_type",
        "split.no",
        "split.count",
        "split.tensors.count",
    ];
    let mut kvs: Vec<Kv> = h
        .kvs
        .iter()
        .filter(|k| !DROP.contains(&k.key.as_str()))
        .cloned()
        .collect();
    kvs.push(Kv::u32("general.quantization_version", 2));
    kvs.push(Kv::u32("general.file_type", q.ftype()));
    kvs
}

/// Values of a F32/F16/BF16 tensor as f32.
fn to_f32(ty: GgmlType, data: &[u8]) -> Result<Vec<f32>, QuantizeError> {
    Ok(match ty {
        GgmlType::F32 => data
            .par_chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        GgmlType::F16 => data
            .par_chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        GgmlType::BF16 => data
            .par_chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(QuantizeError::Unsupported(format!(
                "cannot convert {} to f32",
                other.name()
            )));
        }
    })
}

/// Quantizes (or converts to F16) the values `x` of a tensor with rows of `n_per_row`.
pub fn quantize_rows(ty: GgmlType, x: &[f32], n_per_row: usize) -> Result<Vec<u8>, QuantizeError> {
    if ty == GgmlType::F16 {
        return Ok(x
            .par_iter()
            .flat_map_iter(|v| f16::from_f32(*v).to_le_bytes())
            .collect());
    }
    let kernel: fn(&[f32], &mut [u8]) = match ty {
        GgmlType::Q4_K => kernels::q4_k,
        GgmlType::Q5_K => kernels::q5_k,
        GgmlType::Q6_K => kernels::q6_k,
        GgmlType::Q8_0 => kernels::q8_0,
        GgmlType::Q5_0 => kernels::q5_0,
        GgmlType::Q5_1 => kernels::q5_1,
        other => {
            return Err(QuantizeError::Unsupported(format!(
                "no quantizer for {}",
                other.name()
            )));
        }
    };
    let row_bytes = ty.row_bytes(n_per_row as u64) as usize;
    let mut out = vec![0u8; x.len() / n_per_row * row_bytes];
    x.par_chunks(n_per_row)
        .zip(out.par_chunks_mut(row_bytes))
        .for_each(|(xr, yr)| kernel(xr, yr));
    Ok(out)
}

/// Quantizes the GGUF at `input` into `output` (written to a temporary file, then renamed).
pub fn quantize_file(
    input: &Path,
    output: &Path,
    q: QuantType,
    progress: &mut dyn FnMut(&Progress<'_>),
) -> Result<QuantizeReport, QuantizeError> {
    let h = GgufHeader::read_file(input)?;
    let plan = plan(&h, q)?;
    let kvs = output_kvs(&h, q);
    let mut infos: Vec<TensorInfo> = plan.iter().map(|(_, o)| o.clone()).collect();
    let tmp = output.with_extension("gguf.partial");
    let mut w = BufWriter::with_capacity(1 << 22, File::create(&tmp)?);
    let output_bytes = gguf::write_header(&mut w, &kvs, &mut infos, h.alignment)?;
    let mut src = File::open(input)?;
    let total_bytes: u64 = plan.iter().map(|(t, _)| t.bytes()).sum();
    let mut done_bytes = 0u64;
    let mut types = BTreeMap::new();
    for (t, o) in &plan {
        let data = h.read_tensor(&mut src, t)?;
        let bytes = if o.ty == t.ty {
            data
        } else {
            let x = to_f32(t.ty, &data)?;
            drop(data);
            quantize_rows(o.ty, &x, t.dims[0] as usize)?
        };
        gguf::write_tensor_data(&mut w, &bytes, h.alignment)?;
        done_bytes += t.bytes();
        *types.entry(o.ty.name()).or_insert(0) += 1;
        progress(&Progress {
            tensor: &o.name,
            ty: o.ty,
            done_bytes,
            total_bytes,
        });
    }
    w.flush()?;
    drop(w);
    std::fs::rename(&tmp, output)?;
    Ok(QuantizeReport {
        input_bytes: std::fs::metadata(input)?.len(),
        output_bytes,
        types,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, dims: Vec<u64>) -> TensorInfo {
        TensorInfo::new(name, dims, GgmlType::F16)
    }

    fn model(n_layer: u64) -> Model {
        Model {
            arch: "llama".into(),
            n_layer,
            n_expert: 0,
            tied_embeddings: false,
            n_attention_wv: n_layer,
        }
    }

    #[test]
    fn q4_k_m_mixes_like_llama_cpp() {
        let m = model(32);
        let mut c = Counters::default();
        let q = QuantType::Q4_K_M;
        assert_eq!(
            rule_type(&m, &mut c, q, &t("output.weight", vec![4096, 128256])),
            GgmlType::Q6_K
        );
        assert_eq!(
            rule_type(&m, &mut c, q, &t("token_embd.weight", vec![4096, 128256])),
            GgmlType::Q4_K
        );
        // use_more_bits(i, 32): i < 4, i >= 28, or (i - 4) % 3 == 2.
        let v: Vec<_> = (0..32)
            .map(|l| {
                rule_type(
                    &m,
                    &mut c,
                    q,
                    &t(&format!("blk.{l}.attn_v.weight"), vec![4096, 1024]),
                )
            })
            .collect();
        let q6: Vec<usize> = (0..32).filter(|&i| v[i] == GgmlType::Q6_K).collect();
        assert_eq!(
            q6,
            vec![0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
        );
        assert_eq!(
            rule_type(&m, &mut c, q, &t("blk.0.attn_q.weight", vec![4096, 4096])),
            GgmlType::Q4_K
        );
        // a row length that is no multiple of 256 falls back to a 32-block type
        assert_eq!(
            rule_type(&m, &mut c, q, &t("blk.0.ffn_up.weight", vec![896, 4864])),
            GgmlType::Q5_0
        );
        let q8 = QuantType::Q8_0;
        assert_eq!(
            rule_type(
                &m,
                &mut Counters::default(),
                q8,
                &t("output.weight", vec![4096, 10])
            ),
            GgmlType::Q8_0
        );
    }

    #[test]
    fn tied_embeddings_get_the_output_type_and_norms_stay() {
        let mut m = model(2);
        m.tied_embeddings = true;
        assert_eq!(
            rule_type(
                &m,
                &mut Counters::default(),
                QuantType::Q4_K_M,
                &t("token_embd.weight", vec![512, 1000])
            ),
            GgmlType::Q6_K
        );
        assert!(!allows_quantization(&t(
            "blk.0.attn_norm.weight",
            vec![512]
        )));
        assert!(!allows_quantization(&t(
            "blk.0.attn_q_norm.weight",
            vec![128, 1]
        )));
        assert!(!allows_quantization(&t("blk.0.attn_q.bias", vec![512, 2])));
        assert!(allows_quantization(&t(
            "blk.0.attn_q.weight",
            vec![512, 512]
        )));
    }

    #[test]
    fn type_names_parse() {
        for n in QUANT_TYPE_NAMES {
            assert_eq!(n.parse::<QuantType>().unwrap().name(), n);
        }
        assert!("q3_k_m".parse::<QuantType>().is_err());
    }
}
