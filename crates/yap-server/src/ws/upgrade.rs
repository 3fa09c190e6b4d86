//! The WebSocket upgrade (RFC 6455 handshake) done here rather than by axum's extractor, so the
//! socket under the WebSocket can be wrapped: a client that half-closes TCP (sends FIN, keeps
//! reading) must still get its queued replies, and tungstenite ends the whole socket, writes
//! included, when it reads end-of-file.
//!
//! Invariant: [`HalfCloseIo`] never reports end-of-file to tungstenite; it records it and wakes
//! the connection loop through [`HalfClosed`], which then finishes the turn and closes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// Read buffer reserved per connection (client messages are small JSON frames).
const READ_BUFFER_BYTES: usize = 4096;

/// The server's WebSocket over an upgraded connection.
pub type Socket = WebSocketStream<HalfCloseIo<TokioIo<hyper::upgrade::Upgraded>>>;

/// Checks the handshake headers: the 101 response, or (any other status) the refusal.
pub fn check(req: &Request) -> Response {
    let h = req.headers();
    let bad = |status: StatusCode, why: &'static str| (status, why).into_response();
    if req.method() != Method::GET {
        return bad(
            StatusCode::METHOD_NOT_ALLOWED,
            "a WebSocket upgrade is a GET",
        );
    }
    if !has_token(h, header::CONNECTION, "upgrade") || !has_token(h, header::UPGRADE, "websocket") {
        return bad(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint speaks WebSocket only",
        );
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut resp = (StatusCode::UPGRADE_REQUIRED, "WebSocket version 13 only").into_response();
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return resp;
    }
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY) else {
        return bad(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) else {
        return bad(StatusCode::BAD_REQUEST, "bad Sec-WebSocket-Key");
    };
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let out = resp.headers_mut();
    out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    out.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    out.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    resp
}

fn has_token(h: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Waits for the upgrade and wraps the connection: frames and messages up to `max_bytes`.
pub async fn socket(req: Request, max_bytes: usize) -> Option<(Socket, HalfClosed)> {
    let upgraded = hyper::upgrade::on(req).await.ok()?;
    let half = HalfClosed::default();
    let io = HalfCloseIo {
        inner: TokioIo::new(upgraded),
        half: half.clone(),
    };
    // tungstenite reserves its whole read buffer per connection (128 KiB by default, most of
    // an idle connection's memory); larger messages still arrive, the buffer grows for them.
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(max_bytes))
        .max_frame_size(Some(max_bytes));
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    Some((ws, half))
}

/// Set once the client has half-closed its side of the connection.
#[derive(Clone, Default)]
pub struct HalfClosed(Arc<(AtomicBool, Notify)>);

impl HalfClosed {
    /// Resolves when the client has sent FIN (at once if it already has).
    pub async fn wait(&self) {
        loop {
            let notified = self.0.1.notified();
            if self.0.0.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    fn set(&self) {
        self.0.0.store(true, Ordering::Release);
        self.0.1.notify_waiters();
    }
}

/// An IO whose reads never end: end-of-file is reported through [`HalfClosed`] instead.
pub struct HalfCloseIo<T> {
    inner: T,
    half: HalfClosed,
}

impl<T: AsyncRead + Unpin> AsyncRead for HalfCloseIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.half.0.0.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                // End of file: nothing more will come; the loop is told, tungstenite is not.
                this.half.set();
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HalfCloseIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn eof_is_reported_aside_and_writes_still_work() {
        let (a, mut b) = tokio::io::duplex(64);
        let half = HalfClosed::default();
        let mut io = HalfCloseIo {
            inner: a,
            half: half.clone(),
        };
        b.write_all(b"hi").await.unwrap();
        b.shutdown().await.unwrap();
        let mut got = [0u8; 2];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hi");
        let mut more = [0u8; 1];
        let read =
            tokio::time::timeout(std::time::Duration::from_millis(50), io.read(&mut more)).await;
        assert!(read.is_err(), "end of file is never returned");
        half.wait().await;
        io.write_all(b"reply").await.unwrap();
        let mut back = [0u8; 5];
        b.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"reply");
    }
}
