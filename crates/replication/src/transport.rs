//! The QUIC transport: the only place that knows about quinn.
//!
//! A [`Transport`] owns one UDP endpoint, which both accepts connections (peers
//! and API clients, told apart by ALPN) and dials peers. It offers:
//!
//! - [`Transport::connect`]: a connection to a peer, from a per-peer cache
//!   (dialled again once the cached one has closed);
//! - on a [`Connection`]: request/response over a bidirectional stream
//!   ([`Connection::request`], [`Connection::open_bi`]) and one-way streams
//!   ([`Connection::open_uni`]), carrying length-delimited frames (`u32`
//!   big-endian length, capped at [`TransportConfig::max_frame_size`]);
//! - [`IncomingConnections`]: accepted connections with their ALPN and the
//!   certificate name of the other end, through a bounded channel.
//!
//! Every read has a timeout, and so do connecting and writing. QUIC keep-alives
//! and the idle timeout detect dead peers. One shutdown token (a
//! [`CancellationToken`]) stops the accept loop and closes every connection
//! with a CONNECTION_CLOSE, so peers learn at once instead of timing out.
//!
//! After the TLS handshake the server sends a greeting on a unidirectional
//! stream (one frame holding [`PROTOCOL_VERSION`]), and `connect` returns only
//! once it has arrived. In TLS 1.3 the client finishes its handshake before the
//! server has judged the client's certificate, so without the greeting a
//! refused node would only find out on its first stream. The greeting is
//! consumed by `connect` and never seen by callers.

mod frame;
mod metrics;

pub use metrics::{PeerTraffic, TransportMetrics, ANONYMOUS_PEER};

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use quinn::crypto::rustls::HandshakeData;
use quinn::{ConnectionError, VarInt};
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::tls::{common_name, Alpn, NodeTls, CLOSE_REFUSED};
use frame::{write_frame, FrameError, FrameReader, HEADER_LEN};
use metrics::{Metrics, PeerCounters};

/// Default cap on one frame's payload: 16 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16 << 20;
/// The version carried by the server's greeting.
pub const PROTOCOL_VERSION: u8 = 1;

/// QUIC application close code of an orderly close (shutdown, caller's close).
pub const CLOSE_NORMAL: u32 = 0;
/// QUIC application close code: the other end broke the protocol.
pub const CLOSE_PROTOCOL_ERROR: u32 = 2;

/// The greeting is one tiny frame; anything larger is not a greeting.
const GREETING_MAX: u32 = 16;

/// Tuning of a [`Transport`]. The defaults suit a datacenter or WAN cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportConfig {
    /// Largest frame payload accepted or sent, in bytes. A longer incoming
    /// length prefix is an error, reported before any allocation.
    pub max_frame_size: u32,
    /// How long one frame read may wait ([`FrameReceiver::recv`]).
    pub read_timeout: Duration,
    /// How long opening a stream or writing one frame may wait (flow control).
    pub write_timeout: Duration,
    /// How long dialling may take: handshake plus greeting. Also bounds an
    /// incoming handshake.
    pub connect_timeout: Duration,
    /// QUIC keep-alive (PING) interval; zero disables keep-alives.
    pub keep_alive_interval: Duration,
    /// A connection silent for this long is dead (the smaller of both ends'
    /// values applies); zero disables the idle timeout.
    pub idle_timeout: Duration,
    /// Accepted connections waiting for the caller; when full, handshakes
    /// wait (back-pressure) rather than piling up.
    pub accept_queue: usize,
    /// How long shutdown waits for CONNECTION_CLOSE to reach the peers.
    pub close_timeout: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            keep_alive_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            accept_queue: 64,
            close_timeout: Duration::from_secs(2),
        }
    }
}

