//! The verdict duty of the leader (started and cancelled by the term supervisor): once a
//! round it turns the witnesses' probe reports into quorum verdicts (S7), records verdict
//! changes with their evidence, and proposes the operations [`super::decide::decide`]
//! decides on. The decisions are pure; this module only gathers their inputs and proposes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use super::decide::{decide, verdict_changes, Memory, Verdicts};
use super::propose::propose;
use super::reporter::ROUND;
use super::{Duty, LeaderTables, RegionView};
use crate::config::Policy;
use crate::health::Verdict;
use crate::raft::Consensus;

/// A report older than this many probe intervals (plus one second) no longer counts.
const STALE_INTERVALS: u32 = 3;

/// Runs until the supervisor cancels it; its memory (how long each region has been `up`)
/// starts empty with each term, as a new leader's must.
pub async fn run(duty: Duty) {
    let mut memory = Memory::default();
    let mut ticker = tokio::time::interval(ROUND);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(policy) = duty.consensus.with_state(|s| s.policy.clone()) else {
            continue;
        };
        let now = Instant::now();
        let verdicts = verdicts(&duty.consensus, &duty.tables, &policy, now);
        let plain: BTreeMap<String, Verdict> =
            verdicts.iter().map(|(r, (v, _))| (r.clone(), *v)).collect();
        memory.update(&plain, now);
        let state = duty.consensus.state();
        for command in verdict_changes(&state, &verdicts) {
            if let crate::state::Command::RecordVerdict {
                region, verdict, ..
            } = &command
            {
                tracing::info!(%region, %verdict, "region verdict changed");
            }
            if let Err(e) = propose(&duty.consensus, command).await {
                tracing::debug!(error = %e, "verdict not recorded");
                break;
            }
        }
        let activations = duty.observations.activations();
        for command in decide(&state, &policy, &verdicts, &memory, &activations, now) {
            if let crate::state::Command::StartOperation {
                group,
                to,
                approval_required,
                ..
            } = &command
            {
                tracing::info!(%group, %to, approval_required, "starting an operation on quorum verdicts");
            }
            if let Err(e) = propose(&duty.consensus, command).await {
                tracing::debug!(error = %e, "automatic operation not started");
                break;
            }
        }
    }
}

/// This round's quorum verdicts from the report table (also published in the leader's
/// tables for status, metrics and the validate step).
fn verdicts(
    consensus: &Consensus,
    tables: &LeaderTables,
    policy: &Policy,
    now: Instant,
) -> Verdicts {
    let view = consensus.view();
    let voters: BTreeSet<u64> = view
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.id)
        .collect();
    let stale_after = |region: &str| {
        let interval = policy
            .regions
            .iter()
            .find(|r| r.name == region)
            .and_then(|r| r.probes.iter().map(|p| p.interval()).max())
            .unwrap_or(Duration::from_secs(1));
        interval * STALE_INTERVALS + Duration::from_secs(1)
    };
    // The region-level verdict uses the shortest down_after of the groups it serves.
    let region_down_after = |region: &str| {
        policy
            .groups
            .iter()
            .filter(|g| g.candidates.iter().any(|c| c == region))
            .map(|g| Duration::from_millis(g.down_after_ms))
            .min()
            .unwrap_or(Duration::from_millis(crate::config::LEASE_MS_DEFAULT))
    };
    let probed: BTreeSet<String> = policy
        .regions
        .iter()
        .filter(|r| !r.probes.is_empty())
        .map(|r| r.name.clone())
        .collect();
    let (verdicts, summaries) = {
        let mut table = tables.reports.lock().expect("report table lock");
        table.retain_regions(&probed);
        let members: BTreeSet<u64> = view.members.iter().map(|m| m.id).collect();
        table.retain_witnesses(&members);
        let stale = probed
            .iter()
            .map(|r| stale_after(r))
            .max()
            .unwrap_or(Duration::from_secs(4));
        (
            table.verdicts(&voters, region_down_after, stale, now),
            table.summary(&voters, stale, now),
        )
    };
    let regions: BTreeMap<String, RegionView> = probed
        .iter()
        .map(|r| {
            let verdict = verdicts.get(r).map(|(v, _)| *v).unwrap_or(Verdict::Unknown);
            let summary = summaries.get(r).copied().unwrap_or_default();
            (r.clone(), RegionView { verdict, summary })
        })
        .collect();
    tables.set_regions(regions);
    verdicts
}
