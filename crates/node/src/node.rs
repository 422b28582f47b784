//! A node's wiring and lifecycle: open the store, start the writer, bind the
//! QUIC endpoint and start replication (when configured), serve HTTP until a
//! shutdown signal, then drain requests in flight, stop replication and the
//! transport, stop the writer (which commits what is queued and syncs the
//! WAL) and return.

use crate::config::Config;
use crate::http;
use crate::metrics::Metrics;
use crate::quic_api::{serve_client_connection, QuicApiLimits};
use crate::server::{self, ConnectionLimits, ConnectionStats};
use crate::token::TokenCache;
use axum::http::HeaderValue;
use dotkv_api::ApiError;
use dotkv_crdt::VersionVector;
use dotkv_replication::{
    load_node_identity, Alpn, CancellationToken, IncomingConnections, PeerSpec, ReplicationConfig,
    Replicator, Transport, TransportConfig,
};
use dotkv_storage::{Committed, StorageError, Store, StoreOptions, Writer, WriterOptions};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS identity: {0}")]
    Tls(#[from] dotkv_replication::TlsError),
    #[error("QUIC endpoint: {0}")]
    Transport(#[from] dotkv_replication::TransportError),
}

/// Everything a request handler needs.
pub struct Node {
    pub config: Config,
    pub store: Store,
    pub writer: Writer,
    pub metrics: Metrics,
    pub started: Instant,
    /// Bounds the requests in flight (`http.max_in_flight`).
    pub in_flight: Semaphore,
    /// The HTTP listener's connection counts.
    pub connections: Arc<ConnectionStats>,
    /// The last causal token encoded, reused while the version vector stays.
    pub tokens: TokenCache,
    /// Replication with the configured peers, when the QUIC endpoint is on.
    pub replicator: Option<Replicator>,
    /// Stops the QUIC endpoint and replication.
    cancel: CancellationToken,
    /// Incoming QUIC connections, until [`serve`] takes them.
    incoming: std::sync::Mutex<Option<IncomingConnections>>,
    ready: AtomicBool,
}

impl Node {
    /// Open the store, start the writer and, when `[quic]` is configured,
    /// bind the QUIC endpoint and start replication. Must run inside a Tokio
    /// runtime.
    pub fn open(config: Config) -> Result<Arc<Node>, NodeError> {
        let s = &config.storage;
        let store = Store::open(
            &config.node.data_dir,
            &StoreOptions {
                block_cache_bytes: s.block_cache_mb << 20,
                write_buffer_bytes: s.write_buffer_mb << 20,
            },
        )?;
        let writer = Writer::start(
            store.clone(),
            WriterOptions {
                durability: s.durability,
                queue_depth: s.write_queue,
                max_group: s.max_commit_group,
                log_local_groups: !config.peers.is_empty(),
                row_cache_bytes: s.row_cache_mb << 20,
                inline_commits: s.inline_commits,
            },
        )?;
        let cancel = CancellationToken::new();
        let (replicator, incoming) = if config.quic.enabled() {
            let q = &config.quic;
            let tls = load_node_identity(
                std::path::Path::new(&q.cert),
                std::path::Path::new(&q.key),
                std::path::Path::new(&q.ca),
            )?;
            let (transport, incoming) =
                Transport::bind(q.listen, &tls, TransportConfig::default(), &cancel)?;
            let r = &config.replication;
            let cfg = ReplicationConfig {
                name: config.node.name.clone(),
                datacenter: config.node.datacenter.clone(),
                peers: config
                    .peers
                    .iter()
                    .map(|p| PeerSpec {
                        name: p.name.clone(),
                        datacenter: p.datacenter.clone(),
                        address: p.address.clone(),
                    })
                    .collect(),
                forward_delay: Duration::from_millis(r.forward_delay_ms),
                ack_interval: Duration::from_millis(r.ack_interval_ms),
                batch_max_groups: r.batch_max_groups,
                batch_max_bytes: r.batch_max_bytes,
                window_groups: r.window_groups,
                causal_buffer_groups: r.causal_buffer_groups,
                causal_buffer_bytes: r.causal_buffer_bytes,
                log_max_seqs: r.log_max_seqs,
                log_max_bytes: r.log_max_bytes,
                log_max_age: Duration::from_secs(r.log_max_age_secs),
                reconnect: Duration::from_millis(r.reconnect_ms.max(10)),
            };
            let replicator = Replicator::start(
                cfg,
                store.clone(),
                writer.clone(),
                transport,
                cancel.clone(),
            );
            (Some(replicator), Some(incoming))
        } else {
            (None, None)
        };
        Ok(Arc::new(Node {
            in_flight: Semaphore::new(config.http.max_in_flight.max(1)),
            connections: Arc::default(),
            tokens: TokenCache::default(),
            config,
            store,
            writer,
            metrics: Metrics::new(),
            started: Instant::now(),
            replicator,
            cancel,
            incoming: std::sync::Mutex::new(incoming),
            ready: AtomicBool::new(true),
        }))
    }

    /// The QUIC endpoint's address, when it is on.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.replicator.as_ref().map(|r| r.transport().local_addr())
    }

    /// Serve incoming QUIC connections: peers go to replication, API clients
    /// to the API.
    fn serve_quic(self: &Arc<Node>, app: http::Api) {
        let incoming = self
            .incoming
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let (Some(mut incoming), Some(replicator)) = (incoming, self.replicator.clone()) else {
            return;
        };
        let limits = QuicApiLimits::from_transport(replicator.transport().config());
        let max = self.config.quic.max_client_connections.max(1);
        let slots = Arc::new(Semaphore::new(max));
        tokio::spawn(async move {
            let mut last_refusal_log: Option<Instant> = None;
            while let Some(conn) = incoming.accept().await {
                match conn.alpn() {
                    Alpn::Peer => replicator.accept(conn),
                    Alpn::Client => match slots.clone().try_acquire_owned() {
                        Ok(slot) => {
                            let app = app.clone();
                            tokio::spawn(async move {
                                serve_client_connection(app, conn, limits).await;
                                drop(slot);
                            });
                        }
                        Err(_) => {
                            if last_refusal_log
                                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
                            {
                                last_refusal_log = Some(Instant::now());
                                tracing::warn!(
                                    max_client_connections = max,
                                    "refusing QUIC API clients: every connection slot is taken"
                                );
                            }
                            conn.close(&format!(
                                "too many client connections (quic.max_client_connections = {max}); try again"
                            ));
                        }
                    },
                }
            }
        });
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Wait until the node has applied everything `token` names.
    pub async fn wait_for(&self, token: &VersionVector, timeout: Duration) -> Result<(), ApiError> {
        let mut rx = self.writer.committed();
        let covered = |c: &Arc<Committed>| token.leq(&c.vv);
        if covered(&rx.borrow()) {
            return Ok(());
        }
        let waited =
            tokio::time::timeout(timeout, async { rx.wait_for(covered).await.map(|_| ()) }).await;
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ApiError::new(
                dotkv_api::ErrorCode::NotReady,
                "the node is shutting down",
            )),
            Err(_) => Err(ApiError::timeout(format!(
                "timed out after {} ms waiting for this node to apply everything the causal token names",
                timeout.as_millis()
            ))),
        }
    }

    /// The token for an answer to a read that has just finished.
    pub async fn read_token(&self) -> HeaderValue {
        let c = self.writer.committed_after_read(&self.store).await;
        self.tokens.header(&c.vv)
    }
}