/// What went wrong on the transport, with whom.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The configuration is unusable.
    #[error("invalid transport configuration: {0}")]
    Config(String),
    /// The UDP socket could not be bound.
    #[error("cannot bind the QUIC endpoint to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// Dialling could not start (bad server name, endpoint stopping).
    #[error("cannot connect to {addr} as {server_name:?} ({alpn}): {source}")]
    Dial {
        addr: SocketAddr,
        server_name: String,
        alpn: Alpn,
        #[source]
        source: quinn::ConnectError,
    },
    /// The handshake failed: the server's certificate is not trusted, ours
    /// was refused, the ALPN is not served, or the peer is unreachable.
    #[error("cannot connect to {addr} as {server_name:?} ({alpn}): {source}")]
    Handshake {
        addr: SocketAddr,
        server_name: String,
        alpn: Alpn,
        #[source]
        source: ConnectionError,
    },
    /// The server completed the handshake and then refused the connection.
    #[error("{addr} refused the connection ({alpn}): {reason}")]
    Refused {
        addr: SocketAddr,
        alpn: Alpn,
        reason: String,
    },
    /// Dialling took longer than [`TransportConfig::connect_timeout`].
    #[error("connecting to {addr} ({alpn}) timed out after {timeout:?}")]
    ConnectTimeout {
        addr: SocketAddr,
        alpn: Alpn,
        timeout: Duration,
    },
    /// The connection is gone (closed, reset, idle timeout).
    #[error("connection with {addr} lost: {source}")]
    ConnectionLost {
        addr: SocketAddr,
        #[source]
        source: ConnectionError,
    },
    /// A stream failed (reset or stopped by the peer, connection lost).
    #[error("stream with {addr} failed: {source}")]
    Stream {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// A frame exceeds [`TransportConfig::max_frame_size`].
    #[error("frame of {len} bytes {direction} {addr} exceeds the limit of {max} bytes")]
    FrameTooLarge {
        addr: SocketAddr,
        /// `"from"` (received) or `"to"` (refused before sending).
        direction: &'static str,
        len: u64,
        max: u32,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream from {addr} ended inside a frame ({got} of {expected} bytes)")]
    Truncated {
        addr: SocketAddr,
        got: u64,
        expected: u64,
    },
    /// No complete frame arrived in time.
    #[error("reading from {addr} timed out after {timeout:?}")]
    ReadTimeout { addr: SocketAddr, timeout: Duration },
    /// A write or a stream opening could not proceed in time.
    #[error("writing to {addr} timed out after {timeout:?}")]
    WriteTimeout { addr: SocketAddr, timeout: Duration },
    /// The peer finished the response stream without a frame.
    #[error("{addr} closed the stream without answering")]
    NoResponse { addr: SocketAddr },
    /// The peer broke the transport protocol (for example its greeting).
    #[error("{addr} broke the transport protocol: {reason}")]
    Protocol { addr: SocketAddr, reason: String },
    /// The transport has been shut down.
    #[error("the transport is shut down")]
    Shutdown,
}

type Result<T, E = TransportError> = std::result::Result<T, E>;

/// Settings and counters shared by the transport, its accept loop and its
/// connections.
#[derive(Debug)]
struct Shared {
    config: TransportConfig,
    metrics: Metrics,
}

/// A QUIC endpoint with mutual TLS, shared by cheap clones.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

/// One dialled connection per (address, ALPN). The async lock makes
/// concurrent `connect` calls to the same peer share one handshake.
type Slot = Arc<tokio::sync::Mutex<Option<(String, Connection)>>>;

struct Inner {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    clients: [quinn::ClientConfig; 2],
    cache: Mutex<HashMap<(SocketAddr, Alpn), Slot>>,
    /// Child of the caller's token: cancelled by the caller, by
    /// [`Transport::shutdown`], or when the last handle is dropped.
    shutdown: CancellationToken,
    /// Cancelled once the endpoint has been closed.
    stopped: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The accept loop holds no handle to `Inner`: stop it with the last one.
        self.shutdown.cancel();
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("local_addr", &self.inner.endpoint.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Binds a UDP endpoint on `addr` and starts accepting connections, which
    /// arrive through the returned [`IncomingConnections`]. A client-only
    /// [`NodeTls`] (no server identity) gives a transport that only dials.
    ///
    /// Cancelling `shutdown` (or calling [`Transport::shutdown`]) stops the
    /// accept loop and closes every connection. Must be called within a
    /// Tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        tls: &NodeTls,
        config: TransportConfig,
        shutdown: &CancellationToken,
    ) -> Result<(Transport, IncomingConnections)> {
        let quic = Arc::new(quic_transport_config(&config)?);
        let endpoint = match (tls.server_config(), tls.reset_key()) {
            (Some(mut server), Some(reset_key)) => {
                server.transport_config(quic.clone());
                // A reset key that survives restarts: after a crash, the new
                // run answers packets of the old run's connections with a
                // stateless reset the peers can verify, so they reconnect at
                // once instead of waiting out the idle timeout.
                let mut endpoint_config = quinn::EndpointConfig::new(reset_key);
                // Connection ids the new run accepts as its own (quinn's
                // default generator rejects the old run's, and so never
                // answers them with a reset).
                endpoint_config.cid_generator(|| Box::new(RandomCids));
                std::net::UdpSocket::bind(addr).and_then(|socket| {
                    quinn::Endpoint::new(
                        endpoint_config,
                        Some(server),
                        socket,
                        Arc::new(quinn::TokioRuntime),
                    )
                })
            }
            (Some(mut server), None) => {
                server.transport_config(quic.clone());
                quinn::Endpoint::server(server, addr)
            }
            (None, _) => quinn::Endpoint::client(addr),
        }
        .map_err(|source| TransportError::Bind { addr, source })?;
        let clients = Alpn::ALL.map(|alpn| {
            let mut client = tls.client_config(alpn);
            client.transport_config(quic.clone());
            client
        });

        let (tx, rx) = mpsc::channel(config.accept_queue.max(1));
        let shared = Arc::new(Shared {
            config,
            metrics: Metrics::default(),
        });
        let shutdown = shutdown.child_token();
        let stopped = CancellationToken::new();
        tokio::spawn(accept_loop(
            endpoint.clone(),
            shared.clone(),
            tx,
            shutdown.clone(),
            stopped.clone(),
        ));
        let transport = Transport {
            inner: Arc::new(Inner {
                endpoint,
                shared,
                clients,
                cache: Mutex::new(HashMap::new()),
                shutdown,
                stopped,
            }),
        };
        Ok((transport, IncomingConnections { rx }))
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        // Only fails if the socket is gone, which the endpoint prevents.
        self.inner
            .endpoint
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The configuration this transport runs with.
    pub fn config(&self) -> &TransportConfig {
        &self.inner.shared.config
    }

    /// A connection to `addr` speaking `alpn`, whose certificate must be valid
    /// for `server_name` (a node name, DNS name or IP address in its SANs).
    ///
    /// Returns the cached connection while it is open; dials (again) when
    /// there is none or it has closed. Dialling is bounded by
    /// [`TransportConfig::connect_timeout`] and includes the server's
    /// greeting, so a server that refuses this node makes `connect` fail.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
        alpn: Alpn,
    ) -> Result<Connection> {
        if self.inner.shutdown.is_cancelled() {
            return Err(TransportError::Shutdown);
        }
        let slot = {
            let mut cache = self
                .inner
                .cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            cache.entry((addr, alpn)).or_default().clone()
        };
        let mut slot = slot.lock().await;
        if let Some((name, conn)) = slot.as_ref() {
            if name == server_name && !conn.is_closed() {
                return Ok(conn.clone());
            }
            debug!(peer = ?conn.peer_name(), "cached connection closed or renamed; dialling again");
        }
        *slot = None;
        let conn = self.dial(addr, server_name, alpn).await?;
        *slot = Some((server_name.to_owned(), conn.clone()));
        Ok(conn)
    }

    /// Sends one request frame to `addr` over a fresh bidirectional stream of
    /// the cached connection, and returns the one response frame.
    pub async fn request(
        &self,
        addr: SocketAddr,
        server_name: &str,
        alpn: Alpn,
        frame: &[u8],
    ) -> Result<Vec<u8>> {
        self.connect(addr, server_name, alpn)
            .await?
            .request(frame)
            .await
    }

    /// Opens a one-way stream to `addr` on the cached connection.
    pub async fn open_uni(
        &self,
        addr: SocketAddr,
        server_name: &str,
        alpn: Alpn,
    ) -> Result<FrameSender> {
        self.connect(addr, server_name, alpn)
            .await?
            .open_uni()
            .await
    }

    /// A snapshot of the counters (bytes per peer, connections, refusals).
    pub fn metrics(&self) -> TransportMetrics {
        self.inner.shared.metrics.snapshot()
    }

    /// Shuts the transport down (if the shutdown token has not already) and
    /// waits until every connection has been closed.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.stopped.cancelled().await;
    }

    /// Waits until the transport has shut down, without causing it.
    pub async fn stopped(&self) {
        self.inner.stopped.cancelled().await;
    }

    async fn dial(&self, addr: SocketAddr, server_name: &str, alpn: Alpn) -> Result<Connection> {
        let shared = &self.inner.shared;
        let timeout = shared.config.connect_timeout;
        let connecting = self
            .inner
            .endpoint
            .connect_with(self.inner.clients[alpn.index()].clone(), addr, server_name)
            .map_err(|source| TransportError::Dial {
                addr,
                server_name: server_name.to_owned(),
                alpn,
                source,
            })?;
        let handshake = async {
            let conn = connecting
                .await
                .map_err(|source| TransportError::Handshake {
                    addr,
                    server_name: server_name.to_owned(),
                    alpn,
                    source,
                })?;
            receive_greeting(&conn, alpn).await?;
            Ok::<_, TransportError>(conn)
        };
        let conn = tokio::select! {
            () = self.inner.shutdown.cancelled() => return Err(TransportError::Shutdown),
            r = tokio::time::timeout(timeout, handshake) => {
                r.map_err(|_| TransportError::ConnectTimeout { addr, alpn, timeout })??
            }
        };
        let peer_name = peer_certificate_name(&conn);
        Metrics::inc(&shared.metrics.connections_opened);
        debug!(peer = ?peer_name, "connected");
        Ok(Connection::new(conn, alpn, peer_name, shared.clone()))
    }
}

