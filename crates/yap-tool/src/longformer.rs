//! `LongformerForSequenceClassification` on candle.
//!
//! Attention is computed as `transformers` defines it, with dense masks: every token attends to
//! the tokens within its layer's one-sided window (`attention_window / 2`) and to the global
//! tokens (here the first token, as the HF classification model sets it); the global token
//! attends to every token through its own `query_global` / `key_global` / `value_global`
//! projections. Dense masks cost O(n²), which is what short voice-turn contexts need; the
//! result equals the banded implementation at any length.

use candle_core::{D, DType, IndexOp, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder, embedding, layer_norm, linear};
use serde_json::Value;

use crate::ToolError;
use crate::config::ModelConfig;

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    query_global: Linear,
    key_global: Linear,
    value_global: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
    one_sided: usize,
}

/// The Longformer encoder with its classification head.
pub struct Longformer {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    dense: Linear,
    out_proj: Linear,
    heads: usize,
    pad_id: u32,
}

impl Longformer {
    /// Loads the weights (`longformer.*`, `classifier.*`).
    pub fn load(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self, ToolError> {
        let h = cfg.need("hidden_size")?;
        let heads = cfg.need("num_attention_heads")?;
        let inter = cfg.need("intermediate_size")?;
        let n_layers = cfg.need("num_hidden_layers")?;
        let eps = cfg.f64("layer_norm_eps").unwrap_or(1e-5);
        let pad_id = cfg.usize("pad_token_id").unwrap_or(1) as u32;
        if let Some(act) = cfg.str("hidden_act")
            && act != "gelu"
        {
            return Err(ToolError::Unsupported(format!(
                "longformer with hidden_act={act}"
            )));
        }
        let windows: Vec<usize> = match cfg.raw.get("attention_window") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_u64)
                .map(|w| w as usize)
                .collect(),
            Some(Value::Number(n)) => vec![n.as_u64().unwrap_or(512) as usize; n_layers],
            _ => vec![512; n_layers],
        };
        if windows.len() != n_layers {
            return Err(ToolError::Config(format!(
                "attention_window has {} entries for {n_layers} layers",
                windows.len()
            )));
        }
        let base = vb.pp("longformer");
        let emb = base.pp("embeddings");
        let word = embedding(cfg.need("vocab_size")?, h, emb.pp("word_embeddings"))?;
        let position = embedding(
            cfg.need("max_position_embeddings")?,
            h,
            emb.pp("position_embeddings"),
        )?;
        let token_type = embedding(
            cfg.usize("type_vocab_size").unwrap_or(1),
            h,
            emb.pp("token_type_embeddings"),
        )?;
        let emb_norm = layer_norm(h, eps, emb.pp("LayerNorm"))?;
        let mut layers = Vec::with_capacity(n_layers);
        for (i, w) in windows.iter().enumerate() {
            let l = base.pp(format!("encoder.layer.{i}"));
            let a = l.pp("attention");
            let s = a.pp("self");
            layers.push(Layer {
                query: linear(h, h, s.pp("query"))?,
                key: linear(h, h, s.pp("key"))?,
                value: linear(h, h, s.pp("value"))?,
                query_global: linear(h, h, s.pp("query_global"))?,
                key_global: linear(h, h, s.pp("key_global"))?,
                value_global: linear(h, h, s.pp("value_global"))?,
                attn_out: linear(h, h, a.pp("output.dense"))?,
                attn_norm: layer_norm(h, eps, a.pp("output.LayerNorm"))?,
                intermediate: linear(h, inter, l.pp("intermediate.dense"))?,
                output: linear(inter, h, l.pp("output.dense"))?,
                out_norm: layer_norm(h, eps, l.pp("output.LayerNorm"))?,
                one_sided: w / 2,
            });
        }
        let n = cfg.num_labels();
        Ok(Self {
            word,
            position,
            token_type,
            emb_norm,
            layers,
            dense: linear(h, h, vb.pp("classifier.dense"))?,
            out_proj: linear(h, n, vb.pp("classifier.out_proj"))?,
            heads,
            pad_id,
        })
    }

    /// Logits for ids `(b, s)` with a 0/1 mask; the first token has global attention.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor, ToolError> {
        let (b, s) = ids.dims2()?;
        let dev = ids.device();
        // RoBERTa-style positions: padding_idx + running count of non-pad tokens.
        let not_pad = ids.ne(self.pad_id)?.to_dtype(DType::F32)?;
        let pos = ((not_pad.cumsum(1)? * &not_pad)? + self.pad_id as f64)?.to_dtype(DType::U32)?;
        let x = (self.word.forward(ids)? + self.position.forward(&pos)?)?;
        let x = x.broadcast_add(&self.token_type.forward(&ids.zeros_like()?)?)?;
        let mut x = self.emb_norm.forward(&x)?;
        let valid: Vec<Vec<u32>> = mask.to_dtype(DType::U32)?.to_vec2()?;
        let pad_bias: Vec<f32> = valid
            .iter()
            .flat_map(|row| row.iter().map(|&m| if m == 0 { f32::MIN } else { 0.0 }))
            .collect();
        let pad_bias = Tensor::from_vec(pad_bias, (b, 1, 1, s), dev)?;
        for layer in &self.layers {
            let w = layer.one_sided;
            let mut local = vec![0f32; b * s * s];
            for (bi, row) in valid.iter().enumerate() {
                for i in 0..s {
                    for j in 0..s {
                        let allowed = row[j] != 0 && (i.abs_diff(j) <= w || j == 0);
                        if !allowed {
                            local[(bi * s + i) * s + j] = f32::MIN;
                        }
                    }
                }
            }
            let local = Tensor::from_vec(local, (b, 1, s, s), dev)?;
            x = layer.forward(&x, &local, &pad_bias, self.heads)?;
        }
        let cls = x.i((.., 0))?.contiguous()?;
        Ok(self.out_proj.forward(&self.dense.forward(&cls)?.tanh()?)?)
    }
}

