//! Running Yap as a service from the shell: `yap serve --detach`, `yap status`, `yap logs`,
//! `yap stop [--purge]`, `yap restart`.
//!
//! A detached server is the same `yap serve` command line, re-spawned as a child in a new session
//! (`setsid`, no controlling terminal) with stdin closed and stdout/stderr appended to its log
//! file (only a crash before logging starts writes there directly: its own log goes through the
//! rotated writer). The child records itself in the run folder (`YAP_RUN_DIR`, else
//! `$XDG_STATE_HOME/yap`, else `~/.local/state/yap`): `yap.pid` and `yap.json` (pid, address,
//! log file, command line, working folder, status `loading` → `ready`). The parent returns once
//! the child says `ready` and its `/healthz` answers 200 (or 403 when `HEALTH_ALLOWED_CIDRS`
//! hides it from loopback), or fails with the log's last lines if the child exits first.
//!
//! Invariants: a pid is signalled only while `/proc/PID/cmdline` is a `yap … serve` command (a
//! recycled pid is never killed); the child removes its records when it exits, `yap stop`
//! removes them if it had to kill; `--purge` never removes `/` or the home folder itself.

use std::ffi::OsString;
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// Env var that marks the detached child.
pub const DETACHED_ENV: &str = "YAP_DETACHED";
/// Env var of the run folder.
pub const RUN_DIR_ENV: &str = "YAP_RUN_DIR";

/// The run folder: `YAP_RUN_DIR`, else `$XDG_STATE_HOME/yap`, else `~/.local/state/yap`.
pub fn run_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(RUN_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("yap");
    }
    home().join(".local").join("state").join("yap")
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// What a detached server records about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// Process id.
    pub pid: u32,
    /// `loading` until every model is loaded, then `ready`.
    pub status: String,
    /// The bound address, once listening.
    pub addr: Option<String>,
    /// The log file (absolute).
    pub log_file: PathBuf,
    /// The `yap` arguments it runs with (`serve …`, without `--detach`).
    pub argv: Vec<String>,
    /// The folder it was started in (relative paths in `argv` are relative to it).
    pub cwd: PathBuf,
    /// `SHUTDOWN_GRACE_S`, seconds.
    pub grace_s: f64,
    /// Start time, seconds since the Unix epoch.
    pub started_unix: u64,
}

impl ServerRecord {
    fn json_path(dir: &Path) -> PathBuf {
        dir.join("yap.json")
    }

    fn pid_path(dir: &Path) -> PathBuf {
        dir.join("yap.pid")
    }

    /// The record in `dir`, if any.
    pub fn read(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(Self::json_path(dir)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes `yap.json` (atomically) and `yap.pid`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join(format!(".yap.json.{}", self.pid));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, Self::json_path(dir))?;
        std::fs::write(Self::pid_path(dir), format!("{}\n", self.pid))?;
        Ok(())
    }

    /// Removes the records in `dir` if they are `pid`'s.
    pub fn clear(dir: &Path, pid: u32) {
        if Self::read(dir).is_some_and(|r| r.pid == pid) {
            let _ = std::fs::remove_file(Self::json_path(dir));
            let _ = std::fs::remove_file(Self::pid_path(dir));
        }
    }

