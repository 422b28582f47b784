//! dotkv-crdt: the conflict-free replicated data types dotkv stores, and the causal
//! machinery under them. Nothing here does I/O: storage and replication build on it.
//!
//! The building blocks follow Almeida, Shoker and Baquero, "Delta State Replicated
//! Data Types" (2018):
//!
//! - a [`Dot`] names one event of one replica; a [`VersionVector`] summarises a
//!   contiguous history; a [`CausalContext`] adds the dots that are not contiguous yet;
//! - dot stores ([`DotSet`], [`DotFun`], [`DotMap`]) hold the live dots of an object,
//!   and [`Causal`] pairs a store with the context that says which dots were seen;
//! - the types: [`ORSet`] (add-wins), [`MVRegister`], [`LwwRegister`] (ordered by a
//!   hybrid logical clock, [`Hlc`]), [`EWFlag`] (enable-wins), [`GCounter`] and
//!   [`PNCounter`] (with observed reset).
//!
//! Every type is a join-semilattice ([`Lattice`]); its mutators return deltas that
//! are themselves states, so `m(x) == x ⊔ mδ(x)`.

pub mod causal;
pub mod codec;
pub mod context;
pub mod counter;
pub mod dot;
pub mod dotstore;
pub mod flag;
pub mod hlc;
pub mod lattice;
pub mod lww;
pub mod mvreg;
pub mod orset;
pub mod vv;

pub use causal::Causal;
pub use codec::{decode, encode, CodecError, FORMAT_VERSION};
pub use context::{CausalContext, Context};
pub use counter::{CounterError, GCounter, PNCounter};
pub use dot::{Dot, ReplicaId};
pub use dotstore::{DotFun, DotMap, DotSet, DotStore};
pub use flag::EWFlag;
pub use hlc::{Hlc, HlcClock, ManualClock, SystemClock, WallClock};
pub use lattice::Lattice;
pub use lww::{LwwRegister, LwwValue};
pub use mvreg::MVRegister;
pub use orset::{ORSet, ORSetDelta};
pub use vv::VersionVector;
