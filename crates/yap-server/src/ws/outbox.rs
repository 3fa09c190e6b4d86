//! A connection's outbound queue: bounded in frames and bytes, with one writer task.
//!
//! Invariants: frames leave in the order they were queued; the queue never holds more than
//! `max_frames` frames or `max_bytes` bytes — a push beyond that marks the connection as
//! overflowed (its reader fell behind) and the connection is dropped; at most one `pong` waits
//! in the queue (pings are coalesced); a close goes out after every frame queued before it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use futures_util::{Sink, SinkExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the writer sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsOut {
    /// A text frame.
    Text(String),
    /// A close frame (code, reason); the writer stops after it.
    Close(u16, String),
}

/// Limits of the queue.
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    /// Most frames queued.
    pub max_frames: usize,
    /// Most bytes queued.
    pub max_bytes: usize,
}

#[derive(Debug)]
struct Shared {
    bytes: AtomicUsize,
    pong_queued: AtomicBool,
    overflow: CancellationToken,
    max_bytes: usize,
}

/// The producer side, cloned into every turn's sink.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<WsOut>,
    shared: Arc<Shared>,
}

impl Outbox {
    /// A queue and the writer future that drains it into `sink`.
    pub fn new<W>(limits: OutboxLimits, sink: W) -> (Self, impl Future<Output = ()> + Send)
    where
        W: Sink<WsOut> + Unpin + Send + 'static,
    {
        // One extra place so a close still fits behind a full queue of frames.
        let (tx, rx) = mpsc::channel(limits.max_frames.max(1) + 1);
        let shared = Arc::new(Shared {
            bytes: AtomicUsize::new(0),
            pong_queued: AtomicBool::new(false),
            overflow: CancellationToken::new(),
            max_bytes: limits.max_bytes.max(1),
        });
        let writer = write_all(rx, sink, Arc::clone(&shared), limits.max_frames.max(1));
        (Self { tx, shared }, writer)
    }

    /// Queues a text frame; false (and the connection marked overflowed) when the queue is full.
    pub fn text(&self, text: String) -> bool {
        let n = text.len();
        let before = self.shared.bytes.fetch_add(n, Ordering::AcqRel);
        let room = self.tx.capacity() > 1;
        if before + n > self.shared.max_bytes
            || !room
            || self.tx.try_send(WsOut::Text(text)).is_err()
        {
            self.shared.bytes.fetch_sub(n, Ordering::AcqRel);
            self.shared.overflow.cancel();
            return false;
        }
        true
    }

    /// Queues a `pong` unless one is already waiting.
    pub fn pong(&self, json: &str) -> bool {
        if self.shared.pong_queued.swap(true, Ordering::AcqRel) {
            return true;
        }
        self.text(json.to_owned())
    }

    /// Queues a close after everything already queued.
    pub fn close(&self, code: u16, reason: &str) -> bool {
        self.tx
            .try_send(WsOut::Close(code, reason.to_owned()))
            .is_ok()
    }

    /// Resolves when the queue overflowed (the reader is too far behind).
    pub async fn overflowed(&self) {
        self.shared.overflow.cancelled().await;
    }

    /// Whether the queue overflowed.
    pub fn is_overflowed(&self) -> bool {
        self.shared.overflow.is_cancelled()
    }

    /// Bytes waiting.
    pub fn queued_bytes(&self) -> usize {
        self.shared.bytes.load(Ordering::Acquire)
    }
}

async fn write_all<W>(mut rx: mpsc::Receiver<WsOut>, mut sink: W, shared: Arc<Shared>, _max: usize)
where
    W: Sink<WsOut> + Unpin + Send + 'static,
{
    while let Some(out) = rx.recv().await {
        match out {
            WsOut::Text(t) => {
                let n = t.len();
                if t.as_bytes().starts_with(br#"{"type":"pong""#) {
                    shared.pong_queued.store(false, Ordering::Release);
                }
                let sent = sink.send(WsOut::Text(t)).await;
                shared.bytes.fetch_sub(n, Ordering::AcqRel);
                if sent.is_err() {
                    return;
                }
            }
            close @ WsOut::Close(..) => {
                let _ = sink.send(close).await;
                let _ = sink.close().await;
                return;
            }
        }
    }
    let _ = sink.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(frames: usize, bytes: usize) -> OutboxLimits {
        OutboxLimits {
            max_frames: frames,
            max_bytes: bytes,
        }
    }

    #[tokio::test]
    async fn frames_then_close_in_order() {
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let g = got.clone();
        let sink = futures_util::sink::unfold((), move |(), item: WsOut| {
            let g = g.clone();
            async move {
                g.lock().unwrap().push(item);
                Ok::<_, ()>(())
            }
        });
        let (out, writer) = Outbox::new(limits(8, 1000), Box::pin(sink));
        assert!(out.text("a".into()));
        assert!(out.text("b".into()));
        assert!(out.close(1000, "bye"));
        writer.await;
        let got = got.lock().unwrap().clone();
        assert_eq!(
            got,
            vec![
                WsOut::Text("a".into()),
                WsOut::Text("b".into()),
                WsOut::Close(1000, "bye".into())
            ]
        );
    }

    #[tokio::test]
    async fn a_reader_that_never_reads_overflows_the_queue_in_frames_or_bytes() {
        // A sink that never accepts anything: a client that stopped reading.
        let stuck = futures_util::sink::unfold((), |(), _item: WsOut| async {
            std::future::pending::<Result<(), ()>>().await
        });
        let (out, writer) = Outbox::new(limits(4, 1 << 20), Box::pin(stuck));
        let w = tokio::spawn(writer);
        let mut accepted = 0;
        for _ in 0..100 {
            if out.text("x".into()) {
                accepted += 1;
            }
            tokio::task::yield_now().await;
        }
        assert!(out.is_overflowed());
        assert!(accepted <= 6, "{accepted}");
        w.abort();
        let (out, _writer) = Outbox::new(limits(1000, 100), futures_util::sink::drain());
        assert!(out.text("y".repeat(60)));
        assert!(!out.text("y".repeat(60)), "bytes bound");
        assert!(out.is_overflowed());
    }

    #[tokio::test]
    async fn pongs_are_coalesced() {
        let (out, _writer) = Outbox::new(limits(100, 1 << 20), futures_util::sink::drain());
        for _ in 0..50 {
            assert!(out.pong(r#"{"type":"pong"}"#));
        }
        assert_eq!(out.queued_bytes(), r#"{"type":"pong"}"#.len());
    }
}
