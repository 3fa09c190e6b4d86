//! Generates a tiny llama-architecture GGUF chat model for tests: random weights, a real
//! byte-level BPE tokenizer trained here on a small English corpus, special tokens and a ChatML
//! chat template. A few hundred KB; loads and runs in the embedded engine like any model.

use std::collections::HashMap;
use std::io::{self, BufWriter};
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::gguf::{GgufWriter, MetaValue, Tensor};
use yap_core::prompt::template::CHATML_TEMPLATE;

const CORPUS: &str = "The quick brown fox jumps over the lazy dog. Hello there, how are you today? \
I am doing well, thank you for asking. What would you like to talk about? Tell me a joke. \
Who was Columbus? Christopher Columbus was an explorer who sailed across the Atlantic Ocean in \
the year fourteen ninety two. What is the capital of France? The capital of France is Paris. \
Can you see my screen? Look at this picture and tell me what you think of this outfit. \
You are a friendly companion who speaks in short, warm sentences. The user is talking to you \
by voice, so keep your answers brief and natural. Let us talk about music, movies, books, \
games, food, travel, science and the weather. I think that is a great idea! Really? Yes, of \
course. Thanks a lot, that was fun. Good morning, good evening, good night. See you later.";

/// Shape of the generated model.
#[derive(Debug, Clone, Copy)]
pub struct TinyModelSpec {
    /// Hidden size.
    pub n_embd: usize,
    /// Transformer blocks.
    pub n_layer: usize,
    /// Attention heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_head_kv: usize,
    /// Feed-forward size.
    pub n_ff: usize,
    /// BPE merges learned on top of the 256 byte tokens.
    pub n_merges: usize,
    /// Context length written into the model.
    pub context_length: u32,
    /// Seed for the weights.
    pub seed: u64,
}

impl Default for TinyModelSpec {
    fn default() -> Self {
        Self {
            n_embd: 64,
            n_layer: 2,
            n_head: 4,
            n_head_kv: 2,
            n_ff: 128,
            n_merges: 320,
            context_length: 8192,
            seed: 7,
        }
    }
}

/// GPT-2's reversible byte → printable char mapping.
fn byte_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap_or('?')
        } else {
            let c = char::from_u32(256 + n).unwrap_or('?');
            n += 1;
            c
        };
    }
    table
}

