//! Health and automatic decisions. On every witness: probes every region of the policy and
//! reports what it sees to the leader. On the leader: turns the reports into quorum
//! verdicts (S7), records verdict changes with their evidence, and starts failovers: in
//! `auto` mode by itself, in `manual` mode as an operation waiting for approval. `frozen`
//! groups are never touched. Anti-flap: a per-group cooldown after any activation or
//! aborted operation; automatic failback only when the policy enables it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{LeaderTables, RegionView};
use crate::api::now_ms;
use crate::config::{Mode, Policy};
use crate::health::{Evidence, ProbeOptions, ProbeSpec, Prober, Seen, Verdict};
use crate::proto::raft_client::RaftClient;
use crate::proto::{ProbeReport, RegionProbe};
use crate::raft::{Consensus, Network};
use crate::state::{ClusterState, Command, OperationKind, OperationState, Proposal};
use crate::telemetry::Metrics;

/// How often a witness reports its probe results and the leader re-evaluates verdicts.
const ROUND: Duration = Duration::from_millis(250);
/// A report older than this many probe intervals (plus one second) no longer counts.
const STALE_INTERVALS: u32 = 3;

/// Runs forever on every witness; spawn it once. `probe_options` are this witness's own
/// (from its node file) and apply to every region the policy names.
pub async fn run(
    consensus: Arc<Consensus>,
    tables: Arc<LeaderTables>,
    network: Network,
    probe_options: ProbeOptions,
    dns_addr: String,
    metrics: Arc<Metrics>,
) {
    let mut prober: Option<(u64, Prober)> = None;
    let mut engine = Engine::default();
    // Kept whatever this witness's role, so a new leader already knows when it saw each
    // activation (the anti-flap cooldown is not reset by an election).
    let mut activations = Activations::default();
    let mut ticker = tokio::time::interval(ROUND);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let (version, policy) = consensus.with_state(|s| (s.policy_version, s.policy.clone()));
        let Some(policy) = policy else { continue };
        consensus.with_state(|s| activations.observe(s, Instant::now()));
        let specs: BTreeMap<String, Vec<ProbeSpec>> = policy
            .regions
            .iter()
            .filter(|r| !r.probes.is_empty())
            .map(|r| (r.name.clone(), r.probes.clone()))
            .collect();
        match &mut prober {
            Some((v, p)) if *v != version => {
                p.update(specs);
                *v = version;
            }
            Some(_) => {}
            None => prober = Some((version, Prober::start(specs, probe_options))),
        }
        let observations = prober
            .as_ref()
            .map(|(_, p)| p.snapshot())
            .unwrap_or_default();
        let report = ProbeReport {
            dns_addr: dns_addr.clone(),
            witness: consensus.id(),
            regions: observations
                .into_iter()
                .map(|o| RegionProbe {
                    region: o.region,
                    ok: o.ok,
                    since_age_ms: o.since_age.as_millis() as u64,
                    detail: o.detail,
                })
                .collect(),
        };
        if consensus.is_leader() {
            record_local(&tables, &metrics, &report);
            engine
                .evaluate(&consensus, &tables, &policy, &activations)
                .await;
        } else {
            engine = Engine::default();
            send_report(&consensus, &network, report).await;
        }
    }
}

fn record_local(tables: &LeaderTables, metrics: &Metrics, report: &ProbeReport) {
    tables.record_dns_addr(report.witness, &report.dns_addr);
    let now = Instant::now();
    let mut table = tables.reports.lock().expect("report table lock");
    for r in &report.regions {
        let recorded = table.record(
            report.witness,
            &r.region,
            r.ok,
            Duration::from_millis(r.since_age_ms),
            &r.detail,
            now,
        );
        if recorded.is_ok() {
            metrics.probe_report(&r.region, report.witness, r.ok);
        }
    }
}

async fn send_report(consensus: &Consensus, network: &Network, report: ProbeReport) {
    let Some((_, addr)) = consensus.leader_addr() else {
        return;
    };
    let Ok(channel) = network.channel(&addr) else {
        return;
    };
    let mut req = tonic::Request::new(report);
    req.set_timeout(ROUND * 4);
    if let Err(e) = RaftClient::new(channel).report_probes(req).await {
        tracing::debug!(leader = %addr, error = %e, "probe report not delivered");
    }
}

/// When this witness first saw each group's latest activation and latest aborted operation
/// applied, on its own monotonic clock: the anti-flap cooldown runs from there. Never the
/// wall clock (the proposer's and the leader's may disagree by any amount). Kept on every
/// witness whatever its role, so an election does not restart the cooldown; a witness that
/// starts counts what its state already holds from its start (it cannot know better).
#[derive(Debug, Default)]
pub(crate) struct Activations {
    /// Group -> (log index of its last change of active region, first seen).
    activated: HashMap<String, (u64, Instant)>,
    /// Group -> (id of its newest aborted operation, first seen).
    aborted: HashMap<String, (u64, Instant)>,
}

