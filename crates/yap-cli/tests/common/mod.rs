//! Helpers shared by the end-to-end test binaries: a real server on an ephemeral port with a
//! generated tiny model, and a WebSocket client.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::too_many_lines, missing_docs)]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use yap_cli::client::Ws;
use yap_cli::serve::{self, Running, ServeArgs};

pub const KEY: &str = "test-key";
pub const T: Duration = Duration::from_secs(30);

pub fn tiny_model() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("yap-e2e-{}", std::process::id()));
        let path = dir.join("tiny.gguf");
        yap_testkit::tiny::write_tiny_model(&path, yap_testkit::tiny::TinyModelSpec::default())
            .expect("write tiny model");
        path
    })
    .clone()
}

#[derive(Parser)]
struct Wrap {
    #[command(flatten)]
    args: ServeArgs,
}

pub async fn server(extra: &[&str]) -> Running {
    try_server(extra).await.expect("server starts")
}

/// Starts a server, returning the startup error instead of panicking.
pub async fn try_server(extra: &[&str]) -> anyhow::Result<Running> {
    let model = tiny_model();
    let mut argv = vec![
        "yap".to_owned(),
        "--host=127.0.0.1".into(),
        "--port=0".into(),
        format!("--api-key={KEY}"),
        "--max-concurrent-connections=16".into(),
        format!("--model={}", model.display()),
        "--threads=1".into(),
        "--kv-tokens=65536".into(),
        "--chat-max-len=8192".into(),
        "--deploy-mode=chat".into(),
    ];
    // Extra flags replace defaults of the same name.
    argv.retain(|a| {
        let name = a.split('=').next().unwrap_or_default();
        !extra.iter().any(|e| e.split('=').next() == Some(name))
    });
    argv.extend(extra.iter().map(|s| s.to_string()));
    let args = Wrap::try_parse_from(argv)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .args;
    serve::start(args).await
}

pub async fn connect(r: &Running) -> Ws {
    let url = format!("ws://{}/ws?api_key={KEY}", r.addr);
    tokio_tungstenite::connect_async(url)
        .await
        .expect("connect")
        .0
}

pub async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .expect("send");
}

pub async fn send_raw(ws: &mut Ws, s: &str) {
    ws.send(Message::Text(s.to_owned().into()))
        .await
        .expect("send");
}

/// Next text frame as JSON; panics on close or timeout.
pub async fn recv(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(T, ws.next())
            .await
            .expect("frame in time")
            .expect("open")
            .expect("ok");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("json frame"),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

/// Reads frames until the close; returns the frames and the close code.
pub async fn recv_until_close(ws: &mut Ws) -> (Vec<Value>, Option<u16>) {
    let mut frames = Vec::new();
    loop {
        match tokio::time::timeout(T, ws.next()).await.expect("in time") {
            Some(Ok(Message::Text(t))) => frames.push(serde_json::from_str(t.as_str()).unwrap()),
            Some(Ok(Message::Close(c))) => return (frames, c.map(|c| u16::from(c.code))),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return (frames, None),
        }
    }
}

pub fn start(session: &str, text: &str, rid: &str) -> Value {
    json!({"type":"start","session_id":session,"user_utterance":text,"request_id":rid,
           "sampling":{"temperature":0.8}})
}

pub fn is_terminal(f: &Value) -> bool {
    f["type"] == "done" || f["type"] == "error"
}

/// The reply of a turn's frames: its token texts joined.
pub fn reply_text(frames: &[Value]) -> String {
    frames
        .iter()
        .filter(|f| f["type"] == "token")
        .map(|f| f["text"].as_str().unwrap())
        .collect()
}

/// Reads one whole turn: every frame up to and including its terminal frame.
pub async fn read_turn(ws: &mut Ws) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let f = recv(ws).await;
        let end = is_terminal(&f);
        frames.push(f);
        if end {
            return frames;
        }
    }
}

pub async fn healthz(r: &Running) -> Value {
    let mut s = tokio::net::TcpStream::connect(r.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap()
}

/// A plain HTTP/1.0 request to `addr`; returns the status code and the JSON body (Null when the
/// body is not JSON).
pub async fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf).await;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// An HTTP/1.0 request with headers (and a body); returns the status and the JSON body.
pub async fn http_req(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf).await;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A request with headers and no body.
pub async fn http_with(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    http_req(addr, method, path, headers, "").await
}

/// A JSON POST.
pub async fn http_json(
    addr: std::net::SocketAddr,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut h = headers.to_vec();
    h.push(("Content-Type", "application/json"));
    http_req(addr, "POST", path, &h, body).await
}
