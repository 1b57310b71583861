//! [`Metrics`]: the registry of one witness and the handles its components record events
//! with. Gauges of replicated state are not here: [`super::StateCollector`] computes them
//! from the applied state at every scrape.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use super::StateCollector;
use crate::raft::Consensus;
use crate::state::LeaseKind;
use crate::state::Step;

/// Label set of a family whose label values are known in advance (no allocation).
type StaticLabels<const N: usize> = [(&'static str, &'static str); N];
/// Label set with values from the policy or the cluster (regions, witness ids).
type Labels<const N: usize> = [(&'static str, String); N];

/// The fence kinds in the order of [`kind_index`].
const FENCE_KINDS: [&str; 3] = ["acquire", "renew", "check"];
/// Fence results: `allowed`, `refused` (an answer with the current active region and epoch),
/// `not-leader` (this witness is not the leader; gRPC callers follow it, HTTP forwards),
/// `error` (bad input, unknown group or region, no quorum).
const FENCE_RESULTS: [&str; 4] = ["allowed", "refused", "not-leader", "error"];

/// DNS response codes counted by name; anything else is `other`.
const DNS_RESULTS: [&str; 8] = [
    "noerror", "nxdomain", "refused", "servfail", "notimp", "formerr", "badvers", "other",
];

/// How a fence request ended, for [`Metrics::fence`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceResult {
    Allowed,
    Refused,
    NotLeader,
    Error,
}

impl FenceResult {
    fn index(self) -> usize {
        match self {
            FenceResult::Allowed => 0,
            FenceResult::Refused => 1,
            FenceResult::NotLeader => 2,
            FenceResult::Error => 3,
        }
    }
}

fn kind_index(kind: LeaseKind) -> usize {
    match kind {
        LeaseKind::Acquire => 0,
        LeaseKind::Renew => 1,
        LeaseKind::Check => 2,
    }
}

/// The response code of a DNS answer, for [`Metrics::dns_query`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsResult {
    NoError,
    NxDomain,
    Refused,
    ServFail,
    NotImp,
    FormErr,
    BadVers,
    Other,
}

/// Upper bounds of the fence latency buckets: 100 µs doubling to ~1.6 s. A decision on a
/// healthy leader takes well under a millisecond; the top buckets catch ReadIndex fallbacks
/// and forwarding over a WAN link.
fn fence_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_1, 2.0, 15)
}

/// Upper bounds of the step duration buckets: 5 ms doubling to ~5.5 min. Commits take
/// milliseconds; a fence step waits out a lease; rpo-check and hooks may take minutes.
fn step_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.005, 2.0, 17)
}

/// The metrics of one witness. Tests run several witnesses in one process, so there is no
/// process-global registry: each witness builds its own and passes it to what records.
#[derive(Debug)]
pub struct Metrics {
    /// Everything `/metrics` shows; only read after construction.
    registry: Registry,
    /// Fence requests by kind and result, resolved once so the hot path only increments.
    fence_requests: [[Counter; FENCE_RESULTS.len()]; FENCE_KINDS.len()],
    /// Fence decision latency by kind (whatever the result).
    fence_durations: [Histogram; FENCE_KINDS.len()],
    dns_queries: [Counter; DNS_RESULTS.len()],
    leader_changes: Counter,
    /// Step durations by step and outcome (`completed`, `no-op`, `halted`, `abandoned`).
    step_durations: Family<StaticLabels<2>, Histogram, fn() -> Histogram>,
    /// Hook calls by step, hook kind and result (`success`, `failure`).
    hook_calls: Family<StaticLabels<3>, Counter>,
    /// Probe reports recorded by this witness as leader, by region, witness and result.
    probe_reports: Family<Labels<3>, Counter>,
    /// DNS drift repairs: `repaired`, `failed`.
    dns_repairs: [Counter; 2],
    /// Refused requests by method and caller identity, at most [`DENIAL_SERIES_MAX`] series.
    denials: Family<Labels<2>, Counter>,
    /// Writes refused by `access.writes_per_minute`, by method and identity (bounded with
    /// the denials).
    rate_limited: Family<Labels<2>, Counter>,
    /// Connections closed after their handshake because their identity already held
    /// `CONNECTIONS_PER_IDENTITY_MAX` open, by limit and identity (bounded with the denials).
    connections_refused: Family<Labels<2>, Counter>,
    /// The (method, identity) pairs that have a series of their own, in either family.
    denial_series: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
}

