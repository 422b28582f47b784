//! The relay proper: sockets, sessions and tasks.
//!
//! A relay owns one listen socket, and one upstream socket per client source
//! address (a *session*), like a NAT: the upstream server sees a distinct
//! address per client, so its replies come back on that session's socket and
//! go to the right client. Sessions expire after an idle timeout and their
//! number is bounded, so a scan or a client that changes ports cannot exhaust
//! file descriptors.
//!
//! Tasks, all tracked and all stopped by one shutdown signal:
//! - client ingress: reads the listen socket, opens sessions, admits datagrams
//!   to the `ToUpstream` link;
//! - one upstream ingress per session: reads its socket, admits datagrams to
//!   the `ToClient` link;
//! - one dispatcher per direction: sleeps until the earliest due datagram
//!   (or until woken by an earlier one) and sends what is due;
//! - the reaper: closes idle sessions.
//!
//! Locks are `std::sync::Mutex`es held for a few heap operations, never across
//! an `.await`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use crate::link::{LinkState, Scheduled};
use crate::stats::LinkCounters;
use crate::{Direction, LinkConditions, NetsimError, RelayStats};

/// How a relay is set up. Conditions can be changed later through the
/// [`RelayHandle`]; the bounds cannot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RelayConfig {
    /// Where clients send to. Port 0 picks a free port; read it back with
    /// [`UdpRelay::local_addr`].
    pub listen: SocketAddr,
    /// The server every session forwards to.
    pub upstream: SocketAddr,
    /// Conditions from clients to the upstream server.
    pub to_upstream: LinkConditions,
    /// Conditions from the upstream server back to clients.
    pub to_client: LinkConditions,
    /// Seed of the random draws (loss, duplication, jitter, reordering); each
    /// direction derives its own stream from it.
    pub seed: u64,
    /// A session with no traffic either way for this long is closed.
    pub session_idle_timeout: Duration,
    /// At most this many sessions at once; datagrams from further new
    /// clients are dropped (and counted) until one expires.
    pub max_sessions: usize,
    /// At most this many datagrams wait in each direction's delay queue.
    pub queue_capacity: usize,
    /// Receive buffer size; larger datagrams would be truncated by the OS.
    pub max_datagram: usize,
}

impl RelayConfig {
    /// A relay with perfect links and default bounds.
    pub fn new(listen: SocketAddr, upstream: SocketAddr) -> Self {
        RelayConfig {
            listen,
            upstream,
            to_upstream: LinkConditions::default(),
            to_client: LinkConditions::default(),
            seed: 0,
            session_idle_timeout: Duration::from_secs(60),
            max_sessions: 256,
            queue_capacity: 16_384,
            max_datagram: 65_535,
        }
    }

