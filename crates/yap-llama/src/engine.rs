//! The embedded engine: llama.cpp (GGUF) in-process, one decode thread.
//!
//! - Continuous batching: every active generation shares one `llama_batch` per step (one
//!   sequence id each); new requests join between steps, finished or cancelled ones leave.
//!   Prompt prefill is chunked into the same batches so a long prompt never stalls the streams
//!   already decoding for more than one step.
//! - Prefix reuse and sharing, eviction and the KV budget are decided by [`SlotTable`]; this
//!   module only applies its decisions to the llama context.
//! - Cancellation: checked before every step; a cancelled request leaves the batch at the next
//!   step and its session's KV stays cached.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

use llama_cpp_2::DecodeError;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;
use tracing::{debug, info, warn};
use yap_engine_api::{
    ChatEngine, EngineError, EngineEvent, EngineInfo, EngineRequest, EngineStats, EngineUsage,
    FinishReason, GenerationStream, ModelText, Readiness, SamplingParams, StreamSender,
};

use crate::LoadError;
use crate::sampler::Sampler;
use crate::slots::{KvOp, Outcome, SlotTable};

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
    /// Layers offloaded to the GPU (with the `cuda` feature and a device found).
    pub gpu_layers: GpuLayers,
    /// One KV cache shared by all sequences (`true`), or one KV stream per sequence of
    /// `kv_tokens / max_sequences` cells (attention then reads only a sequence's own cells).
    pub kv_unified: bool,
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
            gpu_layers: GpuLayers::All,
            kv_unified: true,
            share_prefixes: true,
        }
    }
}

impl LlamaConfig {
    /// KV cells one sequence can hold: all of them in a unified cache, else its stream.
    pub fn sequence_cells(&self) -> u32 {
        if self.kv_unified {
            self.kv_tokens
        } else {
            self.kv_tokens / self.max_sequences.max(1)
        }
    }
}

/// How many layers the embedded engine offloads to the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GpuLayers {
    /// Every layer, when the build has a GPU backend and finds a device (else none).
    #[default]
    All,
    /// At most this many layers (0 = CPU only).
    Count(u32),
}

impl std::str::FromStr for GpuLayers {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") {
            return Ok(Self::All);
        }
        s.parse()
            .map(Self::Count)
            .map_err(|_| format!("`{s}` is neither `all` nor a number of layers"))
    }
}

impl std::fmt::Display for GpuLayers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::Count(n) => write!(f, "{n}"),
        }
    }
}

/// Logs the GPUs llama.cpp found and what will be offloaded to them.
fn log_gpu(layers: GpuLayers) {
    use llama_cpp_2::LlamaBackendDeviceType as Kind;
    let gpus: Vec<String> = llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .filter(|d| matches!(d.device_type, Kind::Gpu | Kind::IntegratedGpu))
        .map(|d| {
            format!(
                "{} ({}, {} MiB free)",
                d.description,
                d.backend,
                d.memory_free >> 20
            )
        })
        .collect();
    if gpus.is_empty() {
        info!(gpu_layers = %layers, "no GPU found: the embedded engine runs on the CPU");
    } else {
        info!(gpu_layers = %layers, gpus = %gpus.join(", "), "embedded engine offloads to the GPU");
    }
}

struct Job {
    cache_key: String,
    tokens: Vec<LlamaToken>,
    sampling: SamplingParams,
    max_new: u32,
    tx: StreamSender,
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
    kv_used: AtomicU64,
    kv_moves: AtomicU64,
}

/// The embedded llama.cpp engine.
pub struct LlamaEngine {
    counters: Arc<Counters>,
    text: ModelText,
    commands: Mutex<std_mpsc::Sender<Command>>,
    running: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    info: EngineInfo,
}