/// Connections accepted by a [`Transport`], in arrival order.
#[derive(Debug)]
pub struct IncomingConnections {
    rx: mpsc::Receiver<Connection>,
}

impl IncomingConnections {
    /// The next accepted connection; `None` once the transport has shut down.
    pub async fn accept(&mut self) -> Option<Connection> {
        self.rx.recv().await
    }
}

/// One QUIC connection, incoming or outgoing. Clones share it.
#[derive(Clone)]
pub struct Connection {
    conn: quinn::Connection,
    info: Arc<ConnInfo>,
}

struct ConnInfo {
    alpn: Alpn,
    peer_name: Option<String>,
    remote: SocketAddr,
    counters: Arc<PeerCounters>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id())
            .field("remote", &self.info.remote)
            .field("alpn", &self.info.alpn)
            .field("peer_name", &self.info.peer_name)
            .finish()
    }
}

impl Connection {
    fn new(
        conn: quinn::Connection,
        alpn: Alpn,
        peer_name: Option<String>,
        shared: Arc<Shared>,
    ) -> Self {
        let counters = shared.metrics.peer(peer_name.as_deref(), alpn);
        let remote = conn.remote_address();
        Connection {
            conn,
            info: Arc::new(ConnInfo {
                alpn,
                peer_name,
                remote,
                counters,
                shared,
            }),
        }
    }

