//! Launching and supervising an external engine process (vLLM, trtllm-serve, ...): start it,
//! wait for its health endpoint, copy its output into Yap's log (target `engine`), restart it with
//! backoff when it dies, and stop it on shutdown (SIGTERM, then SIGKILL after a grace period).

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::Notify;
use tracing::{info, warn};

use yap_engine_api::EngineError;

/// How to run and watch a child engine.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Health URL polled until it answers 2xx.
    pub health_url: String,
    /// Label of the child's lines in the log.
    pub label: String,
    /// Time the first start may take before `start` fails.
    pub startup_timeout: Duration,
    /// First restart delay; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest restart delay.
    pub backoff_max: Duration,
    /// Time between SIGTERM and SIGKILL on stop.
    pub grace: Duration,
}

#[derive(Debug, Default)]
struct State {
    pid: AtomicU32,
    healthy: AtomicBool,
    stopping: AtomicBool,
    restarts: AtomicU64,
    stop: Notify,
}

/// A supervised child engine.
#[derive(Debug)]
pub struct Supervisor {
    state: Arc<State>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    grace: Duration,
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    if pid > 0 {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
    }
}

async fn healthy(client: &reqwest::Client, url: &str) -> bool {
    matches!(client.get(url).timeout(Duration::from_secs(2)).send().await, Ok(r) if r.status().is_success())
}

impl Supervisor {
    /// Starts the child and waits until it is healthy (or the startup timeout passes).
    pub async fn start(cfg: SupervisorConfig) -> Result<Self, EngineError> {
        if cfg.command.is_empty() {
            return Err(EngineError::Unavailable("empty engine command".into()));
        }
        let state = Arc::new(State::default());
        let task_state = Arc::clone(&state);
        let task_cfg = cfg.clone();
        let task = tokio::spawn(async move { supervise(task_cfg, task_state).await });
        let deadline = Instant::now() + cfg.startup_timeout;
        while !state.healthy.load(Ordering::Acquire) {
            if Instant::now() > deadline {
                state.stopping.store(true, Ordering::Release);
                state.stop.notify_waiters();
                signal(
                    state.pid.load(Ordering::Acquire),
                    nix::sys::signal::Signal::SIGKILL,
                );
                task.abort();
                return Err(EngineError::Unavailable(format!(
                    "`{}` did not become healthy at {} within {:?}",
                    cfg.command.join(" "),
                    cfg.health_url,
                    cfg.startup_timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            state,
            task: Mutex::new(Some(task)),
            grace: cfg.grace,
        })
    }

    /// Whether the child is running and healthy.
    pub fn is_healthy(&self) -> bool {
        self.state.healthy.load(Ordering::Acquire)
    }

    /// Restarts so far.
    pub fn restarts(&self) -> u64 {
        self.state.restarts.load(Ordering::Acquire)
    }

    /// The child's process id (0 while none runs).
    pub fn pid(&self) -> u32 {
        self.state.pid.load(Ordering::Acquire)
    }

    /// Stops the child: SIGTERM, then SIGKILL after the grace period; no restart follows.
    pub async fn stop(&self) {
        self.state.stopping.store(true, Ordering::Release);
        self.state.stop.notify_waiters();
        let pid = self.pid();
        signal(pid, nix::sys::signal::Signal::SIGTERM);
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(mut task) = task
            && tokio::time::timeout(self.grace, &mut task).await.is_err()
        {
            signal(self.pid().max(pid), nix::sys::signal::Signal::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Never leave an orphan behind, even without an orderly stop.
        self.state.stopping.store(true, Ordering::Release);
        signal(self.pid(), nix::sys::signal::Signal::SIGKILL);
    }
}

async fn supervise(cfg: SupervisorConfig, state: Arc<State>) {
    let client = reqwest::Client::new();
    let mut backoff = cfg.backoff_initial;
    loop {
        if state.stopping.load(Ordering::Acquire) {
            return;
        }
        let mut cmd = Command::new(&cfg.command[0]);
        cmd.args(&cfg.command[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                warn!(target: "engine", "[{}] cannot start `{}`: {e}", cfg.label, cfg.command[0]);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(cfg.backoff_max);
                continue;
            }
        };
        let pid = child.id().unwrap_or(0);
        state.pid.store(pid, Ordering::Release);
        info!(target: "engine", "[{}] started pid {pid}: {}", cfg.label, cfg.command.join(" "));
        for pipe in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let label = cfg.label.clone();
            tokio::spawn(async move {
                // The child's output joins Yap's own log (one file, see `LOG_FILE`).
                let mut lines = BufReader::new(pipe).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    info!(target: "engine", "[{label}] {l}");
                }
            });
        }
        // Watch: health while it runs, until it exits or we stop.
        let exit = loop {
            tokio::select! {
                status = child.wait() => break status.ok(),
                _ = state.stop.notified() => {
                    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
                    state.healthy.store(false, Ordering::Release);
                    state.pid.store(0, Ordering::Release);
                    return;
                }
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    let ok = healthy(&client, &cfg.health_url).await;
                    state.healthy.store(ok, Ordering::Release);
                }
            }
        };
        state.healthy.store(false, Ordering::Release);
        state.pid.store(0, Ordering::Release);
        if state.stopping.load(Ordering::Acquire) {
            return;
        }
        let ran = started.elapsed();
        warn!(target: "engine", "[{}] exited ({exit:?}) after {ran:.1?}; restarting in {backoff:?}", cfg.label);
        state.restarts.fetch_add(1, Ordering::AcqRel);
        if ran > Duration::from_secs(60) {
            backoff = cfg.backoff_initial;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = state.stop.notified() => return,
        }
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
}
