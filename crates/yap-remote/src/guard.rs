//! The engine guard: a tiny process (`yap engine-guard`, hidden) that Yap launches in a new
//! process group and that runs the real engine command as its child.
//!
//! Why a guard and not the engine directly: `unsafe` is forbidden in this workspace, so Yap
//! cannot set `PR_SET_PDEATHSIG` between fork and exec. The guard sets it on itself (safe in
//! `nix`), marks itself a child subreaper (orphaned grandchildren — vLLM's EngineCore, workers,
//! resource tracker — are reparented to it, even if they left the process group), and then:
//! - the engine exits (crash, `kill -9`): every remaining descendant gets SIGTERM, SIGKILL after
//!   the grace period, is reaped; the guard exits with the engine's status;
//! - SIGTERM / SIGINT / SIGHUP (Yap's orderly stop), or Yap dies (even by SIGKILL: the kernel
//!   sends the guard SIGUSR2 and its parent changes): the same, engine first.
//!
//! Invariant: when the guard has exited, no process it started (directly or not) is left.
//! Only `kill -9` of the guard itself skips this; Yap then kills the process group.

use std::time::{Duration, Instant};

use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::{Pid, getpgrp, getpid, getppid};
use tokio::signal::unix::{SignalKind, signal};
use yap_engine_api::config::parse_seconds;

use crate::procs;

/// Flags of `yap engine-guard` (hidden; Yap's supervisor writes them).
#[derive(Debug, Clone, Args)]
pub struct GuardArgs {
    /// The process whose death ends the engine (Yap).
    #[arg(long)]
    pub parent: i32,
    /// Seconds between SIGTERM and SIGKILL when stopping the engine's processes.
    #[arg(long = "grace-s", default_value = "10", value_parser = parse_seconds)]
    pub grace: Duration,
    /// The engine command.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

/// Why the guard could not run the engine.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// A process setting failed.
    #[error("engine guard: {0}")]
    Sys(#[from] nix::Error),
    /// The engine could not be started or watched.
    #[error("engine guard: `{0}`: {1}")]
    Io(String, std::io::Error),
}

/// Exit code when the parent was already gone at start.
pub const EXIT_PARENT_GONE: i32 = 75;

/// Whether the parent we serve is gone (we were reparented).
fn parent_gone(parent: i32) -> bool {
    getppid().as_raw() != parent
}

/// Every process the guard is responsible for: its descendants (orphans are reparented to it)
/// and its process group, itself excluded.
fn others() -> Vec<procs::ProcInfo> {
    let me = getpid().as_raw();
    let mut out = procs::descendants(me);
    for p in procs::group_members(getpgrp().as_raw()) {
        if p.pid != me && !out.iter().any(|q| q.pid == p.pid) {
            out.push(p);
        }
    }
    out
}

/// Reaps exited children of the guard other than `skip` (the engine, which tokio reaps).
fn reap_orphans(skip: Option<i32>) {
    let me = getpid().as_raw();
    for p in procs::descendants(me) {
        if p.ppid == me && p.is_zombie() && Some(p.pid) != skip {
            let _ = waitpid(Pid::from_raw(p.pid), Some(WaitPidFlag::WNOHANG));
        }
    }
}

/// Sends `sig` to every live process the guard is responsible for.
fn signal_others(sig: Signal) -> usize {
    let live: Vec<_> = others().into_iter().filter(|p| !p.is_zombie()).collect();
    for p in &live {
        let _ = kill(Pid::from_raw(p.pid), sig);
    }
    live.len()
}

/// SIGTERM to everything left, SIGKILL after `grace`, reaping as they go.
async fn clear_rest(grace: Duration, skip: Option<i32>) {
    if signal_others(Signal::SIGTERM) == 0 {
        reap_orphans(skip);
        return;
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        reap_orphans(skip);
        if others().iter().all(procs::ProcInfo::is_zombie) {
            return;
        }
    }
    for _ in 0..50 {
        if signal_others(Signal::SIGKILL) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        reap_orphans(skip);
    }
    reap_orphans(skip);
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Runs the guard; returns the exit code for the process.
pub async fn run(args: &GuardArgs) -> Result<i32, GuardError> {
    // Handlers first: the death signal must never find SIGUSR2's default action (exit).
    let io = |e| GuardError::Io("signal handler".into(), e);
    let mut term = signal(SignalKind::terminate()).map_err(io)?;
    let mut int = signal(SignalKind::interrupt()).map_err(io)?;
    let mut hup = signal(SignalKind::hangup()).map_err(io)?;
    let mut usr2 = signal(SignalKind::user_defined2()).map_err(io)?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGUSR2)?;
    if parent_gone(args.parent) {
        return Ok(EXIT_PARENT_GONE);
    }
    nix::sys::prctl::set_child_subreaper(true)?;
    let mut child = tokio::process::Command::new(&args.command[0])
        .args(&args.command[1..])
        .spawn()
        .map_err(|e| GuardError::Io(args.command[0].clone(), e))?;
    let engine = child.id().map(|p| p as i32);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let exited = loop {
        tokio::select! {
            s = child.wait() => break Some(s),
            _ = term.recv() => break None,
            _ = int.recv() => break None,
            _ = hup.recv() => break None,
            _ = usr2.recv() => if parent_gone(args.parent) { break None },
            _ = tick.tick() => {
                reap_orphans(engine);
                if parent_gone(args.parent) { break None }
            }
        }
    };
    let code = match exited {
        Some(status) => {
            let status = status.map_err(|e| GuardError::Io(args.command[0].clone(), e))?;
            eprintln!("engine guard: engine exited ({status}); clearing what it left");
            exit_code(status)
        }
        None => {
            // Stop: the engine first (its own shutdown stops its helpers), then the rest.
            if let Some(pid) = engine {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            match tokio::time::timeout(args.grace, child.wait()).await {
                Ok(Ok(status)) => exit_code(status),
                _ => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    128 + Signal::SIGKILL as i32
                }
            }
        }
    };
    clear_rest(args.grace, None).await;
    Ok(code)
}
