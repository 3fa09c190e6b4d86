//! Token sampling for the embedded engine, one [`Sampler`] per generation.
//!
//! llama.cpp's penalties sampler looks every vocabulary entry up in a hash map on every token
//! (~150k lookups for Qwen's vocabulary, milliseconds per stream per step, more than a GPU decode
//! step of a small model takes). Here the repetition, frequency and presence penalties are
//! applied to the few recently generated tokens directly, on a copy of the logits; greedy
//! decoding is an argmax over that copy, and any other setting goes through llama.cpp's own
//! samplers (top-k, top-p, min-p, temperature, distribution).
//!
//! Invariant (tested against llama.cpp's samplers): for the same logits, generated tokens and
//! seed, the token chosen is the one llama.cpp's chain `penalties(last 64) → greedy` or
//! `penalties(last 64) → top_k → top_p → min_p → temp → dist` chooses.

use std::collections::{HashMap, VecDeque};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use yap_engine_api::SamplingParams;

/// Generated tokens the penalties look back on (llama.cpp's `penalty_last_n` as Yap sets it).
pub const PENALTY_LAST_N: usize = 64;

/// Repetition, frequency and presence penalties over the last generated tokens.
#[derive(Debug, Clone)]
struct Penalties {
    repeat: f32,
    freq: f32,
    present: f32,
    window: VecDeque<i32>,
    counts: HashMap<i32, u32>,
}

impl Penalties {
    fn accept(&mut self, token: i32) {
        if self.window.len() >= PENALTY_LAST_N
            && let Some(old) = self.window.pop_front()
            && let Some(c) = self.counts.get_mut(&old)
        {
            *c -= 1;
            if *c == 0 {
                self.counts.remove(&old);
            }
        }
        *self.counts.entry(token).or_insert(0) += 1;
        self.window.push_back(token);
    }

    /// llama.cpp's formula, on the logits of the tokens seen only.
    fn apply(&self, logits: &mut [f32]) {
        for (&token, &count) in &self.counts {
            let Some(l) = usize::try_from(token).ok().and_then(|i| logits.get_mut(i)) else {
                continue;
            };
            if *l <= 0.0 {
                *l *= self.repeat;
            } else {
                *l /= self.repeat;
            }
            *l -= count as f32 * self.freq + self.present;
        }
    }
}

/// The sampler of one generation.
pub struct Sampler {
    penalties: Option<Penalties>,
    /// llama.cpp's chain after the penalties; `None` = greedy.
    chain: Option<LlamaSampler>,
    scratch: Vec<f32>,
}

impl Sampler {
    /// A sampler for these settings.
    pub fn new(s: &SamplingParams) -> Self {
        let penalties = (s.repetition_penalty != 1.0
            || s.frequency_penalty != 0.0
            || s.presence_penalty != 0.0)
            .then(|| Penalties {
                repeat: s.repetition_penalty,
                freq: s.frequency_penalty,
                present: s.presence_penalty,
                window: VecDeque::with_capacity(PENALTY_LAST_N),
                counts: HashMap::new(),
            });
        let chain = (s.temperature > 0.0).then(|| {
            let mut chain = Vec::new();
            if s.top_k > 0 {
                chain.push(LlamaSampler::top_k(s.top_k));
            }
            if s.top_p < 1.0 {
                chain.push(LlamaSampler::top_p(s.top_p, 1));
            }
            if s.min_p > 0.0 {
                chain.push(LlamaSampler::min_p(s.min_p, 1));
            }
            chain.push(LlamaSampler::temp(s.temperature));
            chain.push(LlamaSampler::dist(s.seed.unwrap_or_else(rand::random)));
            LlamaSampler::chain_simple(chain)
        });
        Self {
            penalties,
            chain,
            scratch: Vec::new(),
        }
    }

    /// Samples the token after output `idx` of the last decode, and records it.
    pub fn sample(&mut self, ctx: &LlamaContext<'_>, idx: i32) -> LlamaToken {
        let token = self.choose(ctx.get_logits_ith(idx));
        self.accept(token);
        token
    }

