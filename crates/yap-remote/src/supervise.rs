//! Launching and supervising an external engine process (vLLM, trtllm-serve, ...).
//!
//! - The engine runs under the engine guard (`yap engine-guard`, [`crate::guard`]) in a process
//!   group of its own: the guard dies with Yap (`PR_SET_PDEATHSIG`) and takes every process the
//!   engine started with it, even when Yap is killed with SIGKILL.
//! - Start refuses when the engine port is already taken (an orphan from an earlier run, another
//!   server): Yap would otherwise serve through a stranger while its own child crash-loops.
//! - Yap waits for the engine's health endpoint, copies its output into Yap's log (target
//!   `engine`), restarts it with backoff when it dies, and stops it on shutdown (SIGTERM to the
//!   guard, which stops the engine and then its helpers; SIGKILL to the whole group after the
//!   grace period).
//!
//! Invariant: after a restart or a stop, no process of the previous group is left; this is
//! checked by walking `/proc`, and anything found is killed and logged.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use yap_engine_api::EngineError;

use crate::procs;

/// How to run and watch a child engine.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Program and arguments of the engine.
    pub command: Vec<String>,
    /// The guard program and its leading arguments (`[yap, engine-guard]`); empty = run the
    /// engine directly (no death signal; process-group kill only).
    pub guard: Vec<String>,
    /// The address the engine listens on (checked to be free before every start).
    pub listen: SocketAddr,
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
    /// The guard's pid = the process group id (0 while none runs).
    pgid: AtomicI32,
    healthy: AtomicBool,
    stopping: AtomicBool,
    port_taken: AtomicBool,
    restarts: AtomicU64,
    stop: CancellationToken,
}

/// A supervised child engine.
#[derive(Debug)]
pub struct Supervisor {
    state: Arc<State>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    grace: Duration,
    guarded: bool,
}

async fn healthy(client: &reqwest::Client, url: &str) -> bool {
    matches!(client.get(url).timeout(Duration::from_secs(2)).send().await, Ok(r) if r.status().is_success())
}

