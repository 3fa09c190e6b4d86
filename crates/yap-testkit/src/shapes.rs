//! Random-weight F16 GGUF models with the shapes of real ones (`yap make-test-model --shape`),
//! for throughput benchmarks where the real weights cannot be fetched.
//!
//! Each shape has the real architecture, dimensions, head layout, biases/norms, vocabulary size,
//! special-token ids and chat format. The tokenizer is a real byte-level BPE trained here on
//! English text (a few thousand merges) padded with unreachable filler tokens to the real
//! vocabulary size, so the output layer and sampling cost what they cost for the real model;
//! prompts tokenize to somewhat more tokens than with the real tokenizer.
//!
//! Invariants: the weights are deterministic for a seed (generated in parallel, chunk-seeded);
//! as in [`crate::tiny`], residual dimension 0 carries a constant that the special tokens'
//! output rows read negatively, so generations (almost) never end early and every benchmark
//! stream runs to its token limit.

use std::io::{self, BufWriter, Write};
use std::path::Path;

use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use yap_llama::gguf::{self, GgmlType, Kv, TensorInfo};

/// A known model shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// Meta Llama 3.1 8B (llama architecture, 128k vocabulary).
    #[value(name = "llama-3.1-8b")]
    Llama31_8b,
    /// Mistral NeMo 12B (llama architecture, head_dim 128 < n_embd / n_head, 131k vocabulary).
    #[value(name = "mistral-nemo-12b")]
    MistralNemo12b,
    /// Qwen3 8B (qwen3 architecture: q/k norms).
    #[value(name = "qwen3-8b")]
    Qwen3_8b,
    /// Qwen2.5 1.5B (qwen2 architecture: q/k/v biases): the shape of the default chat model.
    #[value(name = "qwen2.5-1.5b")]
    Qwen25_1_5b,
}

/// Chat formats of the shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Llama3,
    Mistral,
    ChatMl,
}

/// Dimensions and vocabulary of a shape.
#[derive(Debug, Clone, Copy)]
pub struct ShapeSpec {
    /// `general.architecture`.
    pub arch: &'static str,
    /// Hidden size.
    pub n_embd: u64,
    /// Blocks.
    pub n_layer: u64,
    /// Attention heads.
    pub n_head: u64,
    /// KV heads.
    pub n_head_kv: u64,
    /// Per-head size.
    pub head_dim: u64,
    /// Feed-forward size.
    pub n_ff: u64,
    /// Vocabulary size.
    pub n_vocab: u64,
    /// Context length written into the model.
    pub context_length: u32,
    /// RoPE base.
    pub rope_theta: f32,
    /// RMS norm epsilon.
    pub eps: f32,
    /// Q/K/V projections carry biases (Qwen2).
    pub qkv_bias: bool,
    /// Per-head RMS norms on Q and K (Qwen3).
    pub qk_norm: bool,
    format: Format,
}

impl Shape {
    /// The shape's dimensions (from the models' `config.json`).
    pub fn spec(self) -> ShapeSpec {
        let base = ShapeSpec {
            arch: "llama",
            n_embd: 4096,
            n_layer: 32,
            n_head: 32,
            n_head_kv: 8,
            head_dim: 128,
            n_ff: 14336,
            n_vocab: 128_256,
            context_length: 131_072,
            rope_theta: 500_000.0,
            eps: 1e-5,
            qkv_bias: false,
            qk_norm: false,
            format: Format::Llama3,
        };
        match self {
            Self::Llama31_8b => base,
            Self::MistralNemo12b => ShapeSpec {
                n_embd: 5120,
                n_layer: 40,
                n_vocab: 131_072,
                rope_theta: 1_000_000.0,
                format: Format::Mistral,
                ..base
            },
            Self::Qwen3_8b => ShapeSpec {
                arch: "qwen3",
                n_layer: 36,
                n_ff: 12288,
                n_vocab: 151_936,
                context_length: 40960,
                rope_theta: 1_000_000.0,
                eps: 1e-6,
                qk_norm: true,
                format: Format::ChatMl,
                ..base
            },
            Self::Qwen25_1_5b => ShapeSpec {
                arch: "qwen2",
                n_embd: 1536,
                n_layer: 28,
                n_head: 12,
                n_head_kv: 2,
                n_ff: 8960,
                n_vocab: 151_936,
                context_length: 32768,
                rope_theta: 1_000_000.0,
                eps: 1e-6,
                qkv_bias: true,
                format: Format::ChatMl,
                ..base
            },
        }
    }
}

const LLAMA3_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + (message['content'] | trim) + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";
const MISTRAL_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% else %}{{ '[INST]' + message['content'] + '[/INST]' }}{% endif %}{% endfor %}";

