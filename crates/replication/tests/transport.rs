//! Black-box tests of the QUIC transport: real UDP sockets on 127.0.0.1 and
//! real certificates generated into temporary directories.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use dotkv_replication::tls::CA_CERT_FILE;
use dotkv_replication::{
    init_ca, issue_node_cert, load_client_trust, load_node_identity, load_node_identity_with, Alpn,
    CancellationToken, ClientCertPolicy, Connection, IncomingConnections, NodeTls, Transport,
    TransportConfig, TransportError,
};
use tempfile::TempDir;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

const DEADLINE: Duration = Duration::from_secs(10);

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn new_ca() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    init_ca(dir.path()).unwrap();
    dir
}

/// Issues `name` from the CA in `ca` and loads it.
fn node_tls(ca: &Path, name: &str) -> NodeTls {
    let files = issue_node_cert(ca, name, &[], ca).unwrap();
    load_node_identity(&files.cert, &files.key, &ca.join(CA_CERT_FILE)).unwrap()
}

/// Waits for `fut`, failing the test after [`DEADLINE`].
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no result within {DEADLINE:?}"),
    }
}

/// Polls `cond` until it holds, failing the test after [`DEADLINE`].
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: not true within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[derive(Debug)]
enum Event {
    Accepted(Connection),
    Uni(Vec<u8>),
    StreamError(String),
}

/// A test server: answers each request frame with
/// `"<alpn> <peer name or anonymous> <request>"`, except `silence`, which it
/// never answers; reports accepted connections, one-way frames and stream
/// errors. Ends when the transport shuts down.
fn spawn_echo(
    mut incoming: IncomingConnections,
) -> (JoinHandle<()>, mpsc::UnboundedReceiver<Event>) {
    let (events, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        while let Some(conn) = incoming.accept().await {
            let _ = events.send(Event::Accepted(conn.clone()));
            conns.spawn(serve(conn, events.clone()));
        }
        while conns.join_next().await.is_some() {}
    });
    (task, rx)
}

async fn serve(conn: Connection, events: mpsc::UnboundedSender<Event>) {
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            bi = conn.accept_bi() => {
                let Ok(Some((mut send, mut recv))) = bi else { break };
                let (conn, events) = (conn.clone(), events.clone());
                streams.spawn(async move {
                    match recv.recv().await {
                        Ok(Some(request)) if request == b"silence" => {
                            // Hold the stream open without answering.
                            let _ = conn.closed().await;
                        }
                        Ok(Some(request)) => {
                            let peer = conn.peer_name().unwrap_or("anonymous");
                            let answer = format!("{} {peer} {}", conn.alpn(), String::from_utf8_lossy(&request));
                            let _ = send.send(answer.as_bytes()).await;
                            let _ = send.finish();
                        }
                        Ok(None) => {}
                        Err(e) => {
                            let _ = events.send(Event::StreamError(e.to_string()));
                        }
                    }
                });
            }
            uni = conn.accept_uni() => {
                let Ok(Some(mut recv)) = uni else { break };
                let events = events.clone();
                streams.spawn(async move {
                    loop {
                        match recv.recv().await {
                            Ok(Some(frame)) => {
                                let _ = events.send(Event::Uni(frame));
                            }
                            Ok(None) => break,
                            Err(e) => {
                                let _ = events.send(Event::StreamError(e.to_string()));
                                break;
                            }
                        }
                    }
                });
            }
        }
    }
    streams.shutdown().await;
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    within("next server event", events.recv())
        .await
        .expect("server stopped")
}

async fn next_accepted(events: &mut mpsc::UnboundedReceiver<Event>) -> Connection {
    loop {
        if let Event::Accepted(conn) = next_event(events).await {
            return conn;
        }
    }
}

/// Everything a test started, stopped and awaited at the end.
struct Harness {
    shutdown: CancellationToken,
    transports: Vec<Transport>,
    servers: Vec<JoinHandle<()>>,
}

impl Harness {
    fn new() -> Self {
        Harness {
            shutdown: CancellationToken::new(),
            transports: Vec::new(),
            servers: Vec::new(),
        }
    }

    fn bind(&mut self, tls: &NodeTls, config: TransportConfig) -> (Transport, IncomingConnections) {
        let (t, incoming) = Transport::bind(loopback(), tls, config, &self.shutdown).unwrap();
        self.transports.push(t.clone());
        (t, incoming)
    }

