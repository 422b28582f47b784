//! The replicator: delta streams between a node and its peers.
//!
//! - For every configured peer, a dial loop keeps one outgoing session (this
//!   node's own QUIC connection, ALPN `dotkv-peer/1`) and streams delta groups
//!   from the delta log: this node's own groups at once, groups it received
//!   from others only when the peer still lacks them `forward_delay` after
//!   they were written (so a cut link is bridged, and a healthy mesh carries
//!   each group once). Nothing goes to the node it came from, and nothing the
//!   peer has acknowledged is sent again. A window bounds what is unacknowledged.
//! - Incoming sessions answer `Hello` with what this node has applied, pass
//!   received groups to the inbox, and acknowledge what is applied.
//! - The inbox is the one place remote groups are applied: causal delivery
//!   through a bounded [`CausalBuffer`], many groups in flight to the writer.
//! - Anti-entropy: when a peer lacks groups this node's log no longer holds,
//!   or it is a new (or wiped) replica, the session compares digests of the
//!   state's row ranges, then transfers the rows that differ.
//! - The log keeper deletes groups every peer has, and enforces the log's
//!   limits (sequence numbers per origin, age, bytes).

use crate::causal::{CausalBuffer, Offer};
use crate::protocol::{fold_row, AeChunk, PeerMsg, WireBatch};
use crate::tls::Alpn;
use crate::transport::{Connection, FrameReceiver, FrameSender, Transport, TransportError};
use dotkv_crdt::{CausalContext, Lattice, ReplicaId, VersionVector};
use dotkv_storage::{ae_row_delta, DeltaGroup, RemoteReply, StorageError, Store, Writer};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Another node, as this node's config names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    pub name: String,
    pub datacenter: String,
    /// host:port, resolved at every dial.
    pub address: String,
}

/// How the replicator runs.
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    pub name: String,
    pub datacenter: String,
    pub peers: Vec<PeerSpec>,
    pub forward_delay: Duration,
    pub ack_interval: Duration,
    pub batch_max_groups: usize,
    pub batch_max_bytes: usize,
    pub window_groups: u64,
    pub causal_buffer_groups: usize,
    pub causal_buffer_bytes: usize,
    pub log_max_seqs: u64,
    pub log_max_bytes: u64,
    pub log_max_age: Duration,
    pub reconnect: Duration,
}

/// How long a session waits for the other side's next frame. Both sides
/// send at least once a second (pings and heartbeat acks).
const SESSION_READ_TIMEOUT: Duration = Duration::from_secs(10);
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Rows per anti-entropy chunk, and the most chunks in one offer.
const AE_CHUNK_ROWS: usize = 256;
const AE_MAX_CHUNKS: usize = 32_768;
/// Remote groups handed to the writer and not yet answered.
const MAX_APPLYING: usize = 4096;
/// Received batches waiting for the inbox.
const INBOX_QUEUE: usize = 256;

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("the peer needs anti-entropy")]
    NeedAntiEntropy,
    #[error("shutting down")]
    Shutdown,
}

fn protocol(msg: impl Into<String>) -> SessionError {
    SessionError::Protocol(msg.into())
}

/// A peer's status, for `/v1/status`.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub name: String,
    pub datacenter: String,
    pub address: String,
    pub connected: bool,
    pub replica: Option<ReplicaId>,
    pub acked: VersionVector,
    /// Sequence numbers this node has that the peer has not acknowledged.
    pub lag_seqs: u64,
    /// Age of the oldest group this node has and the peer has not
    /// acknowledged, in milliseconds (0 when it has everything).
    pub lag_ms: u64,
}

/// Which peers a write waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every reachable node of this node's datacenter.
    Datacenter,
    /// Every reachable node.
    All,
}

#[derive(Debug, Default)]
struct PeerState {
    /// An outgoing session is established (Hello answered).
    connected: bool,
    replica: Option<ReplicaId>,
    /// What the peer has applied, as far as this node knows.
    acked: VersionVector,
    /// The peer's count of dropped groups, as last acknowledged.
    drops: u64,
}

struct Peer {
    spec: PeerSpec,
    state: Mutex<PeerState>,
    /// Wakes the outgoing session (acks arrived, drops grew).
    wake: Notify,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    groups_sent: AtomicU64,
    groups_received: AtomicU64,
    sessions: AtomicU64,
}

impl Peer {
    fn state(&self) -> std::sync::MutexGuard<'_, PeerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Upper bounds (ms) of the apply-lag histogram's buckets: every millisecond
/// to 100, every 10 to 1,000, then coarser. Fine enough for percentiles.
fn lag_bounds() -> &'static [u64] {
    static BOUNDS: std::sync::OnceLock<Vec<u64>> = std::sync::OnceLock::new();
    BOUNDS.get_or_init(|| {
        let mut b: Vec<u64> = (0..=100).collect();
        b.extend((11..=100).map(|x| x * 10));
        b.extend([2_000, 5_000, 10_000, 30_000, 60_000]);
        b
    })
}

/// How long remote groups took from their commit at the origin to their
/// commit here (origin's HLC time to this node's clock).
#[derive(Debug)]
struct LagHistogram {
    counts: Vec<AtomicU64>,
    sum_ms: AtomicU64,
}