/// The special tokens of a format: (first special id, [(id, text)], bos, eos, template).
#[allow(clippy::type_complexity)]
fn specials(
    format: Format,
    n_vocab: u64,
) -> (u64, Vec<(u64, &'static str)>, u64, u64, &'static str) {
    match format {
        Format::Llama3 => (
            128_000,
            vec![
                (128_000, "<|begin_of_text|>"),
                (128_001, "<|end_of_text|>"),
                (128_006, "<|start_header_id|>"),
                (128_007, "<|end_header_id|>"),
                (128_009, "<|eot_id|>"),
            ],
            128_000,
            128_009,
            LLAMA3_TEMPLATE,
        ),
        Format::Mistral => (
            0,
            vec![
                (0, "<unk>"),
                (1, "<s>"),
                (2, "</s>"),
                (3, "[INST]"),
                (4, "[/INST]"),
            ],
            1,
            2,
            MISTRAL_TEMPLATE,
        ),
        Format::ChatMl => (
            151_643.min(n_vocab),
            vec![
                (151_643, "<|endoftext|>"),
                (151_644, "<|im_start|>"),
                (151_645, "<|im_end|>"),
            ],
            151_643,
            151_645,
            yap_core::prompt::template::CHATML_TEMPLATE,
        ),
    }
}

/// A unique filler token text (`Ġ` + letters), never produced by the merges.
fn filler(i: u64) -> String {
    let mut s = String::from("\u{120}zz");
    let mut n = i;
    loop {
        s.push(char::from(b'a' + (n % 26) as u8));
        n /= 26;
        if n == 0 {
            break;
        }
    }
    s
}

/// The vocabulary: (tokens, token types, merges, first special id, bos, eos, template).
struct Vocab {
    tokens: Vec<String>,
    types: Vec<i32>,
    merges: Vec<String>,
    /// Ids of the special (control) tokens.
    specials: std::ops::Range<u64>,
    bos: u64,
    eos: u64,
    template: &'static str,
}

fn vocab(spec: &ShapeSpec) -> Vocab {
    let (bpe, merges) = crate::tiny::train_bpe_on(&crate::tiny::benchmark_corpus(), 4000);
    let (special_start, named, bos, eos, template) = specials(spec.format, spec.n_vocab);
    let mut tokens = Vec::with_capacity(spec.n_vocab as usize);
    let mut types = Vec::with_capacity(spec.n_vocab as usize);
    // Mistral's specials come first: the BPE tokens follow them.
    let offset = if special_start == 0 { named.len() } else { 0 };
    for id in 0..spec.n_vocab {
        let named_text = named.iter().find(|(i, _)| *i == id).map(|(_, t)| *t);
        let (text, ty) = if let Some(t) = named_text {
            (t.to_owned(), 3)
        } else if id >= special_start && special_start > 0 {
            (
                format!("<|reserved_special_token_{}|>", id - special_start),
                3,
            )
        } else if let Some(t) = (id as usize).checked_sub(offset).and_then(|i| bpe.get(i)) {
            (t.clone(), 1)
        } else {
            (filler(id), 1)
        };
        tokens.push(text);
        types.push(ty);
    }
    Vocab {
        tokens,
        types,
        merges,
        specials: if special_start == 0 {
            0..named.len() as u64
        } else {
            special_start..spec.n_vocab
        },
        bos,
        eos,
        template,
    }
}

fn metadata(shape: Shape, spec: &ShapeSpec, v: &Vocab) -> Vec<Kv> {
    let a = spec.arch;
    let k = |s: &str| format!("{a}.{s}");
    let u = |s: &str, x: u64| Kv::u32(&k(s), x as u32);
    let pre = match spec.format {
        Format::Llama3 => "llama-bpe",
        Format::Mistral => "tekken",
        Format::ChatMl => "qwen2",
    };
    let name = format!(
        "yap-random-{}",
        clap::ValueEnum::to_possible_value(&shape)
            .map_or(String::new(), |p| p.get_name().to_owned())
    );
    vec![
        Kv::str("general.architecture", a),
        Kv::str("general.name", &name),
        Kv::u32("general.file_type", 1),
        u("context_length", u64::from(spec.context_length)),
        u("embedding_length", spec.n_embd),
        u("block_count", spec.n_layer),
        u("feed_forward_length", spec.n_ff),
        u("attention.head_count", spec.n_head),
        u("attention.head_count_kv", spec.n_head_kv),
        u("attention.key_length", spec.head_dim),
        u("attention.value_length", spec.head_dim),
        u("rope.dimension_count", spec.head_dim),
        Kv::f32(&k("rope.freq_base"), spec.rope_theta),
        Kv::f32(&k("attention.layer_norm_rms_epsilon"), spec.eps),
        u("vocab_size", spec.n_vocab),
        Kv::str("tokenizer.ggml.model", "gpt2"),
        Kv::str("tokenizer.ggml.pre", pre),
        Kv::str_array("tokenizer.ggml.tokens", &v.tokens),
        Kv::i32_array("tokenizer.ggml.token_type", &v.types),
        Kv::str_array("tokenizer.ggml.merges", &v.merges),
        Kv::u32("tokenizer.ggml.bos_token_id", v.bos as u32),
        Kv::u32("tokenizer.ggml.eos_token_id", v.eos as u32),
        Kv::bool(
            "tokenizer.ggml.add_bos_token",
            spec.format == Format::Mistral,
        ),
        Kv::str("tokenizer.chat_template", v.template),
    ]
}

/// How a tensor's values are made.
#[derive(Debug, Clone, Copy)]
enum Fill {
    /// Uniform in ±scale.
    Random(f32),
    /// A constant.
    Const(f32),
}

/// Tensor entries (F16 matrices, F32 norms/biases) and how to fill each.
fn tensors(spec: &ShapeSpec) -> Vec<(TensorInfo, Fill)> {
    let (e, v, ff) = (spec.n_embd, spec.n_vocab, spec.n_ff);
    let q_dim = spec.n_head * spec.head_dim;
    let kv_dim = spec.n_head_kv * spec.head_dim;
    let init = |fan_in: u64| Fill::Random((3.0 / fan_in as f32).sqrt());
    let f16 = |n: &str, d: Vec<u64>| TensorInfo::new(n, d, GgmlType::F16);
    let f32 = |n: &str, d: Vec<u64>| TensorInfo::new(n, d, GgmlType::F32);
    let mut out = vec![
        (f16("token_embd.weight", vec![e, v]), Fill::Random(0.5)),
        (f32("output_norm.weight", vec![e]), Fill::Const(1.0)),
        (f16("output.weight", vec![e, v]), init(e)),
    ];
    for l in 0..spec.n_layer {
        let p = |s: &str| format!("blk.{l}.{s}");
        out.push((f32(&p("attn_norm.weight"), vec![e]), Fill::Const(1.0)));
        out.push((f16(&p("attn_q.weight"), vec![e, q_dim]), init(e)));
        out.push((f16(&p("attn_k.weight"), vec![e, kv_dim]), init(e)));
        out.push((f16(&p("attn_v.weight"), vec![e, kv_dim]), init(e)));
        if spec.qkv_bias {
            for (n, d) in [
                ("attn_q.bias", q_dim),
                ("attn_k.bias", kv_dim),
                ("attn_v.bias", kv_dim),
            ] {
                out.push((f32(&p(n), vec![d]), Fill::Const(0.0)));
            }
        }
        if spec.qk_norm {
            for n in ["attn_q_norm.weight", "attn_k_norm.weight"] {
                out.push((f32(&p(n), vec![spec.head_dim]), Fill::Const(1.0)));
            }
        }
        out.push((f16(&p("attn_output.weight"), vec![q_dim, e]), init(q_dim)));
        out.push((f32(&p("ffn_norm.weight"), vec![e]), Fill::Const(1.0)));
        out.push((f16(&p("ffn_gate.weight"), vec![e, ff]), init(e)));
        out.push((f16(&p("ffn_up.weight"), vec![e, ff]), init(e)));
        out.push((f16(&p("ffn_down.weight"), vec![ff, e]), init(ff)));
    }
    out
}

/// Values per parallel generation chunk.
const CHUNK: usize = 1 << 20;

/// The values of one tensor (row-major, `dims[0]` per row), with the residual-dimension-0
/// adjustments applied.
fn values(t: &TensorInfo, fill: Fill, seed: u64, specials: &std::ops::Range<u64>) -> Vec<f32> {
    let n = t.elements() as usize;
    let row = t.dims[0] as usize;
    let mut x = vec![0f32; n];
    match fill {
        Fill::Const(c) => x.fill(c),
        Fill::Random(scale) => x.par_chunks_mut(CHUNK).enumerate().for_each(|(i, c)| {
            let mut rng = StdRng::seed_from_u64(seed ^ ((i as u64) << 20));
            for v in c {
                *v = rng.random_range(-scale..scale);
            }
        }),
    }
    if t.name == "token_embd.weight" {
        x.par_chunks_mut(row).for_each(|r| r[0] = 8.0);
    } else if t.name == "output.weight" {
        x.par_chunks_mut(row).enumerate().for_each(|(i, r)| {
            r[0] = if specials.contains(&(i as u64)) {
                -4.0
            } else {
                0.0
            }
        });
    } else if t.name.ends_with("attn_output.weight") || t.name.ends_with("ffn_down.weight") {
        // output row 0 (which writes residual dimension 0) stays zero
        x[..row].fill(0.0);
    }
    x
}

fn encode(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    if ty == GgmlType::F16 {
        x.par_iter()
            .flat_map_iter(|v| f16::from_f32(*v).to_le_bytes())
            .collect()
    } else {
        x.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
}

/// Writes a random-weight F16 model of `shape` to `path`; `progress(done, total)` is called
/// after every tensor with bytes written.
pub fn write_shape_model(
    path: &Path,
    shape: Shape,
    seed: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> io::Result<()> {
    let spec = shape.spec();
    let v = vocab(&spec);
    let kvs = metadata(shape, &spec, &v);
    let plan = tensors(&spec);
    let mut infos: Vec<TensorInfo> = plan.iter().map(|(t, _)| t.clone()).collect();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("gguf.partial");
    let mut w = BufWriter::with_capacity(1 << 22, std::fs::File::create(&tmp)?);
    let total = gguf::write_header(&mut w, &kvs, &mut infos, gguf::DEFAULT_ALIGNMENT)?;
    let mut done = 0u64;
    for (i, (t, fill)) in plan.iter().enumerate() {
        let x = values(
            t,
            *fill,
            seed.wrapping_mul(0x9e37_79b9).wrapping_add(i as u64) << 24,
            &v.specials,
        );
        let bytes = encode(t.ty, &x);
        drop(x);
        gguf::write_tensor_data(&mut w, &bytes, gguf::DEFAULT_ALIGNMENT)?;
        done += bytes.len() as u64;
        progress(done, total);
    }
    w.flush()?;
    drop(w);
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_have_real_sizes() {
        let count =
            |s: Shape| -> u64 { tensors(&s.spec()).iter().map(|(t, _)| t.elements()).sum() };
        let b = |n: u64| n as f64 / 1e9;
        assert!(
            (7.9..8.1).contains(&b(count(Shape::Llama31_8b))),
            "{}",
            b(count(Shape::Llama31_8b))
        );
        assert!((12.1..12.4).contains(&b(count(Shape::MistralNemo12b))));
        assert!((8.1..8.3).contains(&b(count(Shape::Qwen3_8b))));
        // Qwen2.5-1.5B with its untied output copy, as in the default model's GGUF
        assert!((1.7..1.8).contains(&b(count(Shape::Qwen25_1_5b))));
    }

    #[test]
    fn vocab_is_full_size_with_real_special_ids() {
        let spec = Shape::Llama31_8b.spec();
        let v = vocab(&spec);
        assert_eq!(v.tokens.len() as u64, spec.n_vocab);
        assert_eq!(v.tokens[128_009], "<|eot_id|>");
        assert_eq!(v.types[128_009], 3);
        let mut sorted = v.tokens.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), v.tokens.len(), "token texts are unique");
        let m = vocab(&Shape::MistralNemo12b.spec());
        assert_eq!(m.tokens[2], "</s>");
        assert_eq!(m.specials, 0..5);
        assert_eq!(v.specials, 128_000..128_256);
    }

    /// A model with a shape's layout but tiny sizes loads and generates in llama.cpp.
    #[test]
    fn shaped_layout_loads_in_llama_cpp() {
        use yap_core::prompt::PromptFormat;
        let dir = std::env::temp_dir().join(format!("yap-shape-{}", std::process::id()));
        let path = dir.join("q.gguf");
        let mut spec = Shape::Qwen3_8b.spec();
        (spec.n_embd, spec.n_layer, spec.n_head, spec.n_head_kv) = (64, 1, 4, 2);
        (spec.head_dim, spec.n_ff, spec.n_vocab) = (16, 128, 151_936);
        let v = vocab(&spec);
        let kvs = metadata(Shape::Qwen3_8b, &spec, &v);
        let plan = tensors(&spec);
        let mut infos: Vec<TensorInfo> = plan.iter().map(|(t, _)| t.clone()).collect();
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = std::fs::File::create(&path).unwrap();
        gguf::write_header(&mut w, &kvs, &mut infos, 32).unwrap();
        for (i, (t, f)) in plan.iter().enumerate() {
            let x = values(t, *f, i as u64, &v.specials);
            gguf::write_tensor_data(&mut w, &encode(t.ty, &x), 32).unwrap();
        }
        drop(w);
        let text = yap_llama::vocab::load_model_text(&path).unwrap();
        let format = PromptFormat::new(text).unwrap();
        assert!(format.count("Hello there, how are you today?") > 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
