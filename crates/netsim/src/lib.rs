//! dotkv-netsim: a user-space UDP relay that makes a loopback or LAN path look
//! like a WAN link between datacenters.
//!
//! The fault-injection harness (`DESIGN.md`, "Fault-injection harness") needs
//! delay, jitter, loss, duplication, reordering, bandwidth limits and partitions
//! between datacenters. On Linux that is normally `tc qdisc ... netem`, but the
//! kernels we run on have no netem, so this crate does the same job in user
//! space: a [`UdpRelay`] listens on one UDP address, forwards every datagram to
//! one upstream address (a node's QUIC endpoint) and passes the replies back,
//! applying [`LinkConditions`] to each direction on the way.
//!
//! What it owns:
//! - [`conditions`]: the link model ([`LinkConditions`], [`Direction`]) and its
//!   validation;
//! - `link` (private): the per-direction scheduler, a pure state machine with a
//!   seeded RNG and a bounded queue ordered by due time, so it can be unit
//!   tested without sockets;
//! - [`relay`]: the sockets and tasks: per-client sessions, one dispatcher per
//!   direction, session expiry, and the [`RelayHandle`] that changes conditions,
//!   partitions, heals, reads [`RelayStats`] and shuts everything down;
//! - [`stats`]: plain counter snapshots.
//!
//! The binary `dotkv-relay` runs one relay from the command line (for the
//! docker-compose cluster's relay containers).

pub mod conditions;
mod error;
mod link;
pub mod relay;
pub mod stats;

pub use conditions::{Direction, LinkConditions};
pub use error::NetsimError;
pub use relay::{spawn_relay, RelayConfig, RelayHandle, UdpRelay};
pub use stats::{LinkStats, RelayStats};
