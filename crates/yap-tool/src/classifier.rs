//! Sequence classifiers in the Hugging Face `*ForSequenceClassification` layouts, on candle.
//!
//! The ModernBERT backbone comes from `candle-transformers` (its head is built here); BERT,
//! RoBERTa / XLM-RoBERTa and Longformer share [`crate::encoder`], DistilBERT has
//! [`crate::distilbert`] — all as `transformers` defines them (see those modules for why).

use std::path::Path;

use candle_core::{D, DType, Device, IndexOp, Module, Tensor};
use candle_nn::{Activation, LayerNorm, Linear, VarBuilder, linear, linear_no_bias};
use candle_transformers::models::modernbert;
use serde_json::{Value, json};

use crate::ToolError;
use crate::config::{Arch, ModelConfig};
use crate::distilbert::DistilBert;
use crate::encoder::Encoder;

/// How a ModernBERT head pools the sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pooling {
    Cls,
    Mean,
}

enum Backbone {
    Encoder(Encoder),
    DistilBert(DistilBert),
    ModernBert {
        model: modernbert::ModernBert,
        dense: Linear,
        act: Activation,
        norm: LayerNorm,
        classifier: Linear,
        pooling: Pooling,
    },
}

/// A loaded classifier: token ids in, logits out.
pub struct SequenceClassifier {
    config: ModelConfig,
    backbone: Backbone,
    device: Device,
    pad_id: u32,
}

impl std::fmt::Debug for SequenceClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SequenceClassifier")
            .field("model_type", &self.config.model_type)
            .field("labels", &self.config.labels)
            .finish()
    }
}

fn de<T: serde::de::DeserializeOwned>(v: Value, what: &str) -> Result<T, ToolError> {
    serde_json::from_value(v).map_err(|e| ToolError::Config(format!("{what} config: {e}")))
}

impl SequenceClassifier {
    /// Loads `dir` (config.json + model.safetensors) on the CPU in float32.
    pub fn load(dir: &Path) -> Result<Self, ToolError> {
        let config = ModelConfig::load(dir)?;
        let weights = dir.join("model.safetensors");
        if !weights.exists() {
            return Err(ToolError::Io {
                path: weights.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no safetensors weights"),
            });
        }
        let device = Device::Cpu;
        let tensors = candle_core::safetensors::load(&weights, &device)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        Self::from_varbuilder(config, vb)
    }

    /// Builds the classifier from weights already in a var builder.
    pub fn from_varbuilder(config: ModelConfig, vb: VarBuilder) -> Result<Self, ToolError> {
        let n = config.num_labels();
        let raw = &config.raw;
        let pad_id = config.usize("pad_token_id").unwrap_or(0) as u32;
        let backbone = match config.arch {
            Arch::Bert | Arch::Roberta | Arch::Longformer => {
                Backbone::Encoder(Encoder::load(&config, vb)?)
            }
            Arch::DistilBert => Backbone::DistilBert(DistilBert::load(&config, vb)?),
            Arch::ModernBert => {
                let rope = |kind: &str, legacy: &str, default: f64| {
                    config
                        .raw
                        .pointer(&format!("/rope_parameters/{kind}/rope_theta"))
                        .and_then(Value::as_f64)
                        .or_else(|| config.f64(legacy))
                        .unwrap_or(default)
                };
                for flag in ["attention_bias", "mlp_bias", "norm_bias"] {
                    if raw.get(flag).and_then(Value::as_bool).unwrap_or(false) {
                        return Err(ToolError::Unsupported(format!(
                            "modernbert with {flag}=true"
                        )));
                    }
                }
                let eps = config
                    .f64("norm_eps")
                    .or_else(|| config.f64("layer_norm_eps"))
                    .unwrap_or(1e-5);
                let cfg = modernbert::Config {
                    vocab_size: config.need("vocab_size")?,
                    hidden_size: config.need("hidden_size")?,
                    num_hidden_layers: config.need("num_hidden_layers")?,
                    num_attention_heads: config.need("num_attention_heads")?,
                    intermediate_size: config.need("intermediate_size")?,
                    max_position_embeddings: config.need("max_position_embeddings")?,
                    layer_norm_eps: eps,
                    pad_token_id: pad_id,
                    global_attn_every_n_layers: config
                        .usize("global_attn_every_n_layers")
                        .unwrap_or(3),
                    global_rope_theta: rope("full_attention", "global_rope_theta", 160_000.0),
                    local_attention: config.usize("local_attention").unwrap_or(128),
                    local_rope_theta: rope("sliding_attention", "local_rope_theta", 10_000.0),
                    classifier_config: None,
                };
                let h = cfg.hidden_size;
                let act: Activation = de(
                    raw.get("classifier_activation")
                        .cloned()
                        .unwrap_or(json!("gelu")),
                    "modernbert classifier_activation",
                )?;
                let dense = if raw
                    .get("classifier_bias")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                {
                    linear(h, h, vb.pp("head.dense"))?
                } else {
                    linear_no_bias(h, h, vb.pp("head.dense"))?
                };
                let norm_w = vb.get(h, "head.norm.weight")?;
                let norm = LayerNorm::new_no_bias(norm_w, eps);
                let pooling = match config.str("classifier_pooling").unwrap_or("cls") {
                    "mean" => Pooling::Mean,
                    _ => Pooling::Cls,
                };
                Backbone::ModernBert {
                    model: modernbert::ModernBert::load(vb.clone(), &cfg)?,
                    dense,
                    act,
                    norm,
                    classifier: linear(h, n, vb.pp("classifier"))?,
                    pooling,
                }
            }
        };
        Ok(Self {
            config,
            backbone,
            device: Device::Cpu,
            pad_id,
        })
    }

