//! Yap's log file: `server.log` (`LOG_FILE`), rotated by size (100 MB × 3 kept). Yap's own
//! lines and launched engines' output (tracing target `engine`) go to this one file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// An append-only log file rotated by size: `server.log` → `server.log.1` → … → `.N`.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: Mutex<(File, u64)>,
}

impl RotatingLog {
    /// Opens (appends to) `path`; rotates past `max_bytes`, keeping `keep` old files.
    pub fn open(path: impl Into<PathBuf>, max_bytes: u64, keep: usize) -> std::io::Result<Self> {
        let path = path.into();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path,
            max_bytes,
            keep,
            file: Mutex::new((file, size)),
        })
    }

    fn rotated(&self, n: usize) -> PathBuf {
        PathBuf::from(format!("{}.{n}", self.path.display()))
    }

    /// Appends one line.
    pub fn line(&self, text: &str) {
        let Ok(mut guard) = self.file.lock() else {
            return;
        };
        if guard.1 + text.len() as u64 + 1 > self.max_bytes && guard.1 > 0 {
            for n in (1..self.keep).rev() {
                let _ = std::fs::rename(self.rotated(n), self.rotated(n + 1));
            }
            if self.keep > 0 {
                let _ = std::fs::rename(&self.path, self.rotated(1));
            } else {
                let _ = std::fs::remove_file(&self.path);
            }
            match OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
            {
                Ok(f) => *guard = (f, 0),
                Err(_) => return,
            }
        }
        if writeln!(guard.0, "{text}").is_ok() {
            guard.1 += text.len() as u64 + 1;
        }
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A shared handle writes too (for logging frameworks that want an owned writer).
impl Write for SharedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&*self.0).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An owned handle to a [`RotatingLog`].
#[derive(Debug, Clone)]
pub struct SharedLog(pub Arc<RotatingLog>);

impl Write for &RotatingLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        for l in text.lines() {
            self.line(l);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_rotates_and_keeps_n_files() {
        let dir = std::env::temp_dir().join(format!("yap-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let log = RotatingLog::open(dir.join("server.log"), 100, 3).unwrap();
        for i in 0..40 {
            log.line(&format!("line number {i:04}")); // 17 bytes each
        }
        let exists = |n: &str| dir.join(n).is_file();
        assert!(
            exists("server.log")
                && exists("server.log.1")
                && exists("server.log.2")
                && exists("server.log.3")
        );
        assert!(!exists("server.log.4"));
        for n in ["server.log", "server.log.1", "server.log.2", "server.log.3"] {
            assert!(std::fs::metadata(dir.join(n)).unwrap().len() <= 100, "{n}");
        }
        let newest = std::fs::read_to_string(dir.join("server.log")).unwrap();
        assert!(newest.ends_with("line number 0039\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
