//! DNS drift repair on the leader: every `reconcile_interval_ms`, each external server is
//! compared with the committed state (the records of each group's active region, and the
//! server's `_arbiter.` marker naming the decision it last took); a server that publishes
//! something else (changed by hand, wiped, or missed an update) is repaired with one
//! conditional UPDATE, and the repair is recorded in the audit log. Only committed state is
//! ever published (S5); a group whose operation has not activated its new region yet keeps
//! the old.
//!
//! A repair is an external action, so it is decided from a state confirmed current: right
//! before each repair the reconciler does a linearizable read (ReadIndex: a quorum confirms
//! this witness is still the leader, and the local state has applied everything committed
//! before) and publishes what the state read after it says (S3). A new leader's applied
//! state may lag the commit; a deposed leader's surely does. A witness that cannot confirm
//! repairs nothing. The marker's prerequisite covers what is left: an UPDATE decided just
//! before another leader's newer one is refused by the server.
//!
//! It must never publish from a state it has not confirmed, never publish over a marker
//! that names a newer decision, and never retry a refusal within a round.

use std::collections::HashMap;
use std::time::Duration;

use crate::config::DnsServer;
use crate::dns::{DnsClient, DnsUpdateError, DriftReport, Publication, Published};
use crate::raft::Consensus;
use crate::state::{ClusterState, Command};
use crate::telemetry::Metrics;

/// How often the reconciler wakes to see whether a round is due.
const TICK: Duration = Duration::from_millis(250);

/// The DNS duty of one term; runs until the supervisor cancels it.
pub async fn run(duty: super::Duty) {
    let (consensus, metrics, dns) = (duty.consensus, duty.metrics, duty.dns);
    let mut next_round = tokio::time::Instant::now();
    // The refusal (or newer marker) last logged per (server, name): logged again only when it
    // changes, so a marker waiting for an operator is one warning, not one per round. At
    // most one entry per server and group name of the policy; cleared when in sync.
    let mut refusals: HashMap<(String, String), String> = HashMap::new();
    loop {
        tokio::time::sleep(TICK).await;
        if tokio::time::Instant::now() < next_round {
            continue;
        }
        // Compare with a current state, not one an election left behind.
        if let Err(e) = consensus.linearizable_read().await {
            tracing::debug!(error = %e, "leadership not confirmed: no DNS reconcile round");
            continue;
        }
        let Some((interval_ms, plan)) = consensus.with_state(plan) else {
            continue;
        };
        next_round = tokio::time::Instant::now() + Duration::from_millis(interval_ms);
        for Target {
            group,
            publication,
            servers,
        } in plan
        {
            for server in &servers {
                reconcile_server(
                    &consensus,
                    dns.as_ref(),
                    &metrics,
                    &mut refusals,
                    &group,
                    &publication,
                    server,
                )
                .await;
            }
        }
    }
}

/// One group's work in a round: its name, its publication and the external servers of its
/// zone.
struct Target {
    group: String,
    publication: Publication,
    servers: Vec<DnsServer>,
}

/// One round's work, from a committed state: the reconcile interval and every group that
/// publishes on external servers.
fn plan(state: &ClusterState) -> Option<(u64, Vec<Target>)> {
    let policy = state.policy.as_ref()?;
    let work = policy
        .groups
        .iter()
        .filter_map(|gp| {
            let (publication, servers) = Publication::from_state(state, &gp.name)?;
            (!servers.is_empty()).then(|| Target {
                group: gp.name.clone(),
                publication,
                servers,
            })
        })
        .collect();
    Some((policy.dns.reconcile_interval_ms, work))
}

/// What to do about one server's drift report, decided from the publication of a state
/// confirmed current (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    /// Records and marker match the committed decision.
    InSync,
    /// The marker waits for an operator (the error says what to do).
    Refused(DnsUpdateError),
    /// The server names a newer decision than this state: this witness is behind.
    Behind,
    /// Publish: the marker is missing or older, or the records were changed by hand.
    Repair,
}

fn decide(report: &DriftReport, publication: &Publication) -> Action {
    if report.needs_repair() {
        return Action::Repair;
    }
    match DnsUpdateError::of_marker(&publication.name, &publication.decision, &report.marker) {
        None => Action::InSync,
        Some(DnsUpdateError::Superseded { .. }) => Action::Behind,
        Some(e) => Action::Refused(e),
    }
}

