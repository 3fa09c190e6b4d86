//! The event stream of one generation and its producer half.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::EngineEvent;

/// A running generation: a stream of [`EngineEvent`]s. Dropping it cancels the generation.
#[derive(Debug)]
pub struct GenerationStream {
    rx: mpsc::UnboundedReceiver<EngineEvent>,
    cancel: CancellationToken,
    _guard: DropGuard,
    done: bool,
}

/// The engine's half: send events, watch for cancellation.
#[derive(Debug, Clone)]
pub struct StreamSender {
    tx: mpsc::UnboundedSender<EngineEvent>,
    cancel: CancellationToken,
}

impl GenerationStream {
    /// A connected (stream, sender) pair. The channel is unbounded because an engine produces
    /// at most `max_new_tokens` + 1 events per request.
    pub fn channel() -> (Self, StreamSender) {
        let (tx, rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let stream = Self {
            rx,
            _guard: cancel.clone().drop_guard(),
            cancel: cancel.clone(),
            done: false,
        };
        (stream, StreamSender { tx, cancel })
    }

    /// A stream that yields one failure and ends (for engines that fail after accepting).
    pub fn failed(error: crate::EngineError) -> Self {
        let (stream, tx) = Self::channel();
        tx.send(EngineEvent::Failed(error));
        stream
    }

    /// The next event; `None` after the terminal one.
    pub async fn next_event(&mut self) -> Option<EngineEvent> {
        if self.done {
            return None;
        }
        let ev = self.rx.recv().await;
        self.done = ev.as_ref().is_none_or(EngineEvent::is_terminal);
        ev
    }

    /// Cancels the generation (also done by dropping the stream).
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// The token that cancels this generation.
    pub fn cancellation(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

impl Stream for GenerationStream {
    type Item = EngineEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<EngineEvent>> {
        if self.done {
            return Poll::Ready(None);
        }
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(ev) = &polled {
            self.done = ev.as_ref().is_none_or(EngineEvent::is_terminal);
        }
        polled
    }
}

impl StreamSender {
    /// Sends an event; false when the consumer is gone.
    pub fn send(&self, event: EngineEvent) -> bool {
        self.tx.send(event).is_ok()
    }

    /// Whether the consumer cancelled or dropped the stream.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled() || self.tx.is_closed()
    }

    /// Resolves once the consumer cancels or drops the stream.
    pub async fn cancelled(&self) {
        tokio::select! {
            () = self.cancel.cancelled() => {}
            () = self.tx.closed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EngineError, EngineUsage, FinishReason};
    use futures_util::StreamExt;

    #[tokio::test]
    async fn stream_ends_after_the_terminal_event() {
        let (mut s, tx) = GenerationStream::channel();
        tx.send(EngineEvent::Text("a".into()));
        tx.send(EngineEvent::Finished {
            usage: EngineUsage::default(),
            reason: FinishReason::Stop,
        });
        tx.send(EngineEvent::Text("late".into()));
        assert_eq!(s.next().await, Some(EngineEvent::Text("a".into())));
        assert!(matches!(s.next().await, Some(EngineEvent::Finished { .. })));
        assert_eq!(s.next().await, None);
    }

    #[tokio::test]
    async fn dropping_the_stream_cancels_the_sender() {
        let (s, tx) = GenerationStream::channel();
        assert!(!tx.is_cancelled());
        drop(s);
        assert!(tx.is_cancelled());
        tx.cancelled().await;
    }

    #[tokio::test]
    async fn cancel_is_seen_without_dropping() {
        let (s, tx) = GenerationStream::channel();
        s.cancel();
        assert!(tx.is_cancelled());
        let mut f = GenerationStream::failed(EngineError::Decode("x".into()));
        assert!(matches!(f.next_event().await, Some(EngineEvent::Failed(_))));
        assert_eq!(f.next_event().await, None);
    }
}