    /// The parsed config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Labels by class index.
    pub fn labels(&self) -> &[String] {
        &self.config.labels
    }

    /// Logits `(batch, num_labels)` for sequences of token ids (special tokens included), all
    /// of segment 0; shorter ones are padded on the right and masked.
    pub fn logits(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, ToolError> {
        self.logits_typed(batch, None)
    }

    /// Logits `(batch, num_labels)` for sequences of token ids with their segment (token type)
    /// ids (`None`: all 0); shorter ones are padded on the right and masked. Architectures
    /// without segment embeddings (DistilBERT, ModernBERT, and those with `type_vocab_size` 1)
    /// ignore the type ids, as `transformers` does with what their tokenizers make.
    pub fn logits_typed(
        &self,
        batch: &[Vec<u32>],
        types: Option<&[Vec<u32>]>,
    ) -> Result<Vec<Vec<f32>>, ToolError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(t) = types
            && (t.len() != batch.len() || t.iter().zip(batch).any(|(a, b)| a.len() != b.len()))
        {
            return Err(ToolError::Config(
                "token type ids do not match the token ids".into(),
            ));
        }
        let len = batch.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(batch.len() * len);
        let mut mask = Vec::with_capacity(batch.len() * len);
        let mut type_ids = Vec::with_capacity(batch.len() * len);
        for (i, seq) in batch.iter().enumerate() {
            ids.extend_from_slice(seq);
            ids.extend(std::iter::repeat_n(self.pad_id, len - seq.len()));
            mask.extend(std::iter::repeat_n(1u32, seq.len()));
            mask.extend(std::iter::repeat_n(0u32, len - seq.len()));
            match types {
                Some(t) => type_ids.extend_from_slice(&t[i]),
                None => type_ids.extend(std::iter::repeat_n(0u32, seq.len())),
            }
            type_ids.extend(std::iter::repeat_n(0u32, len - seq.len()));
        }
        let shape = (batch.len(), len);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let type_ids = match types {
            Some(_) => Some(Tensor::from_vec(type_ids, shape, &self.device)?),
            None => None,
        };
        let logits = self.forward_typed(&ids, type_ids.as_ref(), &mask)?;
        Ok(logits.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }

    /// Logits for an id tensor `(b, s)` and its 0/1 attention mask (segment ids all 0).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor, ToolError> {
        self.forward_typed(ids, None, mask)
    }

    /// Logits for an id tensor `(b, s)`, its segment ids `(b, s)` (`None`: all 0) and its 0/1
    /// attention mask.
    pub fn forward_typed(
        &self,
        ids: &Tensor,
        type_ids: Option<&Tensor>,
        mask: &Tensor,
    ) -> Result<Tensor, ToolError> {
        let out = match &self.backbone {
            Backbone::Encoder(m) => m.forward(ids, type_ids, mask)?,
            Backbone::DistilBert(m) => m.forward(ids, mask)?,
            Backbone::ModernBert {
                model,
                dense,
                act,
                norm,
                classifier,
                pooling,
            } => {
                let h = model.forward(ids, mask)?;
                let pooled = match pooling {
                    Pooling::Cls => h.i((.., 0))?.contiguous()?,
                    Pooling::Mean => {
                        let m = mask.to_dtype(DType::F32)?;
                        let sum = h.broadcast_mul(&m.unsqueeze(D::Minus1)?)?.sum(1)?;
                        sum.broadcast_div(&m.sum_keepdim(1)?)?
                    }
                };
                let x = norm.forward(&act.forward(&dense.forward(&pooled)?)?)?;
                classifier.forward(&x)?
            }
        };
        Ok(out)
    }
}

/// Softmax over one row of logits.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}