/// Kills what is left of a process group (SIGKILL) and waits until it is gone; logs what had
/// to be killed. Returns the pids that were still there.
pub async fn clear_group(pgid: i32, label: &str) -> Vec<i32> {
    if pgid <= 0 {
        return Vec::new();
    }
    let left: Vec<i32> = procs::group_members(pgid).iter().map(|p| p.pid).collect();
    if !left.is_empty() {
        warn!(target: "engine", "[{label}] killing {} leftover process(es) of group {pgid}: {left:?}", left.len());
    }
    for _ in 0..100 {
        if procs::group_members(pgid).is_empty() {
            return left;
        }
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let still: Vec<i32> = procs::group_members(pgid).iter().map(|p| p.pid).collect();
    error!(target: "engine", "[{label}] processes of group {pgid} survive SIGKILL: {still:?}");
    left
}

impl Supervisor {
    /// Starts the child and waits until it is healthy (or the startup timeout passes). Fails at
    /// once when the engine's port is already in use.
    pub async fn start(cfg: SupervisorConfig) -> Result<Self, EngineError> {
        if cfg.command.is_empty() {
            return Err(EngineError::Unavailable("empty engine command".into()));
        }
        if procs::port_in_use(cfg.listen) {
            return Err(EngineError::Unavailable(format!(
                "the engine port {} is already in use (an engine left over from an earlier run, or another server): stop that process or choose another ENGINE_PORT",
                cfg.listen
            )));
        }
        let state = Arc::new(State::default());
        let task_state = Arc::clone(&state);
        let task_cfg = cfg.clone();
        let task = tokio::spawn(async move { supervise(task_cfg, task_state).await });
        let sup = Self {
            state,
            task: Mutex::new(Some(task)),
            grace: cfg.grace,
            guarded: !cfg.guard.is_empty(),
        };
        let deadline = Instant::now() + cfg.startup_timeout;
        while !sup.state.healthy.load(Ordering::Acquire) {
            if Instant::now() > deadline {
                sup.stop().await;
                return Err(EngineError::Unavailable(format!(
                    "`{}` did not become healthy at {} within {:?}",
                    cfg.command.join(" "),
                    cfg.health_url,
                    cfg.startup_timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(sup)
    }

    /// Whether the child is running and healthy.
    pub fn is_healthy(&self) -> bool {
        self.state.healthy.load(Ordering::Acquire)
    }

    /// Whether the last start found the engine port taken by another process.
    pub fn port_taken(&self) -> bool {
        self.state.port_taken.load(Ordering::Acquire)
    }

    /// Restarts so far.
    pub fn restarts(&self) -> u64 {
        self.state.restarts.load(Ordering::Acquire)
    }

    /// The process group of the running engine (the guard's pid; 0 while none runs).
    pub fn pgid(&self) -> i32 {
        self.state.pgid.load(Ordering::Acquire)
    }

    /// The engine's process id: the guard's child (0 while none runs).
    pub fn pid(&self) -> u32 {
        let pgid = self.pgid();
        if pgid <= 0 || !self.guarded {
            return pgid.max(0) as u32;
        }
        let kids = procs::descendants(pgid);
        kids.iter()
            .find(|p| p.ppid == pgid && p.pgrp == pgid)
            .map_or(pgid as u32, |p| p.pid as u32)
    }

    /// Stops the child: SIGTERM to the guard (which stops the engine, then its helpers), SIGKILL
    /// to the whole group after the grace period; waits until no process of the group is left.
    pub async fn stop(&self) {
        self.state.stopping.store(true, Ordering::Release);
        self.state.stop.cancel();
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(mut task) = task
            && tokio::time::timeout(self.grace * 2 + Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            let pgid = self.pgid();
            if pgid > 0 {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Never leave an orphan behind, even without an orderly stop: the guard stops the
        // engine and everything it started (also what left the group); without a guard, the
        // group is killed.
        self.state.stopping.store(true, Ordering::Release);
        self.state.stop.cancel();
        let pgid = self.pgid();
        if pgid > 0 {
            if self.guarded {
                let _ = kill(Pid::from_raw(pgid), Signal::SIGTERM);
            } else {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
        }
    }
}

/// Copies a pipe of the child into Yap's log, line by line.
fn forward_output(pipe: Option<impl tokio::io::AsyncRead + Send + Unpin + 'static>, label: &str) {
    let Some(pipe) = pipe else { return };
    let label = label.to_owned();
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            info!(target: "engine", "[{label}] {l}");
        }
    });
}

/// The full command line: guard (with its arguments) + engine.
fn full_command(cfg: &SupervisorConfig) -> Vec<String> {
    if cfg.guard.is_empty() {
        return cfg.command.clone();
    }
    let mut cmd = cfg.guard.clone();
    cmd.push(format!("--parent={}", std::process::id()));
    cmd.push(format!("--grace-s={}", cfg.grace.as_secs_f64()));
    cmd.push("--".into());
    cmd.extend(cfg.command.iter().cloned());
    cmd
}

/// How one run of the child ended.
enum RunEnd {
    /// It exited by itself.
    Exited(Option<std::process::ExitStatus>),
    /// It was stopped.
    Stopped,
}

/// Watches a running child: health while it runs, until it exits or we stop.
async fn watch(
    cfg: &SupervisorConfig,
    state: &State,
    client: &reqwest::Client,
    child: &mut tokio::process::Child,
    pgid: i32,
) -> RunEnd {
    loop {
        tokio::select! {
            status = child.wait() => return RunEnd::Exited(status.ok()),
            () = state.stop.cancelled() => break,
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                let ok = healthy(client, &cfg.health_url).await;
                state.healthy.store(ok, Ordering::Release);
            }
        }
    }
    state.healthy.store(false, Ordering::Release);
    if cfg.guard.is_empty() {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGTERM);
    } else {
        // The guard stops the engine, then whatever it started.
        let _ = kill(Pid::from_raw(pgid), Signal::SIGTERM);
    }
    // The guard has the grace period for the engine and again for its helpers.
    if tokio::time::timeout(cfg.grace * 2 + Duration::from_secs(2), child.wait())
        .await
        .is_err()
    {
        warn!(target: "engine", "[{}] did not stop within the grace period: SIGKILL", cfg.label);
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        let _ = child.wait().await;
    }
    RunEnd::Stopped
}

/// Starts one run: checks the port, spawns the guard + engine in a new process group.
fn spawn(cfg: &SupervisorConfig, state: &State) -> Result<tokio::process::Child, String> {
    if procs::port_in_use(cfg.listen) {
        state.port_taken.store(true, Ordering::Release);
        return Err(format!(
            "the engine port {} is taken by another process; not starting the engine",
            cfg.listen
        ));
    }
    state.port_taken.store(false, Ordering::Release);
    let full = full_command(cfg);
    let mut cmd = Command::new(&full[0]);
    cmd.args(&full[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    cmd.spawn()
        .map_err(|e| format!("cannot start `{}`: {e}", full[0]))
}

async fn supervise(cfg: SupervisorConfig, state: Arc<State>) {
    let client = reqwest::Client::new();
    let mut backoff = cfg.backoff_initial;
    loop {
        if state.stopping.load(Ordering::Acquire) {
            return;
        }
        let started = Instant::now();
        let mut child = match spawn(&cfg, &state) {
            Ok(c) => c,
            Err(e) => {
                error!(target: "engine", "[{}] {e}", cfg.label);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = state.stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(cfg.backoff_max);
                continue;
            }
        };
        let pgid = child.id().map_or(0, |p| p as i32);
        state.pgid.store(pgid, Ordering::Release);
        info!(target: "engine", "[{}] started (process group {pgid}): {}", cfg.label, cfg.command.join(" "));
        forward_output(child.stdout.take(), &cfg.label);
        forward_output(child.stderr.take(), &cfg.label);
        let end = watch(&cfg, &state, &client, &mut child, pgid).await;
        state.healthy.store(false, Ordering::Release);
        clear_group(pgid, &cfg.label).await;
        state.pgid.store(0, Ordering::Release);
        let RunEnd::Exited(exit) = end else { return };
        if state.stopping.load(Ordering::Acquire) {
            return;
        }
        let ran = started.elapsed();
        let exit = exit.map_or_else(|| "unknown status".to_owned(), |e| e.to_string());
        warn!(target: "engine", "[{}] exited ({exit}) after {ran:.1?}; restarting in {backoff:?}", cfg.label);
        state.restarts.fetch_add(1, Ordering::AcqRel);
        metrics::counter!("yap_engine_restarts_total").increment(1);
        if ran > Duration::from_secs(60) {
            backoff = cfg.backoff_initial;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = state.stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
}

/// A launched engine as Yap serves it: the remote engine that talks to it, ready only while
/// Yap's own child is running and healthy (never through a stranger holding the port).
pub struct SupervisedEngine {
    inner: crate::RemoteEngine,
    supervisor: Arc<Supervisor>,
}

impl std::fmt::Debug for SupervisedEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisedEngine")
            .field("supervisor", &self.supervisor)
            .finish_non_exhaustive()
    }
}

impl SupervisedEngine {
    /// Wraps the remote engine of a launched child.
    pub fn new(inner: crate::RemoteEngine, supervisor: Arc<Supervisor>) -> Self {
        Self { inner, supervisor }
    }

    fn down(&self) -> Option<String> {
        if self.supervisor.is_healthy() {
            None
        } else if self.supervisor.port_taken() {
            Some(
                "the engine port is held by another process; the launched engine cannot start"
                    .into(),
            )
        } else {
            Some("the launched engine is (re)starting".into())
        }
    }
}

impl yap_engine_api::ChatEngine for SupervisedEngine {
    fn info(&self) -> yap_engine_api::EngineInfo {
        self.inner.info()
    }

    fn readiness(&self) -> yap_engine_api::Readiness {
        match self.down() {
            Some(why) => yap_engine_api::Readiness::Down(why),
            None => self.inner.readiness(),
        }
    }

    fn generate(
        &self,
        request: yap_engine_api::EngineRequest,
    ) -> Result<yap_engine_api::GenerationStream, EngineError> {
        match self.down() {
            Some(why) => Err(EngineError::Unavailable(why)),
            None => self.inner.generate(request),
        }
    }

    fn release(&self, cache_key: &str) {
        self.inner.release(cache_key);
    }

    fn stats(&self) -> yap_engine_api::EngineStats {
        yap_engine_api::EngineStats {
            restarts: self.supervisor.restarts(),
            ..self.inner.stats()
        }
    }
}
