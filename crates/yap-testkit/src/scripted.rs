//! A scripted chat engine: replays events with delays and records every request, so the turn
//! driver's rules can be tested without a model. Also a character-level tokenizer with ChatML.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use yap_engine_api::{
    ChatEngine, EngineError, EngineEvent, EngineInfo, EngineRequest, EngineUsage, FinishReason,
    GenerationStream, ModelText, Readiness, TemplateSource, Tokenizer,
};

/// One scripted reply: text pieces with a delay before each, then how it ends.
#[derive(Debug, Clone)]
pub struct Script {
    /// Delay before each piece.
    pub delay: Duration,
    /// The pieces.
    pub pieces: Vec<String>,
    /// `None` = finish normally; `Some(e)` = fail with it after the pieces.
    pub fail: Option<EngineError>,
}

impl Script {
    /// A reply of these pieces, `delay` apart.
    pub fn reply(pieces: &[&str], delay: Duration) -> Self {
        Self {
            delay,
            pieces: pieces.iter().map(|s| (*s).to_owned()).collect(),
            fail: None,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    scripts: Mutex<VecDeque<Script>>,
    default: Mutex<Option<Script>>,
    requests: Mutex<Vec<EngineRequest>>,
    released: Mutex<Vec<String>>,
    cancelled: AtomicU64,
}

/// The scripted engine.
#[derive(Debug, Default, Clone)]
pub struct ScriptedEngine {
    s: Arc<State>,
}

impl ScriptedEngine {
    /// An engine that answers every request with `default`.
    pub fn new(default: Script) -> Self {
        let e = Self::default();
        if let Ok(mut d) = e.s.default.lock() {
            *d = Some(default);
        }
        e
    }

    /// Queues a script for the next request (before the default).
    pub fn push(&self, script: Script) {
        if let Ok(mut q) = self.s.scripts.lock() {
            q.push_back(script);
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<EngineRequest> {
        self.s
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Keys released so far.
    pub fn released(&self) -> Vec<String> {
        self.s
            .released
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Generations that saw their consumer cancel.
    pub fn cancelled(&self) -> u64 {
        self.s.cancelled.load(Ordering::Relaxed)
    }

    fn next_script(&self) -> Option<Script> {
        let queued = self.s.scripts.lock().ok().and_then(|mut q| q.pop_front());
        queued.or_else(|| self.s.default.lock().ok().and_then(|d| d.clone()))
    }
}

impl ChatEngine for ScriptedEngine {
    fn info(&self) -> EngineInfo {
        EngineInfo {
            kind: "scripted".into(),
            model: "scripted".into(),
            context_tokens: 1 << 20,
        }
    }

    fn readiness(&self) -> Readiness {
        Readiness::Ready
    }

    fn generate(&self, request: EngineRequest) -> Result<GenerationStream, EngineError> {
        let script = self
            .next_script()
            .ok_or_else(|| EngineError::Unavailable("no script".into()))?;
        let prompt_tokens = request.prompt.len() as u32;
        if let Ok(mut r) = self.s.requests.lock() {
            r.push(request);
        }
        let (stream, tx) = GenerationStream::channel();
        let me = Arc::clone(&self.s);
        tokio::spawn(async move {
            let mut n = 0u32;
            for piece in script.pieces {
                tokio::select! {
                    () = tx.cancelled() => {
                        me.cancelled.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    () = tokio::time::sleep(script.delay) => {}
                }
                n += 1;
                tx.send(EngineEvent::Text(piece));
            }
            let ev = match script.fail {
                Some(e) => EngineEvent::Failed(e),
                None => EngineEvent::Finished {
                    usage: EngineUsage {
                        prompt_tokens,
                        cached_prompt_tokens: 0,
                        completion_tokens: n,
                    },
                    reason: FinishReason::Stop,
                },
            };
            tx.send(ev);
        });
        Ok(stream)
    }

    fn release(&self, cache_key: &str) {
        if let Ok(mut r) = self.s.released.lock() {
            r.push(cache_key.to_owned());
        }
    }
}

/// One token per character; ChatML specials are single tokens.
#[derive(Debug, Default, Clone, Copy)]
pub struct CharTokenizer;

const SPECIALS: [(&str, u32); 2] = [("<|im_start|>", 0x11_0000), ("<|im_end|>", 0x11_0001)];

impl Tokenizer for CharTokenizer {
    fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        let mut rest = text;
        'outer: while let Some(c) = rest.chars().next() {
            if parse_special {
                for (s, id) in SPECIALS {
                    if let Some(r) = rest.strip_prefix(s) {
                        out.push(id);
                        rest = r;
                        continue 'outer;
                    }
                }
            }
            out.push(c as u32);
            rest = &rest[c.len_utf8()..];
        }
        out
    }

    fn decode(&self, ids: &[u32]) -> String {
        ids.iter().filter_map(|&i| char::from_u32(i)).collect()
    }

    fn bos_to_add(&self) -> Option<u32> {
        None
    }

    fn special_tokens(&self) -> Vec<(String, u32)> {
        SPECIALS
            .iter()
            .map(|(s, i)| ((*s).to_owned(), *i))
            .collect()
    }
}

/// A ChatML model text over [`CharTokenizer`] (token counts = characters).
pub fn char_model_text() -> ModelText {
    ModelText {
        name: "scripted-instruct".into(),
        tokenizer: Arc::new(CharTokenizer),
        template: TemplateSource {
            source: Some(yap_core::prompt::template::CHATML_TEMPLATE.into()),
            arch: "llama".into(),
            bos: String::new(),
            eos: String::new(),
        },
    }
}
