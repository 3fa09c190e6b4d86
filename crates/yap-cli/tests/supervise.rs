//! `--engine vllm` with the engine double standing in for `vllm`: launch with derived
//! arguments, health-gated readiness, restart after a crash, log capture, and no process left
//! behind — after a crash + restart, a stop, a SIGTERM and a SIGKILL of Yap — even of helpers
//! the engine started (one in its process group, one in a session of its own); a taken engine
//! port is refused.
#![cfg(feature = "dev-tools")]
#![allow(clippy::unwrap_used, clippy::too_many_lines, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use yap_remote::procs;

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

const YAP: &str = env!("CARGO_BIN_EXE_yap");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until none of `pids` exists any more (not even as a zombie).
async fn gone(pids: &[i32], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left: Vec<_> = pids.iter().filter_map(|&p| procs::process(p)).collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: left behind {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The double's pid and its helpers' pids, from its `/stats`.
async fn engine_pids(port: u16) -> (i32, Vec<i32>) {
    let (_, stats) = http(
        format!("127.0.0.1:{port}").parse().unwrap(),
        "GET",
        "/stats",
    )
    .await;
    let pid = stats["pid"].as_i64().unwrap() as i32;
    let helpers = stats["helpers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap() as i32)
        .collect();
    (pid, helpers)
}

/// The test process's own rotated log (as `yap serve` has), installed once.
fn process_log() -> std::path::PathBuf {
    static LOG: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let path = std::env::temp_dir()
            .join(format!("yap-sup-log-{}", std::process::id()))
            .join("server.log");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let sinks = yap_cli::telemetry::Sinks {
            stderr: false,
            file: Some(&path),
        };
        std::mem::forget(yap_cli::telemetry::init(&sinks).unwrap());
        path
    })
    .clone()
}

/// The log's text once it contains `needle` (the writer is asynchronous), or after 10 s.
async fn log_with(path: &std::path::Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn double_engine_args(port: u16, log: &std::path::Path) -> Vec<String> {
    vec![
        "--engine=vllm".into(),
        "--engine-model=org/fake-model".into(),
        format!("--engine-bin={YAP} engine-double --token-ms 2 --spawn-grandchild"),
        format!("--engine-guard-bin={YAP}"),
        format!("--engine-port={port}"),
        format!("--log-file={}", log.display()),
        "--engine-stop-grace-s=2".into(),
        "--engine-health-interval-s=0.05".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launched_engine_is_supervised_restarted_and_stopped() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("yap-sup-{}", std::process::id()));
    // This server runs in the test process: the engine's output reaches the process log.
    let log = process_log();
    let bin = format!(
        "--engine-bin={} engine-double --token-ms 2",
        env!("CARGO_BIN_EXE_yap")
    );
    let r = server(&[
        "--engine=vllm",
        "--engine-model=org/fake-model-AWQ",
        &bin,
        &format!("--engine-port={port}"),
        &format!("--log-file={}", log.display()),
        "--engine-health-interval-s=0.05",
        "--chat-max-out=3000",
        "--chat-gpu-frac=0.7",
        "--kv-dtype=fp8",
        &format!("--engine-guard-bin={}", env!("CARGO_BIN_EXE_yap")),
    ])
    .await;
    let sup = r.supervisor.clone().expect("supervised");
    let pid = sup.pid() as i32;
    assert!(alive(pid));
    assert_eq!(healthz(&r).await["status"], "ok");
    // The child got vLLM's arguments as Yap derives them.
    let text = log_with(&log, "[vllm] engine-double listening").await;
    for arg in [
        "serve org/fake-model-AWQ",
        "--max-model-len 8192",
        "--gpu-memory-utilization 0.70",
        "--enable-prefix-caching",
        "--quantization awq_marlin",
        "--kv-cache-dtype fp8",
        &format!("--port {port}"),
    ] {
        assert!(text.contains(arg), "missing {arg:?} in log:\n{text}");
    }
    assert!(text.contains("[vllm] engine-double listening"), "{text}");
    // A turn in flight when the engine dies ends with engine_unavailable; /healthz says 503
    // during the gap; the supervisor restarts it and turns work again.
    let mut ws = connect(&r).await;
    send(&mut ws, start("sup", "hello", "inflight")).await;
    while recv(&mut ws).await["type"] != "token" {}
    let engine = format!("127.0.0.1:{port}").parse().unwrap();
    let _ = http(engine, "POST", "/control/die").await;
    let f = read_turn(&mut ws).await;
    let last = f.last().unwrap();
    assert_eq!(last["error_code"], "engine_unavailable", "{last}");
    assert_eq!(last["request_id"], "inflight");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut saw_503 = false;
    loop {
        let (code, _) = http(r.addr, "GET", "/healthz").await;
        saw_503 |= code == 503;
        if saw_503 && code == 200 && sup.restarts() >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no restart (503 seen: {saw_503}, restarts {})",
            sup.restarts()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let new_pid = sup.pid() as i32;
    assert!(new_pid != pid && alive(new_pid));
    // /healthz counts the restart once.
    assert_eq!(healthz(&r).await["engine_stats"]["restarts"], 1);
    send(
        &mut ws,
        json!({"type":"start","session_id":"sup","user_utterance":"again","request_id":"after"}),
    )
    .await;
    while recv(&mut ws).await["type"] != "token" {}
    send(&mut ws, json!({"type":"cancel"})).await;
    loop {
        if recv(&mut ws).await["type"] == "done" {
            break;
        }
    }
    // Shutdown stops the child: no orphan.
    r.stop().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(new_pid) {
        assert!(
            Instant::now() < deadline,
            "engine process {new_pid} outlived the server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = log_with(&log, "restarting").await;
    assert!(
        text.contains("exited") && text.contains("restarting"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_is_refused_when_the_model_does_not_fit() {
    let dir = std::env::temp_dir().join(format!("yap-fit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        json!({"hidden_size":5120,"head_dim":128,"intermediate_size":14336,
        "num_attention_heads":32,"num_hidden_layers":40,"num_key_value_heads":8,
        "vocab_size":131072})
        .to_string(),
    )
    .unwrap();
    let mut argv: Vec<String> = [
        "--engine=vllm",
        "--engine-model=mistralai/Mistral-Nemo-Instruct-2407",
        "--gpu-memory-gib=22.35",
        "--gpu-sm=61",
        "--chat-max-len=16384",
        "--engine-bin=/bin/false",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.push(format!("--engine-model-config={}", cfg.display()));
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let Err(err) = try_server(&refs).await else {
        panic!("a 12B model at 16K on a 24 GB GPU must be refused");
    };
    let msg = format!("{err:#}");
    assert!(
        msg.contains("refusing to launch") && msg.contains("does not fit"),
        "{msg}"
    );
    assert!(
        msg.contains("4-bit") || msg.contains("CHAT_MAX_LEN"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn check_command_refuses_12b_at_16k_on_24gb_and_accepts_80gb() {
    let cfg = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/model-configs/mistral-nemo-12b.json"
    );
    let run = |gpu: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_yap"))
            .args([
                "check",
                "--config",
                cfg,
                "--gpu",
                gpu,
                "--max-len",
                "16384",
                "--batch",
                "8",
            ])
            .output()
            .unwrap()
    };
    let small = run("p40");
    let text = String::from_utf8_lossy(&small.stdout);
    assert_eq!(small.status.code(), Some(1), "{text}");
    assert!(
        text.contains("does not fit") && text.contains("22.8 GiB"),
        "{text}"
    );
    let big = run("h100");
    let text = String::from_utf8_lossy(&big.stdout);
    assert!(big.status.success(), "{text}");
    assert!(
        text.contains("fits") && text.contains("holds 17 full-length sequences"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_engine_process_outlives_a_crash_restart_or_a_stop() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("yap-tree-{}", std::process::id()));
    let args = double_engine_args(port, &dir.join("server.log"));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = server(&refs).await;
    let sup = r.supervisor.clone().expect("supervised");
    let group = sup.pgid();
    let (engine, helpers) = engine_pids(port).await;
    // The guard leads a process group of its own; the engine and one helper are in it, the
    // other helper left it (setsid) but is still the guard's descendant.
    assert_eq!(procs::process(group).unwrap().pgrp, group);
    assert_ne!(
        group,
        procs::process(std::process::id() as i32).unwrap().pgrp
    );
    assert_eq!(procs::process(engine).unwrap().pgrp, group);
    assert_eq!(procs::process(helpers[0]).unwrap().pgrp, group);
    assert_ne!(procs::process(helpers[1]).unwrap().pgrp, group);
    assert_eq!(sup.pid() as i32, engine);
    // kill -9 of the engine: the supervisor restarts it, and nothing of the old one is left.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(engine),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(sup.restarts() >= 1 && sup.is_healthy()) {
        assert!(Instant::now() < deadline, "no restart");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut old = vec![group, engine];
    old.extend(&helpers);
    gone(&old, "after kill -9 of the engine + restart").await;
    assert!(procs::group_members(group).is_empty());
    let group2 = sup.pgid();
    let (engine2, helpers2) = engine_pids(port).await;
    assert!(group2 != group && engine2 != engine);
    assert_eq!(healthz(&r).await["status"], "ok");
    // An orderly stop: the engine, both helpers and the guard are gone.
    r.stop().await;
    let mut new = vec![group2, engine2];
    new.extend(&helpers2);
    gone(&new, "after stop").await;
    assert!(procs::group_members(group2).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `yap serve` as its own process, launching the double; returns it once healthy.
/// `yap serve` as a process launching the engine double (`engine_flags` appended to its command
/// line); returns it once healthy, with the first 503 body `/healthz` gave while it loaded.
async fn yap_process(
    port: u16,
    engine_port: u16,
    log: &std::path::Path,
    engine_flags: &str,
) -> (std::process::Child, Option<serde_json::Value>) {
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--host=127.0.0.1".into(),
        format!("--port={port}"),
        format!("--api-key={KEY}"),
        "--max-concurrent-connections=4".into(),
        format!("--model={}", tiny_model().display()),
        "--threads=1".into(),
        "--deploy-mode=chat".into(),
    ];
    args.extend(double_engine_args(engine_port, log));
    for a in &mut args {
        if a.starts_with("--engine-bin=") {
            a.push_str(engine_flags);
        }
    }
    let mut child = std::process::Command::new(YAP)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut loading = None;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            let (code, body) = http(addr, "GET", "/healthz").await;
            if code == 200 {
                break;
            }
            // Listening at once: 503 with a reason while the engine starts.
            if code == 503 {
                assert_eq!(body["status"], "loading", "{body}");
                assert!(
                    body["reason"].as_str().is_some_and(|r| !r.is_empty()),
                    "{body}"
                );
                loading.get_or_insert(body);
            }
        }
        assert!(child.try_wait().unwrap().is_none(), "yap exited early");
        assert!(Instant::now() < deadline, "yap never became healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, loading)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_or_sigkill_of_yap_leaves_no_engine_process() {
    let dir = std::env::temp_dir().join(format!("yap-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for sig in [
        nix::sys::signal::Signal::SIGKILL,
        nix::sys::signal::Signal::SIGTERM,
    ] {
        let engine_port = free_port();
        let (mut yap, _) = yap_process(free_port(), engine_port, &dir.join("server.log"), "").await;
        let (engine, helpers) = engine_pids(engine_port).await;
        let guard = procs::process(engine).unwrap().ppid;
        assert_eq!(procs::process(guard).unwrap().ppid, yap.id() as i32);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(yap.id() as i32), sig).unwrap();
        let status = yap.wait().unwrap();
        let mut all = vec![guard, engine];
        all.extend(&helpers);
        gone(&all, &format!("after {sig} of yap ({status})")).await;
        assert!(procs::group_members(guard).is_empty());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_engine_port_is_refused_at_start() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("yap-port-{}", std::process::id()));
    let args = double_engine_args(port, &dir.join("server.log"));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let Err(err) = try_server(&refs).await else {
        panic!("started on a taken engine port");
    };
    let msg = format!("{err:#}");
    assert!(msg.contains("already in use"), "{msg}");
    // The binary exits non-zero with the message.
    let mut argv: Vec<String> = vec![
        "serve".into(),
        "--host=127.0.0.1".into(),
        "--port=0".into(),
        format!("--api-key={KEY}"),
        "--max-concurrent-connections=4".into(),
        format!("--model={}", tiny_model().display()),
        "--deploy-mode=chat".into(),
    ];
    argv.extend(args);
    let out = std::process::Command::new(YAP)
        .args(&argv)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("already in use"), "{stderr}");
    drop(holder);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_503_loading_while_a_launched_engine_starts() {
    // Issue 13 #3: Yap listens at once; before, it listened only once the engine was ready.
    let dir = std::env::temp_dir().join(format!("yap-sup-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("server.log");
    let (mut child, loading) =
        yap_process(free_port(), free_port(), &log, " --startup-ms 3000").await;
    let body = loading.expect("a 503 while the engine loaded");
    assert_eq!(body["status"], "loading", "{body}");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