impl Default for LagHistogram {
    fn default() -> Self {
        LagHistogram {
            // One more for +Inf.
            counts: (0..=lag_bounds().len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            sum_ms: AtomicU64::new(0),
        }
    }
}

impl LagHistogram {
    fn record(&self, ms: u64) {
        let i = lag_bounds().partition_point(|b| *b < ms);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    fn write_prometheus(&self, out: &mut String) {
        let name = "dotkv_replication_apply_lag_ms";
        let _ = writeln!(out, "# HELP {name} Time from a remote group's commit at its origin (origin clock) to its commit here, in milliseconds.");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cum = 0u64;
        for (i, b) in lag_bounds().iter().enumerate() {
            cum += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += self.counts[lag_bounds().len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_ms.load(Ordering::Relaxed));
        let _ = writeln!(out, "{name}_count {cum}");
    }
}

#[derive(Debug, Default)]
struct Stats {
    apply_lag: LagHistogram,
    groups_applied: AtomicU64,
    groups_duplicate: AtomicU64,
    groups_parked: AtomicU64,
    apply_errors: AtomicU64,
    drops: AtomicU64,
    buffer_groups: AtomicU64,
    ae_sent: AtomicU64,
    ae_received: AtomicU64,
    ae_rows_sent: AtomicU64,
    ae_rows_received: AtomicU64,
    ae_bytes_sent: AtomicU64,
    log_trims: AtomicU64,
    refused: AtomicU64,
}

struct Inner {
    cfg: ReplicationConfig,
    store: Store,
    writer: Writer,
    transport: Transport,
    me: ReplicaId,
    peers: Vec<Arc<Peer>>,
    inbox: mpsc::Sender<Vec<DeltaGroup>>,
    /// Bumped on every acknowledgement or connection change.
    changed: watch::Sender<u64>,
    stats: Stats,
    cancel: CancellationToken,
    stopped: AtomicBool,
}

/// The running replication of one node. Clones share it.
#[derive(Clone)]
pub struct Replicator {
    inner: Arc<Inner>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn send(tx: &mut FrameSender, msg: &PeerMsg) -> Result<usize, SessionError> {
    let raw = msg.encode().map_err(|e| protocol(format!("encode: {e}")))?;
    tx.send(&raw).await?;
    Ok(raw.len())
}

async fn recv(rx: &mut FrameReceiver) -> Result<Option<(PeerMsg, usize)>, SessionError> {
    match rx.recv_timeout(SESSION_READ_TIMEOUT).await? {
        Some(raw) => {
            let msg = PeerMsg::decode(&raw).map_err(|e| protocol(format!("decode: {e}")))?;
            Ok(Some((msg, raw.len())))
        }
        None => Ok(None),
    }
}

impl Replicator {
    /// Start replicating `store` (written through `writer`) with the peers of
    /// `cfg` over `transport`. Incoming peer connections are handed over with
    /// [`Replicator::accept`].
    pub fn start(
        cfg: ReplicationConfig,
        store: Store,
        writer: Writer,
        transport: Transport,
        cancel: CancellationToken,
    ) -> Replicator {
        let (inbox_tx, inbox_rx) = mpsc::channel(INBOX_QUEUE);
        let peers = cfg
            .peers
            .iter()
            .map(|spec| {
                Arc::new(Peer {
                    spec: spec.clone(),
                    state: Mutex::new(PeerState::default()),
                    wake: Notify::new(),
                    bytes_sent: AtomicU64::new(0),
                    bytes_received: AtomicU64::new(0),
                    groups_sent: AtomicU64::new(0),
                    groups_received: AtomicU64::new(0),
                    sessions: AtomicU64::new(0),
                })
            })
            .collect();
        let me = store.replica();
        let inner = Arc::new(Inner {
            cfg,
            store,
            writer,
            transport,
            me,
            peers,
            inbox: inbox_tx,
            changed: watch::channel(0).0,
            stats: Stats::default(),
            cancel,
            stopped: AtomicBool::new(false),
        });
        let r = Replicator { inner };
        tokio::spawn(r.clone().inbox_loop(inbox_rx));
        tokio::spawn(r.clone().log_keeper());
        for i in 0..r.inner.peers.len() {
            tokio::spawn(r.clone().dial_loop(i));
        }
        r
    }

    pub fn transport(&self) -> &Transport {
        &self.inner.transport
    }

    /// Stop every session (the transport's shutdown closes the connections).
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::Release);
        self.inner.cancel.cancel();
    }

    fn peer_by_name(&self, name: &str) -> Option<Arc<Peer>> {
        self.inner
            .peers
            .iter()
            .find(|p| p.spec.name == name)
            .cloned()
    }

    fn notify_changed(&self) {
        self.inner.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    // ---------------------------------------------------------------- sending

    async fn dial_loop(self, index: usize) {
        let peer = self.inner.peers[index].clone();
        let mut failures: u32 = 0;
        loop {
            if self.inner.cancel.is_cancelled() {
                return;
            }
            match self.dial_once(&peer).await {
                Ok(()) => failures = 0,
                Err(SessionError::Shutdown) => return,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    // Log the first failure and then every 60th, not every
                    // retry of a peer that is down.
                    if failures == 1 || failures % 60 == 0 {
                        warn!(peer = %peer.spec.name, address = %peer.spec.address, error = %e, failures, "replication session to peer failed");
                    } else {
                        debug!(peer = %peer.spec.name, error = %e, "replication session to peer failed");
                    }
                }
            }
            let was = {
                let mut st = peer.state();
                std::mem::replace(&mut st.connected, false)
            };
            if was {
                info!(peer = %peer.spec.name, "disconnected from peer");
                self.notify_changed();
            }
            tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                _ = tokio::time::sleep(self.inner.cfg.reconnect) => {}
            }
        }
    }

    async fn dial_once(&self, peer: &Arc<Peer>) -> Result<(), SessionError> {
        let addr = tokio::net::lookup_host(peer.spec.address.as_str())
            .await
            .map_err(|e| protocol(format!("cannot resolve {}: {e}", peer.spec.address)))?
            .next()
            .ok_or_else(|| protocol(format!("{} resolves to no address", peer.spec.address)))?;
        let conn = tokio::select! {
            _ = self.inner.cancel.cancelled() => return Err(SessionError::Shutdown),
            c = self.inner.transport.connect(addr, &peer.spec.name, Alpn::Peer) => c?,
        };
        if conn.peer_name() != Some(peer.spec.name.as_str()) {
            conn.close("wrong peer");
            return Err(protocol(format!(
                "{} presented certificate {:?}, not {:?}",
                peer.spec.address,
                conn.peer_name(),
                peer.spec.name
            )));
        }
        let result = self.sender_session(peer, &conn).await;
        if let Err(SessionError::NeedAntiEntropy) = &result {
            // The next session starts with anti-entropy.
            info!(peer = %peer.spec.name, "peer lacks groups this node's log no longer holds; restarting the session with anti-entropy");
        }
        result
    }

