//! The post-LayerNorm Transformer encoder of BERT, RoBERTa / XLM-RoBERTa and Longformer,
//! with their sequence-classification heads, exactly as `transformers` defines them.
//!
//! Written on candle's building blocks rather than taken from `candle-transformers`, whose
//! `Linear` on a `(batch, seq, hidden)` input runs one small GEMM per sequence; here every
//! projection is one `(batch·seq, hidden)` GEMM, which is what makes micro-batching pay.
//!
//! Longformer: every token attends to the tokens within its layer's one-sided window
//! (`attention_window / 2`) and to the global token (the first one, as the HF classification
//! model sets it); the global token attends to every token through its own `query_global` /
//! `key_global` / `value_global` projections. Masks are dense (O(n²)), which short voice-turn
//! contexts afford; the result equals the banded implementation at any length.

use candle_core::{D, DType, Device, IndexOp, Module, Tensor};
use candle_nn::{
    Activation, Embedding, LayerNorm, Linear, VarBuilder, embedding, layer_norm, linear,
};
use serde_json::{Value, json};

use crate::ToolError;
use crate::config::{Arch, ModelConfig};

/// Applies a linear layer to `(b, s, in)` as one `(b·s, in)` GEMM.
pub(crate) fn lin(l: &Linear, x: &Tensor) -> candle_core::Result<Tensor> {
    match x.dims() {
        &[b, s, i] => {
            let y = l.forward(&x.reshape((b * s, i))?)?;
            let o = y.dim(1)?;
            y.reshape((b, s, o))
        }
        _ => l.forward(x),
    }
}

struct Global {
    query: Linear,
    /// `key_global` and `value_global` fused into one projection.
    key_value: Linear,
}

struct Layer {
    /// `query`, `key` and `value` fused into one `(3h, h)` projection.
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
    /// Longformer only: global projections and the one-sided window.
    global: Option<(Global, usize)>,
}

enum Head {
    /// BERT: tanh pooler on the first token, then the classifier.
    Pooler { pooler: Linear, classifier: Linear },
    /// RoBERTa / Longformer: dense → tanh → out_proj on the first token.
    Dense { dense: Linear, out_proj: Linear },
}

/// A BERT-family encoder with its classification head.
pub struct Encoder {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    /// Rows of the segment embedding table.
    type_vocab: usize,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    head: Head,
    act: Activation,
    heads: usize,
    /// RoBERTa-style positions (`padding_idx + 1 + i`) when set.
    roberta_pad: Option<u32>,
}

/// Longformer's per-layer attention windows (`None` for other architectures).
fn attention_windows(cfg: &ModelConfig, n_layers: usize) -> Result<Option<Vec<usize>>, ToolError> {
    if cfg.arch != Arch::Longformer {
        return Ok(None);
    }
    let w: Vec<usize> = match cfg.raw.get("attention_window") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|w| w as usize)
            .collect(),
        Some(Value::Number(n)) => vec![n.as_u64().unwrap_or(512) as usize; n_layers],
        _ => vec![512; n_layers],
    };
    if w.len() != n_layers {
        return Err(ToolError::Config(format!(
            "attention_window has {} entries for {n_layers} layers",
            w.len()
        )));
    }
    Ok(Some(w))
}