    /// Sets the same conditions in both directions.
    pub fn with_conditions(mut self, conditions: LinkConditions) -> Self {
        self.to_upstream = conditions.clone();
        self.to_client = conditions;
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    fn validate(&self) -> Result<(), NetsimError> {
        self.to_upstream.validate()?;
        self.to_client.validate()?;
        let bounds = [
            ("max_sessions", self.max_sessions),
            ("queue_capacity", self.queue_capacity),
            ("max_datagram", self.max_datagram),
        ];
        for (field, value) in bounds {
            if value == 0 {
                return Err(NetsimError::InvalidConfig {
                    field,
                    value: value.to_string(),
                });
            }
        }
        if self.session_idle_timeout.is_zero() {
            return Err(NetsimError::InvalidConfig {
                field: "session_idle_timeout",
                value: "0s".into(),
            });
        }
        Ok(())
    }
}

/// A running relay. Dropping it and every [`RelayHandle`] clone stops it;
/// [`RelayHandle::shutdown`] stops it and waits for its tasks.
#[derive(Debug)]
pub struct UdpRelay {
    handle: RelayHandle,
}

impl UdpRelay {
    /// Binds the listen socket and starts the relay's tasks. Needs a tokio
    /// runtime with time and I/O enabled.
    #[tracing::instrument(skip_all, fields(listen = %config.listen, upstream = %config.upstream))]
    pub async fn start(config: RelayConfig) -> Result<UdpRelay, NetsimError> {
        config.validate()?;
        let listen = UdpSocket::bind(config.listen)
            .await
            .map_err(|source| NetsimError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listen.local_addr()?;
        let (shutdown, _) = watch::channel(false);
        let link = |dir: Direction, cond: &LinkConditions| Link {
            state: Mutex::new(LinkState::new(
                cond.clone(),
                config.seed ^ dir.seed_salt(),
                config.queue_capacity,
            )),
            wake: Notify::new(),
            counters: LinkCounters::default(),
        };
        let shared = Arc::new(Shared {
            local_addr,
            upstream: config.upstream,
            listen,
            links: [
                link(Direction::ToUpstream, &config.to_upstream),
                link(Direction::ToClient, &config.to_client),
            ],
            sessions: Mutex::new(HashMap::new()),
            sessions_created: AtomicU64::new(0),
            sessions_expired: AtomicU64::new(0),
            sessions_rejected: AtomicU64::new(0),
            idle_timeout: config.session_idle_timeout,
            max_sessions: config.max_sessions,
            max_datagram: config.max_datagram,
            epoch: Instant::now(),
            shutdown,
            tasks: Arc::new(TaskTracker::default()),
        });
        shared.spawn_task(client_ingress(shared.clone()));
        for dir in Direction::BOTH {
            shared.spawn_task(dispatch(shared.clone(), dir));
        }
        shared.spawn_task(reaper(shared.clone()));
        info!(%local_addr, "relay started");
        Ok(UdpRelay {
            handle: RelayHandle {
                _guard: Arc::new(DropGuard(shared.clone())),
                shared,
            },
        })
    }

    /// The address clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    /// A cloneable handle to steer and stop the relay.
    pub fn handle(&self) -> RelayHandle {
        self.handle.clone()
    }

    /// Turns the relay into its handle.
    pub fn into_handle(self) -> RelayHandle {
        self.handle
    }
}

/// Starts a relay from `listen` to `upstream` with the same `conditions` in
/// both directions, and returns the address it actually listens on (useful
/// with port 0) and its handle.
pub async fn spawn_relay(
    listen: SocketAddr,
    upstream: SocketAddr,
    conditions: LinkConditions,
    seed: u64,
) -> Result<(SocketAddr, RelayHandle), NetsimError> {
    let config = RelayConfig::new(listen, upstream)
        .with_conditions(conditions)
        .with_seed(seed);
    let relay = UdpRelay::start(config).await?;
    Ok((relay.local_addr(), relay.into_handle()))
}

/// A cheap, cloneable handle to a running relay. When the last clone (and the
/// [`UdpRelay`]) is dropped, the relay shuts down.
#[derive(Clone)]
pub struct RelayHandle {
    shared: Arc<Shared>,
    /// Held only by handles, not by tasks, so its drop means "no one can
    /// steer this relay any more".
    _guard: Arc<DropGuard>,
}

impl std::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHandle")
            .field("local_addr", &self.shared.local_addr)
            .field("upstream", &self.shared.upstream)
            .finish_non_exhaustive()
    }
}

impl RelayHandle {
    /// The address clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The server the relay forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Replaces the conditions of one direction. Datagrams already queued
    /// keep their due times.
    pub fn set_conditions(
        &self,
        dir: Direction,
        conditions: LinkConditions,
    ) -> Result<(), NetsimError> {
        conditions.validate()?;
        let link = self.shared.link(dir);
        link.lock().set_conditions(conditions);
        // The next due time is unchanged, but wake the dispatcher anyway so a
        // partition takes effect on queued datagrams promptly.
        link.wake.notify_one();
        Ok(())
    }

    /// The current conditions of one direction.
    pub fn conditions(&self, dir: Direction) -> LinkConditions {
        self.shared.link(dir).lock().conditions().clone()
    }

    /// Cuts both directions: every datagram, new or queued, is dropped.
    pub fn partition(&self) {
        self.set_partitioned(true);
    }

    /// Ends a partition in both directions; other conditions are unchanged.
    pub fn heal(&self) {
        self.set_partitioned(false);
    }

    fn set_partitioned(&self, partitioned: bool) {
        for dir in Direction::BOTH {
            let link = self.shared.link(dir);
            link.lock().set_partitioned(partitioned);
            link.wake.notify_one();
        }
        info!(local_addr = %self.shared.local_addr, partitioned, "relay partition changed");
    }

    /// A snapshot of all counters.
    pub fn stats(&self) -> RelayStats {
        let s = &self.shared;
        RelayStats {
            to_upstream: s.link(Direction::ToUpstream).counters.snapshot(),
            to_client: s.link(Direction::ToClient).counters.snapshot(),
            sessions_active: s.lock_sessions().len() as u64,
            sessions_created: s.sessions_created.load(Relaxed),
            sessions_expired: s.sessions_expired.load(Relaxed),
            sessions_rejected: s.sessions_rejected.load(Relaxed),
        }
    }

