//! [`StateCollector`]: gauges computed at every scrape from Raft's status, the applied state
//! and the leader's in-memory tables. Computed, not stored, so they can never drift from what
//! `status` shows.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;

use crate::config::Mode;
use crate::health::Verdict;
use crate::raft::Consensus;
use crate::state::{ClusterState, OperationState};

/// Roles reported by `arbiter_raft_role`, one series each.
const ROLES: [&str; 5] = ["leader", "follower", "candidate", "learner", "shutdown"];
/// Operation states reported by `arbiter_group_operation`: `none` when the group has no
/// unfinished operation.
const OPERATION_STATES: [&str; 5] = ["none", "awaiting-approval", "running", "halted", "aborting"];
const MODES: [Mode; 3] = [Mode::Auto, Mode::Manual, Mode::Frozen];
const VERDICTS: [&str; 3] = ["up", "down", "unknown"];

/// One gauge series: its labels and value.
type Row<L> = (L, i64);

/// Reads the witness's state at scrape time.
pub struct StateCollector {
    consensus: Arc<Consensus>,
    tables: Arc<dyn super::LiveRegions>,
}

impl fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateCollector").finish_non_exhaustive()
    }
}

impl StateCollector {
    pub fn new(consensus: Arc<Consensus>, tables: Arc<dyn super::LiveRegions>) -> Self {
        Self { consensus, tables }
    }
}

/// Writes one gauge family. The help text ends with a full stop, like the registered
/// families' (the library adds theirs).
fn gauges<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[Row<L>],
) -> Result<(), fmt::Error> {
    let help = format!("{help}.");
    let mut metric = encoder.encode_descriptor(name, &help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        metric.encode_family(labels)?.encode_gauge(value)?;
    }
    Ok(())
}

/// Writes one gauge without labels.
fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), fmt::Error> {
    encoder
        .encode_descriptor(name, &format!("{help}."), None, MetricType::Gauge)?
        .encode_gauge(&value)
}

