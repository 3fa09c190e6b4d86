//! The accept loop: HTTP/1.1 connections with upgrades, bounded before they are upgraded.
//!
//! Invariants:
//! - a connection that has no request in progress (nothing sent yet, a partial header, a
//!   1-byte-per-second trickle, or an idle keep-alive) is closed after `HTTP_HEADER_TIMEOUT_S`;
//! - at most `MAX_PENDING_CONNECTIONS` connections are held before their upgrade; a new one
//!   beyond that evicts the oldest idle one (so a flood of idle sockets cannot lock out a real
//!   client), or is closed at once when none is idle;
//! - running out of file descriptors evicts the oldest idle connection instead of stalling;
//! - on shutdown, idle connections close at once and a request in progress finishes its
//!   response (a streamed completion is cut by `SHUTDOWN_GRACE_S` with a terminal event).
//!   Upgraded WebSockets are not counted here (they hold a connection slot instead).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use futures_util::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, warn};

/// Limits of connections before their upgrade.
#[derive(Debug, Clone, Copy)]
pub struct ListenLimits {
    /// Longest time without a request in progress.
    pub idle: Duration,
    /// Most connections held before an upgrade.
    pub max_pending: usize,
}

/// What a connection is doing.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` of the last request start or end.
    last: AtomicU64,
    epoch: Instant,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            last: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    fn touch(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        Some(self.epoch.elapsed().saturating_sub(last))
    }
}

/// Decrements the in-flight count when a response body is done or dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.touch();
    }
}

#[derive(Debug)]
struct Pending {
    kill: CancellationToken,
    activity: Arc<Activity>,
}

/// Connections not yet upgraded, oldest first.
#[derive(Debug, Default)]
struct Table {
    next: AtomicU64,
    map: Mutex<BTreeMap<u64, Pending>>,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Pending>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Closes the oldest idle connection; false when none is idle.
    fn evict_oldest_idle(&self) -> bool {
        let map = self.lock();
        let victim = map.iter().find(|(_, p)| p.activity.idle_for().is_some());
        match victim {
            Some((_, p)) => {
                p.kill.cancel();
                true
            }
            None => false,
        }
    }

    /// Registers a connection; `None` when the table is full of busy connections.
    fn register(&self, max: usize, activity: Arc<Activity>) -> Option<(u64, CancellationToken)> {
        if self.lock().len() >= max && !self.evict_oldest_idle() {
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let kill = CancellationToken::new();
        self.lock().insert(
            id,
            Pending {
                kill: kill.clone(),
                activity,
            },
        );
        Some((id, kill))
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Closes every connection with no request in progress (busy ones finish their response
    /// under hyper's graceful shutdown).
    fn kill_idle(&self) {
        for p in self.lock().values() {
            if p.activity.idle_for().is_some() {
                p.kill.cancel();
            }
        }
    }
}

fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    // EMFILE (24) / ENFILE (23): too many open files.
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// Serves `app` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ListenLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let table = Arc::new(Table::default());
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                let activity = Activity::new();
                let Some((id, kill)) = table.register(limits.max_pending, Arc::clone(&activity))
                else {
                    debug!(%peer, "too many connections before upgrade; closing a new one");
                    continue;
                };
                let (table, app, stop) = (Arc::clone(&table), app.clone(), shutdown.clone());
                tokio::spawn(async move {
                    connection(tcp, peer, app, activity, limits.idle, kill, stop).await;
                    table.remove(id);
                });
            }
            Err(e) if is_fd_exhaustion(&e) => {
                warn!(
                    pending = table.len(),
                    "accept: out of file descriptors; closing the oldest idle connection"
                );
                table.evict_oldest_idle();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => {
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    table.kill_idle();
    Ok(())
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    activity: Arc<Activity>,
    idle: Duration,
    kill: CancellationToken,
    shutdown: CancellationToken,
) {
    let act = Arc::clone(&activity);
    let svc = tower::service_fn(move |req: Request<hyper::body::Incoming>| {
        // In flight from the request's head until its response body is done (or dropped).
        act.in_flight.fetch_add(1, Ordering::AcqRel);
        act.touch();
        let guard = InFlight(Arc::clone(&act));
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(peer));
        let call = app.clone().oneshot(req);
        async move {
            let resp = call.await?;
            Ok::<_, std::convert::Infallible>(resp.map(|body| {
                Body::from_stream(body.into_data_stream().map(move |chunk| {
                    let _keep = &guard;
                    chunk
                }))
            }))
        }
    });
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(idle);
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(tcp), TowerToHyperService::new(svc));
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let wait = activity.idle_for().map_or(idle, |d| idle.saturating_sub(d));
        tokio::select! {
            _ = conn.as_mut() => return,
            () = kill.cancelled() => return,
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {
                if activity.idle_for().is_some_and(|d| d >= idle) {
                    debug!(%peer, "closing a connection with no request in progress");
                    return;
                }
            }
        }
    }
}
