//! The codec: every state and delta a history produces survives
//! `encode`/`decode`; arbitrary bytes (bare, behind the right version byte, or a
//! real encoding with bytes changed or cut) decode to a value or an error, never
//! a panic; whatever does decode re-encodes to itself; and well-formed but
//! untrusted vectors, contexts and dot stores (unsorted, repeated, zero,
//! overlapping) decode to their normalised form.

#[macro_use]
mod common;

use common::{config, schedule, Mode, Sim, Spec};
use dotkv_crdt::{
    decode, encode, Causal, CausalContext, Dot, DotFun, DotMap, DotSet, EWFlag, GCounter, Hlc,
    LwwRegister, LwwValue, MVRegister, ORSet, ORSetDelta, PNCounter, ReplicaId, VersionVector,
    FORMAT_VERSION,
};
use proptest::prelude::*;
use proptest::sample::Index;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

fn round_trip<T>(x: &T) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = encode(x).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(bytes[0], FORMAT_VERSION);
    let back: T = decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, x);
    Ok(())
}

/// Decoding must not panic; what decodes must survive a round trip, so decoding
/// normalises fully.
fn decode_any<T>(bytes: &[u8]) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    if let Ok(v) = decode::<T>(bytes) {
        round_trip(&v)?;
    }
    Ok(())
}

/// Every type the crate stores or ships, decoded from the same bytes. Vectors
/// and contexts must come out in their canonical form, whatever the bytes.
fn decode_every_type(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(v) = decode::<VersionVector>(bytes) {
        let renormalised: VersionVector = v.iter().collect();
        prop_assert_eq!(&renormalised, &v);
        prop_assert!(v.iter().all(|(_, c)| c > 0), "zero entry in {:?}", v);
    }
    if let Ok(c) = decode::<CausalContext>(bytes) {
        prop_assert!(common::canonical(&c), "not canonical: {:?}", c);
    }
    decode_any::<ORSet<u8>>(bytes)?;
    decode_any::<ORSet<String>>(bytes)?;
    decode_any::<ORSetDelta<u8>>(bytes)?;
    decode_any::<ORSetDelta<String>>(bytes)?;
    decode_any::<MVRegister<u8>>(bytes)?;
    decode_any::<MVRegister<String>>(bytes)?;
    decode_any::<LwwRegister<u8>>(bytes)?;
    decode_any::<LwwRegister<Vec<u8>>>(bytes)?;
    decode_any::<LwwValue<u8>>(bytes)?;
    decode_any::<EWFlag>(bytes)?;
    decode_any::<GCounter>(bytes)?;
    decode_any::<PNCounter>(bytes)?;
    decode_any::<VersionVector>(bytes)?;
    decode_any::<CausalContext>(bytes)?;
    decode_any::<DotSet>(bytes)?;
    decode_any::<DotFun<u8>>(bytes)?;
    decode_any::<DotMap<u8, DotSet>>(bytes)?;
    decode_any::<Causal<DotSet>>(bytes)?;
    decode_any::<Dot>(bytes)?;
    decode_any::<Hlc>(bytes)?;
    Ok(())
}

/// (replica, counter) pairs as they would arrive from an untrusted peer: few
/// replicas and small counters, so repeats, zeros and overlaps are common.
fn raw_pairs() -> impl Strategy<Value = Vec<(u64, u64)>> {
    proptest::collection::vec((0..4u64, 0..8u64), 0..10)
}

fn with_version(bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![FORMAT_VERSION];
    v.extend_from_slice(bytes);
    v
}

macro_rules! codec {
    ($name:ident, $spec:ty) => {
        mod $name {
            use super::*;
            type S = $spec;

            proptest! {
                #![proptest_config(config())]

                /// Every state and delta of a history round-trips.
                #[test]
                fn round_trips(s in schedule::<S>(Mode::Grouped)) {
                    let sim = Sim::<S>::history(&s);
                    for x in &sim.snapshots {
                        round_trip(x)?;
                    }
                    for d in &sim.deltas {
                        round_trip(d)?;
                    }
                }

                /// A real encoding with some bytes replaced and maybe cut short.
                #[test]
                fn damaged_encodings_never_panic(
                    s in schedule::<S>(Mode::Grouped),
                    which in any::<Index>(),
                    edits in proptest::collection::vec((any::<Index>(), any::<u8>()), 1..4),
                    cut in proptest::option::of(any::<Index>()),
                ) {
                    let sim = Sim::<S>::history(&s);
                    let pool = sim.state_pool();
                    let x = &pool[which.index(pool.len())];
                    let mut bytes = encode(x).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    for (at, b) in edits {
                        let i = at.index(bytes.len());
                        bytes[i] = b;
                    }
                    if let Some(c) = cut {
                        bytes.truncate(c.index(bytes.len() + 1));
                    }
                    decode_any::<<S as Spec>::State>(&bytes)?;
                    decode_any::<<S as Spec>::Delta>(&bytes)?;
                }
            }
        }
    };
}