impl Encoder {
    /// Loads `bert.*` / `roberta.*` / `longformer.*` plus the head.
    pub fn load(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self, ToolError> {
        let h = cfg.need("hidden_size")?;
        let heads = cfg.need("num_attention_heads")?;
        let inter = cfg.need("intermediate_size")?;
        let n_layers = cfg.need("num_hidden_layers")?;
        let pad = cfg.usize("pad_token_id");
        let (prefix, eps_default) = match cfg.arch {
            Arch::Bert => ("bert", 1e-12),
            Arch::Roberta => ("roberta", 1e-5),
            Arch::Longformer => ("longformer", 1e-5),
            _ => return Err(ToolError::Unsupported(cfg.model_type.clone())),
        };
        let eps = cfg.f64("layer_norm_eps").unwrap_or(eps_default);
        if let Some(p) = cfg.str("position_embedding_type")
            && p != "absolute"
        {
            return Err(ToolError::Unsupported(format!(
                "{} with position_embedding_type={p}",
                cfg.model_type
            )));
        }
        let act: Activation =
            serde_json::from_value(cfg.raw.get("hidden_act").cloned().unwrap_or(json!("gelu")))
                .map_err(|e| ToolError::Config(format!("hidden_act: {e}")))?;
        let windows = attention_windows(cfg, n_layers)?;
        let base = vb.pp(prefix);
        let emb = base.pp("embeddings");
        let word = embedding(cfg.need("vocab_size")?, h, emb.pp("word_embeddings"))?;
        let position = embedding(
            cfg.need("max_position_embeddings")?,
            h,
            emb.pp("position_embeddings"),
        )?;
        let type_vocab = cfg.usize("type_vocab_size").unwrap_or(2);
        let token_type = embedding(type_vocab, h, emb.pp("token_type_embeddings"))?;
        let emb_norm = layer_norm(h, eps, emb.pp("LayerNorm"))?;
        let mut layers = Vec::with_capacity(n_layers);
        for i in 0..n_layers {
            let l = base.pp(format!("encoder.layer.{i}"));
            let a = l.pp("attention");
            let s = a.pp("self");
            let global = match &windows {
                Some(w) => Some((
                    Global {
                        query: linear(h, h, s.pp("query_global"))?,
                        key_value: fused(h, &[s.pp("key_global"), s.pp("value_global")])?,
                    },
                    w[i] / 2,
                )),
                None => None,
            };
            layers.push(Layer {
                qkv: fused(h, &[s.pp("query"), s.pp("key"), s.pp("value")])?,
                attn_out: linear(h, h, a.pp("output.dense"))?,
                attn_norm: layer_norm(h, eps, a.pp("output.LayerNorm"))?,
                intermediate: linear(h, inter, l.pp("intermediate.dense"))?,
                output: linear(inter, h, l.pp("output.dense"))?,
                out_norm: layer_norm(h, eps, l.pp("output.LayerNorm"))?,
                global,
            });
        }
        let n = cfg.num_labels();
        let head = match cfg.arch {
            Arch::Bert => Head::Pooler {
                pooler: linear(h, h, base.pp("pooler.dense"))?,
                classifier: linear(h, n, vb.pp("classifier"))?,
            },
            _ => Head::Dense {
                dense: linear(h, h, vb.pp("classifier.dense"))?,
                out_proj: linear(h, n, vb.pp("classifier.out_proj"))?,
            },
        };
        Ok(Self {
            word,
            position,
            token_type,
            type_vocab,
            emb_norm,
            layers,
            head,
            act,
            heads,
            roberta_pad: (cfg.arch != Arch::Bert).then(|| pad.unwrap_or(1) as u32),
        })
    }

    /// Logits for ids `(b, s)` with their segment ids (`None`: all 0) and a 0/1 mask.
    pub fn forward(
        &self,
        ids: &Tensor,
        type_ids: Option<&Tensor>,
        mask: &Tensor,
    ) -> Result<Tensor, ToolError> {
        let (b, s) = ids.dims2()?;
        let dev = ids.device();
        let valid: Vec<Vec<u32>> = mask.to_dtype(DType::U32)?.to_vec2()?;
        let positions: Vec<u32> = match self.roberta_pad {
            // padding_idx + running count of real tokens; padding keeps padding_idx.
            Some(p) => valid
                .iter()
                .flat_map(|row| {
                    let mut n = 0;
                    row.iter()
                        .map(|&m| {
                            n += m;
                            if m == 0 { p } else { p + n }
                        })
                        .collect::<Vec<_>>()
                })
                .collect(),
            None => (0..b).flat_map(|_| 0..s as u32).collect(),
        };
        let pos = Tensor::from_vec(positions, (b, s), dev)?;
        let x = (self.word.forward(ids)? + self.position.forward(&pos)?)?;
        // Segment embeddings: per token when the model has more than one segment (BERT's pair
        // encoding), else the one row for all (RoBERTa / Longformer have type_vocab_size 1).
        let x = match type_ids {
            Some(t) if self.type_vocab > 1 => {
                (x + self.token_type.forward(&t.to_dtype(DType::U32)?)?)?
            }
            _ => x.broadcast_add(&self.token_type.forward(&Tensor::zeros(
                (1, 1),
                DType::U32,
                dev,
            )?)?)?,
        };
        let x = self.emb_norm.forward(&x)?;
        // Projections and feed-forward run on the real tokens only (packed, no padding rows);
        // attention runs on the padded (b, s) layout.
        let pack = Packing::new(&valid, s, dev)?;
        let mut x = x
            .reshape((b * s, x.dim(2)?))?
            .index_select(&pack.packed, 0)?;
        let pad_bias: Vec<f32> = valid
            .iter()
            .flat_map(|row| row.iter().map(|&m| if m == 0 { f32::MIN } else { 0.0 }))
            .collect();
        let pad_bias = Tensor::from_vec(pad_bias, (b, 1, 1, s), dev)?;
        for layer in &self.layers {
            let local = match &layer.global {
                Some((_, w)) => Some(band_bias(&valid, s, *w, dev)?),
                None => None,
            };
            let bias = local.as_ref().unwrap_or(&pad_bias);
            x = layer.forward(&x, &pack, bias, &pad_bias, self.heads, &self.act)?;
        }
        let cls = x.index_select(&pack.first, 0)?;
        Ok(match &self.head {
            Head::Pooler { pooler, classifier } => {
                classifier.forward(&pooler.forward(&cls)?.tanh()?)?
            }
            Head::Dense { dense, out_proj } => out_proj.forward(&dense.forward(&cls)?.tanh()?)?,
        })
    }
}

/// Longformer's local attention as an additive mask: key `j` is visible to query `i` when it is a
/// real token and within the one-sided window, or when it is the global (first) token.
fn band_bias(valid: &[Vec<u32>], s: usize, w: usize, dev: &Device) -> candle_core::Result<Tensor> {
    let b = valid.len();
    let mut bias = vec![0f32; b * s * s];
    for (bi, row) in valid.iter().enumerate() {
        for i in 0..s {
            for j in 0..s {
                if row[j] == 0 || (i.abs_diff(j) > w && j != 0) {
                    bias[(bi * s + i) * s + j] = f32::MIN;
                }
            }
        }
    }
    Tensor::from_vec(bias, (b, 1, s, s), dev)
}

/// Where the real tokens of a right-padded `(b, s)` batch sit.
struct Packing {
    b: usize,
    s: usize,
    /// Flat `(b·s)` index of each real token, in order.
    packed: Tensor,
    /// For each flat position, its packed row, or the zero row `T` for padding.
    unpack: Tensor,
    /// Packed row of each sequence's first token.
    first: Tensor,
}

impl Packing {
    fn new(valid: &[Vec<u32>], s: usize, dev: &Device) -> candle_core::Result<Self> {
        let mut packed = Vec::new();
        let mut first = Vec::new();
        let total: usize = valid
            .iter()
            .map(|r| r.iter().filter(|&&m| m != 0).count())
            .sum();
        let mut unpack = vec![total as u32; valid.len() * s];
        for (bi, row) in valid.iter().enumerate() {
            first.push(packed.len() as u32);
            for (j, &m) in row.iter().enumerate() {
                if m != 0 {
                    unpack[bi * s + j] = packed.len() as u32;
                    packed.push((bi * s + j) as u32);
                }
            }
        }
        let n = packed.len();
        Ok(Self {
            b: valid.len(),
            s,
            packed: Tensor::from_vec(packed, n, dev)?,
            unpack: Tensor::from_vec(unpack, valid.len() * s, dev)?,
            first: Tensor::from_vec(first, valid.len(), dev)?,
        })
    }