    async fn sender_session(
        &self,
        peer: &Arc<Peer>,
        conn: &Connection,
    ) -> Result<(), SessionError> {
        let inner = &self.inner;
        let (mut tx, mut rx) = conn.open_bi().await?;
        let my_vv = inner.writer.committed().borrow().vv.clone();
        let n = send(
            &mut tx,
            &PeerMsg::Hello {
                name: inner.cfg.name.clone(),
                replica: inner.me,
                vv: my_vv.clone(),
            },
        )
        .await?;
        peer.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
        let (replica, their_vv) = match recv(&mut rx).await? {
            Some((PeerMsg::Welcome { replica, vv }, n)) => {
                peer.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                (replica, vv)
            }
            Some((other, _)) => return Err(protocol(format!("expected Welcome, got {other:?}"))),
            None => return Err(protocol("the peer closed the stream before Welcome")),
        };
        {
            let mut st = peer.state();
            if st.replica.is_some_and(|r| r != replica) {
                info!(peer = %peer.spec.name, old = %st.replica.map(|r| r.0).unwrap_or(0), new = replica.0, "peer has a new replica id (its data directory was replaced)");
            }
            st.replica = Some(replica);
            st.acked = their_vv.clone();
            st.connected = true;
        }
        peer.sessions.fetch_add(1, Ordering::Relaxed);
        info!(peer = %peer.spec.name, "connected to peer");
        self.notify_changed();

        if self.needs_anti_entropy(replica, &my_vv, &their_vv)? {
            let ctx = self.ae_send(peer, &mut tx, &mut rx).await?;
            // The peer merges the state before it reads anything after it,
            // and then covers `ctx`: stream from there.
            peer.state().acked.join(&ctx);
        }

        // Acks arrive on the same stream, read by their own task.
        let reader = {
            let this = self.clone();
            let peer = peer.clone();
            tokio::spawn(async move { this.ack_reader(&peer, rx).await })
        };
        let result = self.stream_groups(peer, replica, &mut tx).await;
        reader.abort();
        result
    }

    /// Whether `peer` (with `their` applied) lacks groups this node has but
    /// its log no longer holds, or is a new replica while this node has data.
    fn needs_anti_entropy(
        &self,
        peer_replica: ReplicaId,
        mine: &VersionVector,
        their: &VersionVector,
    ) -> Result<bool, SessionError> {
        if their.is_empty() && mine.iter().any(|(r, n)| r != peer_replica && n > 0) {
            return Ok(true);
        }
        for (origin, have) in mine.iter() {
            if origin == peer_replica {
                continue;
            }
            let need = their.get(origin) + 1;
            if need > have {
                continue;
            }
            match self.inner.store.log_first(origin)? {
                Some(first) if first <= need => {}
                _ => return Ok(true),
            }
        }
        Ok(false)
    }

    async fn ack_reader(
        &self,
        peer: &Arc<Peer>,
        mut rx: FrameReceiver,
    ) -> Result<(), SessionError> {
        loop {
            let (msg, n) = match recv(&mut rx).await? {
                Some(m) => m,
                None => return Ok(()),
            };
            peer.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
            match msg {
                PeerMsg::Ack { vv, drops } => {
                    {
                        let mut st = peer.state();
                        st.acked.join(&vv);
                        st.drops = drops;
                    }
                    peer.wake.notify_one();
                    self.notify_changed();
                }
                other => return Err(protocol(format!("expected Ack, got {other:?}"))),
            }
        }
    }

    /// Stream groups to the peer until the session breaks.
    async fn stream_groups(
        &self,
        peer: &Arc<Peer>,
        peer_replica: ReplicaId,
        tx: &mut FrameSender,
    ) -> Result<(), SessionError> {
        let inner = &self.inner;
        let cfg = &inner.cfg;
        let mut committed = inner.writer.committed();
        let (mut sent, mut seen_drops) = {
            let st = peer.state();
            (st.acked.clone(), st.drops)
        };
        let mut last_send = Instant::now();
        let mut last_ack_total = 0u64;
        let mut last_ack_move = Instant::now();
        // Per origin, since when this node could not serve what the peer
        // lacks (its log starts later).
        let mut gap_since: BTreeMap<ReplicaId, Instant> = BTreeMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mine = committed.borrow_and_update().vv.clone();
            let (acked, drops) = {
                let st = peer.state();
                (st.acked.clone(), st.drops)
            };
            if drops != seen_drops {
                // The peer dropped groups it could not hold: resend from what
                // it has applied.
                seen_drops = drops;
                sent = acked.clone();
            }
            sent.join(&acked);
            let acked_total = acked.total();
            if acked_total != last_ack_total {
                last_ack_total = acked_total;
                last_ack_move = Instant::now();
            }
            let in_flight = sent.total().saturating_sub(acked_total);
            if in_flight > 0 && last_ack_move.elapsed() > Duration::from_secs(5) {
                // Acknowledged nothing for a while with groups outstanding
                // (lost to a restart of the peer's buffer): send again.
                sent = acked.clone();
                last_ack_move = Instant::now();
            }
            let mut progressed = false;
            if in_flight < cfg.window_groups {
                let batch = self.collect(&mine, &mut sent, peer_replica, &mut gap_since)?;
                if !batch.is_empty() {
                    let count = batch.len() as u64;
                    let n = send(tx, &PeerMsg::Groups(WireBatch::encode(batch))).await?;
                    peer.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                    peer.groups_sent.fetch_add(count, Ordering::Relaxed);
                    last_send = Instant::now();
                    progressed = true;
                }
            }
            if progressed {
                tokio::task::yield_now().await;
                continue;
            }
            if last_send.elapsed() >= HEARTBEAT {
                let n = send(tx, &PeerMsg::Ping).await?;
                peer.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                last_send = Instant::now();
            }
            tokio::select! {
                _ = inner.cancel.cancelled() => return Err(SessionError::Shutdown),
                r = committed.changed() => {
                    if r.is_err() {
                        return Err(SessionError::Shutdown);
                    }
                }
                _ = peer.wake.notified() => {}
                _ = tick.tick() => {}
            }
        }
    }

