//! arbiter's fault-injection harness, built the way Jepsen suites are: clients and a
//! generator drive real `arbiter` processes in network namespaces while a nemesis injects
//! faults; everything is recorded in a history that checkers judge against the safety
//! invariants S1–S7 of the design.
//!
//! # Layout
//!
//! - `history`: the recorded operations and their vocabulary (the contract between the
//!   runner and the checkers).
//! - `spec`: `test.json`, the options of a run.
//! - `checker`: one checker per property (S1, S2, S4, S5, S6, linearizability, faults,
//!   node logs, recovery).
//! - `analyze`: runs every checker on a stored run and writes `results.json` and the report.
//! - `report`: `timeline.html`, `latency.svg`, `rate.svg`.

pub mod analyze;
pub mod checker;
pub mod history;
pub mod report;
pub mod spec;
