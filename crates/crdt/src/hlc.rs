//! Hybrid logical clocks (Kulkarni et al., 2014): wall-clock milliseconds in the
//! high 48 bits and a logical counter in the low 16, so timestamps stay close to
//! real time yet never go backwards, whatever the wall clock does.
//!
//! The clock reads time through [`WallClock`], so tests (and the fault harness)
//! can skew it.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

const LOGICAL_BITS: u32 = 16;
const LOGICAL_MASK: u64 = (1 << LOGICAL_BITS) - 1;
/// Largest physical part: 2^48 ms after the epoch, in the year 10889.
const MAX_PHYSICAL: u64 = (1 << (64 - LOGICAL_BITS)) - 1;

/// A hybrid logical timestamp. Ordered as a plain `u64`.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Hlc(pub u64);

impl Hlc {
    /// A timestamp from its parts; both are clamped to their ranges.
    pub fn new(physical_ms: u64, logical: u64) -> Self {
        Hlc((physical_ms.min(MAX_PHYSICAL) << LOGICAL_BITS) | logical.min(LOGICAL_MASK))
    }

    pub fn physical_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    pub fn logical(self) -> u64 {
        self.0 & LOGICAL_MASK
    }

    /// The least timestamp after `self`.
    pub fn successor(self) -> Hlc {
        Hlc(self.0.saturating_add(1))
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.physical_ms(), self.logical())
    }
}

/// A source of wall-clock milliseconds since the Unix epoch.
pub trait WallClock: Send + Sync {
    fn now_ms(&self) -> u64;
}

/// The operating system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock set by hand, shared between clones; for tests that skew time.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn new(ms: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(ms)))
    }

    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }

    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl WallClock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A hybrid logical clock over a wall clock.
///
/// Every timestamp it issues is greater than every timestamp it issued or
/// observed before, including the `high_water` it was started from (a node
/// persists that across restarts).
#[derive(Debug)]
pub struct HlcClock<C> {
    wall: C,
    last: Hlc,
}

impl<C: WallClock> HlcClock<C> {
    pub fn new(wall: C) -> Self {
        Self::with_high_water(wall, Hlc::default())
    }

    /// A clock whose timestamps will all exceed `high_water`.
    pub fn with_high_water(wall: C, high_water: Hlc) -> Self {
        HlcClock {
            wall,
            last: high_water,
        }
    }

    /// A fresh timestamp, greater than any before.
    pub fn now(&mut self) -> Hlc {
        let wall = self.wall.now_ms().min(MAX_PHYSICAL);
        self.last = if wall > self.last.physical_ms() {
            Hlc::new(wall, 0)
        } else {
            // The wall clock is behind (or equal): count logically. When the
            // logical part is full, `successor` carries into the physical part.
            self.last.successor()
        };
        self.last
    }

    /// Take a timestamp seen from elsewhere into account: later local timestamps
    /// will exceed it.
    pub fn observe(&mut self, seen: Hlc) {
        if seen > self.last {
            self.last = seen;
        }
    }

    /// The greatest timestamp issued or observed so far.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// How far the clock runs ahead of the wall clock, in milliseconds.
    pub fn drift_ms(&self) -> u64 {
        self.last.physical_ms().saturating_sub(self.wall.now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_goes_backwards_when_the_wall_clock_jumps_back() {
        let wall = ManualClock::new(10_000);
        let mut hlc = HlcClock::new(wall.clone());
        let a = hlc.now();
        wall.set(5_000);
        let b = hlc.now();
        let c = hlc.now();
        assert!(a < b && b < c);
        assert_eq!(b.physical_ms(), 10_000);
        wall.set(20_000);
        let d = hlc.now();
        assert_eq!(d, Hlc::new(20_000, 0));
    }

    #[test]
    fn observed_timestamps_are_exceeded() {
        let wall = ManualClock::new(1_000);
        let mut hlc = HlcClock::new(wall);
        hlc.observe(Hlc::new(50_000, 7));
        assert!(hlc.now() > Hlc::new(50_000, 7));
        let restarted = HlcClock::with_high_water(ManualClock::new(0), Hlc::new(60_000, 0));
        let mut restarted = restarted;
        assert!(restarted.now() > Hlc::new(60_000, 0));
    }

    #[test]
    fn logical_overflow_carries_into_physical() {
        let mut hlc = HlcClock::with_high_water(ManualClock::new(0), Hlc::new(5, LOGICAL_MASK));
        let t = hlc.now();
        assert_eq!(t, Hlc::new(6, 0));
    }
}