    /// A transport serving the echo protocol.
    fn echo(
        &mut self,
        tls: &NodeTls,
        config: TransportConfig,
    ) -> (Transport, mpsc::UnboundedReceiver<Event>) {
        let (t, incoming) = self.bind(tls, config);
        let (task, events) = spawn_echo(incoming);
        self.servers.push(task);
        (t, events)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for t in &self.transports {
            within("transport shutdown", t.stopped()).await;
        }
        for s in self.servers {
            within("server task", s).await.unwrap();
        }
    }
}

#[tokio::test]
async fn peers_exchange_frames_on_both_protocols() -> Result<()> {
    let ca = new_ca();
    let mut h = Harness::new();
    let (a, _) = h.bind(&node_tls(ca.path(), "node-a"), TransportConfig::default());
    let (b, mut events) = h.echo(&node_tls(ca.path(), "node-b"), TransportConfig::default());
    let b_addr = b.local_addr();

    // Node to node, dialled by node name.
    let answer = a.request(b_addr, "node-b", Alpn::Peer, b"ping").await?;
    assert_eq!(answer, b"dotkv-peer/1 node-a ping");
    let conn = a.connect(b_addr, "node-b", Alpn::Peer).await?;
    assert_eq!(
        (conn.alpn(), conn.peer_name()),
        (Alpn::Peer, Some("node-b"))
    );
    assert_eq!(conn.remote_addr(), b_addr);
    let server_side = next_accepted(&mut events).await;
    assert_eq!(
        (server_side.alpn(), server_side.peer_name()),
        (Alpn::Peer, Some("node-a"))
    );

    // The client protocol on the same port, dialled by a SAN.
    let answer = a
        .request(b_addr, "localhost", Alpn::Client, b"get k")
        .await?;
    assert_eq!(answer, b"dotkv-client/1 node-a get k");

    // An API client without a certificate: fine on the client protocol.
    let (c, _) = h.bind(
        &load_client_trust(&ca.path().join(CA_CERT_FILE))?,
        TransportConfig::default(),
    );
    let answer = c
        .request(b_addr, "127.0.0.1", Alpn::Client, b"hello")
        .await?;
    assert_eq!(answer, b"dotkv-client/1 anonymous hello");

    // One-way stream.
    let mut stream = a.open_uni(b_addr, "node-b", Alpn::Peer).await?;
    stream.send(b"d1").await?;
    stream.send(b"").await?;
    stream.send(b"d3").await?;
    stream.finish_and_wait().await?;
    let mut frames = Vec::new();
    while frames.len() < 3 {
        if let Event::Uni(frame) = next_event(&mut events).await {
            frames.push(frame);
        }
    }
    assert_eq!(frames, [&b"d1"[..], b"", b"d3"]);

    // Byte counters, frame headers included.
    let sent = (4 + 4) + (4 + 2) + 4 + (4 + 2);
    let received = 4 + "dotkv-peer/1 node-a ping".len() as u64;
    let am = a.metrics();
    let traffic = am.peer("node-b", Alpn::Peer).context("a counted node-b")?;
    assert_eq!(
        (traffic.bytes_sent, traffic.bytes_received),
        (sent, received)
    );
    let bm = b.metrics();
    let traffic = bm.peer("node-a", Alpn::Peer).context("b counted node-a")?;
    assert_eq!(
        (traffic.bytes_sent, traffic.bytes_received),
        (received, sent)
    );
    let anonymous = bm
        .peer("anonymous", Alpn::Client)
        .context("b counted the client")?;
    assert_eq!(anonymous.bytes_received, 4 + 5);
    assert_eq!(bm.connections_accepted, 3);
    assert_eq!(bm.handshakes_refused, 0);
    let mut text = String::new();
    bm.write_prometheus(&mut text);
    assert!(text
        .contains("dotkv_transport_bytes_received_total{peer=\"node-a\",alpn=\"dotkv-peer/1\"}"));

    h.stop().await;
    Ok(())
}

/// Collects what `tracing` prints on this thread.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