    /// How many of the relay's tasks are still running (0 after shutdown).
    pub fn running_tasks(&self) -> usize {
        self.shared.tasks.live.load(Relaxed)
    }

    /// Whether shutdown has been requested.
    pub fn is_shutdown(&self) -> bool {
        *self.shared.shutdown.borrow()
    }

    /// Stops every task of the relay and waits until they have all exited.
    /// Queued datagrams are discarded. Idempotent.
    pub async fn shutdown(&self) {
        self.shared.signal_shutdown();
        self.shared.tasks.wait_idle().await;
    }
}

/// Signals shutdown when the last handle goes away.
struct DropGuard(Arc<Shared>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.signal_shutdown();
    }
}

/// Where a due datagram goes.
#[derive(Clone, Debug)]
enum Out {
    /// Through a session's socket, connected to the upstream address.
    Upstream(Arc<UdpSocket>),
    /// Through the listen socket, to this client.
    Client(SocketAddr),
}

struct Link {
    state: Mutex<LinkState<Out>>,
    /// Wakes the dispatcher when a datagram becomes the new queue head or the
    /// conditions change. `notify_one` stores a permit, so a wake between the
    /// dispatcher's check and its wait is not lost.
    wake: Notify,
    counters: LinkCounters,
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, LinkState<Out>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn admit(&self, payload: Vec<u8>, dest: Out) {
        let rearm = self
            .lock()
            .admit(Instant::now(), payload, dest, &self.counters);
        if rearm {
            self.wake.notify_one();
        }
    }
}

struct Session {
    socket: Arc<UdpSocket>,
    /// Milliseconds since the relay's epoch of the last datagram either way.
    last_active: Arc<AtomicU64>,
    reader: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

struct Shared {
    local_addr: SocketAddr,
    upstream: SocketAddr,
    listen: UdpSocket,
    links: [Link; 2],
    sessions: Mutex<HashMap<SocketAddr, Session>>,
    sessions_created: AtomicU64,
    sessions_expired: AtomicU64,
    sessions_rejected: AtomicU64,
    idle_timeout: Duration,
    max_sessions: usize,
    max_datagram: usize,
    epoch: Instant,
    shutdown: watch::Sender<bool>,
    tasks: Arc<TaskTracker>,
}

impl Shared {
    fn link(&self, dir: Direction) -> &Link {
        &self.links[dir.index()]
    }

    fn lock_sessions(&self) -> MutexGuard<'_, HashMap<SocketAddr, Session>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn signal_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Spawns a task counted by the tracker, so `shutdown` can wait for it.
    fn spawn_task<F>(&self, task: F) -> JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let guard = TaskGuard::new(self.tasks.clone());
        tokio::spawn(async move {
            let _guard = guard;
            task.await;
        })
    }

    /// The session socket for `client`, opening a session if needed. `None`
    /// when the session limit is reached or the socket cannot be opened.
    async fn session_for(self: &Arc<Self>, client: SocketAddr) -> Option<Arc<UdpSocket>> {
        let now = self.now_ms();
        {
            let mut sessions = self.lock_sessions();
            if let Some(session) = sessions.get(&client) {
                session.last_active.store(now, Relaxed);
                return Some(session.socket.clone());
            }
            if sessions.len() >= self.max_sessions {
                self.reap_locked(&mut sessions, now);
                if sessions.len() >= self.max_sessions {
                    self.sessions_rejected.fetch_add(1, Relaxed);
                    debug!(%client, "session limit reached, datagram dropped");
                    return None;
                }
            }
        }
        let socket = match self.open_upstream_socket().await {
            Ok(socket) => Arc::new(socket),
            Err(e) => {
                warn!(%client, error = %e, "cannot open relay session");
                return None;
            }
        };
        let last_active = Arc::new(AtomicU64::new(now));
        let reader = self.spawn_task(upstream_ingress(
            self.clone(),
            client,
            socket.clone(),
            last_active.clone(),
        ));
        // Only client ingress opens sessions, so no one raced us here.
        self.lock_sessions().insert(
            client,
            Session {
                socket: socket.clone(),
                last_active,
                reader,
            },
        );
        self.sessions_created.fetch_add(1, Relaxed);
        debug!(%client, "relay session opened");
        Some(socket)
    }