    /// The negotiated protocol.
    pub fn alpn(&self) -> Alpn {
        self.info.alpn
    }

    /// The common name of the certificate the other end presented (verified
    /// against the cluster CA); `None` if it presented none (an API client).
    pub fn peer_name(&self) -> Option<&str> {
        self.info.peer_name.as_deref()
    }

    /// The other end's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.info.remote
    }

    /// An identifier unique among this process's live connections.
    pub fn id(&self) -> usize {
        self.conn.stable_id()
    }

    /// Whether the connection has closed (for any reason).
    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    /// Waits until the connection closes and says why.
    pub async fn closed(&self) -> TransportError {
        TransportError::ConnectionLost {
            addr: self.info.remote,
            source: self.conn.closed().await,
        }
    }

    /// Closes the connection now, telling the peer `reason`. Streams in
    /// flight are abandoned.
    pub fn close(&self, reason: &str) {
        self.conn
            .close(VarInt::from_u32(CLOSE_NORMAL), reason.as_bytes());
    }

    /// Sends `frame` on a new bidirectional stream and waits (up to the read
    /// timeout) for the one response frame.
    pub async fn request(&self, frame: &[u8]) -> Result<Vec<u8>> {
        let (mut send, mut recv) = self.open_bi().await?;
        send.send(frame).await?;
        send.finish()?;
        recv.recv().await?.ok_or(TransportError::NoResponse {
            addr: self.info.remote,
        })
    }

    /// Opens a bidirectional stream (request/response).
    pub async fn open_bi(&self) -> Result<(FrameSender, FrameReceiver)> {
        let (send, recv) = self.with_write_timeout(self.conn.open_bi()).await?;
        Ok((self.sender(send), self.receiver(recv)))
    }

    /// Opens a one-way stream.
    pub async fn open_uni(&self) -> Result<FrameSender> {
        let send = self.with_write_timeout(self.conn.open_uni()).await?;
        Ok(self.sender(send))
    }

    /// The next bidirectional stream the peer opens. `Ok(None)` once the
    /// connection has been closed in an orderly way (by either end, or by
    /// shutdown). Waiting for the peer's next request is not a read, so no
    /// timeout applies here.
    pub async fn accept_bi(&self) -> Result<Option<(FrameSender, FrameReceiver)>> {
        match self.conn.accept_bi().await {
            Ok((send, recv)) => Ok(Some((self.sender(send), self.receiver(recv)))),
            Err(e) => self.end_of_streams(e),
        }
    }

    /// The next one-way stream the peer opens; `Ok(None)` as for
    /// [`accept_bi`](Self::accept_bi).
    pub async fn accept_uni(&self) -> Result<Option<FrameReceiver>> {
        match self.conn.accept_uni().await {
            Ok(recv) => Ok(Some(self.receiver(recv))),
            Err(e) => self.end_of_streams(e),
        }
    }

    fn end_of_streams<T>(&self, e: ConnectionError) -> Result<Option<T>> {
        match e {
            ConnectionError::LocallyClosed => Ok(None),
            ConnectionError::ApplicationClosed(ref close)
                if close.error_code == VarInt::from_u32(CLOSE_NORMAL) =>
            {
                Ok(None)
            }
            source => Err(TransportError::ConnectionLost {
                addr: self.info.remote,
                source,
            }),
        }
    }

    async fn with_write_timeout<T>(
        &self,
        fut: impl Future<Output = Result<T, ConnectionError>>,
    ) -> Result<T> {
        let timeout = self.info.shared.config.write_timeout;
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(TransportError::ConnectionLost {
                addr: self.info.remote,
                source,
            }),
            Err(_) => Err(TransportError::WriteTimeout {
                addr: self.info.remote,
                timeout,
            }),
        }
    }

    fn sender(&self, stream: quinn::SendStream) -> FrameSender {
        FrameSender {
            stream,
            broken: false,
            info: self.info.clone(),
        }
    }

    fn receiver(&self, stream: quinn::RecvStream) -> FrameReceiver {
        FrameReceiver {
            stream,
            reader: FrameReader::default(),
            info: self.info.clone(),
        }
    }
}