    /// `(T, w)` packed rows → `(b, s, w)` with zero rows at padding.
    fn pad(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let w = x.dim(1)?;
        let zero = Tensor::zeros((1, w), x.dtype(), x.device())?;
        Tensor::cat(&[x, &zero], 0)?
            .index_select(&self.unpack, 0)?
            .reshape((self.b, self.s, w))
    }
}

/// One `Linear` computing several same-shaped projections side by side.
fn fused(h: usize, parts: &[VarBuilder]) -> candle_core::Result<Linear> {
    let mut ws = Vec::new();
    let mut bs = Vec::new();
    for p in parts {
        ws.push(p.get((h, h), "weight")?);
        bs.push(p.get(h, "bias")?);
    }
    Ok(Linear::new(
        Tensor::cat(&ws, 0)?,
        Some(Tensor::cat(&bs, 0)?),
    ))
}

impl Layer {
    /// `x`: packed hidden states `(T, h)`.
    fn forward(
        &self,
        x: &Tensor,
        pack: &Packing,
        bias: &Tensor,
        pad_bias: &Tensor,
        heads: usize,
        act: &Activation,
    ) -> candle_core::Result<Tensor> {
        let h = x.dim(1)?;
        let (b, s) = (pack.b, pack.s);
        let hd = h / heads;
        let scale = (hd as f64).sqrt();
        // (b, s, 3h) → three (b, H, s, hd)
        let qkv = pack.pad(&self.qkv.forward(x)?)?;
        let part = |t: &Tensor, i: usize, n: usize| -> candle_core::Result<Tensor> {
            t.narrow(2, i * h, h)?
                .reshape((b, n, heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = (part(&qkv, 0, s)? / scale)?;
        let k = part(&qkv, 1, s)?;
        let v = part(&qkv, 2, s)?;
        let scores = q
            .matmul(&k.transpose(2, 3)?.contiguous()?)?
            .broadcast_add(bias)?;
        let mut ctx = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?; // (b, H, s, hd)
        if let Some((g, _)) = &self.global {
            // The global token (index 0) attends to everything with its own projections.
            let x0 = x.index_select(&pack.first, 0)?;
            let qg = (g
                .query
                .forward(&x0)?
                .reshape((b, 1, heads, hd))?
                .transpose(1, 2)?
                / scale)?;
            let kv = pack.pad(&g.key_value.forward(x)?)?;
            let kg = kv
                .narrow(2, 0, h)?
                .reshape((b, s, heads, hd))?
                .transpose(1, 2)?
                .contiguous()?;
            let vg = kv
                .narrow(2, h, h)?
                .reshape((b, s, heads, hd))?
                .transpose(1, 2)?
                .contiguous()?;
            let g_scores = qg
                .contiguous()?
                .matmul(&kg.transpose(2, 3)?.contiguous()?)?
                .broadcast_add(pad_bias)?;
            let g_ctx = candle_nn::ops::softmax(&g_scores, D::Minus1)?.matmul(&vg)?;
            ctx = if s > 1 {
                Tensor::cat(&[&g_ctx, &ctx.i((.., .., 1..))?], 2)?
            } else {
                g_ctx
            };
        }
        let ctx = ctx
            .transpose(1, 2)?
            .reshape((b * s, h))?
            .index_select(&pack.packed, 0)?;
        let a = self
            .attn_norm
            .forward(&(self.attn_out.forward(&ctx)? + x)?)?;
        let i = activate(act, &self.intermediate.forward(&a)?)?;
        self.out_norm.forward(&(self.output.forward(&i)? + a)?)
    }
}

/// Exact-erf GELU (`transformers`' "gelu") with a vectorizable rational approximation of erf
/// (Eigen's `generic_fast_erf_float`, error within float rounding): candle's scalar erf made
/// GELU a quarter of a batched forward pass.
pub(crate) fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.dtype() != DType::F32 || !x.device().is_cpu() {
        return x.gelu_erf();
    }
    let mut v = x.flatten_all()?.to_vec1::<f32>()?;
    for z in v.iter_mut() {
        *z = 0.5 * *z * (1.0 + erf(*z * std::f32::consts::FRAC_1_SQRT_2));
    }
    Tensor::from_vec(v, x.shape(), x.device())
}

/// erf for f32: odd rational polynomial on [-4, 4], ±1 outside.
#[inline]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 + -2.101_024e-6;
    p = p * x2 + -5.692_506_4e-5;
    p = p * x2 + -7.349_906_3e-4;
    p = p * x2 + -2.954_6e-3;
    p = p * x2 + -1.609_603_3e-2;
    p *= x;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 + -2.133_740_6e-4;
    q = q * x2 + -1.682_827e-3;
    q = q * x2 + -7.373_329e-3;
    q = q * x2 + -1.426_474e-2;
    p / q
}

/// The configured activation, with the fast exact GELU.
pub(crate) fn activate(act: &Activation, x: &Tensor) -> candle_core::Result<Tensor> {
    match act {
        Activation::Gelu => gelu(x),
        other => other.forward(x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_gelu_matches_candle_erf_gelu() {
        let xs: Vec<f32> = (-800..=800).map(|i| i as f32 / 100.0).collect();
        let t = Tensor::new(xs.as_slice(), &Device::Cpu).unwrap();
        let a = gelu(&t).unwrap().to_vec1::<f32>().unwrap();
        let b = t.gelu_erf().unwrap().to_vec1::<f32>().unwrap();
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-6, "max |Δ| {worst}");
    }
}