// current_thread: every task runs on this thread, so the thread's default
// subscriber sees the server's logs.
#[tokio::test(flavor = "current_thread")]
async fn node_with_a_certificate_from_another_ca_is_refused() -> Result<()> {
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let cluster = new_ca();
    let other = new_ca();
    let mut h = Harness::new();
    let (b, _events) = h.echo(
        &node_tls(cluster.path(), "node-b"),
        TransportConfig::default(),
    );
    let b_addr = b.local_addr();

    // Mallory has a certificate from another CA but trusts the cluster CA too,
    // so she accepts node-b's certificate: only node-b's check stops her.
    let files = issue_node_cert(other.path(), "mallory", &[], other.path())?;
    let both_cas = other.path().join("both.pem");
    std::fs::write(
        &both_cas,
        std::fs::read_to_string(other.path().join(CA_CERT_FILE))?
            + &std::fs::read_to_string(cluster.path().join(CA_CERT_FILE))?,
    )?;
    let mallory_tls = load_node_identity(&files.cert, &files.key, &both_cas)?;
    let (mallory, _) = h.bind(&mallory_tls, TransportConfig::default());
    for alpn in Alpn::ALL {
        let err = mallory
            .connect(b_addr, "node-b", alpn)
            .await
            .expect_err("a certificate from another CA must be refused");
        assert!(
            matches!(
                err,
                TransportError::Handshake { .. } | TransportError::ConnectionLost { .. }
            ),
            "{alpn}: {err}"
        );
    }
    wait_until("node-b counts two refusals", || {
        b.metrics().handshakes_refused >= 2
    })
    .await;
    let text = logs.text();
    assert!(text.contains("WARN"), "{text}");
    assert!(text.contains("peer refused"), "{text}");
    assert!(text.contains(&mallory.local_addr().to_string()), "{text}");
    assert!(text.contains("invalid peer certificate"), "{text}");

    // A node that trusts only its own CA refuses node-b in turn.
    let (eve, _) = h.bind(&node_tls(other.path(), "eve"), TransportConfig::default());
    let err = eve
        .connect(b_addr, "node-b", Alpn::Peer)
        .await
        .expect_err("eve distrusts node-b");
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "{err}"
    );

    // No certificate at all on the peer protocol: refused after the handshake.
    let (anon, _) = h.bind(
        &load_client_trust(&cluster.path().join(CA_CERT_FILE))?,
        TransportConfig::default(),
    );
    let err = anon
        .connect(b_addr, "node-b", Alpn::Peer)
        .await
        .expect_err("the peer protocol needs a certificate");
    let TransportError::Refused { reason, .. } = &err else {
        panic!("expected Refused, got {err}");
    };
    assert!(reason.contains("client certificate"), "{reason}");
    wait_until("node-b counts the anonymous refusal", || {
        b.metrics().handshakes_refused >= 4
    })
    .await;
    assert!(
        logs.text().contains("no client certificate"),
        "{}",
        logs.text()
    );
    assert_eq!(b.metrics().connections_accepted, 0);

    h.stop().await;
    Ok(())
}

#[tokio::test]
async fn required_policy_refuses_anonymous_clients_too() -> Result<()> {
    let ca = new_ca();
    let files = issue_node_cert(ca.path(), "strict", &[], ca.path())?;
    let strict = load_node_identity_with(
        &files.cert,
        &files.key,
        &ca.path().join(CA_CERT_FILE),
        ClientCertPolicy::Required,
    )?;
    let mut h = Harness::new();
    let (b, _events) = h.echo(&strict, TransportConfig::default());
    let (anon, _) = h.bind(
        &load_client_trust(&ca.path().join(CA_CERT_FILE))?,
        TransportConfig::default(),
    );
    let err = anon
        .connect(b.local_addr(), "strict", Alpn::Client)
        .await
        .expect_err("no certificate");
    assert!(
        matches!(
            err,
            TransportError::Handshake { .. } | TransportError::ConnectionLost { .. }
        ),
        "{err}"
    );
    let (a, _) = h.bind(&node_tls(ca.path(), "node-a"), TransportConfig::default());
    let answer = a
        .request(b.local_addr(), "strict", Alpn::Client, b"x")
        .await?;
    assert_eq!(answer, b"dotkv-client/1 node-a x");
    h.stop().await;
    Ok(())
}

