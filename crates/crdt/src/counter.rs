//! Counters. [`GCounter`] only grows; [`PNCounter`] counts up and down and can be
//! reset by observed state: a reset removes the increments it has seen, and
//! increments concurrent with it survive. Values are `i64`: a sum that leaves the
//! `i64` range is an error, never a wrap.

use crate::{Lattice, ReplicaId, VersionVector};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CounterError {
    #[error("counter overflow: the value would leave the i64 range")]
    Overflow,
}

/// Sum of a vector's entries, in a type wide enough for any sum we can hold.
fn sum(vv: &VersionVector) -> i128 {
    vv.iter().map(|(_, c)| c as i128).sum()
}

fn to_i64(v: i128) -> Result<i64, CounterError> {
    i64::try_from(v).map_err(|_| CounterError::Overflow)
}

/// A grow-only counter: each replica's own running total, joined by maximum.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GCounter {
    totals: VersionVector,
}

impl GCounter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn value(&self) -> Result<i64, CounterError> {
        to_i64(sum(&self.totals))
    }

    /// The delta of adding `n` at `replica`.
    pub fn increment_delta(&self, replica: ReplicaId, n: u64) -> Result<Self, CounterError> {
        let own = self
            .totals
            .get(replica)
            .checked_add(n)
            .ok_or(CounterError::Overflow)?;
        to_i64(sum(&self.totals) + n as i128)?;
        let mut totals = VersionVector::new();
        totals.set_max(replica, own);
        Ok(GCounter { totals })
    }

    /// Add `n` at `replica`, returning the delta to ship.
    pub fn increment(&mut self, replica: ReplicaId, n: u64) -> Result<Self, CounterError> {
        let delta = self.increment_delta(replica, n)?;
        let own = self.totals.get(replica) + n;
        self.totals.set_max(replica, own);
        Ok(delta)
    }

    pub fn totals(&self) -> &VersionVector {
        &self.totals
    }
}

impl Lattice for GCounter {
    fn join(&mut self, other: &Self) {
        self.totals.join(&other.totals);
    }
}

/// A counter that goes up and down, with an observed reset.
///
/// Each replica keeps grow-only totals of its increments (`p`) and decrements
/// (`n`). A reset records the totals it has seen as baselines (`base_p`,
/// `base_n`), and the value counts only what lies above the baselines. All four
/// are joined by maximum, so the type is a lattice however resets and increments
/// interleave.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct PNCounter {
    p: VersionVector,
    n: VersionVector,
    base_p: VersionVector,
    base_n: VersionVector,
}

impl PNCounter {
    pub fn new() -> Self {
        Self::default()
    }

    fn wide_value(&self) -> i128 {
        (sum(&self.p) - sum(&self.base_p)) - (sum(&self.n) - sum(&self.base_n))
    }

    pub fn value(&self) -> Result<i64, CounterError> {
        to_i64(self.wide_value())
    }

    /// The delta of adding `amount` (negative to subtract) at `replica`.
    pub fn add_delta(&self, replica: ReplicaId, amount: i64) -> Result<Self, CounterError> {
        to_i64(self.wide_value() + amount as i128)?;
        let mut delta = PNCounter::new();
        if amount >= 0 {
            let own = self
                .p
                .get(replica)
                .checked_add(amount as u64)
                .ok_or(CounterError::Overflow)?;
            delta.p.set_max(replica, own);
        } else {
            let own = self
                .n
                .get(replica)
                .checked_add(amount.unsigned_abs())
                .ok_or(CounterError::Overflow)?;
            delta.n.set_max(replica, own);
        }
        Ok(delta)
    }

    /// Add `amount` at `replica`, returning the delta to ship.
    pub fn add(&mut self, replica: ReplicaId, amount: i64) -> Result<Self, CounterError> {
        let delta = self.add_delta(replica, amount)?;
        if amount >= 0 {
            self.p.set_max(replica, self.p.get(replica) + amount as u64);
        } else {
            self.n
                .set_max(replica, self.n.get(replica) + amount.unsigned_abs());
        }
        Ok(delta)
    }

    /// The delta of resetting to zero everything seen here.
    pub fn reset_delta(&self) -> Self {
        PNCounter {
            p: self.p.clone(),
            n: self.n.clone(),
            base_p: self.p.clone(),
            base_n: self.n.clone(),
        }
    }

    /// Reset what was seen here, returning the delta to ship.
    pub fn reset(&mut self) -> Self {
        let delta = self.reset_delta();
        self.base_p = self.p.clone();
        self.base_n = self.n.clone();
        delta
    }

    /// Whether every increment seen here was reset since: the state of a
    /// deleted counter (or of one never written).
    pub fn is_reset(&self) -> bool {
        self.p.leq(&self.base_p) && self.n.leq(&self.base_n)
    }

    /// Whether the state holds nothing at all (never written).
    pub fn is_bottom(&self) -> bool {
        self.p.is_empty() && self.n.is_empty()
    }
}

impl Lattice for PNCounter {
    fn join(&mut self, other: &Self) {
        self.p.join(&other.p);
        self.n.join(&other.n);
        self.base_p.join(&other.base_p);
        self.base_n.join(&other.base_n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ReplicaId = ReplicaId(1);
    const B: ReplicaId = ReplicaId(2);

    #[test]
    fn overflow_is_an_error() {
        let mut c = PNCounter::new();
        c.add(A, i64::MAX).unwrap();
        assert_eq!(c.add(A, 1), Err(CounterError::Overflow));
        assert_eq!(c.value(), Ok(i64::MAX));
        c.add(B, i64::MIN).unwrap();
        assert_eq!(c.value(), Ok(-1));
        let mut other = PNCounter::new();
        other.add(B, i64::MAX).unwrap();
        // Each side is in range, but the merged sum is not.
        let mut merged = PNCounter::new();
        merged.add(A, i64::MAX).unwrap();
        merged.join(&other);
        assert_eq!(merged.value(), Err(CounterError::Overflow));
        let mut g = GCounter::new();
        g.increment(A, i64::MAX as u64).unwrap();
        assert_eq!(g.increment(B, 1), Err(CounterError::Overflow));
    }

    #[test]
    fn reset_keeps_concurrent_increments() {
        let mut a = PNCounter::new();
        a.add(A, 5).unwrap();
        let mut b = a.clone();
        let r = b.reset();
        let inc = a.add(A, 3).unwrap();
        a.join(&r);
        b.join(&inc);
        assert_eq!(a, b);
        assert_eq!(a.value(), Ok(3));
    }
}
