//! The one error type of this crate.

use std::io;
use std::net::SocketAddr;

/// Everything that can fail when starting or steering a relay.
#[derive(Debug, thiserror::Error)]
pub enum NetsimError {
    /// The relay could not bind one of its sockets.
    #[error("binding UDP socket on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// A session socket could not be connected to the upstream address.
    #[error("connecting session socket to upstream {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// A probability in [`crate::LinkConditions`] is outside `0..=1` or not finite.
    #[error("link condition {field} = {value} is not a probability in 0..=1")]
    InvalidProbability { field: &'static str, value: f64 },
    /// A duration in [`crate::LinkConditions`] is larger than we can schedule.
    #[error("link condition {field} = {value} ms exceeds the maximum of {max} ms")]
    DurationTooLong {
        field: &'static str,
        value: u64,
        max: u64,
    },
    /// A rate limit of zero bytes per second would never send anything.
    #[error("link condition rate_bytes_per_sec = 0: use None for no limit")]
    ZeroRate,
    /// A [`crate::RelayConfig`] bound is zero or otherwise unusable.
    #[error("invalid relay config: {field} = {value}")]
    InvalidConfig { field: &'static str, value: String },
    /// Any other socket error (e.g. reading the bound address).
    #[error(transparent)]
    Io(#[from] io::Error),
}