/// Splits like GPT-2's pre-tokenizer does for plain text: words carry their leading space.
fn pre_tokenize(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    for ch in text.chars() {
        let boundary = ch == ' '
            || (!ch.is_alphanumeric() && cur.chars().last().is_some_and(|c| c.is_alphanumeric()))
            || (ch.is_alphanumeric()
                && cur
                    .chars()
                    .last()
                    .is_some_and(|c| !c.is_alphanumeric() && c != ' '));
        if boundary && !cur.is_empty() {
            words.push(std::mem::take(&mut cur));
        }
        cur.push(ch);
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// Learns `n_merges` BPE merges over byte-mapped words of [`CORPUS`]; returns (vocab, merges).
fn train_bpe(n_merges: usize) -> (Vec<String>, Vec<String>) {
    train_bpe_on(CORPUS, n_merges)
}

/// English text for benchmark tokenizers: the test corpus and every persona prompt.
pub(crate) fn benchmark_corpus() -> String {
    let mut text = String::from(CORPUS);
    for style in yap_core::persona::STYLES {
        text.push(' ');
        text.push_str(&yap_core::persona::compose(Some(style), None, None));
    }
    text
}

/// Learns up to `n_merges` BPE merges over byte-mapped words of `corpus` (fewer when no pair
/// repeats); returns (vocab, merges).
pub(crate) fn train_bpe_on(corpus: &str, n_merges: usize) -> (Vec<String>, Vec<String>) {
    let table = byte_to_unicode();
    let mut vocab: Vec<String> = table.iter().map(|c| c.to_string()).collect();
    let mut words: HashMap<Vec<String>, usize> = HashMap::new();
    for w in pre_tokenize(corpus) {
        let symbols: Vec<String> = w.bytes().map(|b| table[b as usize].to_string()).collect();
        *words.entry(symbols).or_default() += 1;
    }
    let mut merges = Vec::new();
    for _ in 0..n_merges {
        let mut pairs: HashMap<(String, String), usize> = HashMap::new();
        for (syms, count) in &words {
            for pair in syms.windows(2) {
                *pairs.entry((pair[0].clone(), pair[1].clone())).or_default() += count;
            }
        }
        // Most frequent pair; ties broken by the pair text so training is deterministic.
        let Some(((a, b), _)) = pairs
            .into_iter()
            .max_by(|x, y| x.1.cmp(&y.1).then_with(|| y.0.cmp(&x.0)))
        else {
            break;
        };
        let joined = format!("{a}{b}");
        merges.push(format!("{a} {b}"));
        vocab.push(joined.clone());
        words = words
            .into_iter()
            .map(|(syms, count)| {
                let mut out = Vec::with_capacity(syms.len());
                let mut i = 0;
                while i < syms.len() {
                    if i + 1 < syms.len() && syms[i] == a && syms[i + 1] == b {
                        out.push(joined.clone());
                        i += 2;
                    } else {
                        out.push(syms[i].clone());
                        i += 1;
                    }
                }
                (out, count)
            })
            .fold(HashMap::new(), |mut acc, (k, v)| {
                *acc.entry(k).or_default() += v;
                acc
            });
    }
    (vocab, merges)
}

/// The random weights of a tiny model.
fn write_tensors(g: &mut GgufWriter, spec: &TinyModelSpec, n_vocab: usize, n_normal: usize) {
    let head_dim = spec.n_embd / spec.n_head;
    let n_embd_kv = head_dim * spec.n_head_kv;
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut random = |n: usize, scale: f32| -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-scale..scale)).collect()
    };
    let e = spec.n_embd as u64;
    let t = |name: String, dims: Vec<u64>, data: Vec<f32>| Tensor { name, dims, data };

    // Dimension 0 of the residual stream is a large constant that no layer writes to; the
    // output rows of the special tokens read it negatively, so random weights (almost) never
    // emit an end-of-generation token and test generations run to their token limit.
    let mut embd = random(n_vocab * spec.n_embd, 0.5);
    for row in embd.chunks_mut(spec.n_embd) {
        row[0] = 8.0;
    }
    g.tensor(t("token_embd.weight".into(), vec![e, n_vocab as u64], embd));
    g.tensor(t(
        "output_norm.weight".into(),
        vec![e],
        vec![1.0; spec.n_embd],
    ));
    let mut out = random(n_vocab * spec.n_embd, 0.5);
    for (i, row) in out.chunks_mut(spec.n_embd).enumerate() {
        row[0] = if i >= n_normal { -4.0 } else { 0.0 };
    }
    g.tensor(t("output.weight".into(), vec![e, n_vocab as u64], out));
    for l in 0..spec.n_layer {
        let p = |s: &str| format!("blk.{l}.{s}.weight");
        g.tensor(t(p("attn_norm"), vec![e], vec![1.0; spec.n_embd]));
        g.tensor(t(
            p("attn_q"),
            vec![e, e],
            random(spec.n_embd * spec.n_embd, 0.2),
        ));
        g.tensor(t(
            p("attn_k"),
            vec![e, n_embd_kv as u64],
            random(spec.n_embd * n_embd_kv, 0.2),
        ));
        g.tensor(t(
            p("attn_v"),
            vec![e, n_embd_kv as u64],
            random(spec.n_embd * n_embd_kv, 0.2),
        ));
        let mut o = random(spec.n_embd * spec.n_embd, 0.2);
        o[..spec.n_embd].fill(0.0); // output row 0 (writes residual dim 0) stays zero
        g.tensor(t(p("attn_output"), vec![e, e], o));
        g.tensor(t(p("ffn_norm"), vec![e], vec![1.0; spec.n_embd]));
        g.tensor(t(
            p("ffn_gate"),
            vec![e, spec.n_ff as u64],
            random(spec.n_embd * spec.n_ff, 0.2),
        ));
        g.tensor(t(
            p("ffn_up"),
            vec![e, spec.n_ff as u64],
            random(spec.n_embd * spec.n_ff, 0.2),
        ));
        let mut d = random(spec.n_ff * spec.n_embd, 0.2);
        d[..spec.n_ff].fill(0.0);
        g.tensor(t(p("ffn_down"), vec![spec.n_ff as u64, e], d));
    }
}

