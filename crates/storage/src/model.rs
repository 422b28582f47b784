//! What the storage layer is asked to do ([`Op`]), and what it logs and ships
//! for every commit ([`DeltaGroup`]).

use dotkv_crdt::{
    CausalContext, DotFun, DotSet, Hlc, LwwValue, PNCounter, ReplicaId, VersionVector,
};
use serde::{Deserialize, Serialize};

/// The CRDT namespaces. The same key in two namespaces is two objects.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum ObjectKind {
    Counter,
    Register,
    MvRegister,
    Set,
    Flag,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 5] = [
        ObjectKind::Counter,
        ObjectKind::Register,
        ObjectKind::MvRegister,
        ObjectKind::Set,
        ObjectKind::Flag,
    ];

    pub fn tag(self) -> u8 {
        match self {
            ObjectKind::Counter => 1,
            ObjectKind::Register => 2,
            ObjectKind::MvRegister => 3,
            ObjectKind::Set => 4,
            ObjectKind::Flag => 5,
        }
    }

    pub fn from_tag(tag: u8) -> Option<Self> {
        ObjectKind::ALL.into_iter().find(|k| k.tag() == tag)
    }

    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Counter => "counter",
            ObjectKind::Register => "register",
            ObjectKind::MvRegister => "mvregister",
            ObjectKind::Set => "set",
            ObjectKind::Flag => "flag",
        }
    }
}

/// One local operation. A request is a list of them, applied atomically.
/// Register values are JSON text, already validated by the caller.
#[derive(Clone, PartialEq, Debug)]
pub enum Op {
    CounterAdd {
        key: String,
        amount: i64,
    },
    RegisterSet {
        key: String,
        json: String,
    },
    MvRegisterSet {
        key: String,
        json: String,
    },
    /// Removes are applied before adds, so an element in both ends up present,
    /// as an add concurrent with a remove would.
    SetUpdate {
        key: String,
        add: Vec<Vec<u8>>,
        remove: Vec<Vec<u8>>,
    },
    FlagSet {
        key: String,
        enable: bool,
    },
    /// Observed remove of the whole object.
    Delete {
        kind: ObjectKind,
        key: String,
    },
}

/// What one applied [`Op`] answers.
#[derive(Clone, PartialEq, Debug)]
pub enum OpOutput {
    /// A counter's value after the add (or the delete).
    Counter(i64),
    /// A register write's last-writer-wins order key: its timestamp, then the
    /// replica that made it (the replica of its dot).
    Register {
        ts: Hlc,
        replica: ReplicaId,
    },
    Done,
}

/// The stored state of a register: its live values with their timestamps.
pub type RegisterState = DotFun<LwwValue<String>>;
/// The stored state of a multi-value register.
pub type MvRegisterState = DotFun<String>;
/// The stored state of a flag: the dots of the enables not yet disabled.
pub type FlagState = DotSet;
/// The stored state of a counter.
pub type CounterState = PNCounter;

/// The delta of one operation on one object. Dot-store deltas carry the dots
/// they have seen (`ctx`), so the receiver can tell a removed dot from an unseen
/// one.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum DeltaOp {
    Counter {
        key: String,
        delta: PNCounter,
    },
    Register {
        key: String,
        store: RegisterState,
        ctx: CausalContext,
    },
    MvRegister {
        key: String,
        store: MvRegisterState,
        ctx: CausalContext,
    },
    Flag {
        key: String,
        store: FlagState,
        ctx: CausalContext,
    },
    /// Element rows touched: each element with its new dots (none for a remove).
    Set {
        key: String,
        elems: Vec<(Vec<u8>, DotSet)>,
        ctx: CausalContext,
    },
    /// Observed remove of a whole set: every element dot covered by `seen` goes.
    SetClear {
        key: String,
        seen: VersionVector,
    },
}

/// Everything one local commit (one op or one batch) changed, as shipped to
/// peers and kept in the delta log.
///
/// It used dots `first..=last` of `origin`, and the origin had applied `deps`
/// before it. A replica applies it once it has applied `origin` up to
/// `first - 1` and everything in `deps`: that is causal delivery, and it makes a
/// batch visible all at once.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct DeltaGroup {
    pub origin: ReplicaId,
    pub first: u64,
    pub last: u64,
    pub deps: VersionVector,
    /// The origin's clock at commit, for lag and for the receiver's HLC.
    pub ts: Hlc,
    pub ops: Vec<DeltaOp>,
}