for_each_type!(codec);

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        decode_every_type(&bytes)?;
    }

    #[test]
    fn random_bytes_after_the_version_byte_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        decode_every_type(&with_version(&bytes))?;
    }

    /// Random bytes biased to small values, so that lengths and varints are
    /// plausible and decoding gets deep into the structures.
    #[test]
    fn small_random_bytes_after_the_version_byte_never_panic(
        bytes in proptest::collection::vec(0..6u8, 0..256),
    ) {
        decode_every_type(&with_version(&bytes))?;
    }

    /// A well-formed list of entries that breaks every rule (unsorted, repeated
    /// replicas, zeros) decodes to the normalised vector: per replica, the
    /// largest counter; no zeros.
    #[test]
    fn untrusted_version_vector_is_normalised(raw in raw_pairs()) {
        let bytes = encode(&raw).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let v: VersionVector = decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut want = BTreeMap::new();
        for &(r, c) in raw.iter().filter(|p| p.1 > 0) {
            let e = want.entry(ReplicaId(r)).or_insert(0);
            *e = c.max(*e);
        }
        prop_assert_eq!(v.iter().collect::<Vec<_>>(), want.into_iter().collect::<Vec<_>>());
    }

    /// A context whose vector and cloud overlap, touch, hold zeros and repeat
    /// replicas decodes to the canonical context of the dots it names.
    #[test]
    fn untrusted_causal_context_is_canonical(vv in raw_pairs(), cloud in raw_pairs()) {
        let bytes = encode(&(&vv, &cloud)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let c: CausalContext = decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(common::consistent(&c), "not canonical: {:?}", c);
        let mut want: BTreeSet<Dot> = BTreeSet::new();
        let top: VersionVector = vv.iter().map(|&(r, n)| (ReplicaId(r), n)).collect();
        for (r, n) in top.iter() {
            want.extend((1..=n).map(|i| Dot::new(r, i)));
        }
        want.extend(cloud.iter().filter(|p| p.1 > 0).map(|&(r, n)| Dot::new(ReplicaId(r), n)));
        prop_assert_eq!(c.dots().collect::<BTreeSet<_>>(), want);
        let direct: CausalContext = c.dots().collect();
        prop_assert_eq!(c, direct);
    }

    /// Dots unsorted, repeated or zero decode to the sorted set of the nonzero
    /// ones; for a `DotFun`, one value per dot, one of those given for it.
    #[test]
    fn untrusted_dot_stores_are_normalised(
        raw in proptest::collection::vec(((0..4u64, 0..6u64), any::<u8>()), 0..12),
    ) {
        let dots: Vec<(u64, u64)> = raw.iter().map(|&(d, _)| d).collect();
        let bytes = encode(&dots).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let set: DotSet = decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let want: BTreeSet<Dot> = dots
            .iter()
            .filter(|d| d.1 > 0)
            .map(|&(r, n)| Dot::new(ReplicaId(r), n))
            .collect();
        prop_assert_eq!(set.iter().collect::<Vec<_>>(), want.iter().copied().collect::<Vec<_>>());

        let bytes = encode(&raw).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let fun: DotFun<u8> = decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(fun.iter().map(|(d, _)| d).collect::<Vec<_>>(), want.into_iter().collect::<Vec<_>>());
        for (d, v) in fun.iter() {
            let given = raw
                .iter()
                .any(|&((r, n), w)| Dot::new(ReplicaId(r), n) == d && w == *v);
            prop_assert!(given, "{:?} -> {} was never given", d, v);
        }
    }

    #[test]
    fn wrong_version_is_an_error(
        version in any::<u8>().prop_filter("not the current version", |v| *v != FORMAT_VERSION),
        bytes in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let mut b = vec![version];
        b.extend_from_slice(&bytes);
        prop_assert!(decode::<ORSet<u8>>(&b).is_err());
        prop_assert!(decode::<GCounter>(&b).is_err());
    }
}