/// A running node's HTTP address and a way to stop it.
pub struct Running {
    pub http_addr: SocketAddr,
    pub node: Arc<Node>,
}

/// Bind the HTTP listener. Separate from [`serve`] so callers learn the address
/// (port 0 picks a free one) before serving starts.
pub async fn bind(config: &Config) -> Result<TcpListener, NodeError> {
    TcpListener::bind(config.http.listen)
        .await
        .map_err(|source| NodeError::Listen {
            addr: config.http.listen,
            source,
        })
}

/// Serve `node` on `listener` until `shutdown` completes, then shut down
/// gracefully: requests in flight get `http.shutdown_grace_ms` to finish,
/// unless `hurry` is cancelled meanwhile. The writer is flushed either way.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    hurry: CancellationToken,
) -> Result<(), NodeError> {
    let app = http::api(node.clone());
    node.serve_quic(app.clone());
    let grace = Duration::from_millis(node.config.http.shutdown_grace_ms);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let limits = ConnectionLimits {
        max_connections: node.config.http.max_connections,
        header_timeout: Duration::from_millis(node.config.http.header_timeout_ms),
        direct_http1: node.config.http.direct_http1,
        max_body_bytes: node.config.limits.max_body_bytes,
    };
    let server = server::serve(
        listener,
        app,
        limits,
        node.connections.clone(),
        async move {
            shutdown.await;
            let _ = stop_tx.send(());
        },
    );
    let mut server = std::pin::pin!(server);
    tokio::select! {
        _ = &mut server => {}
        _ = async {
            let _ = stop_rx.await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "requests still in flight after the grace period; closing");
        }
        _ = hurry.cancelled() => {
            tracing::warn!("second stop signal: closing the requests still in flight now");
        }
    };
    node.ready.store(false, Ordering::Release);
    if let Some(r) = &node.replicator {
        // HTTP has drained; let QUIC API requests in flight finish too (they
        // hold in-flight slots like HTTP requests), within the grace period.
        let all = node.config.http.max_in_flight.max(1);
        let deadline = Instant::now() + grace;
        while node.in_flight.available_permits() < all
            && Instant::now() < deadline
            && !hurry.is_cancelled()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        r.stop();
        r.transport().shutdown().await;
    }
    node.cancel.cancel();
    node.writer.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// Run a node with `config` until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), NodeError> {
    let node = Node::open(config)?;
    let listener = bind(&node.config).await?;
    let addr = listener.local_addr().map_err(|source| NodeError::Listen {
        addr: node.config.http.listen,
        source,
    })?;
    tracing::info!(
        %addr,
        replica = %node.store.replica_uuid(),
        data_dir = %node.config.node.data_dir.display(),
        durability = ?node.config.storage.durability,
        "dotkv node serving"
    );
    // Machine-readable lines on stdout, for scripts and tests.
    println!("dotkv: listening on http://{addr}");
    if let Some(q) = node.quic_addr() {
        tracing::info!(addr = %q, peers = node.config.peers.len(), "QUIC endpoint (peers and API clients)");
        println!("dotkv: quic on {q}");
    }
    let (shutdown, hurry) = stop_signals();
    serve(node, listener, shutdown, hurry).await
}

