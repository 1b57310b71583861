//! Telemetry of one witness: Prometheus metrics (`/metrics`), liveness (`/healthz`) and
//! readiness (`/readyz`). `docs/metrics.md` lists every metric family and what the three
//! endpoints mean.
//!
//! This module owns the registry of each witness (one per witness, never process-global:
//! tests run several witnesses in one process) and the routes. Components record events
//! (fence decisions, steps, hooks, DNS answers, repairs, probe reports) through the
//! [`Metrics`] handle they are given; gauges of replicated state are computed from the
//! applied state at scrape time ([`StateCollector`]), so they always agree with `status`.
//! It must never change state, block a caller on I/O, or allocate per fence decision.

mod collector;
mod http;
mod metrics;
mod readiness;

use std::sync::Arc;

pub use collector::StateCollector;
pub use http::{router, Endpoints, PlaintextServer};
pub use metrics::{DnsResult, FenceResult, Metrics};
pub use readiness::{readiness, APPLY_LAG_MAX};

/// The leader's live region verdicts, read at scrape time (the leader's tables provide
/// them), so telemetry imports nothing above it.
pub trait LiveRegions: Send + Sync {
    fn regions(&self) -> std::collections::BTreeMap<String, crate::health::RegionView>;
}

use crate::raft::Consensus;

/// Counts every change of leader this witness observes: a known leader that differs from the
/// last one it knew, or the same witness at a new term. The first leader it learns of after
/// starting counts too. Runs until Raft stops.
pub async fn count_leader_changes(consensus: Arc<Consensus>, metrics: Arc<Metrics>) {
    let mut last: Option<(u64, u64)> = None;
    consensus
        .watch_leader(|leader, term| {
            if let Some(leader) = leader {
                if last != Some((leader, term)) {
                    last = Some((leader, term));
                    metrics.leader_changed();
                }
            }
        })
        .await;
}