/// The sending half of a stream: writes frames.
pub struct FrameSender {
    stream: quinn::SendStream,
    /// A frame write was interrupted (timeout, error, dropped future): the
    /// stream holds a partial frame, so it is reset rather than continued.
    broken: bool,
    info: Arc<ConnInfo>,
}

impl Drop for FrameSender {
    fn drop(&mut self) {
        if self.broken {
            // The peer sees a reset stream, not a frame cut short.
            let _ = self.stream.reset(VarInt::from_u32(CLOSE_PROTOCOL_ERROR));
        }
    }
}

impl std::fmt::Debug for FrameSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameSender")
            .field("remote", &self.info.remote)
            .finish_non_exhaustive()
    }
}

impl FrameSender {
    /// Writes one frame. A payload above the frame limit is refused before
    /// anything is sent; a write blocked by flow control for longer than the
    /// write timeout fails.
    ///
    /// After a failed or interrupted write the stream is reset and every
    /// later `send` fails: the receiver never sees half a frame.
    pub async fn send(&mut self, payload: &[u8]) -> Result<()> {
        let info = &self.info;
        let config = &info.shared.config;
        if self.broken {
            return Err(TransportError::Stream {
                addr: info.remote,
                source: io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "an earlier write on this stream failed; the stream was reset",
                ),
            });
        }
        if payload.len() > config.max_frame_size as usize {
            return Err(TransportError::FrameTooLarge {
                addr: info.remote,
                direction: "to",
                len: payload.len() as u64,
                max: config.max_frame_size,
            });
        }
        self.broken = true;
        let write = write_frame(&mut self.stream, payload, config.max_frame_size);
        let result = match tokio::time::timeout(config.write_timeout, write).await {
            Ok(Ok(())) => {
                self.broken = false;
                info.counters.add_sent(HEADER_LEN + payload.len());
                return Ok(());
            }
            Ok(Err(e)) => frame_error(e, info.remote, "to"),
            Err(_) => TransportError::WriteTimeout {
                addr: info.remote,
                timeout: config.write_timeout,
            },
        };
        let _ = self.stream.reset(VarInt::from_u32(CLOSE_PROTOCOL_ERROR));
        Err(result)
    }

    /// Ends the stream: the peer reads `None` after the last frame. Data
    /// already written keeps being delivered while the connection lives.
    pub fn finish(&mut self) -> Result<()> {
        self.stream.finish().map_err(|e| TransportError::Stream {
            addr: self.info.remote,
            source: io::Error::new(io::ErrorKind::NotConnected, e),
        })
    }

    /// Ends the stream and waits (up to the write timeout) until the peer has
    /// acknowledged every byte, for when delivery must be known, e.g. before
    /// shutting down.
    pub async fn finish_and_wait(mut self) -> Result<()> {
        self.finish()?;
        let info = &self.info;
        let timeout = info.shared.config.write_timeout;
        match tokio::time::timeout(timeout, self.stream.stopped()).await {
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some(code))) => Err(TransportError::Stream {
                addr: info.remote,
                source: io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    format!("the peer stopped the stream (code {code}) before reading it all"),
                ),
            }),
            Ok(Err(e)) => Err(TransportError::Stream {
                addr: info.remote,
                source: io::Error::new(io::ErrorKind::ConnectionAborted, e),
            }),
            Err(_) => Err(TransportError::WriteTimeout {
                addr: info.remote,
                timeout,
            }),
        }
    }
}