/// Most (method, identity) series of `arbiter_access_denied_total`: identities come from
/// certificates of the cluster CA, so they are few, but a flood of denials must not grow
/// the registry without bound; past it, denials count under identity `other`.
pub const DENIAL_SERIES_MAX: usize = 256;
/// A denial is logged the first time for each series and then once in this many, so a
/// caller retrying in a loop cannot flood the log.
const DENIAL_LOG_EVERY: u64 = 100;

impl Metrics {
    /// A registry for the witness behind `consensus`, with the scrape-time gauges of its
    /// applied state and of the leader's `tables`.
    pub fn new(consensus: Arc<Consensus>, tables: Arc<dyn super::LiveRegions>) -> Arc<Metrics> {
        Self::with_collector(Box::new(StateCollector::new(consensus, tables)))
    }

    /// The event metrics, plus `collector` for the scrape-time gauges.
    fn with_collector(collector: Box<dyn Collector>) -> Arc<Metrics> {
        let mut registry = Registry::default();

        let fence = Family::<StaticLabels<2>, Counter>::default();
        let fence_requests = FENCE_KINDS.map(|kind| {
            FENCE_RESULTS
                .map(|result| fence.get_or_create_owned(&[("kind", kind), ("result", result)]))
        });
        registry.register(
            "arbiter_fence_requests",
            "Lease acquire, renew and check requests decided by this witness (gRPC and HTTP), by kind and result",
            fence,
        );
        let fence_latency: Family<StaticLabels<1>, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(fence_buckets()));
        let fence_durations =
            FENCE_KINDS.map(|kind| fence_latency.get_or_create_owned(&[("kind", kind)]));
        registry.register_with_unit(
            "arbiter_fence_request_duration",
            "Time this witness took to decide a lease request, including the linearizable read",
            Unit::Seconds,
            fence_latency,
        );

        let dns = Family::<StaticLabels<1>, Counter>::default();
        let dns_queries = DNS_RESULTS.map(|result| dns.get_or_create_owned(&[("result", result)]));
        registry.register(
            "arbiter_dns_queries",
            "Queries answered by this witness's embedded DNS server, by response code",
            dns,
        );

        let leader_changes = Counter::default();
        registry.register(
            "arbiter_raft_leader_changes",
            "Times this witness saw a new leader (another witness, or the same at a new term)",
            leader_changes.clone(),
        );