    /// The next batch for a peer: per origin, the groups after what was sent,
    /// in order. This node's own groups go at once; others' only once they
    /// are `forward_delay` old (the peer most likely has them from their
    /// origin by then, and its acknowledgement says so).
    fn collect(
        &self,
        mine: &VersionVector,
        sent: &mut VersionVector,
        peer_replica: ReplicaId,
        gap_since: &mut BTreeMap<ReplicaId, Instant>,
    ) -> Result<Vec<DeltaGroup>, SessionError> {
        let inner = &self.inner;
        let cfg = &inner.cfg;
        let me = inner.me;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let now = now_ms();
        let forward_ms = cfg.forward_delay.as_millis() as u64;
        let mut origins: Vec<(ReplicaId, u64)> = mine.iter().collect();
        // This node's own groups first.
        origins.sort_by_key(|(r, _)| *r != me);
        for (origin, have) in origins {
            if origin == peer_replica {
                continue;
            }
            let from = sent.get(origin) + 1;
            if from > have {
                gap_since.remove(&origin);
                continue;
            }
            let room = cfg.batch_max_groups.saturating_sub(out.len());
            if room == 0 || bytes >= cfg.batch_max_bytes {
                break;
            }
            let groups = inner.store.delta_groups(origin, from, room)?;
            if groups.first().map(|g| g.first) != Some(from) {
                // The log no longer holds what the peer lacks. Another node
                // may still forward it; if not within a while, anti-entropy.
                let since = *gap_since.entry(origin).or_insert_with(Instant::now);
                let patience = if origin == me {
                    Duration::ZERO
                } else {
                    cfg.forward_delay * 2 + Duration::from_secs(2)
                };
                if since.elapsed() >= patience {
                    return Err(SessionError::NeedAntiEntropy);
                }
                continue;
            }
            gap_since.remove(&origin);
            for g in groups {
                if origin != me && now.saturating_sub(g.ts.physical_ms()) < forward_ms {
                    break;
                }
                bytes += crate::causal::group_size(&g);
                sent.set_max(origin, g.last);
                out.push(g);
                if bytes >= cfg.batch_max_bytes {
                    break;
                }
            }
        }
        Ok(out)
    }

    // -------------------------------------------------------------- receiving