impl Layer {
    fn forward(
        &self,
        x: &Tensor,
        local: &Tensor,
        pad: &Tensor,
        heads: usize,
    ) -> candle_core::Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        let hd = h / heads;
        let split = |t: Tensor, n: usize| -> candle_core::Result<Tensor> {
            t.reshape((b, n, heads, hd))?.transpose(1, 2)?.contiguous()
        };
        let scale = (hd as f64).sqrt();
        let q = split((self.query.forward(x)? / scale)?, s)?;
        let k = split(self.key.forward(x)?, s)?;
        let v = split(self.value.forward(x)?, s)?;
        let scores = q
            .matmul(&k.transpose(2, 3)?.contiguous()?)?
            .broadcast_add(local)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs.matmul(&v)?; // (b, H, s, hd)
        // The global token (index 0) attends to everything with its own projections.
        let x0 = x.i((.., 0..1))?.contiguous()?;
        let qg = split((self.query_global.forward(&x0)? / scale)?, 1)?;
        let kg = split(self.key_global.forward(x)?, s)?;
        let vg = split(self.value_global.forward(x)?, s)?;
        let g_scores = qg
            .matmul(&kg.transpose(2, 3)?.contiguous()?)?
            .broadcast_add(pad)?;
        let g_probs = candle_nn::ops::softmax(&g_scores, D::Minus1)?;
        let g_ctx = g_probs.matmul(&vg)?; // (b, H, 1, hd)
        let ctx = if s > 1 {
            Tensor::cat(&[&g_ctx, &ctx.i((.., .., 1..))?], 2)?
        } else {
            g_ctx
        };
        let ctx = ctx.transpose(1, 2)?.reshape((b, s, h))?;
        let a = self
            .attn_norm
            .forward(&(self.attn_out.forward(&ctx)? + x)?)?;
        let i = self.intermediate.forward(&a)?.gelu_erf()?;
        self.out_norm.forward(&(self.output.forward(&i)? + a)?)
    }
}