        let step_durations: Family<StaticLabels<2>, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(step_buckets()));
        registry.register_with_unit(
            "arbiter_operation_step_duration",
            "Time the leader took to perform an operation step, by step and outcome",
            Unit::Seconds,
            step_durations.clone(),
        );
        let hook_calls = Family::<StaticLabels<3>, Counter>::default();
        registry.register(
            "arbiter_hook_calls",
            "Hook calls made by this witness as leader, by step, hook kind and result",
            hook_calls.clone(),
        );
        let probe_reports = Family::<Labels<3>, Counter>::default();
        registry.register(
            "arbiter_probe_reports",
            "Probe reports recorded by this witness as leader, by region, reporting witness and result",
            probe_reports.clone(),
        );
        let repairs = Family::<StaticLabels<1>, Counter>::default();
        let dns_repairs =
            ["repaired", "failed"].map(|result| repairs.get_or_create_owned(&[("result", result)]));
        registry.register(
            "arbiter_dns_repairs",
            "DNS drift repairs of external servers by this witness as leader, by result (the audit log names the group and server)",
            repairs,
        );
        let denials = Family::<Labels<2>, Counter>::default();
        registry.register(
            "arbiter_access_denied",
            "Requests this witness refused because the caller's certificate lacks the role they need, by method and caller identity (certificate common name)",
            denials.clone(),
        );
        let rate_limited = Family::<Labels<2>, Counter>::default();
        registry.register(
            "arbiter_access_rate_limited",
            "Writes this witness refused because the caller's identity had used its access.writes_per_minute, by method and caller identity",
            rate_limited.clone(),
        );
        let connections_refused = Family::<Labels<2>, Counter>::default();
        registry.register(
            "arbiter_connections_refused",
            "Connections this witness closed right after their TLS handshake because the caller's identity already held the most connections allowed, by limit and caller identity",
            connections_refused.clone(),
        );
        registry.register_collector(collector);

        Arc::new(Metrics {
            registry,
            fence_requests,
            fence_durations,
            dns_queries,
            leader_changes,
            step_durations,
            hook_calls,
            probe_reports,
            dns_repairs,
            denials,
            rate_limited,
            connections_refused,
            denial_series: Default::default(),
        })
    }

    /// Every metric in the Prometheus text format (version 0.0.4).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// One decided lease request: an increment and an observation, no allocation.
    pub fn fence(&self, kind: LeaseKind, result: FenceResult, took: Duration) {
        let (k, r) = (kind_index(kind), result.index());
        self.fence_requests[k][r].inc();
        self.fence_durations[k].observe(took.as_secs_f64());
    }

    /// One refused request: counted by method and identity (bounded), and logged the first
    /// time for its series and then once in [`DENIAL_LOG_EVERY`].
    pub fn denied(&self, denied: &crate::access::Denied) {
        let count = self.count_refusal(&self.denials, ("method", &denied.method), &denied.identity);
        if count == 1 || count.is_multiple_of(DENIAL_LOG_EVERY) {
            tracing::warn!(
                method = %denied.method,
                identity = %denied.identity,
                needed = %denied.needed,
                has = %denied.has,
                count,
                "permission denied"
            );
        }
    }

    /// One write refused by `access.writes_per_minute`: counted and logged as [`Self::denied`].
    pub fn rate_limited(&self, method: &str, identity: &str, per_minute: u32) {
        let count = self.count_refusal(&self.rate_limited, ("method", method), identity);
        if count == 1 || count.is_multiple_of(DENIAL_LOG_EVERY) {
            tracing::warn!(method, identity, per_minute, count, "write rate limited");
        }
    }

    /// One connection closed because `identity` already held
    /// `CONNECTIONS_PER_IDENTITY_MAX` connections: counted and logged as [`Self::denied`].
    pub fn connection_refused(&self, identity: &str) {
        let limit = "connections-per-identity";
        let count = self.count_refusal(&self.connections_refused, ("limit", limit), identity);
        if count == 1 || count.is_multiple_of(DENIAL_LOG_EVERY) {
            tracing::warn!(
                identity,
                limit = crate::tls::CONNECTIONS_PER_IDENTITY_MAX,
                count,
                "connection closed: its identity holds the most connections allowed"
            );
        }
    }

    /// Increments `family`'s series of (`what`, `identity`), `what` being a label such as
    /// the refused method, or of identity `other` past [`DENIAL_SERIES_MAX`] series; returns
    /// the new count.
    fn count_refusal(
        &self,
        family: &Family<Labels<2>, Counter>,
        what: (&'static str, &str),
        identity: &str,
    ) -> u64 {
        let (label, value) = what;
        let key = (value.to_string(), identity.to_string());
        let identity = {
            let mut series = self.denial_series.lock().expect("denial series lock");
            if series.contains(&key) || series.len() < DENIAL_SERIES_MAX {
                series.insert(key);
                identity.to_string()
            } else {
                "other".to_string()
            }
        };
        family
            .get_or_create(&[(label, value.to_string()), ("identity", identity)])
            .inc()
            + 1
    }

    pub fn dns_query(&self, result: DnsResult) {
        self.dns_queries[result as usize].inc();
    }

    pub fn leader_changed(&self) {
        self.leader_changes.inc();
    }

    /// One performed step; `outcome` is `completed`, `no-op`, `halted` or `abandoned`.
    pub fn step(&self, step: Step, outcome: &'static str, took: Duration) {
        self.step_durations
            .get_or_create(&[("step", step.as_str()), ("outcome", outcome)])
            .observe(took.as_secs_f64());
    }

    /// One hook call for `step` (a step name) with a hook of `kind` (`exec`, `http`, ...).
    pub fn hook(&self, step: Step, kind: &'static str, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.hook_calls
            .get_or_create(&[("step", step.as_str()), ("kind", kind), ("result", result)])
            .inc();
    }

    /// One probe report of `witness` about `region` recorded in the leader's table.
    pub fn probe_report(&self, region: &str, witness: u64, ok: bool) {
        let result = if ok { "ok" } else { "failing" };
        self.probe_reports
            .get_or_create(&[
                ("region", region.to_string()),
                ("witness", witness.to_string()),
                ("result", result.to_string()),
            ])
            .inc();
    }

    /// One DNS drift repair attempt on an external server.
    pub fn dns_repair(&self, repaired: bool) {
        self.dns_repairs[usize::from(!repaired)].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No scrape-time gauges: the event metrics alone.
    #[derive(Debug)]
    struct Nothing;

    impl Collector for Nothing {
        fn encode(
            &self,
            _: prometheus_client::encoding::DescriptorEncoder,
        ) -> Result<(), std::fmt::Error> {
            Ok(())
        }
    }

    fn line_value(text: &str, series: &str) -> Option<String> {
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')
                .map(str::to_string)
        })
    }

    /// Goal: every pre-resolved series lands under its own labels (an index mix-up would
    /// count a refusal as allowed, or SERVFAIL as NOERROR), and pre-resolved series show 0
    /// before any event.
    #[test]
    fn events_land_under_their_labels() {
        let m = Metrics::with_collector(Box::new(Nothing));
        let text = m.encode();
        assert_eq!(
            line_value(
                &text,
                r#"arbiter_fence_requests_total{kind="renew",result="not-leader"}"#
            ),
            Some("0".into())
        );
        assert_eq!(
            line_value(&text, r#"arbiter_dns_repairs_total{result="failed"}"#),
            Some("0".into())
        );

        m.fence(
            LeaseKind::Renew,
            FenceResult::Refused,
            Duration::from_micros(300),
        );
        m.fence(
            LeaseKind::Check,
            FenceResult::Allowed,
            Duration::from_millis(2),
        );
        m.fence(
            LeaseKind::Check,
            FenceResult::Allowed,
            Duration::from_millis(2),
        );
        for (result, label) in [
            (DnsResult::NoError, "noerror"),
            (DnsResult::NxDomain, "nxdomain"),
            (DnsResult::Refused, "refused"),
            (DnsResult::ServFail, "servfail"),
            (DnsResult::NotImp, "notimp"),
            (DnsResult::FormErr, "formerr"),
            (DnsResult::BadVers, "badvers"),
            (DnsResult::Other, "other"),
        ] {
            m.dns_query(result);
            let text = m.encode();
            assert_eq!(
                line_value(
                    &text,
                    &format!("arbiter_dns_queries_total{{result=\"{label}\"}}")
                ),
                Some("1".into()),
                "{label}"
            );
        }
        m.dns_repair(false);
        m.step(Step::Fence, "completed", Duration::from_millis(1_200));
        m.hook(Step::Promote, "exec", true);
        m.probe_report("region-a", 3, false);
        m.leader_changed();

        let text = m.encode();
        let expect = [
            (
                r#"arbiter_fence_requests_total{kind="renew",result="refused"}"#,
                "1",
            ),
            (
                r#"arbiter_fence_requests_total{kind="renew",result="allowed"}"#,
                "0",
            ),
            (
                r#"arbiter_fence_requests_total{kind="check",result="allowed"}"#,
                "2",
            ),
            (
                r#"arbiter_fence_request_duration_seconds_count{kind="check"}"#,
                "2",
            ),
            (
                r#"arbiter_fence_request_duration_seconds_bucket{kind="renew",le="0.0004"}"#,
                "1",
            ),
            (
                r#"arbiter_fence_request_duration_seconds_bucket{kind="renew",le="0.0002"}"#,
                "0",
            ),
            (r#"arbiter_dns_repairs_total{result="failed"}"#, "1"),
            (r#"arbiter_dns_repairs_total{result="repaired"}"#, "0"),
            (
                r#"arbiter_operation_step_duration_seconds_count{step="fence",outcome="completed"}"#,
                "1",
            ),
            (
                r#"arbiter_hook_calls_total{step="promote",kind="exec",result="success"}"#,
                "1",
            ),
            (
                r#"arbiter_probe_reports_total{region="region-a",witness="3",result="failing"}"#,
                "1",
            ),
            ("arbiter_raft_leader_changes_total", "1"),
        ];
        for (series, value) in expect {
            assert_eq!(
                line_value(&text, series),
                Some(value.into()),
                "{series} in\n{text}"
            );
        }
    }

    /// Goal: denials are counted by method and identity, and a flood of identities cannot
    /// grow the registry past its bound: the rest count under `other`.
    #[test]
    fn denials_are_counted_per_identity_within_a_bound() {
        let m = Metrics::with_collector(Box::new(Nothing));
        let denied = |identity: String| crate::access::Denied {
            method: "Failover".into(),
            identity,
            needed: "the operator or admin role".into(),
            has: "no role".into(),
        };
        m.denied(&denied("vic".into()));
        m.denied(&denied("vic".into()));
        for i in 0..DENIAL_SERIES_MAX + 50 {
            m.denied(&denied(format!("flood-{i}")));
        }
        let text = m.encode();
        let series = |identity: &str| {
            line_value(
                &text,
                &format!(
                    r#"arbiter_access_denied_total{{method="Failover",identity="{identity}"}}"#
                ),
            )
        };
        assert_eq!(series("vic"), Some("2".into()));
        assert_eq!(series("flood-0"), Some("1".into()));
        // "vic" and the first 255 flooders have series of their own; 51 more count as other.
        assert_eq!(
            series(&format!("flood-{}", DENIAL_SERIES_MAX - 2)),
            Some("1".into())
        );
        assert_eq!(series(&format!("flood-{}", DENIAL_SERIES_MAX - 1)), None);
        assert_eq!(series("other"), Some("51".into()));
        let lines = text
            .lines()
            .filter(|l| l.starts_with("arbiter_access_denied_total{"))
            .count();
        assert_eq!(lines, DENIAL_SERIES_MAX + 1);
    }

    /// Goal: a connection closed at the per-identity limit is counted under that limit and
    /// identity, apart from the denials of the same identity.
    #[test]
    fn refused_connections_are_counted_per_identity() {
        let m = Metrics::with_collector(Box::new(Nothing));
        m.connection_refused("vic");
        m.connection_refused("vic");
        m.connection_refused(crate::tls::UNNAMED_IDENTITY);
        let text = m.encode();
        let series = |identity: &str| {
            line_value(
                &text,
                &format!(
                    r#"arbiter_connections_refused_total{{limit="connections-per-identity",identity="{identity}"}}"#
                ),
            )
        };
        assert_eq!(series("vic"), Some("2".into()), "{text}");
        assert_eq!(series("unknown"), Some("1".into()), "{text}");
        assert!(!text.contains("arbiter_access_denied_total{"), "{text}");
    }
}
