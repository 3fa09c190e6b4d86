//! Yap against real llama.cpp `llama-server`s (built by `scripts/build-llama-server.sh` into
//! `target/llama-server/bin/`), and behind a real router (`vllm-router` from PyPI, installed by
//! `scripts/test.sh` into `target/router-venv/`): attach, barge-in, cancel stops the engine's
//! slot (its `/slots`), cached tokens, two replicas with stickiness and failover (seen in each
//! server's `/metrics`), exactly one BOS, and session affinity + failover through the router.
//!
//! Without the binaries every test prints `SKIPPED` and passes, unless
//! `YAP_REQUIRE_REAL_ENGINES=1` (set by `scripts/test.sh`, so CI never skips silently).
#![cfg(feature = "dev-tools")]
#![allow(clippy::unwrap_used, clippy::too_many_lines, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A binary from an env var or its place under `target/`; `None` (after a `SKIPPED` line) when
/// absent and not required.
fn binary(env: &str, rel: &str, what: &str) -> Option<PathBuf> {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(rel));
    if path.is_file() {
        return Some(path);
    }
    let msg = format!(
        "{what} not found at {} (set {env}, or run scripts/test.sh which builds/installs it)",
        path.display()
    );
    assert!(
        std::env::var("YAP_REQUIRE_REAL_ENGINES").as_deref() != Ok("1"),
        "{msg}"
    );
    eprintln!("SKIPPED: {msg}");
    None
}

