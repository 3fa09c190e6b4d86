//! `DistilBertForSequenceClassification` on candle.
//!
//! Written here rather than taken from `candle-transformers`, whose DistilBERT applies the tanh
//! approximation of GELU where `transformers` applies the exact one (a 1e-4-scale logit drift).

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{
    Activation, Embedding, LayerNorm, Linear, VarBuilder, embedding, layer_norm, linear,
};

use crate::ToolError;
use crate::config::ModelConfig;
use crate::encoder::{activate, lin};

struct Block {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    sa_norm: LayerNorm,
    lin1: Linear,
    lin2: Linear,
    out_norm: LayerNorm,
}

/// The DistilBERT encoder with its classification head.
pub struct DistilBert {
    word: Embedding,
    position: Embedding,
    emb_norm: LayerNorm,
    blocks: Vec<Block>,
    act: Activation,
    pre_classifier: Linear,
    classifier: Linear,
    heads: usize,
}

impl DistilBert {
    /// Loads the weights (`distilbert.*`, `pre_classifier`, `classifier`).
    pub fn load(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self, ToolError> {
        let d = cfg.need("dim")?;
        let hidden = cfg.need("hidden_dim")?;
        let heads = cfg.need("n_heads")?;
        let act: Activation = serde_json::from_value(
            cfg.raw
                .get("activation")
                .cloned()
                .unwrap_or(serde_json::json!("gelu")),
        )
        .map_err(|e| ToolError::Config(format!("distilbert activation: {e}")))?;
        let eps = 1e-12;
        let base = vb.pp("distilbert");
        let emb = base.pp("embeddings");
        let word = embedding(cfg.need("vocab_size")?, d, emb.pp("word_embeddings"))?;
        let position = embedding(
            cfg.need("max_position_embeddings")?,
            d,
            emb.pp("position_embeddings"),
        )?;
        let emb_norm = layer_norm(d, eps, emb.pp("LayerNorm"))?;
        let mut blocks = Vec::new();
        for i in 0..cfg.need("n_layers")? {
            let l = base.pp(format!("transformer.layer.{i}"));
            let a = l.pp("attention");
            blocks.push(Block {
                q: linear(d, d, a.pp("q_lin"))?,
                k: linear(d, d, a.pp("k_lin"))?,
                v: linear(d, d, a.pp("v_lin"))?,
                out: linear(d, d, a.pp("out_lin"))?,
                sa_norm: layer_norm(d, eps, l.pp("sa_layer_norm"))?,
                lin1: linear(d, hidden, l.pp("ffn.lin1"))?,
                lin2: linear(hidden, d, l.pp("ffn.lin2"))?,
                out_norm: layer_norm(d, eps, l.pp("output_layer_norm"))?,
            });
        }
        let n = cfg.num_labels();
        Ok(Self {
            word,
            position,
            emb_norm,
            blocks,
            act,
            pre_classifier: linear(d, d, vb.pp("pre_classifier"))?,
            classifier: linear(d, n, vb.pp("classifier"))?,
            heads,
        })
    }

    /// Logits for ids `(b, s)` with a 0/1 mask.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor, ToolError> {
        let (b, s) = ids.dims2()?;
        let pos = Tensor::arange(0u32, s as u32, &Device::Cpu)?.unsqueeze(0)?;
        let x = self
            .word
            .forward(ids)?
            .broadcast_add(&self.position.forward(&pos)?)?;
        let mut x = self.emb_norm.forward(&x)?;
        let bias =
            ((mask.to_dtype(DType::F32)? - 1.0)? * f32::MAX as f64)?.reshape((b, 1, 1, s))?;
        for blk in &self.blocks {
            x = blk.forward(&x, &bias, self.heads, &self.act)?;
        }
        let cls = x.i((.., 0))?.contiguous()?;
        let h = self.pre_classifier.forward(&cls)?.relu()?;
        Ok(self.classifier.forward(&h)?)
    }
}

impl Block {
    fn forward(
        &self,
        x: &Tensor,
        bias: &Tensor,
        heads: usize,
        act: &Activation,
    ) -> candle_core::Result<Tensor> {
        let (b, s, d) = x.dims3()?;
        let hd = d / heads;
        let split = |t: Tensor| t.reshape((b, s, heads, hd))?.transpose(1, 2)?.contiguous();
        let q = split((lin(&self.q, x)? / (hd as f64).sqrt())?)?;
        let k = split(lin(&self.k, x)?)?;
        let v = split(lin(&self.v, x)?)?;
        let scores = q
            .matmul(&k.transpose(2, 3)?.contiguous()?)?
            .broadcast_add(bias)?;
        let ctx = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?;
        let ctx = ctx.transpose(1, 2)?.reshape((b, s, d))?;
        let a = self.sa_norm.forward(&(lin(&self.out, &ctx)? + x)?)?;
        let f = lin(&self.lin2, &activate(act, &lin(&self.lin1, &a)?)?)?;
        self.out_norm.forward(&(f + a)?)
    }
}