/// The receiving half of a stream: reads frames.
pub struct FrameReceiver {
    stream: quinn::RecvStream,
    reader: FrameReader,
    info: Arc<ConnInfo>,
}

impl std::fmt::Debug for FrameReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReceiver")
            .field("remote", &self.info.remote)
            .finish_non_exhaustive()
    }
}

impl FrameReceiver {
    /// Reads the next frame within [`TransportConfig::read_timeout`].
    /// `Ok(None)` when the peer finished the stream between frames.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>> {
        self.recv_timeout(self.info.shared.config.read_timeout)
            .await
    }

    /// [`recv`](Self::recv) with another timeout, e.g. for a long-lived
    /// stream whose sender may be quiet for a while.
    ///
    /// Cancel-safe: after a timeout (or a dropped future) in the middle of a
    /// frame, the next call goes on with the same frame.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>> {
        let info = &self.info;
        let max = info.shared.config.max_frame_size;
        let read = self.reader.read(&mut self.stream, max);
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(frame)) => {
                if let Some(frame) = &frame {
                    info.counters.add_received(HEADER_LEN + frame.len());
                }
                Ok(frame)
            }
            Ok(Err(e)) => {
                // Tell the sender to stop rather than let it push the rest.
                let _ = self.stream.stop(VarInt::from_u32(CLOSE_PROTOCOL_ERROR));
                Err(frame_error(e, info.remote, "from"))
            }
            Err(_) => Err(TransportError::ReadTimeout {
                addr: info.remote,
                timeout,
            }),
        }
    }
}