    /// Serve an incoming peer connection: refuse it unless its certificate
    /// names a configured peer, then serve its sessions.
    pub fn accept(&self, conn: Connection) {
        let name = conn.peer_name().map(str::to_owned);
        let peer = name.as_deref().and_then(|n| self.peer_by_name(n));
        let Some(peer) = peer else {
            self.inner.stats.refused.fetch_add(1, Ordering::Relaxed);
            warn!(peer = ?name, remote = %conn.remote_addr(), "refused a peer connection: its certificate names no configured peer");
            conn.close("not a configured peer");
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = this.inner.cancel.cancelled() => return,
                    s = conn.accept_bi() => s,
                };
                match stream {
                    Ok(Some((tx, rx))) => {
                        let this = this.clone();
                        let peer = peer.clone();
                        tokio::spawn(async move {
                            if let Err(e) = this.receiver_session(&peer, tx, rx).await {
                                debug!(peer = %peer.spec.name, error = %e, "incoming replication session ended");
                            }
                        });
                    }
                    Ok(None) => return,
                    Err(e) => {
                        debug!(peer = %peer.spec.name, error = %e, "incoming peer connection closed");
                        return;
                    }
                }
            }
        });
    }

    async fn receiver_session(
        &self,
        peer: &Arc<Peer>,
        mut tx: FrameSender,
        mut rx: FrameReceiver,
    ) -> Result<(), SessionError> {
        let inner = &self.inner;
        match recv(&mut rx).await? {
            Some((PeerMsg::Hello { name, replica, .. }, n)) => {
                peer.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                if name != peer.spec.name {
                    return Err(protocol(format!(
                        "Hello names {name:?} but the certificate names {:?}",
                        peer.spec.name
                    )));
                }
                let mut st = peer.state();
                if st.replica.is_some_and(|r| r != replica) {
                    st.acked = VersionVector::new();
                }
                st.replica = Some(replica);
            }
            Some((other, _)) => return Err(protocol(format!("expected Hello, got {other:?}"))),
            None => return Ok(()),
        }
        let mut committed = inner.writer.committed();
        let vv = committed.borrow_and_update().vv.clone();
        let n = send(
            &mut tx,
            &PeerMsg::Welcome {
                replica: inner.me,
                vv: vv.clone(),
            },
        )
        .await?;
        peer.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
        let mut last_acked_total = vv.total();
        let mut last_drops = inner.stats.drops.load(Ordering::Relaxed);
        let mut last_ack = Instant::now();
        let mut pending_ack = false;
        let mut ack_timer = tokio::time::interval(inner.cfg.ack_interval);
        ack_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = inner.cancel.cancelled() => return Err(SessionError::Shutdown),
                frame = recv(&mut rx) => {
                    let Some((msg, n)) = frame? else { return Ok(()) };
                    peer.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                    match msg {
                        PeerMsg::Groups(batch) => {
                            let groups = batch.decode().map_err(|e| protocol(e.to_string()))?;
                            peer.groups_received.fetch_add(groups.len() as u64, Ordering::Relaxed);
                            {
                                // The peer has applied what it sends.
                                let mut st = peer.state();
                                for g in &groups {
                                    st.acked.set_max(g.origin, g.last);
                                }
                            }
                            inner.inbox.send(groups).await.map_err(|_| SessionError::Shutdown)?;
                        }
                        PeerMsg::Ping => {}
                        PeerMsg::AeOffer { ctx, chunks } => {
                            self.ae_receive(peer, ctx, chunks, &mut tx, &mut rx).await?;
                            pending_ack = true;
                        }
                        other => return Err(protocol(format!("unexpected {other:?}"))),
                    }
                }
                _ = ack_timer.tick() => {
                    let c = committed.borrow_and_update().vv.clone();
                    let drops = inner.stats.drops.load(Ordering::Relaxed);
                    let total = c.total();
                    if pending_ack || total != last_acked_total || drops != last_drops || last_ack.elapsed() >= HEARTBEAT {
                        let n = send(&mut tx, &PeerMsg::Ack { vv: c, drops }).await?;
                        peer.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                        last_acked_total = total;
                        last_drops = drops;
                        last_ack = Instant::now();
                        pending_ack = false;
                    }
                }
            }
        }
    }

    /// The one place remote groups are applied, in causal order.
    async fn inbox_loop(self, mut rx: mpsc::Receiver<Vec<DeltaGroup>>) {
        let inner = &self.inner;
        let mut committed = inner.writer.committed();
        let start = committed.borrow_and_update().vv.clone();
        let mut buffer = CausalBuffer::new(
            start,
            inner.cfg.causal_buffer_groups,
            inner.cfg.causal_buffer_bytes,
        );
        let mut applying: VecDeque<(u64, RemoteReply)> = VecDeque::new();
        loop {
            let mut ready: Vec<DeltaGroup> = Vec::new();
            tokio::select! {
                _ = inner.cancel.cancelled() => return,
                msg = rx.recv() => {
                    let Some(groups) = msg else { return };
                    buffer.observe(&committed.borrow().vv);
                    for g in groups {
                        match buffer.offer(g) {
                            (Offer::Ready, Some(g)) => ready.push(g),
                            (Offer::Duplicate, _) => { inner.stats.groups_duplicate.fetch_add(1, Ordering::Relaxed); }
                            (Offer::Parked, _) => { inner.stats.groups_parked.fetch_add(1, Ordering::Relaxed); }
                            (Offer::Dropped, _) => { inner.stats.drops.fetch_add(1, Ordering::Relaxed); }
                            (Offer::Ready, None) => {}
                        }
                    }
                }
                r = committed.changed() => {
                    if r.is_err() { return; }
                    let vv = committed.borrow_and_update().vv.clone();
                    buffer.observe(&vv);
                }
                reply = async { (&mut applying.front_mut().expect("checked non-empty").1).await }, if !applying.is_empty() => {
                    let ts = applying.pop_front().map_or(0, |(ts, _)| ts);
                    match reply {
                        Ok(Ok(applied)) => self.applied(applied, ts),
                        Ok(Err(e)) => {
                            inner.stats.apply_errors.fetch_add(1, Ordering::Relaxed);
                            warn!(error = %e, "applying a remote group failed; resending from what is applied");
                            // Everything handed out after it fails too; go back
                            // to what is committed, and make senders resend.
                            buffer.reset(committed.borrow().vv.clone());
                            inner.stats.drops.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => return,
                    }
                }
            }
            while let Some(g) = buffer.pop_ready() {
                ready.push(g);
            }
            inner
                .stats
                .buffer_groups
                .store(buffer.parked() as u64, Ordering::Relaxed);
            for g in ready {
                while applying.len() >= MAX_APPLYING {
                    if let Some((ts, front)) = applying.pop_front() {
                        if let Ok(Ok(applied)) = front.await {
                            self.applied(applied, ts);
                        }
                    }
                }
                let ts = g.ts.physical_ms();
                match inner.writer.submit_remote(g).await {
                    Ok(reply) => applying.push_back((ts, reply)),
                    Err(_) => return,
                }
            }
        }
    }

    fn applied(&self, applied: bool, origin_ms: u64) {
        let stats = &self.inner.stats;
        if applied {
            stats.groups_applied.fetch_add(1, Ordering::Relaxed);
            stats.apply_lag.record(now_ms().saturating_sub(origin_ms));
        } else {
            stats.groups_duplicate.fetch_add(1, Ordering::Relaxed);
        }
    }

    // ---------------------------------------------------------- anti-entropy

    /// Sender side: offer digests of the state's row ranges, send the rows of
    /// the ranges the peer asks for.
    async fn ae_send(
        &self,
        peer: &Arc<Peer>,
        tx: &mut FrameSender,
        rx: &mut FrameReceiver,
    ) -> Result<VersionVector, SessionError> {
        let inner = &self.inner;
        let started = Instant::now();
        // The context is read before the rows: every row holds at least what
        // it covers.
        let ctx = inner.writer.committed().borrow().vv.clone();
        let store = inner.store.clone();
        let chunks = tokio::task::spawn_blocking(move || digest_chunks(&store))
            .await
            .map_err(|e| protocol(format!("digest task: {e}")))??;
        let starts: Vec<Vec<u8>> = chunks.iter().map(|c| c.start.clone()).collect();
        let offered = chunks.len();
        let mut bytes = send(
            tx,
            &PeerMsg::AeOffer {
                ctx: ctx.clone(),
                chunks,
            },
        )
        .await?;
        let need = match recv(rx).await? {
            Some((PeerMsg::AeNeed { chunks }, _)) => chunks,
            Some((other, _)) => return Err(protocol(format!("expected AeNeed, got {other:?}"))),
            None => return Err(protocol("the peer closed the stream during anti-entropy")),
        };
        let mut rows_sent = 0u64;
        for i in &need {
            let i = *i as usize;
            let Some(start) = starts.get(i) else {
                return Err(protocol(format!("AeNeed names chunk {i} of {offered}")));
            };
            let end = starts.get(i + 1).cloned();
            let mut from = start.clone();
            loop {
                let rows = inner
                    .store
                    .ae_rows(&from, end.as_deref(), AE_CHUNK_ROWS * 4)?;
                let done = rows.len() < AE_CHUNK_ROWS * 4;
                if let Some((k, _)) = rows.last() {
                    from = k.clone();
                    from.push(0);
                }
                rows_sent += rows.len() as u64;
                bytes += send(
                    tx,
                    &PeerMsg::AeRows {
                        chunk: i as u32,
                        rows,
                        done,
                    },
                )
                .await?;
                if done {
                    break;
                }
            }
        }
        bytes += send(tx, &PeerMsg::AeEnd).await?;
        peer.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
        inner.stats.ae_sent.fetch_add(1, Ordering::Relaxed);
        inner
            .stats
            .ae_rows_sent
            .fetch_add(rows_sent, Ordering::Relaxed);
        inner
            .stats
            .ae_bytes_sent
            .fetch_add(bytes as u64, Ordering::Relaxed);
        info!(peer = %peer.spec.name, chunks = offered, differing = need.len(), rows = rows_sent, bytes, ms = started.elapsed().as_millis() as u64, "anti-entropy: sent state to peer");
        Ok(ctx)
    }

    /// Receiver side: compare the offered digests with this replica's, ask
    /// for the ranges that differ, join what arrives (and remove, within
    /// those ranges, what the sender's context covers and it no longer
    /// holds), then cover the sender's context.
    async fn ae_receive(
        &self,
        peer: &Arc<Peer>,
        ctx: VersionVector,
        chunks: Vec<AeChunk>,
        tx: &mut FrameSender,
        rx: &mut FrameReceiver,
    ) -> Result<(), SessionError> {
        let inner = &self.inner;
        let started = Instant::now();
        if chunks.len() > AE_MAX_CHUNKS || chunks.first().is_some_and(|c| !c.start.is_empty()) {
            return Err(protocol("malformed anti-entropy offer"));
        }
        if chunks.windows(2).any(|w| w[0].start >= w[1].start) {
            return Err(protocol("anti-entropy chunks out of order"));
        }
        let starts: Vec<Vec<u8>> = chunks.iter().map(|c| c.start.clone()).collect();
        let store = inner.store.clone();
        let ours = {
            let starts = starts.clone();
            tokio::task::spawn_blocking(move || digest_ranges(&store, &starts))
                .await
                .map_err(|e| protocol(format!("digest task: {e}")))??
        };
        let need: Vec<u32> = chunks
            .iter()
            .zip(&ours)
            .enumerate()
            .filter(|(_, (theirs, ours))| theirs.digest != **ours)
            .map(|(i, _)| i as u32)
            .collect();
        send(
            tx,
            &PeerMsg::AeNeed {
                chunks: need.clone(),
            },
        )
        .await?;
        let cctx = CausalContext::from(ctx.clone());
        let mut received: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut rows_total = 0u64;
        loop {
            let (msg, n) = recv(rx)
                .await?
                .ok_or_else(|| protocol("the peer closed the stream during anti-entropy"))?;
            peer.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
            match msg {
                PeerMsg::AeRows { chunk, rows, done } => {
                    let i = chunk as usize;
                    if !need.contains(&chunk) {
                        return Err(protocol(format!(
                            "rows for chunk {i}, which was not asked for"
                        )));
                    }
                    let (start, end) = (&starts[i], starts.get(i + 1));
                    for (k, v) in rows {
                        if k < *start || end.is_some_and(|e| k >= *e) {
                            return Err(protocol("an anti-entropy row outside its chunk"));
                        }
                        received.insert(k, v);
                    }
                    if received.len() > AE_CHUNK_ROWS * 64 {
                        return Err(protocol("an anti-entropy chunk far larger than offered"));
                    }
                    if done {
                        rows_total += received.len() as u64;
                        self.ae_merge_chunk(
                            start,
                            end.map(Vec::as_slice),
                            &cctx,
                            std::mem::take(&mut received),
                        )
                        .await?;
                    }
                }
                PeerMsg::AeEnd => break,
                other => {
                    return Err(protocol(format!(
                        "unexpected {other:?} during anti-entropy"
                    )))
                }
            }
        }
        inner.writer.merge(Vec::new(), Some(ctx)).await?;
        inner.stats.ae_received.fetch_add(1, Ordering::Relaxed);
        inner
            .stats
            .ae_rows_received
            .fetch_add(rows_total, Ordering::Relaxed);
        info!(peer = %peer.spec.name, chunks = starts.len(), differing = need.len(), rows = rows_total, ms = started.elapsed().as_millis() as u64, "anti-entropy: merged state from peer");
        Ok(())
    }

    async fn ae_merge_chunk(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        ctx: &CausalContext,
        theirs: BTreeMap<Vec<u8>, Vec<u8>>,
    ) -> Result<(), SessionError> {
        let inner = &self.inner;
        let mut ops = Vec::new();
        // Our rows in the range that the sender does not hold: what its
        // context covers there was removed.
        let mut from = start.to_vec();
        loop {
            let ours = inner.store.ae_rows(&from, end, 4096)?;
            let more = ours.len() == 4096;
            for (k, _) in &ours {
                if !theirs.contains_key(k) {
                    if let Some(op) = ae_row_delta(k, None, ctx)? {
                        ops.push(op);
                    }
                }
            }
            match ours.last() {
                Some((k, _)) if more => {
                    from = k.clone();
                    from.push(0);
                }
                _ => break,
            }
            if ops.len() >= 4096 {
                inner.writer.merge(std::mem::take(&mut ops), None).await?;
            }
        }
        for (k, v) in &theirs {
            if let Some(op) = ae_row_delta(k, Some(v), ctx)? {
                ops.push(op);
            }
            if ops.len() >= 4096 {
                inner.writer.merge(std::mem::take(&mut ops), None).await?;
            }
        }
        if !ops.is_empty() {
            inner.writer.merge(ops, None).await?;
        }
        Ok(())
    }

    // ------------------------------------------------------------ log keeping

    /// Once a second: delete the groups every peer has, and enforce the
    /// log's limits.
    async fn log_keeper(self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.trim_point() {
                Ok(Some(upto)) => {
                    if self.inner.writer.trim_log(upto).await.is_err() {
                        return;
                    }
                    self.inner.stats.log_trims.fetch_add(1, Ordering::Relaxed);
                }
                Ok(None) => {}
                Err(e) => warn!(error = %e, "computing the delta-log trim point failed"),
            }
        }
    }

    fn trim_point(&self) -> Result<Option<VersionVector>, StorageError> {
        let inner = &self.inner;
        let cfg = &inner.cfg;
        let mine = inner.writer.committed().borrow().vv.clone();
        let acked: Vec<Option<VersionVector>> = inner
            .peers
            .iter()
            .map(|p| {
                let st = p.state();
                // A peer never heard from since start may need everything.
                st.replica.map(|_| st.acked.clone())
            })
            .collect();
        let over_bytes = inner.store.log_bytes() > cfg.log_max_bytes;
        let now = now_ms();
        let max_age_ms = cfg.log_max_age.as_millis() as u64;
        let mut upto = VersionVector::new();
        for (origin, have) in mine.iter() {
            let Some(first) = inner.store.log_first(origin)? else {
                continue;
            };
            let mut point = have;
            for a in &acked {
                point = point.min(a.as_ref().map_or(0, |v| v.get(origin)));
            }
            // Limits: sequence numbers, bytes (drop the oldest quarter), age.
            point = point.max(have.saturating_sub(cfg.log_max_seqs));
            if over_bytes {
                point = point.max(first + have.saturating_sub(first) / 4);
            }
            let mut probe = first;
            for _ in 0..64 {
                match inner.store.delta_group(origin, probe)? {
                    Some(g) if now.saturating_sub(g.ts.physical_ms()) > max_age_ms => {
                        point = point.max(g.last);
                        probe = g.last + 1;
                    }
                    _ => break,
                }
            }
            if point >= first {
                upto.set_max(origin, point);
            }
        }
        Ok((!upto.is_empty()).then_some(upto))
    }

    // ----------------------------------------------------------- consistency

    /// Wait until the write ending at `seq` of this node is where `scope`
    /// asks: [`Scope::Datacenter`], every reachable (connected) node of this
    /// node's datacenter; [`Scope::All`], every reachable node, and at least
    /// one node of every other datacenter (so a datacenter cut off makes the
    /// wait time out rather than pass). Returns what is still missing when
    /// `timeout` passes first.
    pub async fn wait_replicated(
        &self,
        seq: u64,
        scope: Scope,
        timeout: Duration,
    ) -> Result<(), Vec<String>> {
        let inner = &self.inner;
        let me = inner.me;
        let own_dc = inner.cfg.datacenter.as_str();
        let lagging = || -> Vec<String> {
            let mut missing = Vec::new();
            let mut dcs: BTreeMap<&str, bool> = BTreeMap::new();
            for p in &inner.peers {
                let dc = p.spec.datacenter.as_str();
                if scope == Scope::Datacenter && dc != own_dc {
                    continue;
                }
                let (connected, has) = {
                    let st = p.state();
                    (st.connected, st.acked.get(me) >= seq)
                };
                if connected && !has {
                    missing.push(p.spec.name.clone());
                }
                let reached = dcs.entry(dc).or_insert(false);
                *reached |= connected && has;
            }
            if scope == Scope::All {
                for (dc, reached) in dcs {
                    if dc != own_dc && !reached {
                        missing.push(format!("datacenter {dc} (no node reached)"));
                    }
                }
            }
            missing
        };
        let mut rx = inner.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let missing = lagging();
            if missing.is_empty() {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    let missing = lagging();
                    return if missing.is_empty() {
                        Ok(())
                    } else {
                        Err(missing)
                    };
                }
            }
        }
    }

    // -------------------------------------------------------------- visibility

    pub fn peers(&self) -> Vec<PeerInfo> {
        let inner = &self.inner;
        let mine = inner.writer.committed().borrow().vv.clone();
        let now = now_ms();
        inner
            .peers
            .iter()
            .map(|p| {
                let (connected, replica, acked) = {
                    let st = p.state();
                    (st.connected, st.replica, st.acked.clone())
                };
                let mut lag_seqs = 0;
                let mut oldest: Option<u64> = None;
                for (origin, have) in mine.iter() {
                    if Some(origin) == replica {
                        continue;
                    }
                    let a = acked.get(origin);
                    if have > a {
                        lag_seqs += have - a;
                        if let Ok(Some(g)) = inner.store.delta_group(origin, a + 1) {
                            let ts = g.ts.physical_ms();
                            oldest = Some(oldest.map_or(ts, |o: u64| o.min(ts)));
                        }
                    }
                }
                PeerInfo {
                    name: p.spec.name.clone(),
                    datacenter: p.spec.datacenter.clone(),
                    address: p.spec.address.clone(),
                    connected,
                    replica,
                    acked,
                    lag_seqs,
                    lag_ms: oldest.map_or(0, |ts| now.saturating_sub(ts)),
                }
            })
            .collect()
    }

    /// Prometheus text for the replication figures.
    pub fn write_prometheus(&self, out: &mut String) {
        let inner = &self.inner;
        let s = &inner.stats;
        let peers = self.peers();
        let _ = writeln!(out, "# HELP dotkv_replication_peer_connected Whether the outgoing session to the peer is up.");
        let _ = writeln!(out, "# TYPE dotkv_replication_peer_connected gauge");
        for p in &peers {
            let _ = writeln!(
                out,
                "dotkv_replication_peer_connected{{peer=\"{}\"}} {}",
                p.name,
                u8::from(p.connected)
            );
        }
        let _ = writeln!(out, "# HELP dotkv_replication_lag_seqs Sequence numbers this node has and the peer has not acknowledged.");
        let _ = writeln!(out, "# TYPE dotkv_replication_lag_seqs gauge");
        for p in &peers {
            let _ = writeln!(
                out,
                "dotkv_replication_lag_seqs{{peer=\"{}\"}} {}",
                p.name, p.lag_seqs
            );
        }
        let _ = writeln!(out, "# HELP dotkv_replication_lag_ms Age of the oldest group the peer has not acknowledged, in milliseconds.");
        let _ = writeln!(out, "# TYPE dotkv_replication_lag_ms gauge");
        for p in &peers {
            let _ = writeln!(
                out,
                "dotkv_replication_lag_ms{{peer=\"{}\"}} {}",
                p.name, p.lag_ms
            );
        }
        let per_peer = |out: &mut String, name: &str, help: &str, f: &dyn Fn(&Peer) -> u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for p in &inner.peers {
                let _ = writeln!(out, "{name}{{peer=\"{}\"}} {}", p.spec.name, f(p));
            }
        };
        per_peer(
            out,
            "dotkv_replication_bytes_sent_total",
            "Peer-protocol frame bytes sent to the peer.",
            &|p| p.bytes_sent.load(Ordering::Relaxed),
        );
        per_peer(
            out,
            "dotkv_replication_bytes_received_total",
            "Peer-protocol frame bytes received from the peer.",
            &|p| p.bytes_received.load(Ordering::Relaxed),
        );
        per_peer(
            out,
            "dotkv_replication_groups_sent_total",
            "Delta groups sent to the peer.",
            &|p| p.groups_sent.load(Ordering::Relaxed),
        );
        per_peer(
            out,
            "dotkv_replication_groups_received_total",
            "Delta groups received from the peer.",
            &|p| p.groups_received.load(Ordering::Relaxed),
        );
        per_peer(
            out,
            "dotkv_replication_sessions_total",
            "Outgoing sessions established with the peer.",
            &|p| p.sessions.load(Ordering::Relaxed),
        );
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {v}");
        };
        counter(
            out,
            "dotkv_replication_groups_applied_total",
            "Remote delta groups applied.",
            s.groups_applied.load(Ordering::Relaxed),
        );
        counter(
            out,
            "dotkv_replication_groups_duplicate_total",
            "Remote delta groups received again and ignored.",
            s.groups_duplicate.load(Ordering::Relaxed),
        );
        counter(
            out,
            "dotkv_replication_groups_parked_total",
            "Remote delta groups that waited for their dependencies.",
            s.groups_parked.load(Ordering::Relaxed),
        );
        counter(
            out,
            "dotkv_replication_groups_dropped_total",
            "Remote delta groups dropped because the causal buffer was full (sent again later).",
            s.drops.load(Ordering::Relaxed),
        );
        counter(
            out,
            "dotkv_replication_apply_errors_total",
            "Remote delta groups the writer refused.",
            s.apply_errors.load(Ordering::Relaxed),
        );
        counter(
            out,
            "dotkv_replication_refused_total",
            "Peer connections refused (certificate names no configured peer).",
            s.refused.load(Ordering::Relaxed),
        );
        counter(
            out,
            "dotkv_replication_log_trims_total",
            "Delta-log trims.",
            s.log_trims.load(Ordering::Relaxed),
        );
        let _ = writeln!(out, "# HELP dotkv_replication_groups_pending Remote delta groups waiting for their dependencies.");
        let _ = writeln!(out, "# TYPE dotkv_replication_groups_pending gauge");
        let _ = writeln!(
            out,
            "dotkv_replication_groups_pending {}",
            s.buffer_groups.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP dotkv_anti_entropy_runs_total Anti-entropy runs, as the side sending state or receiving it.");
        let _ = writeln!(out, "# TYPE dotkv_anti_entropy_runs_total counter");
        let _ = writeln!(
            out,
            "dotkv_anti_entropy_runs_total{{role=\"sender\"}} {}",
            s.ae_sent.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "dotkv_anti_entropy_runs_total{{role=\"receiver\"}} {}",
            s.ae_received.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP dotkv_anti_entropy_rows_total State rows transferred by anti-entropy."
        );
        let _ = writeln!(out, "# TYPE dotkv_anti_entropy_rows_total counter");
        let _ = writeln!(
            out,
            "dotkv_anti_entropy_rows_total{{role=\"sender\"}} {}",
            s.ae_rows_sent.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "dotkv_anti_entropy_rows_total{{role=\"receiver\"}} {}",
            s.ae_rows_received.load(Ordering::Relaxed)
        );
        s.apply_lag.write_prometheus(out);
        counter(
            out,
            "dotkv_anti_entropy_bytes_sent_total",
            "Bytes of anti-entropy frames sent.",
            s.ae_bytes_sent.load(Ordering::Relaxed),
        );
        inner.transport.metrics().write_prometheus(out);
    }
}

