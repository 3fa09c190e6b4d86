//! Looking at processes through `/proc` (Linux): who is in a process group, who descends from a
//! process, and whether a TCP port is taken. Used to prove that a stopped engine left nothing
//! behind.
//!
//! Invariant: every function here only reads; a process that vanishes while being read is simply
//! not listed.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};

/// One process as `/proc/PID/stat` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    /// Process id.
    pub pid: i32,
    /// Parent process id.
    pub ppid: i32,
    /// Process group id.
    pub pgrp: i32,
    /// State letter (`R`, `S`, `Z` for a zombie, ...).
    pub state: char,
    /// Executable name (at most 15 bytes, as the kernel keeps it).
    pub comm: String,
}

impl ProcInfo {
    /// Whether the process has exited and waits to be reaped.
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z' || self.state == 'X'
    }
}

/// Parses the text of `/proc/PID/stat`: `pid (comm) state ppid pgrp ...`; `comm` may hold
/// spaces and parentheses, so it ends at the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcInfo> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text.get(..open)?.trim().parse().ok()?;
    let comm = text.get(open + 1..close)?.to_owned();
    let mut rest = text.get(close + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    let pgrp = rest.next()?.parse().ok()?;
    Some(ProcInfo {
        pid,
        ppid,
        pgrp,
        state,
        comm,
    })
}

/// One process, if it exists.
pub fn process(pid: i32) -> Option<ProcInfo> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Every process on the machine.
pub fn processes() -> Vec<ProcInfo> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(process)
        .collect()
}

/// Whether a process exists and is not a zombie.
pub fn is_running(pid: i32) -> bool {
    process(pid).is_some_and(|p| !p.is_zombie())
}

/// Live (non-zombie) members of a process group.
pub fn group_members(pgrp: i32) -> Vec<ProcInfo> {
    processes()
        .into_iter()
        .filter(|p| p.pgrp == pgrp && !p.is_zombie())
        .collect()
}

/// Every descendant of `root` (children, their children, ...), zombies included.
pub fn descendants(root: i32) -> Vec<ProcInfo> {
    let all = processes();
    let mut found: HashSet<i32> = HashSet::from([root]);
    let mut out = Vec::new();
    loop {
        let before = out.len();
        for p in &all {
            if !found.contains(&p.pid) && found.contains(&p.ppid) {
                found.insert(p.pid);
                out.push(p.clone());
            }
        }
        if out.len() == before {
            return out;
        }
    }
}

/// Whether something already holds `addr`: the address cannot be bound (a listener on it, on
/// the same port of 0.0.0.0, or a socket without SO_REUSEADDR).
pub fn port_in_use(addr: SocketAddr) -> bool {
    // A bind probe only: a connect probe would leave a half-open connection on the port that
    // makes the next check fail after the listener is gone.
    TcpListener::bind(addr).is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_with_odd_names() {
        let p = parse_stat("4242 (vllm (Engine) 1) S 17 4240 17 0 -1 4194560 ...").unwrap();
        assert_eq!(
            (p.pid, p.ppid, p.pgrp, p.state, p.comm.as_str()),
            (4242, 17, 4240, 'S', "vllm (Engine) 1")
        );
        assert!(parse_stat("garbage").is_none());
        let z = parse_stat("5 (x) Z 1 5 5").unwrap();
        assert!(z.is_zombie());
    }

    #[test]
    fn this_process_is_seen_with_its_children() {
        let me = std::process::id() as i32;
        let info = process(me).unwrap();
        assert!(!info.is_zombie());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(descendants(me).iter().any(|p| p.pid == pid));
        assert!(group_members(info.pgrp).iter().any(|p| p.pid == pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!is_running(pid));
    }

    #[test]
    fn a_bound_port_is_in_use() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert!(port_in_use(addr));
        drop(l);
        assert!(!port_in_use(addr));
    }
}
