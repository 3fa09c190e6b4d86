//! The lifecycle commands on the real binary: `yap serve --detach`, `status`, `logs`, `stop`
//! (graceful drain over v0, v1 and an SSE completion mid-turn), `restart`, `stop --purge`, and
//! the JSON log format.
#![allow(clippy::unwrap_used, clippy::too_many_lines, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A scratch folder: the working folder, run folder and home of the commands.
struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("yap-life-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("home")).unwrap();
        Self { dir }
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    fn record(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.run_dir().join("yap.json")).unwrap())
            .unwrap()
    }

    /// `yap ARGS` in the sandbox.
    async fn yap(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_yap"));
        c.args(args)
            .current_dir(&self.dir)
            .env("YAP_RUN_DIR", self.run_dir())
            .env("HOME", self.dir.join("home"))
            .env("YAP_CACHE_DIR", self.dir.join("cache"))
            .env("TEXT_API_KEY", KEY)
            .env("MAX_CONCURRENT_CONNECTIONS", "8")
            .env("YAP_LOG", "info");
        for v in [
            "XDG_STATE_HOME",
            "XDG_CACHE_HOME",
            "HF_HOME",
            "HF_HUB_CACHE",
            "VLLM_CACHE_ROOT",
            "TRITON_CACHE_DIR",
            "LOG_FORMAT",
            "LOG_FILE",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ] {
            c.env_remove(v);
        }
        for (k, v) in env {
            c.env(k, v);
        }
        tokio::time::timeout(Duration::from_secs(120), c.output())
            .await
            .expect("command finished in time")
            .unwrap()
    }

    async fn detach(&self, extra: &[&str], env: &[(&str, &str)]) -> Value {
        let model = format!("--model={}", tiny_model().display());
        let mut args = vec![
            "serve",
            "--detach",
            "--host=127.0.0.1",
            "--port=0",
            "--deploy-mode=chat",
            "--threads=1",
            "--kv-tokens=16384",
            "--chat-max-len=8192",
            &model,
        ];
        args.extend(extra);
        let out = self.yap(&args, env).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("yap is running (pid"), "{stdout}");
        assert!(stdout.contains("yap logs -f"), "{stdout}");
        let record = self.record();
        assert_eq!(record["status"], "ready");
        record
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Never leave a server behind, even when an assertion failed.
        if let Ok(text) = std::fs::read_to_string(self.run_dir().join("yap.pid"))
            && let Ok(pid) = text.trim().parse::<i32>()
            && yap_cli::lifecycle::is_yap_server(pid as u32)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn addr_of(record: &Value) -> std::net::SocketAddr {
    record["addr"].as_str().unwrap().parse().unwrap()
}

fn pid_of(record: &Value) -> u32 {
    record["pid"].as_u64().unwrap() as u32
}

async fn ws(addr: std::net::SocketAddr) -> yap_cli::client::Ws {
    tokio_tungstenite::connect_async(format!("ws://{addr}/ws?api_key={KEY}"))
        .await
        .unwrap()
        .0
}

/// A streamed completion: its `data:` payloads, read to the end of the response.
async fn sse_until_end(
    addr: std::net::SocketAddr,
    started: tokio::sync::oneshot::Sender<()>,
) -> Vec<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = json!({"prompt":"Once upon a time","max_tokens":4000,"stream":true}).to_string();
    let req = format!(
        "POST /v1/completions HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut lines = BufReader::new(s).lines();
    let mut data = Vec::new();
    let mut started = Some(started);
    while let Ok(Ok(Some(line))) = tokio::time::timeout(T, lines.next_line()).await {
        if let Some(d) = line.strip_prefix("data: ") {
            data.push(d.to_owned());
            if data.len() >= 2
                && let Some(tx) = started.take()
            {
                let _ = tx.send(());
            }
        }
    }
    data
}

