//! The link model: what one direction of a simulated WAN link does to packets.
//!
//! It follows netem's vocabulary (delay, jitter, loss, duplicate, reorder, rate)
//! so harness scenarios read like the `tc` commands they stand in for, plus a
//! `partitioned` switch that drops everything.

use serde::{Deserialize, Serialize};

use crate::NetsimError;

/// The longest delay, jitter or reorder gap we accept (one hour). Anything
/// longer is a configuration mistake and would overflow `Instant` arithmetic
/// on some platforms.
pub const MAX_DELAY_MS: u64 = 3_600_000;

/// One direction through a relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From a client (what connects to the relay's listen address) to the
    /// upstream server.
    ToUpstream,
    /// From the upstream server back to a client.
    ToClient,
}

impl Direction {
    /// Both directions, for loops.
    pub const BOTH: [Direction; 2] = [Direction::ToUpstream, Direction::ToClient];

    pub(crate) fn index(self) -> usize {
        match self {
            Direction::ToUpstream => 0,
            Direction::ToClient => 1,
        }
    }

    /// A per-direction salt so the two directions draw independent random
    /// streams from one seed.
    pub(crate) fn seed_salt(self) -> u64 {
        match self {
            Direction::ToUpstream => 0x9e37_79b9_7f4a_7c15,
            Direction::ToClient => 0xc2b2_ae3d_27d4_eb4f,
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::ToUpstream => "to_upstream",
            Direction::ToClient => "to_client",
        })
    }
}

/// What one direction of a link does to each datagram.
///
/// The default is a perfect link: no delay, no loss, no limit.
///
/// Order of effects for a datagram entering the link: `partitioned` drops it;
/// else `loss` may drop it; else it is queued once, or twice with probability
/// `duplicate`. Each queued copy leaves after the rate limiter has sent the
/// bytes ahead of it and then `delay_ms ± jitter_ms` (uniform, clamped at 0),
/// plus `reorder_gap_ms` with probability `reorder`. A datagram still queued
/// when the link becomes partitioned is dropped when it falls due, so nothing
/// crosses a partition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinkConditions {
    /// Base one-way delay.
    pub delay_ms: u64,
    /// Uniform jitter around `delay_ms`. As in netem, jitter alone reorders
    /// datagrams sent closer together than the jitter.
    pub jitter_ms: u64,
    /// Probability (0..=1) that a datagram is dropped.
    pub loss: f64,
    /// Probability (0..=1) that a datagram is sent twice.
    pub duplicate: f64,
    /// Probability (0..=1) that a datagram is held back an extra
    /// `reorder_gap_ms`, so later datagrams overtake it.
    pub reorder: f64,
    /// The extra delay of a reordered datagram.
    pub reorder_gap_ms: u64,
    /// Bandwidth limit in bytes per second; `None` for unlimited. Datagrams
    /// wait behind each other (a FIFO bottleneck) and count against the queue
    /// bound while they wait.
    pub rate_bytes_per_sec: Option<u64>,
    /// Drop everything in this direction.
    pub partitioned: bool,
}

impl Default for LinkConditions {
    fn default() -> Self {
        LinkConditions {
            delay_ms: 0,
            jitter_ms: 0,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_gap_ms: 20,
            rate_bytes_per_sec: None,
            partitioned: false,
        }
    }
}

impl LinkConditions {
    /// A link with a fixed one-way delay and nothing else.
    pub fn delay(delay_ms: u64) -> Self {
        LinkConditions {
            delay_ms,
            ..LinkConditions::default()
        }
    }

    /// Checks that probabilities are in `0..=1` and durations are schedulable.
    pub fn validate(&self) -> Result<(), NetsimError> {
        for (field, value) in [
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(NetsimError::InvalidProbability { field, value });
            }
        }
        for (field, value) in [
            ("delay_ms", self.delay_ms),
            ("jitter_ms", self.jitter_ms),
            ("reorder_gap_ms", self.reorder_gap_ms),
        ] {
            if value > MAX_DELAY_MS {
                return Err(NetsimError::DurationTooLong {
                    field,
                    value,
                    max: MAX_DELAY_MS,
                });
            }
        }
        if self.rate_bytes_per_sec == Some(0) {
            return Err(NetsimError::ZeroRate);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_a_perfect_link() {
        let c = LinkConditions::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.delay_ms, 0);
        assert!(!c.partitioned);
    }

    #[test]
    fn rejects_bad_probabilities_and_durations() {
        for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            let c = LinkConditions {
                loss: bad,
                ..Default::default()
            };
            assert!(matches!(
                c.validate(),
                Err(NetsimError::InvalidProbability { field: "loss", .. })
            ));
        }
        let c = LinkConditions::delay(MAX_DELAY_MS + 1);
        assert!(matches!(
            c.validate(),
            Err(NetsimError::DurationTooLong { .. })
        ));
        let c = LinkConditions {
            rate_bytes_per_sec: Some(0),
            ..Default::default()
        };
        assert!(matches!(c.validate(), Err(NetsimError::ZeroRate)));
    }
}