    /// Records a token as generated (for the penalties).
    pub fn accept(&mut self, token: LlamaToken) {
        if let Some(p) = &mut self.penalties {
            p.accept(token.0);
        }
    }

    /// The token these logits give, without recording it.
    pub fn choose(&mut self, logits: &[f32]) -> LlamaToken {
        let logits = match &self.penalties {
            Some(p) => {
                self.scratch.clear();
                self.scratch.extend_from_slice(logits);
                p.apply(&mut self.scratch);
                self.scratch.as_slice()
            }
            None => logits,
        };
        match &mut self.chain {
            None => LlamaToken(argmax(logits) as i32),
            Some(chain) => {
                let data = logits
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| LlamaTokenData::new(LlamaToken(i as i32), l, 0.0));
                let mut array = LlamaTokenDataArray::from_iter(data, false);
                array.apply_sampler(chain);
                array
                    .selected_token()
                    .unwrap_or_else(|| LlamaToken(argmax(logits) as i32))
            }
        }
    }
}

/// The index of the first largest value (llama.cpp's greedy rule); 0 for an empty slice.
fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate().skip(1) {
        if x > v[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// llama.cpp's own chain over the same logits, with the same generated tokens accepted.
    fn reference(s: &SamplingParams, history: &[i32], logits: &[f32]) -> i32 {
        let mut chain = vec![LlamaSampler::penalties(
            logits.len() as i32,
            PENALTY_LAST_N as i32,
            s.repetition_penalty,
            s.frequency_penalty,
            s.presence_penalty,
        )];
        if s.temperature <= 0.0 {
            chain.push(LlamaSampler::greedy());
        } else {
            chain.push(LlamaSampler::top_k(s.top_k));
            chain.push(LlamaSampler::top_p(s.top_p, 1));
            chain.push(LlamaSampler::min_p(s.min_p, 1));
            chain.push(LlamaSampler::temp(s.temperature));
            chain.push(LlamaSampler::dist(s.seed.unwrap_or(0)));
        }
        let mut chain = LlamaSampler::chain_simple(chain);
        chain.accept_many(history.iter().map(|&t| LlamaToken(t)));
        let data = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| LlamaTokenData::new(LlamaToken(i as i32), l, 0.0));
        let mut array = LlamaTokenDataArray::from_iter(data, false);
        array.apply_sampler(&mut chain);
        array.selected_token().map(|t| t.0).unwrap_or(-1)
    }

    fn ours(s: &SamplingParams, history: &[i32], logits: &[f32]) -> i32 {
        let mut sampler = Sampler::new(s);
        for &t in history {
            sampler.accept(LlamaToken(t));
        }
        sampler.choose(logits).0
    }

    fn params(greedy: bool, rep: f32, freq: f32, pres: f32) -> SamplingParams {
        SamplingParams {
            temperature: if greedy { 0.0 } else { 0.8 },
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: rep,
            frequency_penalty: freq,
            presence_penalty: pres,
            seed: Some(7),
        }
    }

    #[test]
    fn a_repeated_favourite_loses_to_the_runner_up() {
        let mut logits = vec![0.0f32; 1000];
        logits[5] = 10.0;
        logits[9] = 9.5;
        let s = params(true, 1.1, 0.0, 0.0);
        assert_eq!(ours(&s, &[], &logits), 5);
        assert_eq!(ours(&s, &[5], &logits), 9, "10 / 1.1 < 9.5");
        // Out of the window again after 64 other tokens.
        let mut history = vec![5];
        history.extend(std::iter::repeat_n(1, PENALTY_LAST_N));
        assert_eq!(ours(&s, &history, &logits), 5);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn the_same_token_as_llama_cpps_own_samplers(
            logits in proptest::collection::vec(-8.0f32..8.0, 200..400),
            history in proptest::collection::vec(0i32..200, 0..150),
            greedy in any::<bool>(),
            rep in 0.8f32..1.5,
            freq in 0.0f32..0.5,
            pres in 0.0f32..0.5,
        ) {
            let s = params(greedy, rep, freq, pres);
            prop_assert_eq!(ours(&s, &history, &logits), reference(&s, &history, &logits));
        }
    }
}
