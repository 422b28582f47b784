//! Transport counters: plain atomics updated on the I/O path, read as a
//! snapshot ([`TransportMetrics`]) and rendered in the Prometheus text format
//! by whoever serves `/metrics`.
//!
//! Traffic is counted per (peer, ALPN), where the peer is the common name of
//! the certificate on the other end. Connections without a certificate (API
//! clients) share the label `anonymous`, so the number of series stays bounded
//! by the cluster's size, not by the number of clients ever seen.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::tls::Alpn;

/// The `peer` label of connections that presented no certificate.
pub const ANONYMOUS_PEER: &str = "anonymous";

/// Bytes moved with one (peer, ALPN), frame headers included.
#[derive(Debug, Default)]
pub(crate) struct PeerCounters {
    pub(crate) sent: AtomicU64,
    pub(crate) received: AtomicU64,
}

impl PeerCounters {
    pub(crate) fn add_sent(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_received(&self, n: usize) {
        self.received.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// Per peer, then per ALPN (indexed by `Alpn::index`).
    peers: Mutex<HashMap<String, [Option<Arc<PeerCounters>>; 2]>>,
    pub(crate) connections_opened: AtomicU64,
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) handshakes_refused: AtomicU64,
}

impl Metrics {
    /// The counters of one (peer, ALPN), made on first use. Called once per
    /// connection, not per frame.
    pub(crate) fn peer(&self, peer: Option<&str>, alpn: Alpn) -> Arc<PeerCounters> {
        let peer = peer.unwrap_or(ANONYMOUS_PEER);
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let slots = peers.entry(peer.to_owned()).or_default();
        slots[alpn.index()]
            .get_or_insert_with(Default::default)
            .clone()
    }

    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> TransportMetrics {
        let mut peers: Vec<PeerTraffic> = self
            .peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .flat_map(|(peer, slots)| {
                Alpn::ALL.into_iter().filter_map(move |alpn| {
                    let c = slots[alpn.index()].as_ref()?;
                    Some(PeerTraffic {
                        peer: peer.clone(),
                        alpn,
                        bytes_sent: c.sent.load(Ordering::Relaxed),
                        bytes_received: c.received.load(Ordering::Relaxed),
                    })
                })
            })
            .collect();
        peers.sort_by(|a, b| (&a.peer, a.alpn).cmp(&(&b.peer, b.alpn)));
        TransportMetrics {
            peers,
            connections_opened: self.connections_opened.load(Ordering::Relaxed),
            connections_accepted: self.connections_accepted.load(Ordering::Relaxed),
            handshakes_refused: self.handshakes_refused.load(Ordering::Relaxed),
        }
    }
}

/// Bytes exchanged with one peer over one protocol since the transport started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTraffic {
    /// Common name of the peer's certificate, or [`ANONYMOUS_PEER`].
    pub peer: String,
    pub alpn: Alpn,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// A snapshot of the transport's counters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TransportMetrics {
    /// Per (peer, ALPN), sorted.
    pub peers: Vec<PeerTraffic>,
    /// Outgoing connections established (handshake and greeting done).
    pub connections_opened: u64,
    /// Incoming connections handed to the caller.
    pub connections_accepted: u64,
    /// Incoming handshakes that failed or were refused (wrong CA, no
    /// certificate on the peer protocol, unknown ALPN, timeout).
    pub handshakes_refused: u64,
}

impl TransportMetrics {
    /// Appends the counters in the Prometheus text format:
    /// `dotkv_transport_bytes_sent_total{peer,alpn}`,
    /// `dotkv_transport_bytes_received_total{peer,alpn}`,
    /// `dotkv_transport_connections_total{direction}` and
    /// `dotkv_transport_handshakes_refused_total`.
    pub fn write_prometheus(&self, out: &mut String) {
        for (name, help, value) in [
            (
                "dotkv_transport_bytes_sent_total",
                "Bytes sent in frames, per peer and protocol.",
                (|p: &PeerTraffic| p.bytes_sent) as fn(&PeerTraffic) -> u64,
            ),
            (
                "dotkv_transport_bytes_received_total",
                "Bytes received in frames, per peer and protocol.",
                |p: &PeerTraffic| p.bytes_received,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for p in &self.peers {
                let _ = writeln!(
                    out,
                    "{name}{{peer=\"{}\",alpn=\"{}\"}} {}",
                    escape_label(&p.peer),
                    p.alpn,
                    value(p)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP dotkv_transport_connections_total QUIC connections established.\n\
             # TYPE dotkv_transport_connections_total counter\n\
             dotkv_transport_connections_total{{direction=\"outgoing\"}} {}\n\
             dotkv_transport_connections_total{{direction=\"incoming\"}} {}\n\
             # HELP dotkv_transport_handshakes_refused_total Incoming handshakes refused or failed.\n\
             # TYPE dotkv_transport_handshakes_refused_total counter\n\
             dotkv_transport_handshakes_refused_total {}",
            self.connections_opened, self.connections_accepted, self.handshakes_refused
        );
    }

    /// The traffic with `peer` over `alpn`, if any was counted.
    pub fn peer(&self, peer: &str, alpn: Alpn) -> Option<&PeerTraffic> {
        self.peers.iter().find(|p| p.peer == peer && p.alpn == alpn)
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_per_peer_and_alpn_and_render() {
        let m = Metrics::default();
        m.peer(Some("node-b"), Alpn::Peer).add_sent(10);
        m.peer(Some("node-b"), Alpn::Peer).add_received(3);
        m.peer(None, Alpn::Client).add_received(7);
        Metrics::inc(&m.handshakes_refused);
        let snap = m.snapshot();
        assert_eq!(snap.peer("node-b", Alpn::Peer).unwrap().bytes_sent, 10);
        assert_eq!(snap.peer("node-b", Alpn::Peer).unwrap().bytes_received, 3);
        assert_eq!(
            snap.peer(ANONYMOUS_PEER, Alpn::Client)
                .unwrap()
                .bytes_received,
            7
        );
        let mut text = String::new();
        snap.write_prometheus(&mut text);
        assert!(text.contains(
            "dotkv_transport_bytes_sent_total{peer=\"node-b\",alpn=\"dotkv-peer/1\"} 10\n"
        ));
        assert!(text.contains("dotkv_transport_handshakes_refused_total 1"));
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
