//! Durable failover operations on the leader: executes each step of every running
//! operation, commits its completion before the next starts, resumes after a leader change,
//! and starts operations on quorum verdicts (auto mode) or proposes them (manual mode).
//! Decisions are made from the committed state; this module never changes the state except
//! by proposing commands.

pub mod engine;
pub mod executor;
pub mod reconciler;
mod tables;

pub use tables::{LeaderTables, LeaseHolder, RegionView};