/// Split the state's rows into chunks of [`AE_CHUNK_ROWS`] (fewer chunks for
/// a larger state) and digest each.
fn digest_chunks(store: &Store) -> Result<Vec<AeChunk>, SessionError> {
    // First pass: count, to size the chunks.
    let mut count = 0usize;
    let mut from: Vec<u8> = Vec::new();
    loop {
        let rows = store.ae_rows(&from, None, 8192)?;
        count += rows.len();
        match rows.last() {
            Some((k, _)) if rows.len() == 8192 => {
                from = k.clone();
                from.push(0);
            }
            _ => break,
        }
    }
    let per_chunk = AE_CHUNK_ROWS.max(count.div_ceil(AE_MAX_CHUNKS));
    let mut chunks: Vec<AeChunk> = vec![AeChunk {
        start: Vec::new(),
        digest: 0,
    }];
    let mut in_chunk = 0usize;
    let mut from: Vec<u8> = Vec::new();
    loop {
        let rows = store.ae_rows(&from, None, 8192)?;
        let more = rows.len() == 8192;
        for (k, v) in &rows {
            if in_chunk == per_chunk {
                chunks.push(AeChunk {
                    start: k.clone(),
                    digest: 0,
                });
                in_chunk = 0;
            }
            let c = chunks.last_mut().expect("one chunk at least");
            c.digest = fold_row(c.digest, k, v);
            in_chunk += 1;
        }
        match rows.last() {
            Some((k, _)) if more => {
                from = k.clone();
                from.push(0);
            }
            _ => break,
        }
    }
    Ok(chunks)
}

/// This replica's digest of each range `[starts[i], starts[i + 1])`.
fn digest_ranges(store: &Store, starts: &[Vec<u8>]) -> Result<Vec<u64>, SessionError> {
    let mut digests = vec![0u64; starts.len()];
    let mut from: Vec<u8> = Vec::new();
    let mut i = 0usize;
    loop {
        let rows = store.ae_rows(&from, None, 8192)?;
        let more = rows.len() == 8192;
        for (k, v) in &rows {
            while i + 1 < starts.len() && *k >= starts[i + 1] {
                i += 1;
            }
            if let Some(d) = digests.get_mut(i) {
                *d = fold_row(*d, k, v);
            }
        }
        match rows.last() {
            Some((k, _)) if more => {
                from = k.clone();
                from.push(0);
            }
            _ => break,
        }
    }
    Ok(digests)
}