/// Compares one server with `planned` and repairs it if needed, from a state confirmed
/// current right before the repair.
async fn reconcile_server(
    consensus: &Consensus,
    dns: &dyn DnsClient,
    metrics: &Metrics,
    refusals: &mut HashMap<(String, String), String>,
    group: &str,
    planned: &Publication,
    server: &DnsServer,
) {
    let key = (server.address.clone(), planned.name.clone());
    let report = match dns.drift(server, planned).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(server = %server.address, name = %planned.name, error = %e, "cannot compare DNS with the committed state");
            return;
        }
    };
    match decide(&report, planned) {
        Action::InSync => {
            refusals.remove(&key);
            return;
        }
        Action::Behind => {
            let text = format!("{:?}", report.marker);
            if refusals.get(&key) != Some(&text) {
                tracing::info!(server = %server.address, name = %planned.name, marker = %text, "DNS server names a newer decision than this witness's state; not repaired");
                refusals.insert(key, text);
            }
            return;
        }
        Action::Refused(e) => {
            let text = e.to_string();
            if refusals.get(&key) != Some(&text) {
                tracing::warn!(server = %server.address, group, name = %planned.name, error = %text, "DNS not repaired: the server's marker needs an operator");
                metrics.dns_repair(false);
                refusals.insert(key, text);
            }
            return;
        }
        Action::Repair => {}
    }
    // The decision to publish is taken now: confirm the leadership and read the state again.
    // A witness that cannot confirm it repairs nothing (S3).
    if let Err(e) = consensus.linearizable_read().await {
        tracing::info!(server = %server.address, name = %planned.name, error = %e, "leadership not confirmed: DNS drift not repaired");
        return;
    }
    let Some((current, _)) = consensus.with_state(|s| Publication::from_state(s, group)) else {
        return;
    };
    if &current != planned {
        // The drift was measured against another decision; the next round measures anew.
        tracing::info!(server = %server.address, name = %planned.name, "committed state moved during the comparison; repair left to the next round");
        return;
    }
    let found: Vec<String> = report
        .records
        .iter()
        .map(|d| format!("{:?} {:?} (expected {:?})", d.kind, d.found, d.expected))
        .chain(report.marker.is_drift().then(|| match &report.marker {
            crate::dns::MarkerVerdict::Older(d) => format!("marker {d}"),
            _ => "no marker".to_string(),
        }))
        .collect();
    let d = &current.decision;
    let detail = match dns.publish_to(server, &current).await {
        Ok(Published::Updated { .. }) => format!(
            "{} published {}; repaired to {} at epoch {}",
            current.name,
            found.join(", "),
            d.region,
            d.epoch
        ),
        Ok(Published::Superseded { by }) => {
            tracing::info!(server = %server.address, name = %current.name, newer = %by, "DNS server took a newer decision meanwhile; not repaired");
            return;
        }
        Err(e) => {
            tracing::warn!(server = %server.address, name = %current.name, error = %e, "DNS repair failed");
            metrics.dns_repair(false);
            return;
        }
    };
    refusals.remove(&key);
    tracing::info!(server = %server.address, group, %detail, "DNS drift repaired");
    metrics.dns_repair(true);
    let command = Command::RecordDnsRepair {
        group: group.to_string(),
        server: server.address.clone(),
        detail,
    };
    if let Err(e) = super::propose::propose(consensus, command).await {
        tracing::debug!(error = %e, "DNS repair not recorded");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RecordKind, RecordSet};
    use crate::dns::{Decision, Drift, Issued, MarkerProblem, MarkerVerdict};

    fn publication(epoch: u64) -> Publication {
        Publication {
            zone: "shop.example.".into(),
            name: "checkout.shop.example.".into(),
            ttl: 30,
            set: RecordSet {
                kind: RecordKind::A,
                values: vec!["198.51.100.20".into()],
            },
            old_kinds: vec![RecordKind::A],
            decision: Decision {
                group: "checkout".into(),
                region: "region-b".into(),
                epoch,
                policy_version: 1,
            },
            issued: Issued {
                epoch,
                policy_version: 1,
            },
        }
    }

    fn report(records_drift: bool, marker: MarkerVerdict) -> DriftReport {
        DriftReport {
            records: if records_drift {
                vec![Drift {
                    kind: RecordKind::A,
                    expected: vec!["198.51.100.20".into()],
                    found: vec!["203.0.113.66".into()],
                }]
            } else {
                Vec::new()
            },
            marker,
            marker_found: Vec::new(),
        }
    }

    /// Goal: the reconciler repairs a missing or older marker and records changed by hand
    /// under the current marker, and never repairs over a newer or refused marker, whatever
    /// the records look like. Table-driven over every marker verdict.
    #[test]
    fn repairs_only_missing_older_or_hand_edited_publications() {
        let p = publication(5);
        let older = Decision {
            epoch: 3,
            ..p.decision.clone()
        };
        let newer = Decision {
            epoch: 6,
            ..p.decision.clone()
        };
        let ahead = MarkerVerdict::Refused(MarkerProblem::Ahead {
            found: Decision {
                epoch: 99,
                ..p.decision.clone()
            },
            issued: p.issued,
        });
        let cases = [
            (false, MarkerVerdict::Same, Action::InSync),
            (true, MarkerVerdict::Same, Action::Repair),
            (false, MarkerVerdict::Absent, Action::Repair),
            (false, MarkerVerdict::Older(older.clone()), Action::Repair),
            (true, MarkerVerdict::Older(older), Action::Repair),
            (true, MarkerVerdict::Newer(newer.clone()), Action::Behind),
            (false, MarkerVerdict::Newer(newer), Action::Behind),
        ];
        for (records_drift, marker, expected) in cases {
            assert_eq!(
                decide(&report(records_drift, marker.clone()), &p),
                expected,
                "records drift {records_drift}, marker {marker:?}"
            );
        }
        for records_drift in [false, true] {
            match decide(&report(records_drift, ahead.clone()), &p) {
                Action::Refused(e) => {
                    assert!(e.is_marker_refusal(), "{e:?}");
                    assert!(e.to_string().contains("delete that TXT record"), "{e}");
                }
                other => panic!("a marker ahead of issued must be refused, got {other:?}"),
            }
        }
    }
}
