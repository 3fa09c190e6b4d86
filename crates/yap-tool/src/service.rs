//! Micro-batched classification on a dedicated thread pool.
//!
//! Turns submit their context; a worker thread takes every waiting request (up to
//! `max_batch`) and, under concurrency (the previous batch or the queue held more than one),
//! keeps collecting for `batch_window`; a lone request runs at once, and requests arriving while
//! a batch computes form the next one. Requests whose turn was cancelled meanwhile are dropped;
//! the batch runs inside the service's own rayon pool of `threads` threads, so classification
//! never runs on the async runtime or the chat engine's threads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::ToolError;
use crate::tool::{ToolInput, ToolModel, ToolVerdict};

/// Batching and threading settings.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Threads of the classifier's own pool (`TOOL_THREADS`).
    pub threads: usize,
    /// Under concurrency, how long a batch waits for more requests (`TOOL_BATCH_WINDOW_MS`).
    pub batch_window: Duration,
    /// Most requests in one batch (`TOOL_MAX_BATCH`); 1 turns batching off.
    pub max_batch: usize,
    /// Wait the window only under concurrency (`TOOL_BATCH_ADAPTIVE`, default); when false every
    /// batch waits the full window.
    pub adaptive: bool,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            threads: 2,
            batch_window: Duration::from_millis(3),
            max_batch: 16,
            adaptive: true,
        }
    }
}

/// Counters, for `/health` and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Contexts classified.
    pub classified: u64,
    /// Batches run.
    pub batches: u64,
    /// Largest batch so far.
    pub peak_batch: u64,
    /// Requests dropped because their turn was cancelled before the batch ran.
    pub skipped_cancelled: u64,
}

struct Job {
    input: ToolInput,
    cancelled: Arc<AtomicBool>,
    reply: oneshot::Sender<Result<ToolVerdict, ToolError>>,
}

#[derive(Default)]
struct Counters {
    classified: AtomicU64,
    batches: AtomicU64,
    peak_batch: AtomicU64,
    skipped: AtomicU64,
}

/// The running classifier.
pub struct ToolService {
    tx: std::sync::Mutex<mpsc::Sender<Job>>,
    counters: Arc<Counters>,
    max_tokens: usize,
    labels: Vec<String>,
    name: String,
    threshold: Option<f32>,
}

impl std::fmt::Debug for ToolService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolService")
            .field("name", &self.name)
            .finish()
    }
}

/// Marks the job cancelled when the waiting future is dropped before its answer came.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

impl ToolService {
    /// Starts the worker thread and its pool around a loaded model.
    pub fn start(model: ToolModel, config: ServiceConfig) -> Result<Arc<Self>, ToolError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.threads.max(1))
            .thread_name(|i| format!("yap-tool-{i}"))
            .build()
            .map_err(|e| ToolError::Config(format!("tool thread pool: {e}")))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let counters = Arc::new(Counters::default());
        let name = model
            .dir()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "tool-model".into());
        let max_tokens = model.max_tokens();
        let labels = model.classifier().labels().to_vec();
        let threshold = model.tuned_threshold();
        let c = Arc::clone(&counters);
        std::thread::Builder::new()
            .name("yap-tool-batcher".into())
            .spawn(move || worker(model, config, pool, rx, c))
            .map_err(|e| ToolError::Config(format!("tool worker thread: {e}")))?;
        Ok(Arc::new(Self {
            tx: std::sync::Mutex::new(tx),
            counters,
            max_tokens,
            labels,
            name,
            threshold,
        }))
    }

    /// The model folder's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Input token budget.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The decision threshold the model was tuned for (`yap_threshold` in its config.json).
    pub fn tuned_threshold(&self) -> Option<f32> {
        self.threshold
    }

    /// The model's labels.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Counters so far.
    pub fn stats(&self) -> ServiceStats {
        let c = &self.counters;
        ServiceStats {
            classified: c.classified.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            peak_batch: c.peak_batch.load(Ordering::Relaxed),
            skipped_cancelled: c.skipped.load(Ordering::Relaxed),
        }
    }

    /// Classifies one context. Dropping the returned future (a cancelled turn) withdraws the
    /// request: if its batch has not started, it is never computed.
    pub async fn classify(&self, input: ToolInput) -> Result<ToolVerdict, ToolError> {
        let cancelled = Arc::new(AtomicBool::new(false));
        let (reply, rx) = oneshot::channel();
        let job = Job {
            input,
            cancelled: Arc::clone(&cancelled),
            reply,
        };
        self.tx
            .lock()
            .map_err(|_| ToolError::Stopped)?
            .send(job)
            .map_err(|_| ToolError::Stopped)?;
        // Marks the job withdrawn if this future is dropped before the answer; once answered,
        // the flag no longer matters (and the guard is dropped, not leaked).
        let _guard = CancelOnDrop(cancelled);
        rx.await.map_err(|_| ToolError::Stopped)?
    }
}

fn worker(
    model: ToolModel,
    config: ServiceConfig,
    pool: rayon::ThreadPool,
    rx: mpsc::Receiver<Job>,
    counters: Arc<Counters>,
) {
    let max_batch = config.max_batch.max(1);
    let mut last_batch = 0usize;
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        // Whatever is queued joins at once.
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        // The window is waited only under concurrency (the last batch or the queue held more
        // than one request): a lone turn is classified at once, a burst fills its batch.
        if !config.adaptive || last_batch > 1 || jobs.len() > 1 {
            let deadline = Instant::now() + config.batch_window;
            while jobs.len() < max_batch {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match rx.recv_timeout(left) {
                    Ok(j) => jobs.push(j),
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        let (live, dead): (Vec<Job>, Vec<Job>) = jobs
            .into_iter()
            .partition(|j| !j.cancelled.load(Ordering::Acquire));
        for j in dead {
            counters.skipped.fetch_add(1, Ordering::Relaxed);
            let _ = j.reply.send(Err(ToolError::Cancelled));
        }
        if live.is_empty() {
            continue;
        }
        last_batch = live.len();
        let t = Instant::now();
        let inputs: Vec<&ToolInput> = live.iter().map(|j| &j.input).collect();
        let result = pool.install(|| model.classify_inputs(&inputs));
        let n = live.len() as u64;
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters.classified.fetch_add(n, Ordering::Relaxed);
        counters.peak_batch.fetch_max(n, Ordering::Relaxed);
        metrics::histogram!("yap_tool_batch_size").record(n as f64);
        debug!(
            batch = n,
            ms = t.elapsed().as_secs_f64() * 1e3,
            "tool batch"
        );
        match result {
            Ok(verdicts) => {
                for (j, v) in live.into_iter().zip(verdicts) {
                    let _ = j.reply.send(Ok(v));
                }
            }
            Err(e) => {
                warn!(error = %e, "tool classification failed");
                let msg = e.to_string();
                for j in live {
                    let _ = j.reply.send(Err(ToolError::Config(msg.clone())));
                }
            }
        }
    }
}
