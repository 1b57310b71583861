//! The leader: what a witness does because it is the Raft leader, and what every witness
//! notes so that it can become one. Decisions are pure ([`decide`], [`plan`]); the duties
//! that act on them (the executor of operations, the verdict duty, the DNS reconciler) run
//! only under the term [`supervisor`], which starts them when a quorum confirms this
//! witness's leadership and stops them all once it is lost. Every witness probes and
//! reports ([`reporter`]) and notes when it saw decisions applied ([`observations`]).
//!
//! This module changes the replicated state only by proposing commands ([`propose`]); it
//! never acts for a decision that is not committed, and never acts on a leadership it has
//! not just confirmed.

use std::sync::Arc;

pub mod decide;
pub mod engine;
pub mod executor;
pub mod observations;
pub mod plan;
pub mod propose;
pub mod reconciler;
pub mod reporter;
pub mod supervisor;
mod tables;

pub use crate::health::RegionView;
pub use observations::Observations;
pub use tables::{LeaderTables, LeaseHolder};

use crate::dns::DnsClient;
use crate::hooks::{HookRunner, WalHistories};
use crate::raft::Consensus;
use crate::telemetry::Metrics;

/// What the leader duties share: consensus, the leader's tables, metrics, this witness's
/// primaries' WAL histories and its observations, and the two ways it acts on the world
/// (hooks and external DNS servers), which a simulation swaps. Cheap to clone.
#[derive(Clone)]
pub struct Duty {
    pub consensus: Arc<Consensus>,
    pub tables: Arc<LeaderTables>,
    pub metrics: Arc<Metrics>,
    pub wal: Arc<WalHistories>,
    pub observations: Arc<Observations>,
    /// Runs every hook of every step ([`crate::hooks::LocalHooks`] for real).
    pub hooks: Arc<dyn HookRunner>,
    /// Sends every UPDATE and drift query ([`crate::dns::Rfc2136`] for real).
    pub dns: Arc<dyn DnsClient>,
}