impl std::fmt::Debug for LlamaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaEngine")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl LlamaEngine {
    /// Loads the model and starts the decode thread; returns once the engine can serve.
    pub fn start(config: LlamaConfig) -> Result<Self, LoadError> {
        let backend = crate::backend()?;
        let load_err = |reason: String| LoadError {
            path: config.model_path.display().to_string(),
            reason,
        };
        if !config.model_path.is_file() {
            return Err(load_err("no such file".into()));
        }
        let mut params = LlamaModelParams::default();
        // llama.cpp's default offloads every layer (to no device when none is found).
        if let GpuLayers::Count(n) = config.gpu_layers {
            params = params.with_n_gpu_layers(n);
        }
        log_gpu(config.gpu_layers);
        let model = LlamaModel::load_from_file(backend, &config.model_path, &params)
            .map_err(|e| load_err(e.to_string()))?;
        let model = Arc::new(model);
        let text = crate::vocab::model_text(Arc::clone(&model));
        let (tx, rx) = std_mpsc::channel();
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let running = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (m, r, c, cfg) = (
            Arc::clone(&model),
            Arc::clone(&running),
            Arc::clone(&counters),
            config.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("yap-llama".into())
            .spawn(move || decode_thread(backend, &m, &cfg, rx, ready_tx, &r, c))
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
        info!(model = %name, params = model.n_params(), kv_tokens = config.kv_tokens,
            sequences = config.max_sequences, "embedded engine ready");
        Ok(Self {
            counters,
            text,
            commands: Mutex::new(tx),
            running,
            thread: Mutex::new(Some(thread)),
            info: EngineInfo {
                kind: "embedded".into(),
                model: name,
                context_tokens: config.max_sequence_tokens.min(config.sequence_cells()) as usize,
            },
        })
    }

    /// The model's tokenizer and chat template (for prompt formatting).
    pub fn model_text(&self) -> ModelText {
        self.text.clone()
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

    fn readiness(&self) -> Readiness {
        if self.running.load(Ordering::Acquire) {
            Readiness::Ready
        } else {
            Readiness::Down("embedded engine is not running".into())
        }
    }

    fn generate(&self, request: EngineRequest) -> Result<GenerationStream, EngineError> {
        if !self.readiness().is_ready() {
            return Err(EngineError::Unavailable(
                "embedded engine is not running".into(),
            ));
        }
        let limit = self.info.context_tokens;
        let total = request.prompt.len() + request.max_new_tokens as usize;
        if request.prompt.is_empty() || total > limit {
            return Err(EngineError::ContextOverflow {
                prompt: total,
                context: limit,
            });
        }
        let (stream, tx) = GenerationStream::channel();
        self.send(Command::Generate(Job {
            cache_key: request.cache_key,
            tokens: request
                .prompt
                .iter()
                .map(|&t| LlamaToken(t as i32))
                .collect(),
            sampling: request.sampling,
            max_new: request.max_new_tokens,
            tx,
        }))?;
        Ok(stream)
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
            kv_cells_used: c.kv_used.load(Ordering::Relaxed),
            kv_moves: c.kv_moves.load(Ordering::Relaxed),
            restarts: 0,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decode thread

struct Active {
    slot: usize,
    job: Job,
    /// Index of the next prompt token to feed.
    fed: usize,
    /// A sampled token not fed yet.
    pending: Option<LlamaToken>,
    sampler: Sampler,
    generated: u32,
    cached: usize,
    utf8: Vec<u8>,
    logits_at: Option<i32>,
    fed_this_step: usize,
}

struct Scheduler<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    table: SlotTable,
    active: Vec<Active>,
    waiting: VecDeque<Job>,
    batch_tokens: usize,
    kv_unified: bool,
    counters: Arc<Counters>,
}

/// Shortest prefix worth sharing from another session instead of prefilling it.
const MIN_SHARED_PREFIX: usize = 16;

fn context_params(config: &LlamaConfig) -> LlamaContextParams {
    let threads = if config.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get() as i32)
    } else {
        config.threads as i32
    };
    LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(config.kv_tokens))
        .with_n_batch(config.batch_tokens)
        .with_n_ubatch(config.batch_tokens)
        .with_n_seq_max(config.max_sequences)
        .with_kv_unified(config.kv_unified)
        .with_swa_full(true)
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
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
    let ctx = match model.new_context(backend, context_params(config)) {
        Ok(ctx) => ctx,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot create context: {e}")));
            return;
        }
    };
    let mut sched = Scheduler {
        model,
        table: SlotTable::new(
            config.max_sequences as usize,
            ctx.n_ctx() as usize,
            config.share_prefixes,
            MIN_SHARED_PREFIX,
        )
        .compacting(!config.kv_unified),
        active: Vec::new(),
        waiting: VecDeque::new(),
        batch_tokens: config.batch_tokens as usize,
        kv_unified: config.kv_unified,
        counters,
        ctx,
    };
    running.store(true, Ordering::Release);
    let _ = ready.send(Ok(()));
    let mut batch = LlamaBatch::new(sched.batch_tokens, 1);
    while sched.pump(&rx) {
        sched.drop_cancelled();
        sched.admit_waiting();
        if !sched.active.is_empty() {
            sched.step(&mut batch);
        }
        let c = &sched.counters;
        c.active.store(
            (sched.active.len() + sched.waiting.len()) as u64,
            Ordering::Relaxed,
        );
        c.kv_used
            .store(sched.table.kv_used() as u64, Ordering::Relaxed);
    }
    running.store(false, Ordering::Release);
    for a in sched.active.drain(..) {
        a.job.tx.send(EngineEvent::Failed(EngineError::Unavailable(
            "engine shut down".into(),
        )));
    }
    debug!("decode thread stopped");
}

