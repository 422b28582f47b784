//! Counter overflow. Values are `i64`; an add whose result would leave that
//! range is an error and leaves the state as it was, and a merged state whose
//! sum leaves the range reads as an error. Amounts are drawn near the limits.
//!
//! The model keeps, per replica, what it knows of every replica's running sums
//! of positive and negative adds (and, for `PNCounter`, the reset baselines) as
//! `i128`, so it never overflows itself. A `GCounter`'s sums are `u64`; a
//! `PNCounter`'s are `u128`, so its adds are limited by the value alone.

mod common;

use common::{config, rid};
use dotkv_crdt::{CounterError, GCounter, Lattice, PNCounter};
use proptest::prelude::*;
use std::fmt::Debug;

const R: usize = 3;

fn in_i64(v: i128) -> bool {
    i64::try_from(v).is_ok()
}

fn fits_u64(v: i128) -> bool {
    u64::try_from(v).is_ok()
}

#[derive(Clone, Debug)]
enum Step<A> {
    Add(usize, A),
    Reset(usize),
    /// Full-state join of the first replica into the second.
    Merge(usize, usize),
}

fn g_amount() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..10u64,
        (i64::MAX as u64 - 5)..=(i64::MAX as u64 + 5),
        (u64::MAX - 5)..=u64::MAX,
        (i64::MAX as u64 / 2 - 3)..=(i64::MAX as u64 / 2 + 3),
        any::<u64>(),
    ]
}

fn pn_amount() -> impl Strategy<Value = i64> {
    prop_oneof![
        -10..10i64,
        (i64::MAX - 5)..=i64::MAX,
        i64::MIN..=(i64::MIN + 5),
        (i64::MAX / 2 - 3)..=(i64::MAX / 2 + 3),
        (i64::MIN / 2 - 3)..=(i64::MIN / 2 + 3),
        any::<i64>(),
    ]
}

fn steps<A: Debug + Clone + 'static>(
    amount: impl Strategy<Value = A> + 'static,
) -> impl Strategy<Value = Vec<Step<A>>> {
    let step = prop_oneof![
        6 => (0..R, amount).prop_map(|(r, a)| Step::Add(r, a)),
        1 => (0..R).prop_map(Step::Reset),
        2 => (0..R, 0..R).prop_map(|(a, b)| Step::Merge(a, b)),
    ];
    proptest::collection::vec(step, 0..30)
}

/// What one replica knows: per replica, the sum of its positive adds, of its
/// negative adds (as a positive number), and the reset baselines of both.
#[derive(Clone, Debug, Default)]
struct Known {
    p: [i128; R],
    n: [i128; R],
    base_p: [i128; R],
    base_n: [i128; R],
}

impl Known {
    fn value(&self) -> i128 {
        (0..R)
            .map(|i| (self.p[i] - self.base_p[i]) - (self.n[i] - self.base_n[i]))
            .sum()
    }

    fn merge(&mut self, o: &Known) {
        for i in 0..R {
            self.p[i] = self.p[i].max(o.p[i]);
            self.n[i] = self.n[i].max(o.n[i]);
            self.base_p[i] = self.base_p[i].max(o.base_p[i]);
            self.base_n[i] = self.base_n[i].max(o.base_n[i]);
        }
    }
}

fn check_value(v: Result<i64, CounterError>, want: i128) -> Result<(), TestCaseError> {
    if in_i64(want) {
        prop_assert_eq!(v, Ok(want as i64));
    } else {
        prop_assert_eq!(v, Err(CounterError::Overflow));
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn gcounter_overflow_is_an_error_and_changes_nothing(steps in steps(g_amount())) {
        let mut states = vec![GCounter::new(); R];
        let mut known = vec![Known::default(); R];
        for step in steps {
            match step {
                Step::Add(r, n) => {
                    let before = states[r].clone();
                    let own = known[r].p[r] + n as i128;
                    let after = known[r].value() + n as i128;
                    let ok = in_i64(after) && fits_u64(own);
                    let delta = states[r].increment_delta(rid(r), n);
                    let res = states[r].increment(rid(r), n);
                    prop_assert_eq!(&delta, &res);
                    if ok {
                        let delta = delta.unwrap();
                        prop_assert_eq!(&states[r], &before.joined(&delta));
                        known[r].p[r] = own;
                    } else {
                        prop_assert_eq!(res, Err(CounterError::Overflow));
                        prop_assert_eq!(&states[r], &before, "a failed increment changed the state");
                    }
                }
                // A grow-only counter has no reset.
                Step::Reset(_) => {}
                Step::Merge(a, b) => {
                    let src = states[a].clone();
                    states[b].join(&src);
                    let k = known[a].clone();
                    known[b].merge(&k);
                }
            }
            for r in 0..R {
                check_value(states[r].value(), known[r].value())?;
            }
        }
        let all = states.iter().fold(GCounter::new(), |acc, s| acc.joined(s));
        let mut k = Known::default();
        known.iter().for_each(|o| k.merge(o));
        check_value(all.value(), k.value())?;
    }

    #[test]
    fn pncounter_overflow_is_an_error_and_changes_nothing(steps in steps(pn_amount())) {
        let mut states = vec![PNCounter::new(); R];
        let mut known = vec![Known::default(); R];
        for step in steps {
            match step {
                Step::Add(r, a) => {
                    let before = states[r].clone();
                    let after = known[r].value() + a as i128;
                    let own = if a >= 0 {
                        known[r].p[r] + a as i128
                    } else {
                        known[r].n[r] - a as i128
                    };
                    let delta = states[r].add_delta(rid(r), a);
                    let res = states[r].add(rid(r), a);
                    prop_assert_eq!(&delta, &res);
                    // The value must stay in range, and that is all: each
                    // replica's running sums are u128, which 30 adds cannot
                    // fill, so a replica that has added more than u64::MAX in
                    // one direction over its life can still add.
                    if in_i64(after) {
                        let delta = delta.unwrap();
                        prop_assert_eq!(&states[r], &before.joined(&delta));
                        if a >= 0 {
                            known[r].p[r] = own;
                        } else {
                            known[r].n[r] = own;
                        }
                    } else {
                        prop_assert_eq!(res, Err(CounterError::Overflow));
                        prop_assert_eq!(&states[r], &before, "a failed add changed the state");
                    }
                }
                Step::Reset(r) => {
                    let before = states[r].clone();
                    let delta = states[r].reset();
                    prop_assert_eq!(&states[r], &before.joined(&delta));
                    known[r].base_p = known[r].p;
                    known[r].base_n = known[r].n;
                }
                Step::Merge(a, b) => {
                    let src = states[a].clone();
                    states[b].join(&src);
                    let k = known[a].clone();
                    known[b].merge(&k);
                }
            }
            for r in 0..R {
                check_value(states[r].value(), known[r].value())?;
            }
        }
        let all = states.iter().fold(PNCounter::new(), |acc, s| acc.joined(s));
        let mut k = Known::default();
        known.iter().for_each(|o| k.merge(o));
        check_value(all.value(), k.value())?;
    }
}
