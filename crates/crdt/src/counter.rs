//! Counters. [`GCounter`] only grows; [`PNCounter`] counts up and down and can be
//! reset by observed state: a reset removes the increments it has seen, and
//! increments concurrent with it survive. Values are `i64`: a sum that leaves the
//! `i64` range is an error, never a wrap.

use crate::{Lattice, ReplicaId, VersionVector};
use serde::{Deserialize, Serialize, Serializer};
use smallvec::SmallVec;

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

/// Each replica's running total of the adds of one sign it has made, joined by
/// maximum: a sorted vector with no zero entries, like [`VersionVector`], but
/// with `u128` totals.
///
/// A replica's total only grows, while the counter's value can go up and down
/// many times: adding `i64::MAX` and `i64::MIN` in turn keeps the value near
/// zero but passes `u64::MAX` in both totals on the fourth add. A total is
/// kept under 2^127, so that sums of them are `i128` arithmetic; at most 2^63
/// per add, that takes 2^64 adds to reach, so the value's range is the only
/// limit a counter meets.
///
/// Encoded as a sequence of `(replica, total)` pairs, totals as varints: the
/// bytes of a total under 2^64 are those of the `u64` totals (version vectors)
/// that earlier versions stored, so their counters decode unchanged.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default, Deserialize)]
#[serde(from = "Vec<(ReplicaId, u128)>")]
struct Totals {
    entries: SmallVec<[(ReplicaId, u128); 1]>,
}

/// The largest running total an add may make (see [`Totals`]).
const MAX_TOTAL: u128 = i128::MAX as u128;

impl From<Vec<(ReplicaId, u128)>> for Totals {
    /// Normalises any list, as a version vector's.
    fn from(entries: Vec<(ReplicaId, u128)>) -> Self {
        Totals {
            entries: crate::vv::normalise(entries),
        }
    }
}

impl Serialize for Totals {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.entries.iter())
    }
}

impl Totals {
    fn get(&self, replica: ReplicaId) -> u128 {
        match self.entries.binary_search_by_key(&replica, |&(r, _)| r) {
            Ok(i) => self.entries[i].1,
            Err(_) => 0,
        }
    }

    fn set_max(&mut self, replica: ReplicaId, total: u128) {
        if total == 0 {
            return;
        }
        match self.entries.binary_search_by_key(&replica, |&(r, _)| r) {
            Ok(i) => {
                let e = &mut self.entries[i].1;
                *e = (*e).max(total);
            }
            Err(i) => self.entries.insert(i, (replica, total)),
        }
    }

    fn join(&mut self, other: &Totals) {
        for &(r, c) in &other.entries {
            self.set_max(r, c);
        }
    }

