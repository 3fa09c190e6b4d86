//! The embedded engine: llama.cpp (GGUF) in-process, one decode thread.
//!
//! - Continuous batching: every active generation shares one `llama_batch` per step (one
//!   sequence id each); new requests join between steps, finished or aborted ones leave.
//!   Prompt prefill is chunked into the same batches so a long prompt never stalls the streams
//!   already decoding for more than one step.
//! - Per-session prefix reuse: each cache key (session) owns a KV sequence. A new prompt reuses
//!   the longest common token prefix with what that sequence holds and prefills only the rest.
//!   Idle sequences are evicted least-recently-used when slots or KV cells run out.
//! - Abort: checked before every step; an aborted request leaves the batch at the next step.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc as std_mpsc};
use std::thread::JoinHandle;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::{DecodeError, LogOptions, send_logs_to_tracing};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::text::TextModel;
use crate::{
    AbortHandle, ChatEngine, ChatMessage, EngineError, EngineEvent, EngineInfo, EngineStats,
    EngineUsage, FinishReason, GenerateRequest, GenerationStream, SamplingParams, StopFilter,
};

static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();

/// The process-wide llama.cpp backend (initialised once).
pub(crate) fn backend() -> Result<&'static LlamaBackend, EngineError> {
    BACKEND
        .get_or_init(|| {
            send_logs_to_tracing(LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::Unavailable(format!("llama backend: {e}")))
}

/// Settings of the embedded engine.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    /// Path to the GGUF file.
    pub model_path: PathBuf,
    /// KV cache cells shared by all sequences (unified cache).
    pub kv_tokens: u32,
    /// Most sessions kept in the cache at once (sequence slots).
    pub max_sequences: u32,
    /// Tokens one sequence may hold (prompt + reply), `CHAT_MAX_LEN`.
    pub max_sequence_tokens: u32,
    /// Most tokens per decode step (prefill chunks + one per decoding stream).
    pub batch_tokens: u32,
    /// CPU threads; 0 = all cores.
    pub threads: u32,
    /// Layers offloaded to the GPU (with the `cuda` feature); 0 = CPU only.
    pub gpu_layers: u32,
    /// Share cached prefixes across sessions (same persona → no prefill for a new session).
    pub share_prefixes: bool,
}

impl LlamaConfig {
    /// Defaults for a model path.
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        Self {
            model_path: model_path.into(),
            kv_tokens: 32768,
            max_sequences: 32,
            max_sequence_tokens: 5525,
            batch_tokens: 512,
            threads: 0,
            gpu_layers: 0,
            share_prefixes: true,
        }
    }
}

struct Job {
    cache_key: String,
    stop: Vec<String>,
    tokens: Vec<LlamaToken>,
    sampling: SamplingParams,
    max_new: u32,
    tx: mpsc::UnboundedSender<EngineEvent>,
    abort: AbortHandle,
}

impl Job {
    fn is_cancelled(&self) -> bool {
        self.abort.is_aborted() || self.tx.is_closed()
    }
}

enum Command {
    Generate(Job),
    Release(String),
    Shutdown,
}

#[derive(Debug, Default)]
struct Counters {
    active: AtomicU64,
    steps: AtomicU64,
    shared_prefix_tokens: AtomicU64,
    peak_batch_sequences: AtomicU64,
    generations: AtomicU64,
    cached_prompt_tokens: AtomicU64,
}

/// The embedded llama.cpp engine.
pub struct LlamaEngine {
    counters: Arc<Counters>,
    text: TextModel,
    commands: Mutex<std_mpsc::Sender<Command>>,
    running: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    info: EngineInfo,
}

impl std::fmt::Debug for LlamaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaEngine")
            .field("info", &self.info)
            .finish()
    }
}