fn llama_server_bin() -> Option<PathBuf> {
    binary(
        "LLAMA_SERVER_BIN",
        "target/llama-server/bin/llama-server",
        "llama-server",
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed on drop, with its output in a log file.
struct Proc {
    addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("yap-real-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}.log"))
}

async fn wait_ok(addr: SocketAddr, path: &str, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() && get(addr, path).await.0 == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not healthy at {addr}{path}; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts `llama-server` on a model.
async fn llama_server(bin: &Path, model: &Path, extra: &[&str]) -> Proc {
    let port = free_port();
    let log = log_path(&format!("llama-server-{port}"));
    let child = Command::new(bin)
        .args(["-m", &model.display().to_string()])
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--threads", "1", "--metrics"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let p = Proc {
        addr,
        child,
        log: log.with_extension("err"),
    };
    wait_ok(addr, "/health", "llama-server", &p.log).await;
    p
}

/// A GET; returns the status and the body as text.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let req = format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf).await;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

async fn slots(p: &Proc) -> Vec<Value> {
    let (code, body) = get(p.addr, "/slots").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<Value>(&body)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// A counter of llama-server's Prometheus `/metrics`.
async fn metric(p: &Proc, name: &str) -> f64 {
    let (_, body) = get(p.addr, "/metrics").await;
    body.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .filter(|r| r.starts_with(' '))
                .and_then(|r| r.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

async fn requests(p: &Proc) -> f64 {
    metric(p, "llamacpp:prompt_tokens_total").await
        + metric(p, "llamacpp:tokens_predicted_total").await
}

fn decoded(slot: &Value) -> u64 {
    slot["next_token"][0]["n_decoded"].as_u64().unwrap_or(0)
}

async fn turn_text(
    ws: &mut yap_cli::client::Ws,
    session: &str,
    text: &str,
    rid: &str,
) -> Vec<Value> {
    send(ws, start(session, text, rid)).await;
    read_turn(ws).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_cancel_barge_in_and_cached_tokens_on_llama_server() {
    let Some(bin) = llama_server_bin() else {
        return;
    };
    let model = tiny_model();
    // --ignore-eos: the random tiny model never ends a reply early, so a reply only stops when
    // Yap stops it (or at max_tokens).
    let ls = llama_server(&bin, &model, &["-c", "16384", "-np", "2", "--ignore-eos"]).await;
    let url = format!("--engine-url={}", ls.url());
    let r = server(&[
        "--engine=llama-server",
        &url,
        "--chat-max-len=4096",
        "--chat-max-out=16",
        "--ws-max-messages-per-window=0",
        "--ws-max-cancels-per-window=0",
    ])
    .await;
    let h = healthz(&r).await;
    assert_eq!(h["status"], "ok", "{h}");
    // Attach: the model name came from the server's /v1/models.
    assert!(h.to_string().contains("tiny"), "{h}");
    let mut ws = connect(&r).await;
    let t1 = turn_text(&mut ws, "ls-a", "hello there", "1").await;
    let d1 = t1.last().unwrap();
    assert_eq!(d1["type"], "done", "{t1:?}");
    assert_eq!(d1["usage"]["completion_tokens"], 16, "{d1}");
    // The same session again: the engine serves the previous prompt from its cache.
    let t2 = turn_text(&mut ws, "ls-a", "and again", "2").await;
    let u2 = &t2.last().unwrap()["usage"];
    let p1 = d1["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        u2["cached_prompt_tokens"].as_u64().unwrap() >= p1,
        "turn 2 should reuse turn 1's {p1} prompt tokens: {u2}"
    );
    r.stop().await;

    // Long replies now: cancel and barge-in must stop the engine's slot, not just Yap's stream.
    let r = server(&[
        "--engine=llama-server",
        &url,
        "--chat-max-len=4096",
        "--chat-max-out=3000",
        "--ws-max-messages-per-window=0",
        "--ws-max-cancels-per-window=0",
    ])
    .await;
    let mut ws = connect(&r).await;
    send(&mut ws, start("ls-c", "talk for a long time", "long")).await;
    while recv(&mut ws).await["type"] != "token" {}
    assert!(
        slots(&ls).await.iter().any(|s| s["is_processing"] == true),
        "no slot busy while streaming"
    );
    send(&mut ws, json!({"type":"cancel"})).await;
    loop {
        let f = recv(&mut ws).await;
        if f["type"] == "done" {
            assert_eq!(f["cancelled"], true, "{f}");
            break;
        }
    }
    let t0 = Instant::now();
    loop {
        let s = slots(&ls).await;
        if s.iter().all(|s| s["is_processing"] == false) {
            let most = s.iter().map(decoded).max().unwrap();
            assert!(most < 3000, "the slot ran to the end: {most} tokens");
            eprintln!(
                "llama-server slot idle {:.0} ms after the cancel ({most} tokens decoded)",
                t0.elapsed().as_secs_f64() * 1000.0
            );
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "llama-server still decodes the cancelled reply: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Barge-in: a new start on the same session cancels the running reply in the engine too.
    send(&mut ws, start("ls-c", "tell me a story", "first")).await;
    while recv(&mut ws).await["type"] != "token" {}
    send(&mut ws, start("ls-c", "no, a joke", "second")).await;
    loop {
        let f = recv(&mut ws).await;
        if is_terminal(&f) {
            assert_eq!(f["cancelled"], true, "{f}");
            assert_eq!(f["request_id"], "first");
            break;
        }
    }
    while recv(&mut ws).await["type"] != "token" {}
    // One reply runs in the engine: the barged-in one was stopped.
    let busy = slots(&ls)
        .await
        .iter()
        .filter(|s| s["is_processing"] == true)
        .count();
    assert!(busy <= 1, "{busy} slots busy after the barge-in");
    send(&mut ws, json!({"type":"cancel"})).await;
    loop {
        if recv(&mut ws).await["type"] == "done" {
            break;
        }
    }
    r.stop().await;
}

/// Which of the servers served the last request (its counters moved).
async fn served_by(servers: &[&Proc], before: &[f64]) -> Vec<usize> {
    // The counters move when the server releases the slot, a moment after the last chunk.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut out = Vec::new();
        for (i, s) in servers.iter().enumerate() {
            if requests(s).await > before[i] {
                out.push(i);
            }
        }
        if !out.is_empty() || Instant::now() > deadline {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn counters(servers: &[&Proc]) -> Vec<f64> {
    let mut v = Vec::new();
    for s in servers {
        v.push(requests(s).await);
    }
    v
}

/// Runs two turns on each of `n` sessions through `r` and returns, per session, the index of
/// the server that served both turns (asserting it is the same one).
async fn sticky_sessions(r: &yap_cli::serve::Running, servers: &[&Proc], n: usize) -> Vec<usize> {
    let mut ws = connect(r).await;
    let mut homes = Vec::new();
    for s in 0..n {
        let session = format!("sticky-{s}");
        let mut home = None;
        for t in 0..2 {
            let before = counters(servers).await;
            let f = turn_text(
                &mut ws,
                &session,
                &format!("turn {t} of {session}"),
                &format!("{s}.{t}"),
            )
            .await;
            assert_eq!(f.last().unwrap()["type"], "done", "{f:?}");
            let by = served_by(servers, &before).await;
            assert_eq!(by.len(), 1, "{session} turn {t} served by {by:?}");
            match home {
                None => home = Some(by[0]),
                Some(h) => assert_eq!(h, by[0], "{session} moved between servers"),
            }
        }
        homes.push(home.unwrap());
    }
    homes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_llama_servers_keep_sessions_sticky_and_fail_over() {
    let Some(bin) = llama_server_bin() else {
        return;
    };
    let model = tiny_model();
    let a = llama_server(&bin, &model, &["-c", "8192", "-np", "1"]).await;
    let mut b = llama_server(&bin, &model, &["-c", "8192", "-np", "1"]).await;
    let r = server(&[
        "--engine=llama-server",
        &format!("--engine-url={},{}", a.url(), b.url()),
        "--chat-max-len=4096",
        "--chat-max-out=8",
        "--engine-health-interval-s=0.2",
        "--ws-max-messages-per-window=0",
    ])
    .await;
    let homes = sticky_sessions(&r, &[&a, &b], 8).await;
    assert!(
        homes.contains(&0) && homes.contains(&1),
        "all sessions on one server: {homes:?}"
    );
    // Server B dies: its sessions move to A; every turn completes.
    b.kill();
    let mut ws = connect(&r).await;
    for s in 0..8 {
        let f = turn_text(
            &mut ws,
            &format!("sticky-{s}"),
            "still there?",
            &format!("after{s}"),
        )
        .await;
        assert_eq!(f.last().unwrap()["type"], "done", "{f:?}");
    }
    assert_eq!(healthz(&r).await["status"], "ok");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_model_gets_exactly_one_bos() {
    let Some(bin) = llama_server_bin() else {
        return;
    };
    let model = match std::env::var_os("YAP_DEFAULT_MODEL") {
        Some(p) => PathBuf::from(p),
        None => yap_cli::model_fetch::ensure_default_model().unwrap(),
    };
    let ls = llama_server(&bin, &model, &["-c", "2048", "-np", "1"]).await;
    let r = server(&[
        "--engine=llama-server",
        &format!("--engine-url={}", ls.url()),
        &format!("--model={}", model.display()),
        "--chat-max-len=2048",
        "--chat-max-out=4",
    ])
    .await;
    let mut ws = connect(&r).await;
    let f = turn_text(&mut ws, "bos", "Hello!", "1").await;
    let done = f.last().unwrap();
    assert_eq!(done["type"], "done", "{f:?}");
    let slot = &slots(&ls).await[0];
    // The server held a prompt of about Yap's size (token ids; this llama-server's /slots no
    // longer shows the prompt text, and counts a few tokens more than its usage reports), and
    // no BOS was added twice (llama-server warns "2 BOS" when a text prompt gets one of its own).
    let held = slot["n_prompt_tokens"].as_u64().unwrap();
    let sent = done["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(held >= sent && held <= sent + 8, "{held} vs {sent}: {slot}");
    assert!(
        !ls.log_text().contains("2 BOS"),
        "llama-server warned about a double BOS"
    );
    r.stop().await;
}

fn vllm_router_bin() -> Option<PathBuf> {
    binary(
        "VLLM_ROUTER_BIN",
        "target/router-venv/bin/vllm-router",
        "vllm-router",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_vllm_router_sessions_stay_on_one_worker_and_fail_over() {
    let Some(bin) = llama_server_bin() else {
        return;
    };
    let Some(router_bin) = vllm_router_bin() else {
        return;
    };
    let model = tiny_model();
    let a = llama_server(&bin, &model, &["-c", "8192", "-np", "1"]).await;
    let mut b = llama_server(&bin, &model, &["-c", "8192", "-np", "1"]).await;
    let port = free_port();
    let log = log_path(&format!("vllm-router-{port}"));
    let child = Command::new(router_bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--worker-urls", &a.url(), &b.url()])
        .args(["--policy", "consistent_hash"])
        .args(["--prometheus-port", &free_port().to_string()])
        .args(["--health-check-interval-secs", "1"])
        .args(["--health-failure-threshold", "1"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
        .spawn()
        .unwrap();
    let router = Proc {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        child,
        log: log.with_extension("err"),
    };
    wait_ok(router.addr, "/health", "vllm-router", &router.log).await;
    let r = server(&[
        "--engine=openai",
        &format!("--engine-url={}", router.url()),
        "--chat-max-len=4096",
        "--chat-max-out=8",
        "--ws-max-messages-per-window=0",
    ])
    .await;
    // The router keys on the session (`x-session-id` / `user`): each session stays on one
    // worker, and the sessions spread over both.
    let homes = sticky_sessions(&r, &[&a, &b], 8).await;
    assert!(
        homes.contains(&0) && homes.contains(&1),
        "all sessions on one worker: {homes:?}"
    );
    // A worker dies: the router sends its sessions to the other one.
    b.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut ws = connect(&r).await;
    for s in 0..8 {
        let f = turn_text(
            &mut ws,
            &format!("sticky-{s}"),
            "still there?",
            &format!("after{s}"),
        )
        .await;
        assert_eq!(
            f.last().unwrap()["type"],
            "done",
            "{f:?}\nrouter log:\n{}",
            router.log_text()
        );
    }
    r.stop().await;
}