/// Writes a tiny model to `path`.
pub fn write_tiny_model(path: &Path, spec: TinyModelSpec) -> io::Result<()> {
    let (mut tokens, merges) = train_bpe(spec.n_merges);
    let n_normal = tokens.len();
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    tokens.extend(specials.iter().map(|s| s.to_string()));
    let n_vocab = tokens.len();
    let mut token_type = vec![1i32; n_normal];
    token_type.extend([3, 3, 3]);
    let bos = n_normal as u32;
    let eos = n_normal as u32 + 2;

    let head_dim = spec.n_embd / spec.n_head;
    let mut g = GgufWriter::new();
    let u = |v: usize| MetaValue::U32(v as u32);
    g.meta("general.architecture", MetaValue::Str("llama".into()))
        .meta("general.name", MetaValue::Str("yap-tiny-test".into()))
        .meta("general.file_type", MetaValue::U32(0))
        .meta("llama.context_length", MetaValue::U32(spec.context_length))
        .meta("llama.embedding_length", u(spec.n_embd))
        .meta("llama.block_count", u(spec.n_layer))
        .meta("llama.feed_forward_length", u(spec.n_ff))
        .meta("llama.attention.head_count", u(spec.n_head))
        .meta("llama.attention.head_count_kv", u(spec.n_head_kv))
        .meta(
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F32(1e-5),
        )
        .meta("llama.rope.dimension_count", u(head_dim))
        .meta("llama.rope.freq_base", MetaValue::F32(10000.0))
        .meta("llama.vocab_size", u(n_vocab))
        .meta("tokenizer.ggml.model", MetaValue::Str("gpt2".into()))
        .meta("tokenizer.ggml.pre", MetaValue::Str("gpt-2".into()))
        .meta("tokenizer.ggml.tokens", MetaValue::StrArray(tokens))
        .meta("tokenizer.ggml.token_type", MetaValue::I32Array(token_type))
        .meta("tokenizer.ggml.merges", MetaValue::StrArray(merges))
        .meta("tokenizer.ggml.bos_token_id", MetaValue::U32(bos))
        .meta("tokenizer.ggml.eos_token_id", MetaValue::U32(eos))
        .meta("tokenizer.ggml.padding_token_id", MetaValue::U32(bos))
        .meta("tokenizer.ggml.add_bos_token", MetaValue::Bool(false))
        .meta(
            "tokenizer.chat_template",
            MetaValue::Str(CHATML_TEMPLATE.into()),
        );

    write_tensors(&mut g, &spec, n_vocab, n_normal);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("gguf.tmp");
    {
        let mut f = BufWriter::new(std::fs::File::create(&tmp)?);
        g.write(&mut f)?;
        std::io::Write::flush(&mut f)?;
    }
    std::fs::rename(tmp, path)
}

/// Writes the same tokenizer as a Hugging Face folder (`tokenizer.json`, byte-level BPE, and
/// `tokenizer_config.json` with the ChatML template), as an HF checkpoint of the model would
/// ship it.
pub fn write_tiny_hf_tokenizer(dir: &Path, spec: TinyModelSpec) -> io::Result<()> {
    let (tokens, merges) = train_bpe(spec.n_merges);
    let n = tokens.len();
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), serde_json::json!(i)))
        .collect();
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(k, t)| {
            serde_json::json!({"id": n + k, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false,
        "trim_offsets": true, "use_regex": true});
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": byte_level, "post_processor": null,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges},
    });
    let config = serde_json::json!({"chat_template": CHATML_TEMPLATE,
        "bos_token": "<|endoftext|>", "eos_token": "<|im_end|>"});
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string())?;
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_and_gguf_tokenizers_agree() {
        use yap_core::prompt::{ChatMessage, PromptFormat, Role};
        let dir = std::env::temp_dir().join(format!("yap-tiny-tok-{}", std::process::id()));
        let spec = TinyModelSpec::default();
        write_tiny_model(&dir.join("tiny.gguf"), spec).unwrap();
        write_tiny_hf_tokenizer(&dir.join("hf"), spec).unwrap();
        let gguf =
            PromptFormat::new(yap_llama::vocab::load_model_text(&dir.join("tiny.gguf")).unwrap())
                .unwrap();
        let hf = PromptFormat::new(yap_core::prompt::hf::load(&dir.join("hf")).unwrap()).unwrap();
        for text in [
            "Hello there, how are you today?",
            "Who was Columbus? 1492!",
            "  odd   spacing\n",
        ] {
            assert_eq!(gguf.count(text), hf.count(text), "{text:?}");
        }
        let msgs = [ChatMessage::new(Role::User, "Hi <|im_end|> there")];
        let a = hf.encode_chat(&msgs).unwrap();
        let b = gguf.encode_chat(&msgs).unwrap();
        assert_eq!(a.text, b.text);
        assert_eq!(a.ids, b.ids);
        assert_eq!(
            hf.truncate("Tell me a joke about the weather", 3, true),
            gguf.truncate("Tell me a joke about the weather", 3, true)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bpe_is_deterministic_and_consistent() {
        let (vocab, merges) = train_bpe(50);
        let (vocab2, merges2) = train_bpe(50);
        assert_eq!(vocab, vocab2);
        assert_eq!(merges, merges2);
        assert_eq!(vocab.len(), 256 + merges.len());
        for m in &merges {
            let (a, b) = m.split_once(' ').unwrap();
            assert!(vocab.contains(&a.to_string()) && vocab.contains(&format!("{a}{b}")));
        }
    }
}