impl LlamaEngine {
    /// Loads the model and starts the decode thread; returns once the engine can serve.
    pub fn start(config: LlamaConfig) -> Result<Self, EngineError> {
        let backend = backend()?;
        let load_err = |reason: String| EngineError::Load {
            path: config.model_path.display().to_string(),
            reason,
        };
        if !config.model_path.is_file() {
            return Err(load_err("no such file".into()));
        }
        let mut params = LlamaModelParams::default();
        if config.gpu_layers > 0 {
            params = params.with_n_gpu_layers(config.gpu_layers);
        }
        let model = LlamaModel::load_from_file(backend, &config.model_path, &params)
            .map_err(|e| load_err(e.to_string()))?;
        let model = Arc::new(model);
        let text = TextModel::from_llama(Arc::clone(&model))?;

        let (tx, rx) = std_mpsc::channel();
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let running = Arc::new(AtomicBool::new(false));
        let thread_model = Arc::clone(&model);
        let thread_running = Arc::clone(&running);
        let thread_config = config.clone();
        let counters = Arc::new(Counters::default());
        let thread_counters = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name("yap-llama".into())
            .spawn(move || {
                decode_thread(
                    backend,
                    &thread_model,
                    &thread_config,
                    rx,
                    ready_tx,
                    &thread_running,
                    thread_counters,
                )
            })
            .map_err(|e| load_err(format!("cannot spawn decode thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(load_err(e)),
            Err(_) => return Err(load_err("decode thread exited during start".into())),
        }
        let name = config
            .model_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        info!(
            model = %name,
            params = model.n_params(),
            kv_tokens = config.kv_tokens,
            sequences = config.max_sequences,
            "embedded engine ready"
        );
        let stops = text.stops.clone();
        Ok(Self {
            counters,
            text,
            commands: Mutex::new(tx),
            running,
            thread: Mutex::new(Some(thread)),
            info: EngineInfo {
                kind: "embedded".into(),
                model: name,
                context_tokens: config.max_sequence_tokens.min(config.kv_tokens) as usize,
                stop_sequences: stops,
            },
        })
    }

    fn send(&self, cmd: Command) -> Result<(), EngineError> {
        let guard = self
            .commands
            .lock()
            .map_err(|_| EngineError::Unavailable("engine lock poisoned".into()))?;
        guard
            .send(cmd)
            .map_err(|_| EngineError::Unavailable("decode thread stopped".into()))
    }

    fn tokenize(&self, text: &str, special: bool) -> Vec<LlamaToken> {
        self.text.tokenize(text, special)
    }

    /// Stops the decode thread and waits for it.
    pub fn shutdown(&self) {
        let _ = self.send(Command::Shutdown);
        if let Ok(mut guard) = self.thread.lock()
            && let Some(handle) = guard.take()
        {
            let _ = handle.join();
        }
    }
}

impl Drop for LlamaEngine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl ChatEngine for LlamaEngine {
    fn info(&self) -> EngineInfo {
        self.info.clone()
    }

    fn is_ready(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    fn render(&self, messages: &[ChatMessage]) -> Result<String, EngineError> {
        self.text.render(messages)
    }

    fn count_tokens(&self, text: &str) -> usize {
        self.text.count_tokens(text)
    }

    fn truncate_tokens(&self, text: &str, max_tokens: usize, keep_start: bool) -> String {
        self.text.truncate_tokens(text, max_tokens, keep_start)
    }

    fn generate(&self, request: GenerateRequest) -> Result<GenerationStream, EngineError> {
        if !self.is_ready() {
            return Err(EngineError::Unavailable(
                "embedded engine is not running".into(),
            ));
        }
        let tokens = self.tokenize(&request.prompt, true);
        let limit = self.info.context_tokens;
        if tokens.is_empty() || tokens.len() + (request.max_new_tokens as usize) > limit {
            return Err(EngineError::ContextOverflow {
                prompt: tokens.len() + request.max_new_tokens as usize,
                context: limit,
            });
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let abort = AbortHandle::new();
        let mut stop = self.info.stop_sequences.clone();
        stop.extend(request.stop);
        self.send(Command::Generate(Job {
            cache_key: request.cache_key,
            stop,
            tokens,
            sampling: request.sampling,
            max_new: request.max_new_tokens,
            tx,
            abort: abort.clone(),
        }))?;
        Ok(GenerationStream::new(rx, abort))
    }

    fn release(&self, cache_key: &str) {
        let _ = self.send(Command::Release(cache_key.to_owned()));
    }

    fn stats(&self) -> EngineStats {
        let c = &self.counters;
        EngineStats {
            active_generations: c.active.load(Ordering::Relaxed),
            steps: c.steps.load(Ordering::Relaxed),
            peak_batch_sequences: c.peak_batch_sequences.load(Ordering::Relaxed),
            generations: c.generations.load(Ordering::Relaxed),
            cached_prompt_tokens: c.cached_prompt_tokens.load(Ordering::Relaxed),
            shared_prefix_tokens: c.shared_prefix_tokens.load(Ordering::Relaxed),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decode thread

#[derive(Default)]
struct Slot {
    key: Option<String>,
    /// Tokens whose KV the sequence holds, in position order.
    tokens: Vec<LlamaToken>,
    last_used: u64,
    active: bool,
}

struct Active {
    slot: usize,
    job: Job,
    /// Index of the next prompt token to feed.
    fed: usize,
    /// A sampled token not fed yet.
    pending: Option<LlamaToken>,
    sampler: LlamaSampler,
    generated: u32,
    cached: usize,
    utf8: Vec<u8>,
    filter: StopFilter,
    logits_at: Option<i32>,
    fed_this_step: usize,
}

struct Scheduler<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    slots: Vec<Slot>,
    by_key: HashMap<String, usize>,
    active: Vec<Active>,
    waiting: VecDeque<Job>,
    tick: u64,
    kv_tokens: usize,
    batch_tokens: usize,
    share_prefixes: bool,
    counters: Arc<Counters>,
}

fn decode_thread(
    backend: &'static LlamaBackend,
    model: &LlamaModel,
    config: &LlamaConfig,
    rx: std_mpsc::Receiver<Command>,
    ready: std_mpsc::Sender<Result<(), String>>,
    running: &AtomicBool,
    counters: Arc<Counters>,
) {
    let threads = if config.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get() as i32)
    } else {
        config.threads as i32
    };
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(config.kv_tokens))
        .with_n_batch(config.batch_tokens)
        .with_n_ubatch(config.batch_tokens)
        .with_n_seq_max(config.max_sequences)
        .with_kv_unified(true)
        .with_swa_full(true)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let ctx = match model.new_context(backend, params) {
        Ok(ctx) => ctx,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot create context: {e}")));
            return;
        }
    };
    let mut sched = Scheduler {
        model,
        slots: (0..config.max_sequences).map(|_| Slot::default()).collect(),
        by_key: HashMap::new(),
        active: Vec::new(),
        waiting: VecDeque::new(),
        tick: 0,
        kv_tokens: ctx.n_ctx() as usize,
        batch_tokens: config.batch_tokens as usize,
        share_prefixes: config.share_prefixes,
        counters,
        ctx,
    };
    running.store(true, Ordering::Release);
    let _ = ready.send(Ok(()));
    let mut batch = LlamaBatch::new(sched.batch_tokens, 1);
    loop {
        // Block when idle; otherwise drain whatever arrived since the last step.
        if sched.active.is_empty() && sched.waiting.is_empty() {
            match rx.recv() {
                Ok(cmd) => {
                    if !sched.handle(cmd) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let mut stop = false;
        while let Ok(cmd) = rx.try_recv() {
            if !sched.handle(cmd) {
                stop = true;
                break;
            }
        }
        if stop {
            break;
        }
        sched.drop_cancelled();
        sched.admit_waiting();
        if !sched.active.is_empty() {
            sched.step(&mut batch);
        }
        sched.counters.active.store(
            (sched.active.len() + sched.waiting.len()) as u64,
            Ordering::Relaxed,
        );
    }
    running.store(false, Ordering::Release);
    for a in sched.active.drain(..) {
        let _ = a.job.tx.send(EngineEvent::Failed(EngineError::Unavailable(
            "engine shut down".into(),
        )));
    }
    debug!("decode thread stopped");
}

/// Shortest prefix worth sharing from another session instead of prefilling it.
const MIN_SHARED_PREFIX: usize = 16;

fn lcp(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn build_sampler(model: &LlamaModel, s: &SamplingParams) -> LlamaSampler {
    let mut chain = Vec::new();
    if s.repetition_penalty != 1.0 || s.frequency_penalty != 0.0 || s.presence_penalty != 0.0 {
        chain.push(LlamaSampler::penalties(
            model.n_vocab(),
            64,
            s.repetition_penalty,
            s.frequency_penalty,
            s.presence_penalty,
        ));
    }
    if s.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
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
    }
    LlamaSampler::chain_simple(chain)
}

impl Scheduler<'_> {
    /// Applies a command; false means shut down.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Generate(job) => self.waiting.push_back(job),
            Command::Release(key) => {
                if let Some(&slot) = self.by_key.get(&key)
                    && !self.slots[slot].active
                {
                    self.evict(slot);
                }
            }
            Command::Shutdown => return false,
        }
        true
    }

    fn evict(&mut self, slot: usize) {
        let _ = self.ctx.clear_kv_cache_seq(Some(slot as u32), None, None);
        if let Some(key) = self.slots[slot].key.take() {
            self.by_key.remove(&key);
        }
        self.slots[slot].tokens.clear();
    }

    fn finish(&mut self, idx: usize, event: EngineEvent) {
        let mut a = self.active.swap_remove(idx);
        if !a.utf8.is_empty() {
            let rest = String::from_utf8_lossy(&a.utf8).into_owned();
            a.utf8.clear();
            let _ = a.filter.push(&rest);
        }
        let rest = a.filter.flush();
        if !rest.is_empty() {
            let _ = a.job.tx.send(EngineEvent::Text(rest));
        }
        let _ = a.job.tx.send(event);
        self.tick += 1;
        let slot = &mut self.slots[a.slot];
        slot.active = false;
        slot.last_used = self.tick;
    }

    fn drop_cancelled(&mut self) {
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].job.is_cancelled() {
                let a = self.active.swap_remove(i);
                debug!(key = %a.job.cache_key, generated = a.generated, "generation aborted");
                self.tick += 1;
                let slot = &mut self.slots[a.slot];
                slot.active = false;
                slot.last_used = self.tick;
            } else {
                i += 1;
            }
        }
        self.waiting.retain(|j| !j.is_cancelled());
    }