impl Scheduler<'_> {
    /// Takes commands: blocks when idle, else drains what arrived. False means shut down.
    fn pump(&mut self, rx: &std_mpsc::Receiver<Command>) -> bool {
        if self.active.is_empty() && self.waiting.is_empty() {
            match rx.recv() {
                Ok(cmd) => {
                    if !self.handle(cmd) {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        while let Ok(cmd) = rx.try_recv() {
            if !self.handle(cmd) {
                return false;
            }
        }
        true
    }

    /// Applies a command; false means shut down.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Generate(job) => self.waiting.push_back(job),
            Command::Release(key) => {
                let ops = self.table.release(&key);
                self.apply(ops);
            }
            Command::Shutdown => return false,
        }
        true
    }

    /// Applies KV operations; an operation the model cannot do forgets that slot's cache, and so
    /// does a later copy out of a slot forgotten so (a move through a free slot stays exact).
    fn apply(&mut self, ops: Vec<KvOp>) {
        let mut lost: Vec<usize> = Vec::new();
        for op in ops {
            let ok = match op {
                KvOp::Clear(slot) => self
                    .ctx
                    .clear_kv_cache_seq(Some(slot as u32), None, None)
                    .unwrap_or(false),
                KvOp::Truncate { slot, from } => self
                    .ctx
                    .clear_kv_cache_seq(Some(slot as u32), Some(from as u32), None)
                    .unwrap_or(false),
                KvOp::Share { src, dst, len } => !lost.contains(&src) && self.share(src, dst, len),
                KvOp::Move { src, dst } => !lost.contains(&src) && self.relocate(src, dst),
            };
            if !ok
                && let KvOp::Truncate { slot, .. }
                | KvOp::Share { dst: slot, .. }
                | KvOp::Move { dst: slot, .. } = op
            {
                lost.push(slot);
                for clear in self.table.forget(slot) {
                    if let KvOp::Clear(s) = clear {
                        let _ = self.ctx.clear_kv_cache_seq(Some(s as u32), None, None);
                    }
                }
            }
        }
    }

    /// Makes positions `0..len` of `src` the whole sequence of `dst`.
    fn share(&mut self, src: usize, dst: usize, len: usize) -> bool {
        let _ = self.ctx.clear_kv_cache_seq(Some(dst as u32), None, None);
        let (s, d) = (src as i32, dst as i32);
        if self.kv_unified {
            // One cache: the cells gain a sequence id, nothing is copied.
            return self
                .ctx
                .copy_kv_cache_seq(s, d, Some(0), Some(len as u32))
                .is_ok();
        }
        // One stream per sequence: llama.cpp copies whole streams only; drop the tail after.
        self.ctx.copy_kv_cache_seq(s, d, None, None).is_ok()
            && self
                .ctx
                .clear_kv_cache_seq(Some(dst as u32), Some(len as u32), None)
                .unwrap_or(false)
    }

    /// Moves the whole sequence of `src` into the empty `dst` (a stream copy, or new sequence
    /// ids on the cells of a unified cache).
    fn relocate(&mut self, src: usize, dst: usize) -> bool {
        let (s, d) = (src as i32, dst as i32);
        let moved = self.ctx.copy_kv_cache_seq(s, d, None, None).is_ok()
            && self
                .ctx
                .clear_kv_cache_seq(Some(src as u32), None, None)
                .unwrap_or(false);
        if moved {
            self.counters.kv_moves.fetch_add(1, Ordering::Relaxed);
        }
        moved
    }

    fn finish(&mut self, idx: usize, event: EngineEvent) {
        let a = self.active.swap_remove(idx);
        if !a.utf8.is_empty() {
            let rest = String::from_utf8_lossy(&a.utf8).into_owned();
            a.job.tx.send(EngineEvent::Text(rest));
        }
        a.job.tx.send(event);
        self.table.finish(a.slot);
    }

    fn drop_cancelled(&mut self) {
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].job.tx.is_cancelled() {
                let usage = self.usage(i);
                let a = self.active.swap_remove(i);
                debug!(key = %a.job.cache_key, generated = a.generated, "generation cancelled");
                // The consumer may still listen (a stop string hit): tell it the usage.
                a.job.tx.send(EngineEvent::Finished {
                    usage,
                    reason: FinishReason::Cancelled,
                });
                self.table.finish(a.slot);
            } else {
                i += 1;
            }
        }
        self.waiting.retain(|j| !j.tx.is_cancelled());
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
        let prompt: Vec<u32> = job.tokens.iter().map(|t| t.0 as u32).collect();
        let (ops, outcome) = self
            .table
            .admit(&job.cache_key, &prompt, job.max_new as usize);
        self.apply(ops);
        let (slot, shared) = match outcome {
            Outcome::Run { slot, shared } => (slot, shared),
            Outcome::Wait => return Some(job),
            Outcome::TooLarge { needed, capacity } => {
                job.tx
                    .send(EngineEvent::Failed(EngineError::ContextOverflow {
                        prompt: needed,
                        context: capacity,
                    }));
                return None;
            }
        };
        let keep = self.table.held(slot).len();
        self.counters.generations.fetch_add(1, Ordering::Relaxed);
        self.counters
            .cached_prompt_tokens
            .fetch_add(keep as u64, Ordering::Relaxed);
        self.counters
            .shared_prefix_tokens
            .fetch_add(shared as u64, Ordering::Relaxed);
        debug!(key = %job.cache_key, prompt = job.tokens.len(), cached = keep, "generation admitted");
        self.active.push(Active {
            slot,
            fed: keep,
            pending: None,
            sampler: Sampler::new(&job.sampling),
            generated: 0,
            cached: keep,
            utf8: Vec::new(),
            logits_at: None,
            fed_this_step: 0,
            job,
        });
        // A prefill-only job whose prompt is fully cached is already done.
        let last = self.active.len() - 1;
        if self.active[last].job.max_new == 0 && keep == self.active[last].job.tokens.len() {
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
                let pos = self.table.held(a.slot).len() as i32;
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
                let want_logits = idx + 1 == a.job.tokens.len() && a.job.max_new > 0;
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

    /// One decode step. Its phases are timed into `yap_engine_step_seconds{phase}`: `fill`
    /// (building the batch), `compute` (llama_decode until the device is done) and `sample`
    /// (sampling, detokenizing and sending every stream's token): the step's profile.
    fn step(&mut self, batch: &mut LlamaBatch) {
        let t0 = Instant::now();
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
        metrics::histogram!("yap_engine_batch_sequences").record(seqs as f64);
        let t1 = Instant::now();
        let mut result = self.ctx.decode(batch);
        if matches!(result, Err(DecodeError::NoKvCacheSlot)) {
            // Fragmented or full cache: evict idle sessions and try once more.
            warn!("KV cache full; evicting idle sessions");
            let ops = self.table.evict_idle();
            self.apply(ops);
            result = self.ctx.decode(batch);
        }
        if let Err(e) = result {
            self.fail_all(EngineError::Decode(e.to_string()));
            return;
        }
        self.ctx.synchronize();
        let t2 = Instant::now();
        self.record_fed();
        self.sample_all();
        let step = |phase: &'static str, secs: f64| {
            metrics::histogram!("yap_engine_step_seconds", "phase" => phase).record(secs);
        };
        step("fill", (t1 - t0).as_secs_f64());
        step("compute", (t2 - t1).as_secs_f64());
        step("sample", t2.elapsed().as_secs_f64());
    }

    /// Records what entered the KV cache this step.
    fn record_fed(&mut self) {
        for a in &mut self.active {
            if a.fed_this_step > 0 {
                self.table.fed(
                    a.slot,
                    &to_ids(&a.job.tokens[a.fed..a.fed + a.fed_this_step]),
                );
                a.fed += a.fed_this_step;
            } else if let Some(tok) = a.pending.take() {
                self.table.fed(a.slot, &[tok.0 as u32]);
            }
        }
    }

    /// Samples the next token of every stream that has logits, streams its text, ends the done.
    fn sample_all(&mut self) {
        let mut i = 0;
        while i < self.active.len() {
            match self.sample_one(i) {
                Some(reason) => {
                    let usage = self.usage(i);
                    self.finish(i, EngineEvent::Finished { usage, reason });
                }
                None => i += 1,
            }
        }
    }

    fn sample_one(&mut self, i: usize) -> Option<FinishReason> {
        let vocab = self.model.vocab();
        let a = &mut self.active[i];
        if a.job.max_new == 0 && a.fed == a.job.tokens.len() {
            return Some(FinishReason::Prefilled);
        }
        let at = a.logits_at?;
        let tok = a.sampler.sample(&self.ctx, at);
        if vocab.is_eog(tok) {
            return Some(FinishReason::Stop);
        }
        a.generated += 1;
        a.utf8.extend(vocab.token_to_piece(tok, false, None));
        let valid = match std::str::from_utf8(&a.utf8) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_some() => a.utf8.len(),
            Err(e) => e.valid_up_to(),
        };
        if valid > 0 {
            let text = String::from_utf8_lossy(&a.utf8[..valid]).into_owned();
            a.utf8.drain(..valid);
            a.job.tx.send(EngineEvent::Text(text));
        }
        a.pending = Some(tok);
        (a.generated >= a.job.max_new).then_some(FinishReason::Length)
    }

    fn fail_all(&mut self, err: EngineError) {
        warn!(error = %err, "decode step failed; failing the active generations");
        while !self.active.is_empty() {
            let slot = self.active[0].slot;
            self.finish(0, EngineEvent::Failed(err.clone()));
            let ops = self.table.forget(slot);
            self.apply(ops);
        }
    }
}