impl Activations {
    pub(crate) fn observe(&mut self, state: &ClusterState, now: Instant) {
        for g in state.groups.values() {
            // A group that no operation has activated yet has no cooldown.
            if g.activated_at_ms == 0 {
                continue;
            }
            let seen = self
                .activated
                .entry(g.name.clone())
                .or_insert((g.changed_at_index, now));
            if seen.0 != g.changed_at_index {
                *seen = (g.changed_at_index, now);
            }
        }
        for op in state.operations.values() {
            if !matches!(op.state, OperationState::Aborted { .. }) {
                continue;
            }
            let seen = self.aborted.entry(op.group.clone()).or_insert((op.id, now));
            if seen.0 < op.id {
                *seen = (op.id, now);
            }
        }
        self.activated.retain(|g, _| state.groups.contains_key(g));
        self.aborted.retain(|g, _| state.groups.contains_key(g));
    }

    /// Whether `cooldown` has passed, on this witness's clock, since it saw the group's
    /// last activation or abort.
    pub(crate) fn cooled(&self, group: &str, cooldown: Duration, now: Instant) -> bool {
        let since = [self.activated.get(group), self.aborted.get(group)]
            .into_iter()
            .flatten()
            .map(|(_, t)| *t)
            .max();
        since.is_none_or(|t| now.duration_since(t) >= cooldown)
    }
}

/// The leader's memory between rounds (rebuilt by a new leader).
#[derive(Default)]
struct Engine {
    /// Since when each region has been `up` without interruption (for automatic failback).
    up_since: HashMap<String, Instant>,
}

impl Engine {
    async fn evaluate(
        &mut self,
        consensus: &Consensus,
        tables: &LeaderTables,
        policy: &Policy,
        activations: &Activations,
    ) {
        let now = Instant::now();
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
        for (region, v) in &regions {
            if v.verdict == Verdict::Up {
                self.up_since.entry(region.clone()).or_insert(now);
            } else {
                self.up_since.remove(region);
            }
        }
        tables.set_regions(regions);

        let state = consensus.state();
        // Record verdict changes between up and down, with the evidence.
        for (region, (verdict, evidence)) in &verdicts {
            if *verdict == Verdict::Unknown {
                continue;
            }
            if state.verdicts.get(region).map(String::as_str) != Some(verdict.as_str()) {
                let command = Command::RecordVerdict {
                    region: region.clone(),
                    verdict: verdict.as_str().to_string(),
                    evidence: describe_evidence(evidence),
                };
                if let Err(e) = propose(consensus, command).await {
                    tracing::debug!(error = %e, "verdict not recorded");
                    return;
                }
                tracing::info!(%region, %verdict, "region verdict changed");
            }
        }
        self.decide(consensus, policy, &state, &verdicts, activations, now)
            .await;
    }

    /// Starts at most one operation per group per round.
    async fn decide(
        &mut self,
        consensus: &Consensus,
        policy: &Policy,
        state: &ClusterState,
        verdicts: &BTreeMap<String, (Verdict, Evidence)>,
        activations: &Activations,
        now: Instant,
    ) {
        let verdict_of = |region: &str| {
            verdicts
                .get(region)
                .map(|(v, _)| *v)
                .unwrap_or(Verdict::Unknown)
        };
        for gp in &policy.groups {
            let Some(g) = state.groups.get(&gp.name) else {
                continue;
            };
            let busy = g.operation.is_some() && state.supersedable_operation(&gp.name).is_none();
            if g.mode == Mode::Frozen || busy {
                continue;
            }
            if !activations.cooled(&gp.name, Duration::from_millis(gp.cooldown_ms), now) {
                continue;
            }
            let target = gp
                .candidates
                .iter()
                .find(|c| **c != g.active && verdict_of(c) == Verdict::Up);
            let (kind, to, reason) = if verdict_of(&g.active) == Verdict::Down {
                let Some(to) = target else { continue };
                let evidence = verdicts
                    .get(&g.active)
                    .map(|(_, e)| describe_evidence(e))
                    .unwrap_or_default();
                (
                    OperationKind::Automatic,
                    to.clone(),
                    format!(
                        "{} is down by quorum verdict; {to} is up\n{evidence}",
                        g.active
                    ),
                )
            } else if let Some(after) = gp.failback_after_ms {
                let preferred = &gp.candidates[0];
                let stable = self
                    .up_since
                    .get(preferred)
                    .is_some_and(|t| now.duration_since(*t) >= Duration::from_millis(after));
                if *preferred == g.active || !stable {
                    continue;
                }
                (
                    OperationKind::Failback,
                    preferred.clone(),
                    format!("{preferred} has been up for {after} ms: automatic failback"),
                )
            } else {
                continue;
            };
            let approval_required = g.mode == Mode::Manual;
            tracing::info!(group = %gp.name, from = %g.active, %to, approval_required, "starting an operation on quorum verdicts");
            let command = Command::StartOperation {
                group: gp.name.clone(),
                to,
                kind,
                reason,
                approval_required,
            };
            if let Err(e) = propose(consensus, command).await {
                tracing::debug!(error = %e, "automatic operation not started");
                return;
            }
        }
    }
}