    /// A loopback URL of the server (`0.0.0.0` → `127.0.0.1`).
    pub fn base_url(&self) -> Option<String> {
        let addr: std::net::SocketAddr = self.addr.as_deref()?.parse().ok()?;
        let ip = match addr.ip() {
            std::net::IpAddr::V4(v) if v.is_unspecified() => "127.0.0.1".to_owned(),
            std::net::IpAddr::V6(v) if v.is_unspecified() => "[::1]".to_owned(),
            std::net::IpAddr::V6(v) => format!("[{v}]"),
            std::net::IpAddr::V4(v) => v.to_string(),
        };
        Some(format!("http://{ip}:{}", addr.port()))
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether `pid` is a live `yap … serve` process (not a zombie, not a recycled pid).
pub fn is_yap_server(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 || kill(Pid::from_raw(raw), None).is_err() {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state letter follows the parenthesized command name.
    let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
    if matches!(state, Some(Some('Z' | 'X'))) {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    args.first().is_some_and(|a0| {
        Path::new(a0)
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("yap"))
    }) && args.iter().any(|a| a == "serve")
}

/// The record of the server running from `dir`, if one runs.
pub fn running(dir: &Path) -> Option<ServerRecord> {
    ServerRecord::read(dir).filter(|r| is_yap_server(r.pid))
}

// ---- the detached child ----------------------------------------------------------------------

/// Whether this process is a detached server child.
pub fn is_detached_child() -> bool {
    std::env::var_os(DETACHED_ENV).is_some_and(|v| v == "1")
}

/// The detached child's side: leaves the parent's session and records itself as `loading`.
pub fn child_begin(log_file: &Path, grace: Duration) -> Result<ChildRecord> {
    // Not a process group leader (spawned without one), so setsid succeeds.
    let _ = nix::unistd::setsid();
    let dir = run_dir();
    let argv: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let record = ServerRecord {
        pid: std::process::id(),
        status: "loading".into(),
        addr: None,
        log_file: absolute(log_file),
        argv,
        cwd: std::env::current_dir().unwrap_or_default(),
        grace_s: grace.as_secs_f64(),
        started_unix: now_unix(),
    };
    record.write(&dir)?;
    Ok(ChildRecord { dir, record })
}

/// The detached child's record; removed when dropped (the server exits).
#[derive(Debug)]
pub struct ChildRecord {
    dir: PathBuf,
    record: ServerRecord,
}

impl ChildRecord {
    /// Records that every model is loaded.
    pub fn ready(&mut self, addr: std::net::SocketAddr) -> Result<()> {
        self.record.addr = Some(addr.to_string());
        self.record.status = "ready".into();
        self.record.write(&self.dir)
    }
}

impl Drop for ChildRecord {
    fn drop(&mut self) {
        ServerRecord::clear(&self.dir, self.record.pid);
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    }
}

// ---- the parent: detach, status, stop, restart ---------------------------------------------

/// `argv` without `--detach` (what the child runs).
pub fn child_args(argv: &[OsString]) -> Vec<OsString> {
    argv.iter()
        .skip(1)
        .filter(|a| *a != "--detach")
        .cloned()
        .collect()
}

/// Spawns the detached child: `yap <args>` in `cwd`, output appended to `log_file`.
fn spawn_child(args: &[OsString], cwd: &Path, log_file: &Path) -> Result<Child> {
    let log_file = if log_file.is_absolute() {
        log_file.to_path_buf()
    } else {
        cwd.join(log_file)
    };
    if let Some(d) = log_file.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_file)
        .with_context(|| format!("opening {}", log_file.display()))?;
    let exe = std::env::current_exe().context("locating the yap binary")?;
    Command::new(exe)
        .args(args)
        .current_dir(cwd)
        .env(DETACHED_ENV, "1")
        .env(RUN_DIR_ENV, run_dir())
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("starting the detached server")
}

/// GET `url` → (status, JSON body).
async fn get_json(url: &str) -> Option<(u16, serde_json::Value)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .ok()?;
    let resp = client.get(url).send().await.ok()?;
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(serde_json::Value::Null);
    Some((status, body))
}

/// Starts `yap <args>` detached and waits until it is ready. Prints where it runs and how to
/// follow its log.
pub async fn detach(args: Vec<OsString>, cwd: &Path, log_file: &Path) -> Result<ServerRecord> {
    let dir = run_dir();
    if let Some(r) = running(&dir) {
        bail!(
            "yap is already running (pid {}, {}); `yap stop` first, or set YAP_RUN_DIR for a second one",
            r.pid,
            r.addr.as_deref().unwrap_or("starting")
        );
    }
    let mut child = spawn_child(&args, cwd, log_file)?;
    let pid = child.id();
    let record = wait_ready(&dir, &mut child, &absolute_in(cwd, log_file)).await?;
    let url = record.base_url().unwrap_or_default();
    println!(
        "yap is running (pid {pid}) on {}",
        record.addr.as_deref().unwrap_or("?")
    );
    println!(
        "  {url}/healthz  ·  {url}/metrics  ·  {}/ws",
        url.replacen("http", "ws", 1)
    );
    println!("  log:     {}", record.log_file.display());
    println!("  follow:  yap logs -f");
    println!("  stop:    yap stop        (drains running turns)");
    Ok(record)
}

fn absolute_in(cwd: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    }
}