fn to_ids(tokens: &[LlamaToken]) -> Vec<u32> {
    tokens.iter().map(|t| t.0 as u32).collect()
}

/// Settings of the embedded engine (flattened into `yap serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct EmbeddedArgs {
    /// Embedded engine: KV cache cells shared by all sessions.
    #[arg(
        long = "kv-tokens",
        env = "EMBEDDED_KV_TOKENS",
        default_value_t = 32768
    )]
    pub kv_tokens: u32,
    /// Embedded engine: sessions kept in the KV cache at once.
    #[arg(
        long = "max-sequences",
        env = "EMBEDDED_MAX_SEQUENCES",
        default_value_t = 32
    )]
    pub max_sequences: u32,
    /// Embedded engine: most tokens per decode step.
    #[arg(
        long = "batch-tokens",
        env = "EMBEDDED_BATCH_TOKENS",
        default_value_t = 512
    )]
    pub batch_tokens: u32,
    /// Embedded engine: CPU threads (0 = all cores).
    #[arg(long = "threads", env = "EMBEDDED_THREADS", default_value_t = 0)]
    pub threads: u32,
    /// Embedded engine: share cached prefixes across sessions.
    #[arg(long = "share-prefixes", env = "EMBEDDED_SHARE_PREFIXES", default_value_t = true, action = clap::ArgAction::Set)]
    pub share_prefixes: bool,
    /// Embedded engine: layers on the GPU, `all` or a number (0 = CPU only); a `cuda` build
    /// with a device found offloads them, any other build runs on the CPU.
    #[arg(
        long = "gpu-layers",
        env = "EMBEDDED_GPU_LAYERS",
        default_value = "all"
    )]
    pub gpu_layers: GpuLayers,
    /// Embedded engine: one KV cache for all sessions (`true`), or one stream per session of
    /// `kv-tokens / max-sequences` cells, which also bounds a conversation (faster attention on
    /// a GPU holding many sessions; see docs/gpu.md).
    #[arg(long = "kv-unified", env = "EMBEDDED_KV_UNIFIED", default_value_t = true, action = clap::ArgAction::Set)]
    pub kv_unified: bool,
}

