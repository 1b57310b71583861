//! arbiter's fault-injection harness, built the way Jepsen suites are: clients and a
//! generator drive real `arbiter` processes in network namespaces while a nemesis injects
//! faults; everything is recorded in a history that checkers judge against the safety
//! invariants S1–S7 of the design.
//!
//! # Layout
//!
//! - `history`: the recorded operations and their vocabulary (the contract between the
//!   runner and the checkers).

pub mod analyze;
pub mod checker;
pub mod history;
pub mod report;
pub mod spec;
