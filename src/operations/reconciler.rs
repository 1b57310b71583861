//! DNS drift repair on the leader: every `reconcile_interval_ms`, each external server is
//! compared with the committed state (the records of each group's active region); a server
//! that publishes something else (changed by hand, or missed an update) is repaired with one
//! UPDATE, and the repair is recorded in the audit log. Only committed state is ever
//! published (S5); a group whose operation has not activated its new region yet keeps the old.

use std::sync::Arc;
use std::time::Duration;

use super::executor::record_kinds;
use crate::api::now_ms;
use crate::raft::Consensus;
use crate::state::{Command, Proposal};
use crate::telemetry::Metrics;

/// How often the reconciler wakes to see whether a round is due.
const TICK: Duration = Duration::from_millis(250);

/// Runs forever on every witness; acts only while it is the leader.
pub async fn run(consensus: Arc<Consensus>, metrics: Arc<Metrics>) {
    let mut next_round = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(TICK).await;
        if !consensus.is_leader() || tokio::time::Instant::now() < next_round {
            continue;
        }
        let Some((policy, groups)) =
            consensus.with_state(|s| s.policy.clone().map(|p| (p, s.groups.clone())))
        else {
            continue;
        };
        next_round =
            tokio::time::Instant::now() + Duration::from_millis(policy.dns.reconcile_interval_ms);
        for gp in &policy.groups {
            let (Some(gd), Some(g)) = (&gp.dns, groups.get(&gp.name)) else {
                continue;
            };
            let Some(set) = gd.records.get(&g.active) else {
                continue;
            };
            let kinds = record_kinds(gd);
            for server in policy
                .dns
                .servers
                .iter()
                .filter(|s| s.zone.eq_ignore_ascii_case(&gd.zone))
            {
                if !consensus.is_leader() {
                    break;
                }
                let drift = match crate::dns::drift(server, &gd.name, set, &kinds).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(server = %server.address, name = %gd.name, error = %e, "cannot compare DNS with the committed state");
                        continue;
                    }
                };
                if drift.is_empty() {
                    continue;
                }
                let found: Vec<String> = drift
                    .iter()
                    .map(|d| format!("{:?} {:?} (expected {:?})", d.kind, d.found, d.expected))
                    .collect();
                let detail = match crate::dns::replace_rrset(server, &gd.name, gd.ttl, set, &kinds)
                    .await
                {
                    Ok(_) => format!(
                        "{} published {}; repaired to {} at epoch {}",
                        gd.name,
                        found.join(", "),
                        g.active,
                        g.epoch
                    ),
                    Err(e) => {
                        tracing::warn!(server = %server.address, name = %gd.name, error = %e, "DNS repair failed");
                        metrics.dns_repair(false);
                        continue;
                    }
                };
                tracing::info!(server = %server.address, group = %gp.name, %detail, "DNS drift repaired");
                metrics.dns_repair(true);
                let proposal = Proposal {
                    actor: "arbiter".to_string(),
                    at_ms: now_ms(),
                    request_id: String::new(),
                    command: Command::RecordDnsRepair {
                        group: gp.name.clone(),
                        server: server.address.clone(),
                        detail,
                    },
                };
                if let Err(e) = consensus.propose(proposal).await {
                    tracing::debug!(error = %e, "DNS repair not recorded");
                }
            }
        }
    }
}