impl EmbeddedArgs {
    /// The engine's configuration for a model and a per-sequence context.
    pub fn config(&self, model: PathBuf, max_sequence_tokens: u32) -> LlamaConfig {
        LlamaConfig {
            model_path: model,
            kv_tokens: self.kv_tokens,
            max_sequences: self.max_sequences,
            max_sequence_tokens,
            batch_tokens: self.batch_tokens,
            threads: self.threads,
            gpu_layers: self.gpu_layers,
            kv_unified: self.kv_unified,
            share_prefixes: self.share_prefixes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_layers_parse_all_or_a_number() {
        assert_eq!("all".parse::<GpuLayers>(), Ok(GpuLayers::All));
        assert_eq!(" ALL ".parse::<GpuLayers>(), Ok(GpuLayers::All));
        assert_eq!("0".parse::<GpuLayers>(), Ok(GpuLayers::Count(0)));
        assert_eq!("33".parse::<GpuLayers>(), Ok(GpuLayers::Count(33)));
        assert!("-1".parse::<GpuLayers>().is_err());
        assert!("most".parse::<GpuLayers>().is_err());
        assert_eq!(GpuLayers::All.to_string(), "all");
        assert_eq!(GpuLayers::Count(7).to_string(), "7");
    }

    #[test]
    fn a_sequence_holds_its_stream_unless_the_cache_is_unified() {
        let mut c = LlamaConfig::new("m.gguf");
        c.kv_tokens = 65536;
        c.max_sequences = 64;
        assert_eq!(c.sequence_cells(), 65536);
        c.kv_unified = false;
        assert_eq!(c.sequence_cells(), 1024);
    }
}
