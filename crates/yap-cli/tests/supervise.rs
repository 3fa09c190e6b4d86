//! `--engine vllm` with the engine double standing in for `vllm`: launch with derived
//! arguments, health-gated readiness, restart after a crash, log capture, and no orphan.
#![cfg(feature = "dev-tools")]
#![allow(clippy::unwrap_used, clippy::too_many_lines, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launched_engine_is_supervised_restarted_and_stopped() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("yap-sup-{}", std::process::id()));
    let log = dir.join("server.log");
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
    ])
    .await;
    let sup = r.supervisor.clone().expect("supervised");
    let pid = sup.pid() as i32;
    assert!(alive(pid));
    assert_eq!(healthz(&r).await["status"], "ok");
    // The child got vLLM's arguments as Yap derives them.
    let text = std::fs::read_to_string(&log).unwrap();
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
    let text = std::fs::read_to_string(&log).unwrap();
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