async fn propose(
    consensus: &Consensus,
    command: Command,
) -> Result<(), crate::raft::ConsensusError> {
    let proposal = Proposal {
        actor: "arbiter".to_string(),
        at_ms: now_ms(),
        request_id: String::new(),
        command,
    };
    let response = consensus.propose(proposal).await?;
    if let Err(refusal) = response.outcome {
        tracing::debug!(%refusal, "automatic proposal refused");
    }
    Ok(())
}

/// One line per voter: what it saw, for how long, how fresh its report is.
fn describe_evidence(e: &Evidence) -> String {
    let mut out = format!("{} voters, majority {}:", e.voters, e.majority);
    for w in &e.witnesses {
        let seen = match w.seen {
            Seen::Up => "up",
            Seen::Down => "down",
            Seen::Failing => "failing (not yet long enough)",
            Seen::Stale => "stale report",
            Seen::Missing => "no report",
        };
        out += &format!(
            "\n  witness {}: {seen} for {} ms (report {} ms old){}",
            w.witness,
            w.for_ms,
            w.report_age_ms,
            if w.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", w.detail)
            }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Step, StepOutcome};

    fn apply(s: &mut ClusterState, index: u64, at_ms: u64, command: Command) {
        let p = Proposal {
            actor: "test".into(),
            at_ms,
            request_id: String::new(),
            command,
        };
        let r = s.apply(index, &p);
        assert!(r.outcome.is_ok(), "{r:?}");
    }

    fn failover(s: &mut ClusterState, index: u64, at_ms: u64, to: &str) -> u64 {
        let id = s.last_operation_id + 1;
        let start = Command::StartOperation {
            group: "checkout".into(),
            to: to.into(),
            kind: OperationKind::Failover,
            reason: String::new(),
            approval_required: false,
        };
        apply(s, index, at_ms, start);
        let mut i = index;
        for step in [
            Step::Revoke,
            Step::Fence,
            Step::RpoCheck,
            Step::Promote,
            Step::Activate,
            Step::Dns,
            Step::Validate,
        ] {
            i += 1;
            let complete = Command::CompleteStep {
                operation: id,
                step,
                outcome: StepOutcome::Completed,
                detail: String::new(),
            };
            apply(s, i, at_ms, complete);
        }
        i + 1
    }

    /// Goal: the anti-flap cooldown runs on this witness's monotonic clock from when it saw
    /// the activation applied, whatever the proposer's wall clock said, and an abort
    /// restarts it. Method: an activation stamped an hour ahead (a proposer whose clock is
    /// wrong); the wall-clock rule this replaced would hold the group back for that hour.
    #[test]
    fn cooldown_runs_from_when_the_activation_was_seen_not_from_the_proposers_clock() {
        let policy = Policy::parse(
            "p",
            "[[regions]]\nname = \"region-a\"\n[[regions]]\nname = \"region-b\"\n\n[[groups]]\nname = \"checkout\"\ncandidates = [\"region-a\", \"region-b\"]\nmode = \"auto\"\ncooldown_ms = 60000\n",
        )
        .unwrap();
        let cooldown = Duration::from_millis(60_000);
        let mut s = ClusterState::default();
        let wall = now_ms();
        apply(
            &mut s,
            1,
            wall,
            Command::ApplyPolicy {
                policy,
                if_version: 0,
            },
        );
        let mut activations = Activations::default();
        let t0 = Instant::now();
        activations.observe(&s, t0);
        assert!(
            activations.cooled("checkout", cooldown, t0),
            "no activation yet: no cooldown"
        );

        let skewed = wall + 3_600_000;
        let next = failover(&mut s, 2, skewed, "region-b");
        let t1 = t0 + Duration::from_secs(1);
        activations.observe(&s, t1);
        assert!(!activations.cooled("checkout", cooldown, t1 + cooldown / 2));
        assert!(activations.cooled("checkout", cooldown, t1 + cooldown));
        let g = &s.groups["checkout"];
        assert!(
            now_ms().saturating_sub(g.activated_at_ms) < cooldown.as_millis() as u64,
            "the wall-clock rule would still hold the group back"
        );
        // Seeing the same state again later does not restart the cooldown.
        activations.observe(&s, t1 + cooldown);
        assert!(activations.cooled("checkout", cooldown, t1 + cooldown));

        // An aborted operation restarts it from when it was seen.
        let id = s.last_operation_id + 1;
        apply(
            &mut s,
            next,
            wall,
            Command::StartOperation {
                group: "checkout".into(),
                to: "region-a".into(),
                kind: OperationKind::Failover,
                reason: String::new(),
                approval_required: false,
            },
        );
        apply(
            &mut s,
            next + 1,
            wall,
            Command::AbortOperation {
                operation: id,
                reason: "operator".into(),
            },
        );
        let t2 = t1 + cooldown * 2;
        activations.observe(&s, t2);
        assert!(!activations.cooled("checkout", cooldown, t2 + cooldown / 2));
        assert!(activations.cooled("checkout", cooldown, t2 + cooldown));
    }
}