/// The process's stop signals: the first SIGTERM or SIGINT completes the
/// future (a graceful shutdown starts), a second one cancels the token
/// (requests still in flight are not waited for). Signals after that are
/// caught and ignored, so none kills the node before its WAL is flushed.
pub fn stop_signals() -> (impl Future<Output = ()> + Send + 'static, CancellationToken) {
    use tokio::signal::unix::{signal, Signal, SignalKind};
    let first = CancellationToken::new();
    let second = CancellationToken::new();
    let (on_first, on_second) = (first.clone(), second.clone());
    // A stream that cannot be had, or has ended, never yields.
    async fn next(s: &mut Option<Signal>) {
        let got = match s {
            Some(s) => s.recv().await.is_some(),
            None => false,
        };
        if !got {
            std::future::pending::<()>().await
        }
    }
    let listen = |kind: SignalKind, name: &str| match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for {name}");
            None
        }
    };
    let mut term = listen(SignalKind::terminate(), "SIGTERM");
    let mut int = listen(SignalKind::interrupt(), "SIGINT");
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = next(&mut term) => "SIGTERM",
            _ = next(&mut int) => "SIGINT",
        };
        tracing::info!("{name}: shutting down");
        on_first.cancel();
        let name = tokio::select! {
            _ = next(&mut term) => "SIGTERM",
            _ = next(&mut int) => "SIGINT",
        };
        tracing::info!("{name} again: not waiting for requests in flight");
        on_second.cancel();
        // Keep the handlers installed: later signals change nothing.
        std::future::pending::<()>().await
    });
    (async move { first.cancelled().await }, second)
}