/// Waits for the child's `ready` record and a healthy `/healthz`; fails if the child exits.
async fn wait_ready(dir: &Path, child: &mut Child, log_file: &Path) -> Result<ServerRecord> {
    let pid = child.id();
    let mut last_note = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let tail = tail_lines(log_file, 20).unwrap_or_default();
            bail!(
                "yap serve exited ({status}) before it was ready; the end of {}:\n{}",
                log_file.display(),
                tail.join("\n")
            );
        }
        let record = ServerRecord::read(dir).filter(|r| r.pid == pid);
        if let Some(r) = &record
            && r.status == "ready"
            && let Some(url) = r.base_url()
        {
            match get_json(&format!("{url}/healthz")).await {
                Some((200 | 403, _)) => return Ok(r.clone()),
                Some((code, body)) if last_note.elapsed() > Duration::from_secs(10) => {
                    eprintln!("yap: /healthz answers {code}: {body}");
                    last_note = Instant::now();
                }
                _ => {}
            }
        } else if last_note.elapsed() > Duration::from_secs(10) {
            let what = match record.as_ref().and_then(ServerRecord::base_url) {
                Some(url) => match get_json(&format!("{url}/healthz")).await {
                    Some((_, b)) => b["reason"].as_str().unwrap_or("loading").to_owned(),
                    None => "starting".to_owned(),
                },
                None => "starting".to_owned(),
            };
            eprintln!("yap: still starting (pid {pid}): {what}");
            last_note = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `yap status`: prints the server's state; false when none runs.
pub async fn status() -> Result<bool> {
    let dir = run_dir();
    let Some(r) = running(&dir) else {
        println!("yap is not running (run folder {})", dir.display());
        return Ok(false);
    };
    let up = now_unix().saturating_sub(r.started_unix);
    println!(
        "yap is running (pid {}, up {}h{:02}m{:02}s) on {}",
        r.pid,
        up / 3600,
        up / 60 % 60,
        up % 60,
        r.addr.as_deref().unwrap_or("(not listening yet)")
    );
    if let Some(url) = r.base_url() {
        match get_json(&format!("{url}/healthz")).await {
            Some((403, _)) => {
                println!("  health:  hidden (HEALTH_ALLOWED_CIDRS excludes loopback)")
            }
            Some((code, b)) => println!(
                "  health:  {} ({code}){} · engine {} · model {} · deploy {} · connections {}/{} · running turns {} · sessions {}",
                b["status"].as_str().unwrap_or("?"),
                b["reason"]
                    .as_str()
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default(),
                b["engine"].as_str().unwrap_or("?"),
                b["model"].as_str().unwrap_or("?"),
                b["deploy_mode"].as_str().unwrap_or("?"),
                b["connections"]["active"],
                b["connections"]["max"],
                b["running_turns"],
                b["sessions"],
            ),
            None => println!("  health:  no answer from {url}/healthz"),
        }
    }
    println!("  log:     {}", r.log_file.display());
    println!("  command: yap {}", r.argv.join(" "));
    Ok(true)
}

fn signal(pid: u32, sig: Signal) -> bool {
    i32::try_from(pid).is_ok_and(|p| kill(Pid::from_raw(p), sig).is_ok())
}

/// `yap stop`: SIGTERM (graceful drain), then waits; SIGKILL after the grace plus a margin.
/// Returns the record of the server it stopped.
pub async fn stop() -> Result<Option<ServerRecord>> {
    let dir = run_dir();
    let Some(r) = running(&dir) else {
        println!("yap is not running");
        return Ok(None);
    };
    println!(
        "stopping yap (pid {}): no new connections; running turns get up to {:.0}s (SHUTDOWN_GRACE_S)",
        r.pid, r.grace_s
    );
    signal(r.pid, Signal::SIGTERM);
    let t0 = Instant::now();
    let limit = Duration::from_secs_f64(r.grace_s.max(0.0)) + Duration::from_secs(20);
    while is_yap_server(r.pid) && t0.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if is_yap_server(r.pid) {
        eprintln!("yap: pid {} did not exit in {limit:?}; killing it", r.pid);
        signal(r.pid, Signal::SIGKILL);
        let t1 = Instant::now();
        while is_yap_server(r.pid) && t1.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    ServerRecord::clear(&dir, r.pid);
    println!("stopped (after {:.1}s)", t0.elapsed().as_secs_f64());
    Ok(Some(r))
}

/// `yap restart`: stops the running server and starts it again, detached, with the same command
/// line in the same folder (and the current environment).
pub async fn restart() -> Result<()> {
    let dir = run_dir();
    let Some(record) = ServerRecord::read(&dir) else {
        bail!(
            "no detached server recorded in {}; start one with `yap serve --detach`",
            dir.display()
        );
    };
    stop().await?;
    let args: Vec<OsString> = record.argv.iter().map(OsString::from).collect();
    detach(args, &record.cwd, &record.log_file).await?;
    Ok(())
}

/// What `yap stop --purge` deletes: Yap's cache (the default chat and tool models) and the
/// caches launched engines fill (vLLM / torch.compile, FlashInfer, Triton kernels, the Hugging
/// Face hub cache the engines download models into).
pub fn purge_paths() -> Vec<PathBuf> {
    let h = home();
    let env_or = |var: &str, default: PathBuf| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map_or(default, PathBuf::from)
    };
    let hf_home = env_or("HF_HOME", h.join(".cache").join("huggingface"));
    vec![
        crate::model_fetch::cache_dir(),
        env_or("VLLM_CACHE_ROOT", h.join(".cache").join("vllm")),
        h.join(".cache").join("flashinfer"),
        env_or("TRITON_CACHE_DIR", h.join(".triton").join("cache")),
        env_or("HF_HUB_CACHE", hf_home.join("hub")),
    ]
}

/// Deletes the [`purge_paths`] that exist; prints each.
pub fn purge() -> Result<()> {
    let h = home();
    for p in purge_paths() {
        if p.components().count() < 2 || p == h || p == Path::new("/") {
            eprintln!("yap: not purging {} (too broad)", p.display());
            continue;
        }
        if p.exists() {
            std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
            println!("purged {}", p.display());
        }
    }
    Ok(())
}

// ---- logs ------------------------------------------------------------------------------------

/// The log file of the recorded server, else `LOG_FILE`, else `server.log`.
pub fn log_path() -> PathBuf {
    if let Some(r) = ServerRecord::read(&run_dir()) {
        return r.log_file;
    }
    std::env::var_os("LOG_FILE")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("server.log"), PathBuf::from)
}