#[tokio::test]
async fn oversized_frames_are_rejected() -> Result<()> {
    let ca = new_ca();
    let mut h = Harness::new();
    let small = TransportConfig {
        max_frame_size: 1024,
        ..TransportConfig::default()
    };
    let (b, mut events) = h.echo(&node_tls(ca.path(), "node-b"), small.clone());
    let (a, _) = h.bind(&node_tls(ca.path(), "node-a"), TransportConfig::default());

    // Within b's limit: answered (the answer, 20 + 1004 bytes, is exactly at it).
    let answer = a
        .request(b.local_addr(), "node-b", Alpn::Peer, &[b'x'; 1004])
        .await?;
    assert_eq!(answer.len(), 1024);

    // Above it: b rejects the frame from its length prefix and stops the stream.
    let err = a
        .request(b.local_addr(), "node-b", Alpn::Peer, &[b'x'; 4096])
        .await
        .expect_err("b never answers an oversized request");
    assert!(
        !matches!(err, TransportError::ReadTimeout { .. }),
        "b should stop the stream: {err}"
    );
    let error = loop {
        if let Event::StreamError(e) = next_event(&mut events).await {
            break e;
        }
    };
    assert!(error.contains("frame of 4096 bytes from"), "{error}");
    assert!(error.contains("exceeds the limit of 1024 bytes"), "{error}");
    // The connection itself is still usable.
    a.request(b.local_addr(), "node-b", Alpn::Peer, b"still there")
        .await?;

    // A sender with a small limit refuses before sending anything.
    let (c, _) = h.bind(&node_tls(ca.path(), "node-c"), small);
    let conn = c.connect(b.local_addr(), "node-b", Alpn::Peer).await?;
    let mut stream = conn.open_uni().await?;
    let err = stream
        .send(&[0u8; 1025])
        .await
        .expect_err("over the sender's limit");
    let TransportError::FrameTooLarge {
        direction,
        len,
        max,
        ..
    } = err
    else {
        panic!("expected FrameTooLarge, got {err}");
    };
    assert_eq!((direction, len, max), ("to", 1025, 1024));
    assert_eq!(
        c.metrics().peer("node-b", Alpn::Peer).map(|p| p.bytes_sent),
        Some(0)
    );

    h.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_read_times_out_when_the_peer_never_answers() -> Result<()> {
    let ca = new_ca();
    let mut h = Harness::new();
    let (b, _events) = h.echo(&node_tls(ca.path(), "node-b"), TransportConfig::default());
    let timeout = Duration::from_millis(300);
    let config = TransportConfig {
        read_timeout: timeout,
        ..TransportConfig::default()
    };
    let (a, _) = h.bind(&node_tls(ca.path(), "node-a"), config);
    let start = Instant::now();
    let err = a
        .request(b.local_addr(), "node-b", Alpn::Peer, b"silence")
        .await
        .expect_err("b never answers");
    let elapsed = start.elapsed();
    assert!(
        matches!(err, TransportError::ReadTimeout { timeout: t, .. } if t == timeout),
        "{err}"
    );
    assert!(elapsed >= timeout && elapsed < DEADLINE, "{elapsed:?}");
    // The connection survives a slow answer.
    a.request(b.local_addr(), "node-b", Alpn::Peer, b"ping")
        .await?;
    h.stop().await;
    Ok(())
}

#[tokio::test]
async fn connecting_to_nobody_times_out() -> Result<()> {
    let ca = new_ca();
    let mut h = Harness::new();
    // A bound UDP socket that never answers.
    let silent = UdpSocket::bind(loopback()).await?;
    let timeout = Duration::from_millis(300);
    let config = TransportConfig {
        connect_timeout: timeout,
        ..TransportConfig::default()
    };
    let (a, _) = h.bind(&node_tls(ca.path(), "node-a"), config);
    let err = a
        .connect(silent.local_addr()?, "node-b", Alpn::Peer)
        .await
        .expect_err("nobody answers");
    assert!(
        matches!(err, TransportError::ConnectTimeout { .. }),
        "{err}"
    );
    h.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_cache_reuses_open_connections_and_replaces_closed_ones() -> Result<()> {
    let ca = new_ca();
    let mut h = Harness::new();
    let (b, mut events) = h.echo(&node_tls(ca.path(), "node-b"), TransportConfig::default());
    let (a, _) = h.bind(&node_tls(ca.path(), "node-a"), TransportConfig::default());
    let b_addr = b.local_addr();

    let c1 = a.connect(b_addr, "node-b", Alpn::Peer).await?;
    assert_eq!(
        a.connect(b_addr, "node-b", Alpn::Peer).await?.id(),
        c1.id(),
        "cached"
    );
    let client = a.connect(b_addr, "node-b", Alpn::Client).await?;
    assert_ne!(client.id(), c1.id(), "one connection per protocol");
    a.request(b_addr, "node-b", Alpn::Peer, b"1").await?;

    // Closed on our side.
    c1.close("test");
    assert!(c1.is_closed());
    let c2 = a.connect(b_addr, "node-b", Alpn::Peer).await?;
    assert_ne!(c2.id(), c1.id());
    assert_eq!(
        a.request(b_addr, "node-b", Alpn::Peer, b"2").await?,
        b"dotkv-peer/1 node-a 2"
    );

    // Closed by the server.
    next_accepted(&mut events).await; // c1
    next_accepted(&mut events).await; // the client-protocol connection
    let c2_at_b = next_accepted(&mut events).await;
    c2_at_b.close("bye");
    let why = within("c2 sees the close", c2.closed()).await;
    assert!(why.to_string().contains("bye"), "{why}");
    let answer = a.request(b_addr, "node-b", Alpn::Peer, b"3").await?;
    assert_eq!(answer, b"dotkv-peer/1 node-a 3");
    let c3 = a.connect(b_addr, "node-b", Alpn::Peer).await?;
    assert!(c3.id() != c2.id() && !c3.is_closed());
    assert_eq!(a.metrics().connections_opened, 4);

    h.stop().await;
    Ok(())
}

/// A UDP relay between a client and a server that can be cut, to make a
/// peer vanish without closing anything.
struct Relay {
    addr: SocketAddr,
    cut: CancellationToken,
    task: JoinHandle<()>,
}

async fn relay(server: SocketAddr) -> io::Result<Relay> {
    let front = Arc::new(UdpSocket::bind(loopback()).await?);
    let back = Arc::new(UdpSocket::bind(loopback()).await?);
    back.connect(server).await?;
    let addr = front.local_addr()?;
    let cut = CancellationToken::new();
    let stop = cut.clone();
    let task = tokio::spawn(async move {
        let mut client = None;
        let (mut from_client, mut from_server) = ([0u8; 65536], [0u8; 65536]);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                r = front.recv_from(&mut from_client) => {
                    let Ok((n, from)) = r else { break };
                    client = Some(from);
                    let _ = back.send(&from_client[..n]).await;
                }
                r = back.recv(&mut from_server) => {
                    let Ok(n) = r else { break };
                    if let Some(client) = client {
                        let _ = front.send_to(&from_server[..n], client).await;
                    }
                }
            }
        }
    });
    Ok(Relay { addr, cut, task })
}

