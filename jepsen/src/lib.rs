//! arbiter's fault-injection harness, built the way Jepsen suites are: clients and a
//! generator drive real `arbiter` processes in network namespaces while a nemesis injects
//! faults; everything is recorded in a history that checkers judge against the safety
//! invariants S1–S7 of the design.
//!
//! # Layout
//!
//! - `history`: the recorded operations and their vocabulary (the contract between the
//!   runner and the checkers).
//! - `recorder`: appends operations to `history.jsonl` as they happen, on one clock.
//! - `hosts`: the bridge and one network namespace per witness, database host and BIND.
//! - `procs`: long-running processes inside the namespaces (start, kill -9, pause, stop).
//! - `cluster`: certificates, node files, policy and the processes of the system under test.
//! - `dns`: BIND's files, the policy's `[dns]`, and the queries of every DNS source.
//! - `helpers`: the health endpoint and the delay proxy (`jepsen health-server`, `jepsen proxy`).
//! - `hook_log`: the policy's hooks (`jepsen hook`), their call log and its collection
//!   into the history.
//! - `database`: each region's database (open for an epoch or closed), moved by the
//!   agent's on-gain and on-lose (`jepsen database`), a hard fence and the watchdog;
//!   `watchdog`: the monitor of each database host's watchdog device.
//! - `ctx`: what workloads and the nemesis share; who is leader, which region is active.
//! - `nemesis`: faults on a seeded schedule, and healing.
//! - `workload`: writers, readers and the operator.
//! - `runner`: one test from setup to teardown; `store`: where runs are kept.
//! - `spec`: `test.json`, the options of a run, and the group every workload uses.
//! - `checker`: the checkers (S1–S7, linearizability, faults, logs, recovery).
//! - `analyze`: judges a stored run; `results`: what it concluded (`results.json`);
//!   `report`: its HTML timeline and SVG plots.
//! - `published`: `RESULTS.md` from stored runs (`jepsen results`).
//! - `rng`: the seeded PRNG.

pub mod analyze;
pub mod checker;
pub mod cluster;
pub mod ctx;
pub mod database;
pub mod dns;
pub mod helpers;
pub mod history;
pub mod hook_log;
pub mod hosts;
pub mod nemesis;
pub mod procs;
pub mod published;
pub mod recorder;
pub mod report;
pub mod results;
pub mod rng;
pub mod runner;
pub mod spec;
pub mod store;
pub mod watchdog;
pub mod workload;
