//! The HTTP listener: HTTP/1.1 and cleartext HTTP/2 connections, with bounds
//! on what a client can hold without sending requests. A connection starts
//! in the node's own HTTP/1 loop ([`crate::h1`]), which hands it to hyper at
//! its first request that is not plain HTTP/1.1 (HTTP/2's preface included);
//! with `http.direct_http1 = false` hyper serves every connection.
//!
//! - At most `max_connections` are open at once. One more is answered with
//!   503 `not_ready` and closed, so a flood of idle connections cannot take
//!   the node's file descriptors. At most 64 refusals are in progress at
//!   once; past that a connection is closed without an answer.
//! - An HTTP/1 connection that takes longer than `header_timeout` to send a
//!   request's headers is closed. The clock starts when the connection waits
//!   for a request, so this is also the longest a keep-alive connection may
//!   idle between requests.
//! - HTTP/2 connections are pinged every `header_timeout` and closed if a ping
//!   goes unanswered.
//!
//! Shutdown stops accepting, lets each connection finish the request it is
//! serving, and completes when every connection has closed.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::h1;
use crate::http::Api;
use dotkv_api::{ApiError, ErrorCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// Connections over the limit being answered 503 at once.
const MAX_REFUSING: usize = 64;
/// Longest a refused connection is kept to deliver its 503.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// Connection counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections accepted and served since the start.
    pub accepted: AtomicU64,
    /// Connections refused since the start, because `max_connections` were
    /// open.
    pub refused: AtomicU64,
}

/// Counts a connection as open while it lives.
struct Open(Arc<ConnectionStats>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What bounds the listener's connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    /// Start connections in [`h1`]'s loop rather than in hyper.
    pub direct_http1: bool,
    /// `limits.max_body_bytes`: a longer body is hyper's to refuse.
    pub max_body_bytes: usize,
}

/// Serve `app` on `listener` until `shutdown` completes; then stop accepting,
/// close idle connections, and return once the others have closed.
pub async fn serve(
    listener: TcpListener,
    app: Api,
    limits: ConnectionLimits,
    stats: Arc<ConnectionStats>,
    shutdown: impl Future<Output = ()>,
) {
    let max = limits
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let slots = Arc::new(Semaphore::new(max));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let mut last_refusal_log: Option<Instant> = None;
    let (stop_tx, stop_rx) = watch::channel(());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.header_timeout)
        .keep_alive_timeout(limits.header_timeout);
    let builder = Arc::new(builder);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection that failed
                    // before it was accepted: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            if last_refusal_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                last_refusal_log = Some(Instant::now());
                tracing::warn!(
                    max_connections = max,
                    "refusing HTTP connections: every connection slot is taken"
                );
            }
            // Refusals in progress are bounded too; past that bound a
            // connection is just closed.
            if let Ok(r) = refusing.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream, max).await;
                    drop(r);
                });
            }
            continue;
        };
        let api = app.clone();
        let builder = builder.clone();
        let mut stop = stop_rx.clone();
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let open = Open(stats.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let _open = open;
            // Each answer is one write; no reason to hold its last segment
            // back for an acknowledgement (pipelined answers would wait for
            // the client's delayed ACK).
            let _ = stream.set_nodelay(true);
            let io = if limits.direct_http1 {
                let served = h1::serve(
                    stream,
                    api.clone(),
                    limits.header_timeout,
                    limits.max_body_bytes,
                    &mut stop,
                )
                .await;
                match served {
                    Ok(h1::End::HandOff(io)) => io,
                    Ok(h1::End::Closed) => return,
                    Err(e) => {
                        tracing::debug!(error = %e, "HTTP connection ended with an error");
                        return;
                    }
                }
            } else {
                h1::Rewind::fresh(stream)
            };
            let svc = TowerToHyperService::new(api);
            let conn = builder.serve_connection(TokioIo::new(io), svc);
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(());
    // Every connection holds a slot until it closes.
    let _ = slots.acquire_many(max as u32).await;
}

/// Answer a connection over the limit with 503 and close it: write the
/// answer, end the sending side, and read what the client sent until it closes
/// too (at most one second), so the client reads the answer rather than a
/// reset.
async fn refuse(mut stream: TcpStream, max: usize) {
    let body = ApiError::new(
        ErrorCode::NotReady,
        format!("too many open connections (http.max_connections = {max}); try again"),
    )
    .to_json();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}