    fn leq(&self, other: &Totals) -> bool {
        self.entries.iter().all(|&(r, c)| c <= other.get(r))
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How far the totals lie above `base`, replica by replica (a base never
    /// exceeds its totals in a state built by this type's operations, but a
    /// decoded one may say anything, so this is checked).
    fn above(&self, base: &Totals) -> Result<i128, CounterError> {
        let mut sum: i128 = 0;
        for &(r, c) in &self.entries {
            let above = i128::try_from(c.saturating_sub(base.get(r)))
                .map_err(|_| CounterError::Overflow)?;
            sum = sum.checked_add(above).ok_or(CounterError::Overflow)?;
        }
        Ok(sum)
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
    p: Totals,
    n: Totals,
    base_p: Totals,
    base_n: Totals,
}

impl PNCounter {
    pub fn new() -> Self {
        Self::default()
    }

    fn wide_value(&self) -> Result<i128, CounterError> {
        self.p
            .above(&self.base_p)?
            .checked_sub(self.n.above(&self.base_n)?)
            .ok_or(CounterError::Overflow)
    }

    pub fn value(&self) -> Result<i64, CounterError> {
        to_i64(self.wide_value()?)
    }

    /// The delta of adding `amount` (negative to subtract) at `replica`.
    pub fn add_delta(&self, replica: ReplicaId, amount: i64) -> Result<Self, CounterError> {
        let after = self.wide_value()?.checked_add(i128::from(amount));
        to_i64(after.ok_or(CounterError::Overflow)?)?;
        let mut delta = PNCounter::new();
        let (totals, out) = if amount >= 0 {
            (&self.p, &mut delta.p)
        } else {
            (&self.n, &mut delta.n)
        };
        let own = totals
            .get(replica)
            .checked_add(u128::from(amount.unsigned_abs()))
            .filter(|&t| t <= MAX_TOTAL)
            .ok_or(CounterError::Overflow)?;
        out.set_max(replica, own);
        Ok(delta)
    }

    /// Add `amount` at `replica`, returning the delta to ship.
    pub fn add(&mut self, replica: ReplicaId, amount: i64) -> Result<Self, CounterError> {
        let delta = self.add_delta(replica, amount)?;
        self.join(&delta);
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
    fn a_replica_can_add_past_u64_max_in_each_direction() {
        // The value stays near zero while each running total passes u64::MAX:
        // only the value's range limits a counter.
        let mut c = PNCounter::new();
        for round in 1..=8i64 {
            c.add(A, i64::MAX).unwrap();
            assert_eq!(c.value(), Ok(i64::MAX - round + 1));
            c.add(A, i64::MIN).unwrap();
            assert_eq!(c.value(), Ok(-round));
        }
        assert_eq!(c.add(A, i64::MIN), Err(CounterError::Overflow));
        assert_eq!(c.value(), Ok(-8));
        // A replica that saw it all, joined, reads the same; a reset clears it.
        let mut other = PNCounter::new();
        other.join(&c);
        assert_eq!(other.value(), Ok(-8));
        other.reset();
        assert_eq!(other.value(), Ok(0));
        assert_eq!(other.add(B, 3).unwrap().value(), Ok(3));
    }

    #[test]
    fn counters_stored_with_u64_totals_decode_unchanged() {
        // Earlier versions kept the four totals as version vectors.
        #[derive(Serialize)]
        struct Before {
            p: VersionVector,
            n: VersionVector,
            base_p: VersionVector,
            base_n: VersionVector,
        }
        let before = Before {
            p: [(A, 7), (B, u64::MAX)].into_iter().collect(),
            n: [(A, 5)].into_iter().collect(),
            base_p: [(B, u64::MAX - 10)].into_iter().collect(),
            base_n: VersionVector::new(),
        };
        let bytes = crate::codec::encode(&before).unwrap();
        let c: PNCounter = crate::codec::decode(&bytes).unwrap();
        assert_eq!(c.value(), Ok(7 + 10 - 5));
        assert_eq!(c.p.get(B), u64::MAX as u128);
        // And a state whose totals fit in u64 encodes to the same bytes.
        assert_eq!(crate::codec::encode(&c).unwrap(), bytes);
    }

    #[test]
    fn totals_at_their_limit_are_an_error_not_a_panic() {
        // Decoded from a peer or disk, a total may be anything.
        let mut full = Totals::default();
        full.set_max(A, u128::MAX);
        let c = PNCounter {
            p: full.clone(),
            n: full,
            ..PNCounter::default()
        };
        assert_eq!(c.value(), Err(CounterError::Overflow));
        let mut bytes = crate::codec::encode(&c).unwrap();
        let decoded: PNCounter = crate::codec::decode(&bytes).unwrap();
        assert_eq!(decoded.add_delta(A, 1), Err(CounterError::Overflow));
        // A decoded value far outside i64 refuses adds without overflowing.
        let mut wide = PNCounter::default();
        wide.p.set_max(A, MAX_TOTAL);
        assert_eq!(wide.add_delta(B, i64::MAX), Err(CounterError::Overflow));
        // Adds stop at MAX_TOTAL, where the totals still read.
        let mut near = PNCounter::default();
        near.p.set_max(A, MAX_TOTAL - 1);
        near.n.set_max(A, MAX_TOTAL - 1);
        assert_eq!(near.value(), Ok(0));
        assert_eq!(near.add(A, 2), Err(CounterError::Overflow));
        assert_eq!(near.add(A, -1).unwrap().n.get(A), MAX_TOTAL);
        assert_eq!(near.value(), Ok(-1));
        bytes.truncate(bytes.len() - 1);
        assert!(crate::codec::decode::<PNCounter>(&bytes).is_err());
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
