//! What every witness tells the leader, whatever its role: it probes every region of the
//! policy and, once a round, reports what it sees to the leader (or records it in its own
//! tables when it is the leader). One witness's view is evidence only as one vote of a
//! quorum (S7). This module never proposes anything.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::LeaderTables;
use crate::config::ProbeSpec;
use crate::health::{ProbeOptions, ProbeRunner, Prober};
use crate::proto::raft_client::RaftClient;
use crate::proto::{ProbeReport, RegionProbe};
use crate::raft::{Consensus, Network};
use crate::telemetry::Metrics;
use futures::future::BoxFuture;

/// How often a witness reports its probe results.
pub const ROUND: Duration = Duration::from_millis(250);
/// A report is larger than this only when something is wrong: dropped, not recorded.
const DNS_ADDR_BYTES_MAX: usize = 256;

/// How a follower's report reaches the leader: over gRPC ([`Network`]) for real; a
/// simulation delivers it through its own network. Best effort: a lost report is the next
/// round's to replace.
pub trait ReportSink: Send + Sync + 'static {
    fn send<'a>(&'a self, consensus: &'a Consensus, report: ProbeReport) -> BoxFuture<'a, ()>;
}

impl ReportSink for Network {
    fn send<'a>(&'a self, consensus: &'a Consensus, report: ProbeReport) -> BoxFuture<'a, ()> {
        Box::pin(send(consensus, self, report))
    }
}

/// Runs forever on every witness; spawn it once. `probe_options` are this witness's own
/// (from its node file) and apply to every region the policy names.
pub async fn run(
    consensus: Arc<Consensus>,
    tables: Arc<LeaderTables>,
    sink: Arc<dyn ReportSink>,
    probe_options: ProbeOptions,
    dns_addr: String,
    metrics: Arc<Metrics>,
    probes: Option<Arc<dyn ProbeRunner>>,
) {
    let mut prober: Option<(u64, Prober)> = None;
    let mut ticker = tokio::time::interval(ROUND);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let (version, policy) = consensus.with_state(|s| (s.policy_version, s.policy.clone()));
        let Some(policy) = policy else { continue };
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
            None => {
                let started = Prober::start_with(specs, probe_options, probes.clone());
                prober = Some((version, started));
            }
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
            let _ = accept(&tables, &metrics, &report);
        } else {
            sink.send(&consensus, report).await;
        }
    }
}

/// Records a probe report (the leader's own, or one a witness sent) in the leader's
/// tables. Refused whole when it names more regions than a policy can.
pub fn accept(
    tables: &LeaderTables,
    metrics: &Metrics,
    report: &ProbeReport,
) -> Result<(), &'static str> {
    if report.regions.len() > crate::health::TABLE_REGIONS_MAX {
        return Err("too many regions in one probe report");
    }
    if report.dns_addr.len() <= DNS_ADDR_BYTES_MAX {
        tables.record_dns_addr(report.witness, &report.dns_addr);
    }
    let now = Instant::now();
    let mut table = tables.reports.lock().expect("report table lock");
    for r in &report.regions {
        let age = Duration::from_millis(r.since_age_ms);
        match table.record(report.witness, &r.region, r.ok, age, &r.detail, now) {
            Ok(()) => metrics.probe_report(&r.region, report.witness, r.ok),
            Err(e) => tracing::warn!(witness = report.witness, error = %e, "probe report refused"),
        }
    }
    Ok(())
}

async fn send(consensus: &Consensus, network: &Network, report: ProbeReport) {
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

/// The leader's side of `ReportProbes`: reports go into the leader's tables.
pub struct Reports {
    pub tables: Arc<LeaderTables>,
    pub metrics: Arc<Metrics>,
}

impl crate::raft::ProbeReports for Reports {
    fn accept(&self, report: &ProbeReport) -> Result<(), &'static str> {
        accept(&self.tables, &self.metrics, report)
    }
}