fn frame_error(e: FrameError, addr: SocketAddr, direction: &'static str) -> TransportError {
    match e {
        FrameError::TooLarge { len, max } => TransportError::FrameTooLarge {
            addr,
            direction,
            len,
            max,
        },
        FrameError::Truncated { got, expected } => TransportError::Truncated {
            addr,
            got,
            expected,
        },
        FrameError::Io(source) => TransportError::Stream { addr, source },
    }
}

/// Random 8-byte connection ids; any id of that length is taken as one of
/// ours, so a packet for a connection of a previous run gets a stateless
/// reset.
struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let mut id = [0u8; 8];
        // The system RNG does not fail on Linux; zeros would still be a
        // valid (if guessable) id.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id);
        quinn::ConnectionId::new(&id)
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

fn quic_transport_config(config: &TransportConfig) -> Result<quinn::TransportConfig> {
    if config.max_frame_size == 0 {
        return Err(TransportError::Config(
            "max_frame_size must be positive".to_owned(),
        ));
    }
    let enabled = |d: Duration| (!d.is_zero()).then_some(d);
    if let (Some(keep_alive), Some(idle)) = (
        enabled(config.keep_alive_interval),
        enabled(config.idle_timeout),
    ) {
        if keep_alive >= idle {
            return Err(TransportError::Config(format!(
                "keep_alive_interval ({keep_alive:?}) must be shorter than idle_timeout ({idle:?}), \
                 or idle connections would time out between keep-alives"
            )));
        }
    }
    let mut quic = quinn::TransportConfig::default();
    quic.keep_alive_interval(enabled(config.keep_alive_interval));
    let idle =
        match enabled(config.idle_timeout) {
            Some(idle) => Some(quinn::IdleTimeout::try_from(idle).map_err(|_| {
                TransportError::Config(format!("idle_timeout {idle:?} is too large"))
            })?),
            None => None,
        };
    quic.max_idle_timeout(idle);
    // Between datacenters the bandwidth-delay product is large and catch-up
    // after a partition is a bulk transfer: BBR reaches the link's rate in a
    // few round trips where loss-based Cubic (quinn's default) grew slowly
    // through the WAN relays.
    quic.congestion_controller_factory(
        std::sync::Arc::new(quinn::congestion::BbrConfig::default()),
    );
    Ok(quic)
}

/// The common name of the certificate the other end presented, if any.
fn peer_certificate_name(conn: &quinn::Connection) -> Option<String> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    common_name(certs.first()?)
}

async fn receive_greeting(conn: &quinn::Connection, alpn: Alpn) -> Result<()> {
    let addr = conn.remote_address();
    let mut recv = conn.accept_uni().await.map_err(|source| match source {
        ConnectionError::ApplicationClosed(close)
            if close.error_code == VarInt::from_u32(CLOSE_REFUSED) =>
        {
            TransportError::Refused {
                addr,
                alpn,
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            }
        }
        source => TransportError::ConnectionLost { addr, source },
    })?;
    match FrameReader::default().read(&mut recv, GREETING_MAX).await {
        Ok(Some(greeting)) if greeting.first() == Some(&PROTOCOL_VERSION) => Ok(()),
        Ok(Some(greeting)) => Err(TransportError::Protocol {
            addr,
            reason: format!(
                "unsupported greeting {greeting:?} (this node speaks version {PROTOCOL_VERSION})"
            ),
        }),
        Ok(None) => Err(TransportError::Protocol {
            addr,
            reason: "empty greeting".to_owned(),
        }),
        Err(e) => Err(frame_error(e, addr, "from")),
    }
}

async fn send_greeting(conn: &quinn::Connection, timeout: Duration) -> Result<(), String> {
    let greet = async {
        let mut send = conn.open_uni().await.map_err(|e| e.to_string())?;
        write_frame(&mut send, &[PROTOCOL_VERSION], GREETING_MAX)
            .await
            .map_err(|e| format!("{e:?}"))?;
        send.finish().map_err(|e| e.to_string())
    };
    tokio::time::timeout(timeout, greet)
        .await
        .map_err(|_| format!("timed out after {timeout:?}"))?
}