/// The groups' gauges, copied out of the applied state so the lock is held only briefly.
#[derive(Default)]
struct GroupRows {
    active: Vec<Row<[(&'static str, String); 2]>>,
    epoch: Vec<Row<[(&'static str, String); 1]>>,
    revoked: Vec<Row<[(&'static str, String); 1]>>,
    mode: Vec<Row<[(&'static str, String); 2]>>,
    operation: Vec<Row<[(&'static str, String); 2]>>,
    step: Vec<Row<[(&'static str, String); 2]>>,
    break_glass: Vec<Row<[(&'static str, String); 1]>>,
    /// Replicated verdicts (the last up/down change the leader recorded), by region.
    recorded_verdicts: Vec<(String, String)>,
    policy_version: i64,
}

fn group_rows(s: &ClusterState) -> GroupRows {
    let mut rows = GroupRows {
        policy_version: s.policy_version as i64,
        ..GroupRows::default()
    };
    for g in s.groups.values() {
        let group = || ("group", g.name.clone());
        for region in &g.candidates {
            let value = i64::from(*region == g.active);
            rows.active
                .push(([group(), ("region", region.clone())], value));
        }
        if !g.candidates.contains(&g.active) {
            rows.active
                .push(([group(), ("region", g.active.clone())], 1));
        }
        rows.epoch.push(([group()], g.epoch as i64));
        rows.revoked.push(([group()], i64::from(g.revoked)));
        rows.break_glass
            .push(([group()], g.break_glass_approvals as i64));
        for mode in MODES {
            rows.mode.push((
                [group(), ("mode", mode.as_str().to_string())],
                i64::from(g.mode == mode),
            ));
        }
        let op = g.operation.and_then(|id| s.operations.get(&id));
        let state = match op.map(|o| &o.state) {
            None => "none",
            Some(OperationState::AwaitingApproval) => "awaiting-approval",
            Some(OperationState::Running) => "running",
            Some(OperationState::Halted { .. }) => "halted",
            Some(OperationState::Aborting { .. }) => "aborting",
            // A finished operation is no longer the group's current one.
            Some(OperationState::Done | OperationState::Aborted { .. }) => "none",
        };
        for s in OPERATION_STATES {
            rows.operation
                .push(([group(), ("state", s.to_string())], i64::from(s == state)));
        }
        if let Some(op) = op.filter(|o| !o.state.is_finished()) {
            rows.step
                .push(([group(), ("step", op.step.as_str().to_string())], 1));
        }
    }
    let regions = s.policy.iter().flat_map(|p| p.regions.iter());
    for r in regions {
        let verdict = s
            .verdicts
            .get(&r.name)
            .copied()
            .unwrap_or(Verdict::Unknown)
            .to_string();
        rows.recorded_verdicts.push((r.name.clone(), verdict));
    }
    rows
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let raft = self.consensus.raft_status();
        let role_rows: Vec<Row<[(&str, &str); 1]>> = ROLES
            .iter()
            .map(|r| ([("role", *r)], i64::from(*r == raft.role)))
            .collect();
        gauges(
            &mut encoder,
            "arbiter_raft_role",
            "Raft role of this witness: 1 for the current role, 0 for the others",
            &role_rows,
        )?;
        gauge(
            &mut encoder,
            "arbiter_raft_term",
            "Current Raft term of this witness",
            raft.term as i64,
        )?;
        gauge(
            &mut encoder,
            "arbiter_raft_leader_id",
            "Id of the leader this witness knows of; 0 when none is known",
            raft.leader.unwrap_or(0) as i64,
        )?;
        gauge(
            &mut encoder,
            "arbiter_raft_last_log_index",
            "Last log index appended to this witness's log",
            raft.last_log_index as i64,
        )?;
        gauge(
            &mut encoder,
            "arbiter_raft_commit_index",
            "Last log index this witness knows is committed",
            raft.committed_index as i64,
        )?;
        gauge(
            &mut encoder,
            "arbiter_raft_applied_index",
            "Last log index applied to this witness's state machine",
            raft.applied_index as i64,
        )?;
        if let Some(age) = raft.leader_contact_age {
            encoder
                .encode_descriptor(
                    "arbiter_raft_leader_contact_age_seconds",
                    "Time since this witness last had contact with a leader (on the leader: since a quorum last acknowledged it).",
                    None,
                    MetricType::Gauge,
                )?
                .encode_gauge(&age.as_secs_f64())?;
        }

        let rows = self.consensus.with_state(group_rows);
        gauge(
            &mut encoder,
            "arbiter_policy_version",
            "Version of the policy applied on this witness; 0 before the first",
            rows.policy_version,
        )?;
        gauges(
            &mut encoder,
            "arbiter_group_active",
            "Active region of each group: 1 for the active region, 0 for the other candidates",
            &rows.active,
        )?;
        gauges(
            &mut encoder,
            "arbiter_group_epoch",
            "Fencing epoch of each group in the applied state",
            &rows.epoch,
        )?;
        gauges(
            &mut encoder,
            "arbiter_group_revoked",
            "1 while the active region's lease is revoked by a failover in progress",
            &rows.revoked,
        )?;
        let help = "Approvals made alone with a break-glass certificate where the group asks \
             for more approvers, since the group was created (replicated: every witness shows \
             the same count); alert on any increase.";
        let mut metric = encoder.encode_descriptor(
            "arbiter_break_glass_approvals",
            help,
            None,
            MetricType::Counter,
        )?;
        for (labels, value) in &rows.break_glass {
            metric
                .encode_family(labels)?
                .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
                    &(*value as u64),
                    None,
                )?;
        }
        gauges(
            &mut encoder,
            "arbiter_group_mode",
            "Mode of each group: 1 for the current mode, 0 for the others",
            &rows.mode,
        )?;
        gauges(
            &mut encoder,
            "arbiter_group_operation",
            "State of each group's current operation (none, awaiting-approval, running, halted): 1 for the current",
            &rows.operation,
        )?;
        gauges(
            &mut encoder,
            "arbiter_group_operation_step",
            "Next step of each group's unfinished operation (1; absent without one)",
            &rows.step,
        )?;

        // The leader's live verdicts; other witnesses show the last change the leader recorded.
        let live = self.tables.regions();
        let leader = raft.role == "leader" && !live.is_empty();
        let mut verdict_rows: Vec<Row<[(&str, String); 3]>> = Vec::new();
        let mut voter_rows: Vec<Row<[(&str, String); 2]>> = Vec::new();
        if leader {
            for (region, view) in &live {
                for v in VERDICTS {
                    verdict_rows.push((
                        [
                            ("region", region.clone()),
                            ("verdict", v.to_string()),
                            ("source", "leader".to_string()),
                        ],
                        i64::from(view.verdict.as_str() == v),
                    ));
                }
                for (seen, n) in [
                    ("up", view.summary.up),
                    ("down", view.summary.down),
                    ("silent", view.summary.silent),
                ] {
                    voter_rows.push((
                        [("region", region.clone()), ("seen", seen.to_string())],
                        n as i64,
                    ));
                }
            }
        } else {
            for (region, verdict) in &rows.recorded_verdicts {
                for v in VERDICTS {
                    verdict_rows.push((
                        [
                            ("region", region.clone()),
                            ("verdict", v.to_string()),
                            ("source", "recorded".to_string()),
                        ],
                        i64::from(verdict == v),
                    ));
                }
            }
        }
        gauges(
            &mut encoder,
            "arbiter_region_verdict",
            "Quorum verdict on each region: 1 for the current verdict; source=leader is the leader's live verdict, source=recorded the last change in the replicated log",
            &verdict_rows,
        )?;
        gauges(
            &mut encoder,
            "arbiter_region_voters",
            "On the leader: voters whose fresh probe report sees each region up or down, or with no fresh report (silent)",
            &voter_rows,
        )?;
        Ok(())
    }
}