/// The last `n` lines of a file.
pub fn tail_lines(path: &Path, n: usize) -> Result<Vec<String>> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata()?.len();
    // Read backwards in blocks until enough newlines are seen.
    let mut start = len;
    let mut buf = Vec::new();
    while start > 0 && buf.iter().filter(|b| **b == b'\n').count() <= n {
        let step = start.min(64 * 1024);
        start -= step;
        f.seek(SeekFrom::Start(start))?;
        let mut chunk = vec![0; step as usize];
        f.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    Ok(lines[lines.len().saturating_sub(n)..].to_vec())
}

/// `yap logs`: the last `n` lines; with `follow`, keeps printing new lines (across rotations)
/// until interrupted.
pub fn logs(path: &Path, n: usize, follow: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for l in tail_lines(path, n)? {
        writeln!(out, "{l}")?;
    }
    out.flush()?;
    if !follow {
        return Ok(());
    }
    let mut f = std::fs::File::open(path)?;
    let mut pos = f.seek(SeekFrom::End(0))?;
    let mut ino = inode(path);
    loop {
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let now_ino = inode(path);
        if now_ino != ino || len < pos {
            // Rotated: finish the old file, then read the new one from its start.
            copy_new(&mut f, &mut out)?;
            match std::fs::File::open(path) {
                Ok(nf) => {
                    f = nf;
                    pos = 0;
                    ino = now_ino;
                }
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            }
        }
        pos += copy_new(&mut f, &mut out)?;
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn copy_new(f: &mut std::fs::File, out: &mut impl Write) -> Result<u64> {
    let mut reader = std::io::BufReader::new(f);
    let mut n = 0u64;
    let mut line = String::new();
    loop {
        line.clear();
        let read = reader.read_line(&mut line)?;
        if read == 0 {
            break;
        }
        n += read as u64;
        out.write_all(line.as_bytes())?;
    }
    out.flush()?;
    Ok(n)
}

fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_args_drop_only_detach() {
        let argv: Vec<OsString> = ["yap", "serve", "--detach", "--port=9", "--model", "m.gguf"]
            .map(OsString::from)
            .to_vec();
        assert_eq!(
            child_args(&argv),
            ["serve", "--port=9", "--model", "m.gguf"].map(OsString::from)
        );
    }

    #[test]
    fn base_url_is_loopback_for_wildcards() {
        let mut r = ServerRecord {
            pid: 1,
            status: "ready".into(),
            addr: Some("0.0.0.0:8000".into()),
            log_file: PathBuf::from("/tmp/x.log"),
            argv: vec![],
            cwd: PathBuf::from("/"),
            grace_s: 10.0,
            started_unix: 0,
        };
        assert_eq!(r.base_url().as_deref(), Some("http://127.0.0.1:8000"));
        r.addr = Some("[::]:81".into());
        assert_eq!(r.base_url().as_deref(), Some("http://[::1]:81"));
        r.addr = Some("10.1.2.3:5".into());
        assert_eq!(r.base_url().as_deref(), Some("http://10.1.2.3:5"));
    }

    #[test]
    fn tail_returns_the_last_lines() {
        let dir = std::env::temp_dir().join(format!("yap-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.log");
        let text: String = (0..100_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, text).unwrap();
        assert_eq!(
            tail_lines(&p, 3).unwrap(),
            ["line 99997", "line 99998", "line 99999"]
        );
        assert_eq!(tail_lines(&p, 0).unwrap(), Vec::<String>::new());
        std::fs::write(&p, "a\nb").unwrap();
        assert_eq!(tail_lines(&p, 10).unwrap(), ["a", "b"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn our_own_pid_is_not_a_server_and_pid_zero_never_is() {
        // The test binary is not `yap … serve`.
        assert!(!is_yap_server(std::process::id()));
        assert!(!is_yap_server(0));
        assert!(!is_yap_server(u32::MAX));
    }
}
