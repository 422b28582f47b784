//! Counters of a relay: live atomics inside, plain snapshots outside.
//!
//! Names follow the `dotkv_netsim_<name>` metric convention once exported
//! (e.g. `dotkv_netsim_forwarded_packets{direction="to_upstream"}`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

use crate::Direction;

/// A snapshot of one direction's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStats {
    /// Datagrams handed to the outgoing socket.
    pub forwarded_packets: u64,
    /// Bytes of payload in `forwarded_packets`.
    pub forwarded_bytes: u64,
    /// Datagrams dropped by `loss`.
    pub dropped_loss: u64,
    /// Datagrams dropped because the direction was partitioned, on entry or
    /// when they fell due.
    pub dropped_partition: u64,
    /// Datagram copies dropped because the delay queue was full.
    pub dropped_queue_full: u64,
    /// Extra copies queued by `duplicate`.
    pub duplicated: u64,
    /// Copies given the extra reorder gap.
    pub reordered: u64,
    /// Sends that failed at the socket (e.g. ICMP unreachable reported back).
    pub send_errors: u64,
    /// Datagrams waiting in the delay queue now (a gauge, not a counter).
    pub queued: u64,
}

/// A snapshot of a whole relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayStats {
    pub to_upstream: LinkStats,
    pub to_client: LinkStats,
    /// Sessions (client source addresses) open now.
    pub sessions_active: u64,
    /// Sessions opened since start.
    pub sessions_created: u64,
    /// Sessions closed after their idle timeout.
    pub sessions_expired: u64,
    /// Datagrams from new clients dropped because `max_sessions` were open.
    pub sessions_rejected: u64,
}

impl RelayStats {
    /// The counters of one direction.
    pub fn link(&self, dir: Direction) -> &LinkStats {
        match dir {
            Direction::ToUpstream => &self.to_upstream,
            Direction::ToClient => &self.to_client,
        }
    }
}

/// The live counters of one direction, updated without locks.
#[derive(Debug, Default)]
pub(crate) struct LinkCounters {
    pub forwarded_packets: AtomicU64,
    pub forwarded_bytes: AtomicU64,
    pub dropped_loss: AtomicU64,
    pub dropped_partition: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub duplicated: AtomicU64,
    pub reordered: AtomicU64,
    pub send_errors: AtomicU64,
    pub queued: AtomicU64,
}

impl LinkCounters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> LinkStats {
        LinkStats {
            forwarded_packets: self.forwarded_packets.load(Relaxed),
            forwarded_bytes: self.forwarded_bytes.load(Relaxed),
            dropped_loss: self.dropped_loss.load(Relaxed),
            dropped_partition: self.dropped_partition.load(Relaxed),
            dropped_queue_full: self.dropped_queue_full.load(Relaxed),
            duplicated: self.duplicated.load(Relaxed),
            reordered: self.reordered.load(Relaxed),
            send_errors: self.send_errors.load(Relaxed),
            queued: self.queued.load(Relaxed),
        }
    }
}