    #[tracing::instrument(skip_all, fields(upstream = %self.upstream))]
    async fn open_upstream_socket(&self) -> Result<UdpSocket, NetsimError> {
        let bind_ip = match self.upstream.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let bind = SocketAddr::new(bind_ip, 0);
        let socket = UdpSocket::bind(bind)
            .await
            .map_err(|source| NetsimError::Bind { addr: bind, source })?;
        // Connected, so the kernel only hands us the upstream's datagrams.
        socket
            .connect(self.upstream)
            .await
            .map_err(|source| NetsimError::Connect {
                addr: self.upstream,
                source,
            })?;
        Ok(socket)
    }

    fn reap_locked(&self, sessions: &mut HashMap<SocketAddr, Session>, now_ms: u64) {
        let idle_ms = self.idle_timeout.as_millis() as u64;
        let before = sessions.len();
        sessions.retain(|client, s| {
            let keep = now_ms.saturating_sub(s.last_active.load(Relaxed)) < idle_ms;
            if !keep {
                debug!(%client, "relay session expired");
            }
            keep
        });
        let expired = before - sessions.len();
        if expired > 0 {
            self.sessions_expired.fetch_add(expired as u64, Relaxed);
        }
    }
}

/// Counts live tasks so shutdown can wait for all of them, including
/// session readers spawned at any time.
#[derive(Default)]
struct TaskTracker {
    live: AtomicUsize,
    idle: Notify,
}

impl TaskTracker {
    async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            // Register before checking, so a notify in between is not missed.
            idle.as_mut().enable();
            if self.live.load(Relaxed) == 0 {
                return;
            }
            idle.await;
        }
    }
}

struct TaskGuard(Arc<TaskTracker>);

impl TaskGuard {
    fn new(tracker: Arc<TaskTracker>) -> Self {
        tracker.live.fetch_add(1, Relaxed);
        TaskGuard(tracker)
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Relaxed) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Reads datagrams from clients and admits them to the `ToUpstream` link.
async fn client_ingress(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut buf = vec![0u8; shared.max_datagram];
    let link = shared.link(Direction::ToUpstream);
    loop {
        let (len, client) = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            received = shared.listen.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(e) => {
                    debug!(error = %e, "relay listen socket receive failed");
                    continue;
                }
            },
        };
        let Some(socket) = shared.session_for(client).await else {
            continue;
        };
        link.admit(buf[..len].to_vec(), Out::Upstream(socket));
    }
    // Closes every session socket and aborts their readers.
    shared.lock_sessions().clear();
}

/// Reads one session's replies from upstream and admits them to the
/// `ToClient` link, addressed to that session's client.
async fn upstream_ingress(
    shared: Arc<Shared>,
    client: SocketAddr,
    socket: Arc<UdpSocket>,
    last_active: Arc<AtomicU64>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut buf = vec![0u8; shared.max_datagram];
    let link = shared.link(Direction::ToClient);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            received = socket.recv(&mut buf) => match received {
                Ok(len) => {
                    last_active.store(shared.now_ms(), Relaxed);
                    link.admit(buf[..len].to_vec(), Out::Client(client));
                }
                // E.g. ECONNREFUSED from an ICMP unreachable while the
                // upstream is down: one per ICMP, so no spin.
                Err(e) => debug!(%client, error = %e, "relay session receive failed"),
            },
        }
    }
}

/// Sends one direction's datagrams when they fall due. Sleeps until the
/// queue head's due time or a wake; never polls.
async fn dispatch(shared: Arc<Shared>, dir: Direction) {
    let mut shutdown = shared.shutdown.subscribe();
    let link = shared.link(dir);
    let mut due: Vec<Scheduled<Out>> = Vec::new();
    loop {
        let next = link
            .lock()
            .take_due(Instant::now(), &mut due, &link.counters);
        for item in due.drain(..) {
            let sent = match &item.dest {
                Out::Upstream(socket) => socket.send(&item.payload).await,
                Out::Client(client) => shared.listen.send_to(&item.payload, *client).await,
            };
            match sent {
                Ok(len) => {
                    LinkCounters::bump(&link.counters.forwarded_packets);
                    link.counters.forwarded_bytes.fetch_add(len as u64, Relaxed);
                }
                Err(e) => {
                    LinkCounters::bump(&link.counters.send_errors);
                    debug!(%dir, error = %e, "relay send failed");
                }
            }
        }
        // The far-future fallback is never awaited: its branch is disabled.
        let wake_at = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = link.wake.notified() => {}
            _ = tokio::time::sleep_until(wake_at), if next.is_some() => {}
        }
    }
}

/// Closes sessions idle for longer than the timeout.
async fn reaper(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    let period = (shared.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = tick.tick() => {
                let now = shared.now_ms();
                shared.reap_locked(&mut shared.lock_sessions(), now);
            }
        }
    }
}