fn log_text(record: &Value) -> String {
    std::fs::read_to_string(record["log_file"].as_str().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_status_logs_and_a_stop_that_drains_every_dialect() {
    let sb = Sandbox::new("drain");
    let record = sb
        .detach(&["--chat-max-out=4000"], &[("SHUTDOWN_GRACE_S", "1")])
        .await;
    let addr = addr_of(&record);
    let pid = pid_of(&record);
    assert!(yap_cli::lifecycle::is_yap_server(pid));
    assert_eq!(
        std::fs::read_to_string(sb.run_dir().join("yap.pid"))
            .unwrap()
            .trim(),
        pid.to_string()
    );
    assert_eq!(http(addr, "GET", "/healthz").await.0, 200);
    assert_eq!(record["log_file"], json!(sb.dir.join("server.log")));

    let status = sb.yap(&["status"], &[]).await;
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(
        text.contains(&format!("yap is running (pid {pid}")),
        "{text}"
    );
    assert!(text.contains("health:  ok (200)"), "{text}");

    let logs = sb.yap(&["logs", "-n", "2"], &[]).await;
    assert!(logs.status.success());
    assert_eq!(String::from_utf8_lossy(&logs.stdout).lines().count(), 2);
    let all = sb.yap(&["logs", "-n", "10000"], &[]).await;
    assert!(String::from_utf8_lossy(&all.stdout).contains("yap listening"));

    // A second detached server in the same run folder is refused.
    let again = sb.yap(&["serve", "--detach", "--port=0"], &[]).await;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already running"));

    // Three turns mid-stream: v0, v1 and an SSE completion.
    let mut v0 = ws(addr).await;
    send(&mut v0, start("d0", "Tell me a very long story.", "long")).await;
    assert_eq!(recv(&mut v0).await["type"], "ack");
    assert_eq!(recv(&mut v0).await["type"], "token");
    let mut v1 = ws(addr).await;
    send(
        &mut v1,
        json!({"type":"start","v":1,"gender":"male","personality":"calm",
        "chat_prompt":"You are a calm companion."}),
    )
    .await;
    assert_eq!(recv(&mut v1).await["type"], "done");
    send(
        &mut v1,
        json!({"type":"message","v":1,"user_utterance":"Tell me everything."}),
    )
    .await;
    assert_eq!(recv(&mut v1).await["type"], "token");
    let (tx, rx) = tokio::sync::oneshot::channel();
    let sse = tokio::spawn(sse_until_end(addr, tx));
    rx.await.unwrap();

    let stop = tokio::spawn(async move { (sb.yap(&["stop"], &[]).await, sb) });
    let (f0, c0) = recv_until_close(&mut v0).await;
    let (f1, c1) = recv_until_close(&mut v1).await;
    let data = sse.await.unwrap();
    let (out, sb) = stop.await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("stopping yap") && text.contains("stopped"),
        "{text}"
    );

    // v0: tokens, then exactly one done{cancelled}, then close 1001.
    assert_eq!(c0, Some(1001), "{f0:?}");
    let last = f0.last().unwrap();
    assert_eq!(
        (&last["type"], &last["cancelled"]),
        (&json!("done"), &json!(true)),
        "{f0:?}"
    );
    assert!(
        f0[..f0.len() - 1].iter().all(|f| f["type"] == "token"),
        "{f0:?}"
    );
    // v1: tokens, then `cancelled`, then close 1001.
    assert_eq!(c1, Some(1001), "{f1:?}");
    assert_eq!(f1.last().unwrap()["type"], "cancelled", "{f1:?}");
    assert!(
        f1[..f1.len() - 1].iter().all(|f| f["type"] == "token"),
        "{f1:?}"
    );
    // SSE: chunks, then an error event and [DONE].
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let err: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(err["error"]["code"], "server_shutdown", "{data:?}");

    // Gone, and says so.
    assert!(!yap_cli::lifecycle::is_yap_server(pid));
    assert!(!sb.run_dir().join("yap.json").exists());
    assert!(!sb.run_dir().join("yap.pid").exists());
    let status = sb.yap(&["status"], &[]).await;
    assert_eq!(status.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&status.stdout).contains("not running"));
    let log = std::fs::read_to_string(sb.dir.join("server.log")).unwrap();
    assert!(
        log.contains("shutting down") && log.contains("drained"),
        "{log}"
    );
    // `yap logs` still finds the log after the server is gone (LOG_FILE default).
    let logs = sb.yap(&["logs", "-n", "5"], &[]).await;
    assert!(String::from_utf8_lossy(&logs.stdout).contains("stopped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_lets_a_running_turn_finish_within_the_grace_and_logs_json() {
    let sb = Sandbox::new("finish");
    let record = sb
        .detach(
            &["--chat-max-out=300"],
            &[("SHUTDOWN_GRACE_S", "60"), ("LOG_FORMAT", "json")],
        )
        .await;
    let addr = addr_of(&record);
    let mut v0 = ws(addr).await;
    send(&mut v0, start("f", "Tell me a story.", "r")).await;
    assert_eq!(recv(&mut v0).await["type"], "ack");
    assert_eq!(recv(&mut v0).await["type"], "token");
    let stop = tokio::spawn(async move { (sb.yap(&["stop"], &[]).await, sb) });
    let (frames, code) = recv_until_close(&mut v0).await;
    let (out, sb) = stop.await.unwrap();
    assert!(out.status.success());
    assert_eq!(code, Some(1001));
    let done = frames.last().unwrap();
    assert_eq!(done["type"], "done", "{frames:?}");
    assert!(
        done.get("cancelled").is_none(),
        "finished, not cancelled: {done}"
    );
    assert_eq!(done["usage"]["completion_tokens"], 300);
    // Every line of the log is one JSON object.
    let log = log_text(&record);
    let mut n = 0;
    for line in log.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        n += 1;
    }
    assert!(n >= 3, "{log}");
    assert!(log.contains("\"yap listening"), "{log}");
    drop(sb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_replaces_the_process_and_stop_purge_deletes_the_caches() {
    let sb = Sandbox::new("purge");
    let first = sb.detach(&["--chat-max-out=8"], &[]).await;
    let out = sb.yap(&["restart"], &[]).await;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let second = sb.record();
    assert_ne!(pid_of(&first), pid_of(&second));
    assert!(!yap_cli::lifecycle::is_yap_server(pid_of(&first)));
    assert_eq!(second["argv"], first["argv"]);
    assert_eq!(http(addr_of(&second), "GET", "/healthz").await.0, 200);

    let home = sb.dir.join("home");
    let caches: Vec<PathBuf> = vec![
        sb.dir.join("cache/models"),
        home.join(".cache/vllm/torch_compile_cache"),
        home.join(".cache/flashinfer/x"),
        home.join(".triton/cache/k"),
        home.join(".cache/huggingface/hub/models--x"),
    ];
    let keep = home.join(".cache/other/keep");
    for d in caches.iter().chain([&keep]) {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("f"), "x").unwrap();
    }
    let out = sb.yap(&["stop", "--purge"], &[]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for d in &caches {
        let top: &Path = if d.starts_with(sb.dir.join("cache")) {
            &sb.dir.join("cache")
        } else {
            d.parent().unwrap()
        };
        assert!(!top.exists(), "{} survived: {text}", top.display());
    }
    assert!(keep.join("f").exists(), "only the listed caches go");
    assert!(text.contains("purged"), "{text}");
    assert!(!yap_cli::lifecycle::is_yap_server(pid_of(&second)));
    // Purging with nothing running still purges, and says it is not running.
    std::fs::create_dir_all(sb.dir.join("cache/again")).unwrap();
    let out = sb.yap(&["stop", "--purge"], &[]).await;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("not running"));
    assert!(!sb.dir.join("cache").exists());
}
