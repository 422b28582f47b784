//! A node's wiring and lifecycle: open the store, start the writer, serve HTTP
//! until a shutdown signal, then drain requests in flight, stop the writer
//! (which commits what is queued and syncs the WAL) and return.

use crate::config::Config;
use crate::http;
use crate::metrics::Metrics;
use dotkv_api::ApiError;
use dotkv_crdt::VersionVector;
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
    #[error("http server: {0}")]
    Serve(std::io::Error),
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
    ready: AtomicBool,
}

impl Node {
    /// Open the store and start the writer.
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
                log_retain_seqs: s.delta_log_retain,
            },
        )?;
        Ok(Arc::new(Node {
            in_flight: Semaphore::new(config.http.max_in_flight.max(1)),
            config,
            store,
            writer,
            metrics: Metrics::new(),
            started: Instant::now(),
            ready: AtomicBool::new(true),
        }))
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
    pub async fn read_token(&self) -> String {
        let c = self.writer.committed_after_read(&self.store).await;
        crate::token::encode(&c.vv)
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
/// gracefully.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let app = http::router(node.clone());
    let grace = Duration::from_millis(node.config.http.shutdown_grace_ms);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stop_tx.send(());
    });
    let mut server = std::pin::pin!(std::future::IntoFuture::into_future(server));
    let result = tokio::select! {
        r = &mut server => r,
        _ = async {
            let _ = stop_rx.await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "requests still in flight after the grace period; closing");
            Ok(())
        }
    };
    node.ready.store(false, Ordering::Release);
    node.writer.stop().await;
    tracing::info!("stopped");
    result.map_err(NodeError::Serve)
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
    // One machine-readable line on stdout, for scripts and tests.
    println!("dotkv: listening on http://{addr}");
    serve(node, listener, shutdown_signal()).await
}

/// Completes on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; stopping only on SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}