/// Accepts connections until shutdown, then closes the endpoint.
async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Connection>,
    shutdown: CancellationToken,
    stopped: CancellationToken,
) {
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    handshakes.spawn(handshake(incoming, shared.clone(), tx.clone(), shutdown.clone()));
                }
                None => break,
            },
            // Reap finished handshakes so the set does not grow.
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
        }
    }
    handshakes.shutdown().await;
    drop(tx);
    endpoint.close(VarInt::from_u32(CLOSE_NORMAL), b"shutdown");
    if tokio::time::timeout(shared.config.close_timeout, endpoint.wait_idle())
        .await
        .is_err()
    {
        debug!("some peers did not acknowledge the close in time");
    }
    stopped.cancel();
}

/// Completes one incoming handshake, enforces the certificate rule of its
/// ALPN, greets the client and hands the connection to the caller.
#[tracing::instrument(level = "debug", skip_all, fields(remote = %incoming.remote_address()))]
async fn handshake(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Connection>,
    shutdown: CancellationToken,
) {
    let remote = incoming.remote_address();
    let metrics = &shared.metrics;
    let timeout = shared.config.connect_timeout;
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(e) => {
            Metrics::inc(&metrics.handshakes_refused);
            debug!(%remote, error = %e, "incoming connection failed before the handshake");
            return;
        }
    };
    let conn = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            Metrics::inc(&metrics.handshakes_refused);
            log_failed_handshake(remote, &e);
            return;
        }
        Err(_) => {
            Metrics::inc(&metrics.handshakes_refused);
            warn!(%remote, ?timeout, "peer refused: TLS handshake did not finish in time");
            return;
        }
    };
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<HandshakeData>().ok())
        .and_then(|d| d.protocol.as_deref().and_then(Alpn::from_protocol));
    let Some(alpn) = alpn else {
        // rustls refuses QUIC handshakes without a common ALPN; be explicit anyway.
        Metrics::inc(&metrics.handshakes_refused);
        warn!(%remote, "peer refused: no dotkv ALPN negotiated");
        conn.close(VarInt::from_u32(CLOSE_REFUSED), b"no dotkv ALPN negotiated");
        return;
    };
    let peer_name = peer_certificate_name(&conn);
    if alpn == Alpn::Peer && conn.peer_identity().is_none() {
        // The verifier allows anonymous clients for dotkv-client/1 (see tls.rs);
        // the peer protocol needs a CA-signed certificate.
        Metrics::inc(&metrics.handshakes_refused);
        warn!(%remote, %alpn, "peer refused: no client certificate signed by the cluster CA");
        conn.close(
            VarInt::from_u32(CLOSE_REFUSED),
            b"dotkv-peer/1 requires a client certificate signed by the cluster CA",
        );
        return;
    }
    if let Err(e) = send_greeting(&conn, shared.config.write_timeout).await {
        debug!(%remote, error = %e, "cannot greet the new connection");
        conn.close(VarInt::from_u32(CLOSE_PROTOCOL_ERROR), b"greeting failed");
        return;
    }
    Metrics::inc(&metrics.connections_accepted);
    debug!(%alpn, peer = ?peer_name, "accepted");
    let connection = Connection::new(conn, alpn, peer_name, shared.clone());
    tokio::select! {
        () = shutdown.cancelled() => {}
        sent = tx.send(connection) => {
            if let Err(mpsc::error::SendError(connection)) = sent {
                connection.conn.close(VarInt::from_u32(CLOSE_REFUSED), b"not accepting connections");
            }
        }
    }
}

fn log_failed_handshake(remote: SocketAddr, e: &ConnectionError) {
    match e {
        // Our side aborted the handshake: the client's certificate failed
        // verification (wrong CA, expired, wrong usage) or it offered no ALPN
        // we serve.
        ConnectionError::TransportError(error) => warn!(
            %remote,
            %error,
            "peer refused: TLS handshake failed (certificate not signed by the cluster CA, \
             expired, or no dotkv ALPN)"
        ),
        // The client aborted: typically it does not trust our certificate.
        ConnectionError::ConnectionClosed(close) => warn!(
            %remote,
            error = %close,
            "peer refused: the remote end aborted the TLS handshake (does it trust the cluster CA?)"
        ),
        other => debug!(%remote, error = %other, "incoming handshake failed"),
    }
}
