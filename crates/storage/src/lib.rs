//! dotkv-storage: how a node keeps its replica on disk, in RocksDB.
//!
//! - `objects`: one row per counter, register, multi-value register and flag
//!   (kind tag + key → encoded state), and one row per non-empty set that
//!   marks it as such (it holds no count, so an add writes no second row), so
//!   keys of every type can be listed by prefix;
//! - `set_elems`: one row per set element (set key + element → its dots), so
//!   adding to a set of a million elements costs what adding to an empty one
//!   costs, and sets are read page by page;
//! - `deltas`: the delta log, (origin, first seq) → delta group;
//! - `meta`: replica id, version vector, HLC high-water mark.
//!
//! All mutations go through one writer thread ([`Writer`]) that applies a group
//! of requests, then commits state, delta-log entries and version vector in one
//! `WriteBatch`: recovery after a crash has nothing to replay by hand. Many
//! concurrent requests share one commit, and so one fsync when
//! `durability = "fsync"`.

pub mod apply;
pub mod db;
pub mod error;
pub mod keys;
pub mod model;
pub mod writer;

pub use db::{ae_row_delta, AeRow, Store, StoreOptions, StoreStats, AE_OBJECTS, AE_SET_ELEMS};
pub use error::StorageError;
pub use model::{DeltaGroup, DeltaOp, ObjectKind, Op, OpOutput};
pub use writer::{
    Committed, Durability, RemoteReply, WriteOutcome, Writer, WriterOptions, WriterStats,
};