#[tokio::test]
async fn a_vanished_peer_is_detected_by_the_idle_timeout() -> Result<()> {
    let ca = new_ca();
    let mut h = Harness::new();
    let (b, _events) = h.echo(&node_tls(ca.path(), "node-b"), TransportConfig::default());
    let config = TransportConfig {
        keep_alive_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_secs(1),
        ..TransportConfig::default()
    };
    let (a, _) = h.bind(&node_tls(ca.path(), "node-a"), config);
    let relay = relay(b.local_addr()).await?;
    let conn = a.connect(relay.addr, "node-b", Alpn::Peer).await?;
    a.request(relay.addr, "node-b", Alpn::Peer, b"ping").await?;

    // Keep-alives hold a quiet connection open past the idle timeout.
    let closed = tokio::time::timeout(Duration::from_millis(1500), conn.closed()).await;
    ensure!(
        closed.is_err(),
        "keep-alives should keep the connection alive: {closed:?}"
    );

    relay.cut.cancel();
    relay.task.await?;
    let start = Instant::now();
    let why = within("idle timeout", conn.closed()).await;
    assert!(why.to_string().contains("timed out"), "{why}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    h.stop().await;
    Ok(())
}

#[tokio::test]
async fn shutdown_closes_connections_and_stops_accepting() -> Result<()> {
    let ca = new_ca();
    let shutdown_b = CancellationToken::new();
    let (b, incoming) = Transport::bind(
        loopback(),
        &node_tls(ca.path(), "node-b"),
        TransportConfig::default(),
        &shutdown_b,
    )?;
    let (server, _events) = spawn_echo(incoming);
    let mut h = Harness::new();
    let config = TransportConfig {
        connect_timeout: Duration::from_millis(500),
        ..TransportConfig::default()
    };
    let (a, _) = h.bind(&node_tls(ca.path(), "node-a"), config);
    let conn = a.connect(b.local_addr(), "node-b", Alpn::Peer).await?;

    within("b shuts down", b.shutdown()).await;
    let why = within("a sees the close", conn.closed()).await;
    assert!(
        why.to_string().contains("shutdown"),
        "closed by shutdown, not a timeout: {why}"
    );
    within("b's server ends", server).await?;
    assert!(matches!(
        b.connect(a.local_addr(), "node-a", Alpn::Peer).await,
        Err(TransportError::Shutdown)
    ));
    let err = a
        .connect(b.local_addr(), "node-b", Alpn::Peer)
        .await
        .expect_err("b is gone");
    assert!(!matches!(err, TransportError::Shutdown), "{err}");
    h.stop().await;
    Ok(())
}