    /// KV cells held now plus those the active generations may still add.
    fn kv_committed(&self) -> usize {
        let held: usize = self.slots.iter().map(|s| s.tokens.len()).sum();
        let future: usize = self
            .active
            .iter()
            .map(|a| (a.job.tokens.len() - a.fed) + (a.job.max_new - a.generated) as usize)
            .sum();
        held + future
    }

    fn lru_idle(&self, except: Option<usize>) -> Option<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(i, s)| !s.active && s.key.is_some() && Some(*i) != except)
            .min_by_key(|(_, s)| s.last_used)
            .map(|(i, _)| i)
    }

    fn admit_waiting(&mut self) {
        let mut still_waiting = VecDeque::new();
        while let Some(job) = self.waiting.pop_front() {
            if let Some(job) = self.admit(job) {
                still_waiting.push_back(job);
            }
        }
        self.waiting = still_waiting;
    }

    /// Starts a job; gives it back when it must wait (its slot or KV space is busy).
    fn admit(&mut self, job: Job) -> Option<Job> {
        let slot = match self.by_key.get(&job.cache_key) {
            Some(&s) if self.slots[s].active => return Some(job),
            Some(&s) => s,
            None => {
                let free = self.slots.iter().position(|s| s.key.is_none() && !s.active);
                let s = match free.or_else(|| self.lru_idle(None)) {
                    Some(s) => s,
                    None => return Some(job),
                };
                self.evict(s);
                self.slots[s].key = Some(job.cache_key.clone());
                self.by_key.insert(job.cache_key.clone(), s);
                s
            }
        };
        // Reuse the longest common prefix; at least one prompt token is fed again so the
        // model produces logits for the first sampled token.
        let cap = if job.max_new > 0 {
            job.tokens.len() - 1
        } else {
            job.tokens.len()
        };
        let mut keep = lcp(&self.slots[slot].tokens, &job.tokens).min(cap);
        // Another session may hold a longer common prefix (the same persona, say): share its
        // KV cells (a unified cache tags cells with several sequence ids; nothing is copied).
        let donor = self
            .slots
            .iter()
            .enumerate()
            .filter(|(i, s)| self.share_prefixes && *i != slot && s.key.is_some())
            .map(|(i, s)| (i, lcp(&s.tokens, &job.tokens).min(cap)))
            .max_by_key(|(_, n)| *n);
        match donor {
            Some((src, shared)) if shared > keep + MIN_SHARED_PREFIX => {
                let _ = self.ctx.clear_kv_cache_seq(Some(slot as u32), None, None);
                let copied = self.ctx.copy_kv_cache_seq(
                    src as i32,
                    slot as i32,
                    Some(0),
                    Some(shared as u32),
                );
                if copied.is_ok() {
                    let prefix = self.slots[src].tokens[..shared].to_vec();
                    self.slots[slot].tokens = prefix;
                    keep = shared;
                    self.counters
                        .shared_prefix_tokens
                        .fetch_add(shared as u64, Ordering::Relaxed);
                } else {
                    self.slots[slot].tokens.clear();
                    keep = 0;
                }
            }
            _ => {
                if keep < self.slots[slot].tokens.len() {
                    let ok = self
                        .ctx
                        .clear_kv_cache_seq(Some(slot as u32), Some(keep as u32), None)
                        .unwrap_or(false);
                    if !ok {
                        let _ = self.ctx.clear_kv_cache_seq(Some(slot as u32), None, None);
                        keep = 0;
                    }
                    self.slots[slot].tokens.truncate(keep);
                }
            }
        }
        // Make room in the KV cache by evicting idle sessions, oldest first.
        let needed = (job.tokens.len() - keep) + job.max_new as usize;
        while self.kv_committed() + needed > self.kv_tokens {
            match self.lru_idle(Some(slot)) {
                Some(victim) => self.evict(victim),
                None => break,
            }
        }
        if self.kv_committed() + needed > self.kv_tokens {
            if self.active.is_empty() {
                let _ = job
                    .tx
                    .send(EngineEvent::Failed(EngineError::ContextOverflow {
                        prompt: job.tokens.len() + job.max_new as usize,
                        context: self.kv_tokens,
                    }));
                return None;
            }
            return Some(job);
        }
        self.tick += 1;
        self.slots[slot].active = true;
        self.slots[slot].last_used = self.tick;
        let sampler = build_sampler(self.model, &job.sampling);
        self.counters.generations.fetch_add(1, Ordering::Relaxed);
        self.counters
            .cached_prompt_tokens
            .fetch_add(keep as u64, Ordering::Relaxed);
        debug!(key = %job.cache_key, prompt = job.tokens.len(), cached = keep, "generation admitted");
        self.active.push(Active {
            slot,
            fed: keep,
            pending: None,
            sampler,
            generated: 0,
            cached: keep,
            utf8: Vec::new(),
            filter: StopFilter::new(job.stop.clone()),
            logits_at: None,
            fed_this_step: 0,
            job,
        });
        // A prefill-only job whose prompt is fully cached is already done.
        let last = self.active.len() - 1;
        if self.active[last].job.max_new == 0
            && self.active[last].fed == self.active[last].job.tokens.len()
        {
            let usage = self.usage(last);
            self.finish(
                last,
                EngineEvent::Finished {
                    usage,
                    reason: FinishReason::Prefilled,
                },
            );
        }
        None
    }

    fn usage(&self, idx: usize) -> EngineUsage {
        let a = &self.active[idx];
        EngineUsage {
            prompt_tokens: a.job.tokens.len() as u32,
            cached_prompt_tokens: a.cached as u32,
            completion_tokens: a.generated,
        }
    }

    fn fill_batch(&mut self, batch: &mut LlamaBatch) -> Result<(), String> {
        batch.clear();
        let mut n: i32 = 0;
        let budget = self.batch_tokens as i32;
        // Decoding streams first: one token each, so they advance every step.
        for a in &mut self.active {
            a.logits_at = None;
            a.fed_this_step = 0;
            if let Some(tok) = a.pending
                && n < budget
            {
                let pos = self.slots[a.slot].tokens.len() as i32;
                batch
                    .add(tok, pos, &[a.slot as i32], true)
                    .map_err(|e| e.to_string())?;
                a.logits_at = Some(n);
                n += 1;
            }
        }
        // Then prompt chunks with the budget left.
        for a in &mut self.active {
            if a.pending.is_some() || a.fed >= a.job.tokens.len() {
                continue;
            }
            let left = (budget - n).max(0) as usize;
            let chunk = (a.job.tokens.len() - a.fed).min(left);
            if chunk == 0 {
                break;
            }
            for i in 0..chunk {
                let idx = a.fed + i;
                let last = idx + 1 == a.job.tokens.len();
                let want_logits = last && a.job.max_new > 0;
                batch
                    .add(a.job.tokens[idx], idx as i32, &[a.slot as i32], want_logits)
                    .map_err(|e| e.to_string())?;
                if want_logits {
                    a.logits_at = Some(n);
                }
                n += 1;
            }
            a.fed_this_step = chunk;
        }
        Ok(())
    }

    fn step(&mut self, batch: &mut LlamaBatch) {
        if let Err(e) = self.fill_batch(batch) {
            self.fail_all(EngineError::Decode(e));
            return;
        }
        if batch.n_tokens() == 0 {
            return;
        }
        let seqs = self
            .active
            .iter()
            .filter(|a| a.fed_this_step > 0 || a.pending.is_some())
            .count() as u64;
        self.counters.steps.fetch_add(1, Ordering::Relaxed);
        self.counters
            .peak_batch_sequences
            .fetch_max(seqs, Ordering::Relaxed);
        let mut result = self.ctx.decode(batch);
        if matches!(result, Err(DecodeError::NoKvCacheSlot)) {
            // Fragmented or full cache: evict idle sessions and try once more.
            warn!("KV cache full; evicting idle sessions");
            while let Some(victim) = self.lru_idle(None) {
                self.evict(victim);
            }
            result = self.ctx.decode(batch);
        }
        if let Err(e) = result {
            self.fail_all(EngineError::Decode(e.to_string()));
            return;
        }
        // Record what entered the KV cache.
        for a in &mut self.active {
            let slot = &mut self.slots[a.slot];
            if a.fed_this_step > 0 {
                slot.tokens
                    .extend_from_slice(&a.job.tokens[a.fed..a.fed + a.fed_this_step]);
                a.fed += a.fed_this_step;
            } else if let Some(tok) = a.pending.take() {
                slot.tokens.push(tok);
            }
        }
        // Sample and stream.
        let vocab = self.model.vocab();
        let mut i = 0;
        while i < self.active.len() {
            let outcome = {
                let a = &mut self.active[i];
                if a.job.max_new == 0 && a.fed == a.job.tokens.len() {
                    Some(FinishReason::Prefilled)
                } else if let Some(at) = a.logits_at {
                    let tok = a.sampler.sample(&self.ctx, at);
                    if vocab.is_eog(tok) {
                        Some(FinishReason::Stop)
                    } else {
                        a.generated += 1;
                        a.utf8.extend(vocab.token_to_piece(tok, false, None));
                        let valid = match std::str::from_utf8(&a.utf8) {
                            Ok(s) => s.len(),
                            Err(e) if e.error_len().is_some() => a.utf8.len(),
                            Err(e) => e.valid_up_to(),
                        };
                        let mut stopped = false;
                        if valid > 0 {
                            let text = String::from_utf8_lossy(&a.utf8[..valid]).into_owned();
                            a.utf8.drain(..valid);
                            let (emit, hit) = a.filter.push(&text);
                            if !emit.is_empty() {
                                let _ = a.job.tx.send(EngineEvent::Text(emit));
                            }
                            if hit {
                                a.utf8.clear();
                                stopped = true;
                            }
                        }
                        a.pending = Some(tok);
                        if stopped {
                            Some(FinishReason::Stop)
                        } else {
                            (a.generated >= a.job.max_new).then_some(FinishReason::Length)
                        }
                    }
                } else {
                    None
                }
            };
            match outcome {
                Some(reason) => {
                    let usage = self.usage(i);
                    self.finish(i, EngineEvent::Finished { usage, reason });
                }
                None => i += 1,
            }
        }
    }

    fn fail_all(&mut self, err: EngineError) {
        warn!(error = %err, "decode step failed; failing the active generations");
        while !self.active.is_empty() {
            let slot = self.active[0].slot;
            self.finish(0, EngineEvent::Failed(err.clone()));
            self.evict(slot);
        }
    }
}
