//! Black-box tests of the relay over real UDP sockets on 127.0.0.1: an echo
//! server sits behind the relay and clients talk to the relay's address.
//!
//! Timing assertions are tight on lower bounds (the relay must never deliver
//! early) and loose on upper bounds (the machine is shared). Waits are on
//! conditions with deadlines, not bare sleeps.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dotkv_netsim::{
    spawn_relay, Direction, LinkConditions, NetsimError, RelayConfig, RelayHandle, RelayStats,
    UdpRelay,
};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

const LOCALHOST: &str = "127.0.0.1:0";

/// A UDP echo server that also records what it received. Aborted on drop.
struct Echo {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    task: JoinHandle<()>,
}

impl Echo {
    async fn start() -> Echo {
        let socket = UdpSocket::bind(LOCALHOST).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                log.lock().unwrap().push(buf[..n].to_vec());
                let _ = socket.send_to(&buf[..n], from).await;
            }
        });
        Echo {
            addr,
            received,
            task,
        }
    }

    fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until the server has read `n` datagrams. The relay counts a
    /// datagram as forwarded when it is in the server's socket buffer, which
    /// can be before the echo task has read it.
    async fn wait_received(&self, n: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let received = self.received();
            if received.len() >= n {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "echo server got only {} of {n} datagrams",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn client() -> UdpSocket {
    UdpSocket::bind(LOCALHOST).await.unwrap()
}

/// Waits until `cond` holds for the relay's stats, or panics at the deadline.
async fn wait_stats(handle: &RelayHandle, what: &str, cond: impl Fn(&RelayStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = handle.stats();
        if cond(&stats) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Receives one datagram, or `None` if none arrives within `within`.
async fn recv_within(socket: &UdpSocket, within: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65_535];
    match timeout(within, socket.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        Ok(Err(e)) => panic!("recv failed: {e}"),
        Err(_) => None,
    }
}

/// Everything already in the socket's receive buffer. The relay's sends on
/// loopback land in the buffer before its counters move, so after waiting on
/// `forwarded_packets` this sees every forwarded datagram.
fn drain(socket: &UdpSocket) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; 65_535];
    let mut out = Vec::new();
    while let Ok(n) = socket.try_recv(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

async fn ping(socket: &UdpSocket, relay: SocketAddr, payload: &[u8]) -> Duration {
    let start = Instant::now();
    socket.send_to(payload, relay).await.unwrap();
    let reply = recv_within(socket, Duration::from_secs(3))
        .await
        .expect("no reply through the relay");
    assert_eq!(reply, payload);
    start.elapsed()
}

#[tokio::test]
async fn round_trip_takes_delay_each_way() {
    let echo = Echo::start().await;
    let delay = Duration::from_millis(100);
    let (relay, handle) = spawn_relay(
        LOCALHOST.parse().unwrap(),
        echo.addr,
        LinkConditions::delay(100),
        1,
    )
    .await
    .unwrap();
    assert_ne!(relay.port(), 0);
    let c = client().await;
    for i in 0..3u8 {
        let rtt = ping(&c, relay, &[i; 100]).await;
        assert!(
            rtt >= 2 * delay,
            "round trip {rtt:?} shorter than 2 × {delay:?}"
        );
        assert!(
            rtt < 2 * delay + Duration::from_millis(500),
            "round trip {rtt:?} absurdly long"
        );
    }
    let stats = handle.stats();
    assert_eq!(stats.to_upstream.forwarded_packets, 3);
    assert_eq!(stats.to_upstream.forwarded_bytes, 300);
    assert_eq!(stats.to_client.forwarded_packets, 3);
    assert_eq!(stats.sessions_created, 1);
    assert_eq!(stats.sessions_active, 1);

    handle.shutdown().await;
    assert_eq!(handle.running_tasks(), 0);
    assert!(handle.is_shutdown());
    assert_eq!(handle.stats().sessions_active, 0);
}

#[tokio::test]
async fn full_loss_drops_everything_and_counts_it() {
    let echo = Echo::start().await;
    let cond = LinkConditions {
        loss: 1.0,
        ..Default::default()
    };
    let (relay, handle) = spawn_relay(LOCALHOST.parse().unwrap(), echo.addr, cond, 2)
        .await
        .unwrap();
    let c = client().await;
    for i in 0..20u8 {
        c.send_to(&[i], relay).await.unwrap();
    }
    wait_stats(&handle, "20 losses", |s| s.to_upstream.dropped_loss == 20).await;
    assert_eq!(recv_within(&c, Duration::from_millis(200)).await, None);
    assert!(echo.received().is_empty());
    assert_eq!(handle.stats().to_upstream.forwarded_packets, 0);
    handle.shutdown().await;
}

#[tokio::test]
async fn partition_drops_and_heal_restores() {
    let echo = Echo::start().await;
    let (relay, handle) = spawn_relay(
        LOCALHOST.parse().unwrap(),
        echo.addr,
        LinkConditions::default(),
        3,
    )
    .await
    .unwrap();
    let c = client().await;
    ping(&c, relay, b"before").await;

    handle.partition();
    assert!(handle.conditions(Direction::ToClient).partitioned);
    for _ in 0..5 {
        c.send_to(b"during", relay).await.unwrap();
    }
    wait_stats(&handle, "5 partition drops", |s| {
        s.to_upstream.dropped_partition == 5
    })
    .await;
    assert_eq!(recv_within(&c, Duration::from_millis(200)).await, None);

    handle.heal();
    ping(&c, relay, b"after").await;
    assert_eq!(echo.received(), vec![b"before".to_vec(), b"after".to_vec()]);
    handle.shutdown().await;
}

#[tokio::test]
async fn partition_drops_datagrams_already_in_flight() {
    let echo = Echo::start().await;
    let (relay, handle) = spawn_relay(
        LOCALHOST.parse().unwrap(),
        echo.addr,
        LinkConditions::delay(200),
        4,
    )
    .await
    .unwrap();
    let c = client().await;
    c.send_to(b"in flight", relay).await.unwrap();
    wait_stats(&handle, "queued", |s| s.to_upstream.queued == 1).await;
    handle.partition();
    wait_stats(&handle, "dropped when due", |s| {
        s.to_upstream.dropped_partition == 1 && s.to_upstream.queued == 0
    })
    .await;
    assert!(echo.received().is_empty());
    handle.shutdown().await;
}

#[tokio::test]
async fn duplication_produces_extra_copies() {
    let echo = Echo::start().await;
    let (relay, handle) = spawn_relay(
        LOCALHOST.parse().unwrap(),
        echo.addr,
        LinkConditions::default(),
        5,
    )
    .await
    .unwrap();
    let dup = LinkConditions {
        duplicate: 1.0,
        ..Default::default()
    };
    handle
        .set_conditions(Direction::ToUpstream, dup.clone())
        .unwrap();
    let c = client().await;
    c.send_to(b"one", relay).await.unwrap();
    wait_stats(&handle, "2 replies", |s| s.to_client.forwarded_packets == 2).await;
    assert_eq!(echo.received().len(), 2);
    assert_eq!(drain(&c), vec![b"one".to_vec(); 2]);

    // Duplicated both ways: 1 → 2 at the server → 4 at the client.
    handle.set_conditions(Direction::ToClient, dup).unwrap();
    c.send_to(b"two", relay).await.unwrap();
    wait_stats(&handle, "4 more replies", |s| {
        s.to_client.forwarded_packets == 6
    })
    .await;
    assert_eq!(drain(&c), vec![b"two".to_vec(); 4]);
    let stats = handle.stats();
    assert_eq!(stats.to_upstream.duplicated, 2);
    assert_eq!(stats.to_client.duplicated, 2);
    handle.shutdown().await;
}

#[tokio::test]
async fn many_clients_get_their_own_replies() {
    const CLIENTS: usize = 20;
    const MESSAGES: usize = 10;
    let echo = Echo::start().await;
    let cond = LinkConditions {
        delay_ms: 10,
        jitter_ms: 10,
        reorder: 0.3,
        reorder_gap_ms: 15,
        ..Default::default()
    };
    let (relay, handle) = spawn_relay(LOCALHOST.parse().unwrap(), echo.addr, cond, 6)
        .await
        .unwrap();
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        clients.spawn(async move {
            let c = client().await;
            for j in 0..MESSAGES {
                c.send_to(format!("{i}/{j}").as_bytes(), relay)
                    .await
                    .unwrap();
            }
            let mut got = HashSet::new();
            while got.len() < MESSAGES {
                let reply = recv_within(&c, Duration::from_secs(3))
                    .await
                    .unwrap_or_else(|| panic!("client {i} got only {got:?}"));
                let reply = String::from_utf8(reply).unwrap();
                let (from, j) = reply.split_once('/').unwrap();
                assert_eq!(from, i.to_string(), "client {i} got {reply}");
                got.insert(j.parse::<usize>().unwrap());
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    let stats = handle.stats();
    assert_eq!(stats.sessions_created, CLIENTS as u64);
    assert_eq!(
        stats.to_client.forwarded_packets,
        (CLIENTS * MESSAGES) as u64
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn sessions_are_bounded_and_expire() {
    let echo = Echo::start().await;
    let mut config = RelayConfig::new(LOCALHOST.parse().unwrap(), echo.addr);
    config.max_sessions = 2;
    config.session_idle_timeout = Duration::from_millis(300);
    let relay = UdpRelay::start(config).await.unwrap();
    let (addr, handle) = (relay.local_addr(), relay.handle());
    let (a, b, c) = (client().await, client().await, client().await);
    ping(&a, addr, b"a").await;
    ping(&b, addr, b"b").await;

    c.send_to(b"c", addr).await.unwrap();
    wait_stats(&handle, "a rejected session", |s| s.sessions_rejected == 1).await;
    assert_eq!(recv_within(&c, Duration::from_millis(100)).await, None);
    assert_eq!(handle.stats().sessions_active, 2);

    // a and b go quiet; their sessions expire and make room for c.
    wait_stats(&handle, "sessions expired", |s| {
        s.sessions_active == 0 && s.sessions_expired == 2
    })
    .await;
    ping(&c, addr, b"c again").await;
    let stats = handle.stats();
    assert_eq!((stats.sessions_created, stats.sessions_active), (3, 1));
    drop(relay);
    handle.shutdown().await;
}

#[tokio::test]
async fn full_queue_drops_excess() {
    let echo = Echo::start().await;
    let mut config = RelayConfig::new(LOCALHOST.parse().unwrap(), echo.addr);
    config.queue_capacity = 10;
    // Long enough that all 50 arrive before the first falls due, even on a
    // busy machine.
    config.to_upstream = LinkConditions::delay(1000);
    let relay = UdpRelay::start(config).await.unwrap();
    let (addr, handle) = (relay.local_addr(), relay.into_handle());
    let c = client().await;
    for i in 0..50u8 {
        c.send_to(&[i], addr).await.unwrap();
    }
    wait_stats(&handle, "40 queue drops", |s| {
        s.to_upstream.dropped_queue_full == 40
    })
    .await;
    assert_eq!(handle.stats().to_upstream.queued, 10);
    wait_stats(&handle, "10 replies", |s| {
        s.to_client.forwarded_packets == 10
    })
    .await;
    let received: Vec<u8> = echo.received().iter().map(|p| p[0]).collect();
    assert_eq!(received, (0..10).collect::<Vec<u8>>());
    handle.shutdown().await;
}

#[tokio::test]
async fn rate_limit_spaces_datagrams() {
    let echo = Echo::start().await;
    let cond = LinkConditions {
        rate_bytes_per_sec: Some(20_000),
        ..Default::default()
    };
    let mut config = RelayConfig::new(LOCALHOST.parse().unwrap(), echo.addr);
    config.to_upstream = cond;
    let relay = UdpRelay::start(config).await.unwrap();
    let (addr, handle) = (relay.local_addr(), relay.into_handle());
    let c = client().await;
    let start = Instant::now();
    for i in 0..10u8 {
        c.send_to(&[i; 1000], addr).await.unwrap();
    }
    // 10 × 1000 bytes at 20 kB/s: the last one leaves 500 ms after the first
    // arrived.
    for _ in 0..10 {
        recv_within(&c, Duration::from_secs(3))
            .await
            .expect("reply");
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(500), "took only {took:?}");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    handle.shutdown().await;
}

#[tokio::test]
async fn reorder_lets_datagrams_overtake() {
    let echo = Echo::start().await;
    let cond = LinkConditions {
        delay_ms: 5,
        reorder: 0.5,
        reorder_gap_ms: 50,
        ..Default::default()
    };
    let mut config = RelayConfig::new(LOCALHOST.parse().unwrap(), echo.addr);
    config.to_upstream = cond;
    config.seed = 7;
    let relay = UdpRelay::start(config).await.unwrap();
    let (addr, handle) = (relay.local_addr(), relay.into_handle());
    let c = client().await;
    for i in 0..40u8 {
        c.send_to(&[i], addr).await.unwrap();
    }
    wait_stats(&handle, "40 forwarded", |s| {
        s.to_upstream.forwarded_packets == 40
    })
    .await;
    let order: Vec<u8> = echo.wait_received(40).await.iter().map(|p| p[0]).collect();
    assert_eq!(order.len(), 40);
    assert!(order.windows(2).any(|w| w[0] > w[1]), "in order: {order:?}");
    assert!(handle.stats().to_upstream.reordered > 0);
    handle.shutdown().await;
}

#[tokio::test]
async fn same_seed_loses_the_same_datagrams() {
    async fn survivors(seed: u64) -> Vec<u8> {
        let echo = Echo::start().await;
        let cond = LinkConditions {
            loss: 0.5,
            ..Default::default()
        };
        let (relay, handle) = spawn_relay(LOCALHOST.parse().unwrap(), echo.addr, cond, seed)
            .await
            .unwrap();
        let c = client().await;
        for i in 0..100u8 {
            c.send_to(&[i], relay).await.unwrap();
        }
        wait_stats(&handle, "100 decided", |s| {
            s.to_upstream.dropped_loss + s.to_upstream.forwarded_packets == 100
        })
        .await;
        let forwarded = handle.stats().to_upstream.forwarded_packets as usize;
        handle.shutdown().await;
        let received = echo.wait_received(forwarded).await;
        received.iter().map(|p| p[0]).collect()
    }
    let a = survivors(42).await;
    assert_eq!(a, survivors(42).await);
    assert_ne!(a, survivors(43).await);
    assert!(a.len() > 20 && a.len() < 80, "{} survived", a.len());
}

#[tokio::test]
async fn dropping_every_handle_stops_the_relay() {
    let echo = Echo::start().await;
    let (relay, handle) = spawn_relay(
        LOCALHOST.parse().unwrap(),
        echo.addr,
        LinkConditions::default(),
        8,
    )
    .await
    .unwrap();
    let c = client().await;
    ping(&c, relay, b"hi").await;
    let second = handle.clone();
    drop(handle);
    assert!(!second.is_shutdown());
    drop(second);
    // Once every task has exited, the listen socket is closed and its port
    // can be bound again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while UdpSocket::bind(relay).await.is_err() {
        assert!(Instant::now() < deadline, "relay still holds {relay}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn invalid_conditions_are_rejected() {
    let echo = Echo::start().await;
    let bad = LinkConditions {
        duplicate: 2.0,
        ..Default::default()
    };
    let err = spawn_relay(LOCALHOST.parse().unwrap(), echo.addr, bad.clone(), 0)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        NetsimError::InvalidProbability {
            field: "duplicate",
            ..
        }
    ));
    let (_, handle) = spawn_relay(
        LOCALHOST.parse().unwrap(),
        echo.addr,
        LinkConditions::default(),
        0,
    )
    .await
    .unwrap();
    assert!(handle.set_conditions(Direction::ToClient, bad).is_err());
    assert_eq!(
        handle.conditions(Direction::ToClient),
        LinkConditions::default()
    );
    handle.shutdown().await;
}
