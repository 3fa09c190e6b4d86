//! Sliding-window rate limits.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// At most `max` events in any `window`; slots free up one by one as old events age out.
/// A `max` or `window` of zero disables the limit.
#[derive(Debug, Clone)]
pub struct SlidingWindow {
    max: usize,
    window: Duration,
    events: VecDeque<Instant>,
}

impl SlidingWindow {
    /// A limiter of `max` events per `window`.
    pub fn new(max: usize, window: Duration) -> Self {
        Self {
            max,
            window,
            events: VecDeque::new(),
        }
    }

    fn disabled(&self) -> bool {
        self.max == 0 || self.window.is_zero()
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&t) = self.events.front() {
            if now.duration_since(t) >= self.window {
                self.events.pop_front();
            } else {
                break;
            }
        }
    }

    /// Records an event if allowed; otherwise returns how long until one is.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Duration> {
        if self.disabled() {
            return Ok(());
        }
        self.expire(now);
        if self.events.len() >= self.max {
            let oldest = self.events.front().copied().unwrap_or(now);
            return Err(self.window.saturating_sub(now.duration_since(oldest)));
        }
        self.events.push_back(now);
        Ok(())
    }

    /// Whether an event would be refused now (without recording one), and for how long.
    pub fn blocked_for(&mut self, now: Instant) -> Option<Duration> {
        if self.disabled() {
            return None;
        }
        self.expire(now);
        if self.events.len() >= self.max {
            let oldest = self.events.front().copied().unwrap_or(now);
            Some(self.window.saturating_sub(now.duration_since(oldest)))
        } else {
            None
        }
    }

    /// Records an event unconditionally.
    pub fn record(&mut self, now: Instant) {
        if !self.disabled() {
            self.expire(now);
            self.events.push_back(now);
        }
    }

    /// Whether no event is remembered (the entry can be dropped).
    pub fn is_idle(&mut self, now: Instant) -> bool {
        self.expire(now);
        self.events.is_empty()
    }
}

/// Sliding windows keyed by a string (client address, session id), pruned as they go idle.
#[derive(Debug)]
pub struct KeyedWindows {
    max: usize,
    window: Duration,
    map: HashMap<String, SlidingWindow>,
    last_prune: Instant,
}

impl KeyedWindows {
    /// `max` events per `window` per key.
    pub fn new(max: usize, window: Duration) -> Self {
        Self {
            max,
            window,
            map: HashMap::new(),
            last_prune: Instant::now(),
        }
    }

    fn entry(&mut self, key: &str, now: Instant) -> &mut SlidingWindow {
        if now.duration_since(self.last_prune) > self.window.max(Duration::from_secs(1)) {
            self.map.retain(|_, w| !w.is_idle(now));
            self.last_prune = now;
        }
        let (max, window) = (self.max, self.window);
        self.map
            .entry(key.to_owned())
            .or_insert_with(|| SlidingWindow::new(max, window))
    }

    /// Like [`SlidingWindow::try_acquire`] for a key.
    pub fn try_acquire(&mut self, key: &str, now: Instant) -> Result<(), Duration> {
        self.entry(key, now).try_acquire(now)
    }

    /// Like [`SlidingWindow::blocked_for`] for a key.
    pub fn blocked_for(&mut self, key: &str, now: Instant) -> Option<Duration> {
        self.entry(key, now).blocked_for(now)
    }

    /// Like [`SlidingWindow::record`] for a key.
    pub fn record(&mut self, key: &str, now: Instant) {
        self.entry(key, now).record(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slides_one_slot_at_a_time() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::new(2, Duration::from_secs(10));
        assert!(w.try_acquire(t0).is_ok());
        assert!(w.try_acquire(t0 + Duration::from_secs(4)).is_ok());
        let wait = w.try_acquire(t0 + Duration::from_secs(5)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(5));
        // the first event ages out at t0+10: one slot frees, not both
        assert!(w.try_acquire(t0 + Duration::from_secs(10)).is_ok());
        assert!(w.try_acquire(t0 + Duration::from_secs(11)).is_err());
        assert!(w.try_acquire(t0 + Duration::from_secs(14)).is_ok());
    }

    #[test]
    fn zero_disables() {
        let t0 = Instant::now();
        for (max, win) in [(0, 60), (5, 0)] {
            let mut w = SlidingWindow::new(max, Duration::from_secs(win));
            for _ in 0..100 {
                assert!(w.try_acquire(t0).is_ok());
            }
        }
    }

    #[test]
    fn keyed_windows_are_independent() {
        let t0 = Instant::now();
        let mut k = KeyedWindows::new(1, Duration::from_secs(60));
        assert!(k.try_acquire("a", t0).is_ok());
        assert!(k.try_acquire("a", t0).is_err());
        assert!(k.try_acquire("b", t0).is_ok());
        k.record("c", t0);
        assert!(k.blocked_for("c", t0).is_some());
        assert!(k.blocked_for("d", t0).is_none());
    }
}
