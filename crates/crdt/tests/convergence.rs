//! Convergence and the reference model, for every type.
//!
//! Two to five replicas run random interleaved operations. After every step,
//! the replica it touched must show the value the type's reference model gives
//! for the operations that replica knows (see `common`); at the end, once every
//! replica has everything, all states must be equal and show the model's value
//! for the whole history. Three ways of exchanging:
//!
//! - `deltas`: each operation's delta is queued to every other replica; a random
//!   schedule delivers queued deltas in any order, duplicates some (delivers one
//!   and keeps a copy to deliver again) and loses some into a pile that is
//!   resent at the end;
//! - `states`: no deltas, random pairwise full-state joins, then all-to-all;
//! - `grouped`: each replica joins its consecutive deltas into one group
//!   before shipping (for the OR-set, with the `ORSetDelta` join), mixed with
//!   full-state joins, and the same losses and duplicates.

#[macro_use]
mod common;

use common::{config, schedule, Mode, Sim, Spec};
use proptest::prelude::*;

fn by_deltas<S: Spec>(sched: &common::Schedule<S::Op>) -> Result<(), TestCaseError> {
    let mut sim = Sim::<S>::run(sched)?;
    sim.deliver_all(sched.seed)?;
    sim.check_converged()
}

fn by_states<S: Spec>(sched: &common::Schedule<S::Op>) -> Result<(), TestCaseError> {
    let mut sim = Sim::<S>::run(sched)?;
    sim.merge_all()?;
    sim.check_converged()
}

macro_rules! convergence {
    ($name:ident, $spec:ty) => {
        mod $name {
            use super::*;
            type S = $spec;

            proptest! {
                #![proptest_config(config())]

                #[test]
                fn deltas(s in schedule::<S>(Mode::Deltas)) {
                    by_deltas::<S>(&s)?;
                }

                #[test]
                fn states(s in schedule::<S>(Mode::States)) {
                    by_states::<S>(&s)?;
                }

                #[test]
                fn grouped(s in schedule::<S>(Mode::Grouped)) {
                    by_deltas::<S>(&s)?;
                }
            }
        }
    };
}

for_each_type!(convergence);
