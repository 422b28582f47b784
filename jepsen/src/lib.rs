//! dotkv-jepsen: a fault-injection harness for dotkv in the method of Jepsen
//! (`DESIGN.md`, "Fault-injection harness").
//!
//! Real `dotkv` processes, each in its own network namespace, joined through
//! user-space UDP relays ([`cluster`]); concurrent HTTP clients that record
//! every operation ([`workload`], [`history`]); faults scheduled from a seed
//! ([`nemesis`]); pure checkers over the recorded history ([`checker`]);
//! a bare HTTP/1.1 exchange for answers whose headers matter ([`http1`]);
//! plots ([`plot`]); and the driver that ties a test together ([`run`]).

pub mod checker;
pub mod cluster;
pub mod docker;
pub mod history;
pub mod http1;
pub mod nemesis;
pub mod netns;
pub mod plot;
pub mod run;
pub mod workload;
