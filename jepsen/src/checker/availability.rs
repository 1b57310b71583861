//! Availability: how long the active region's primary could not write while no failover
//! was due, so that an outage arbiter causes is a number in every run, held to a bound.
//!
//! A *gap* is the time between two consecutive accepted writes of a group (the completion
//! of one, the invocation of the next; the writers write every 50 ms). A gap whose two
//! writes differ in region or epoch spans an activation: a failover or failback, requested
//! or due, whose duration is the writers' view of its RTO (`longest-failover-gap-ms`, not
//! judged). Any other gap is an *outage* of the region that kept the lease, less the time in
//! which a failover was due or the cluster could not be asked:
//!
//! - a fault that makes the region unhealthy or unreachable from every witness, or leaves
//!   no quorum: `health`; a `partition` of the active database host (`db-cut`,
//!   `split-brain`, `leader-hook`, the cuts of `lease-lowered`, `readd` and
//!   `clock-rate-beyond`); the pause of the active region's agent (`pause` variant `agent`,
//!   `paused-agent`); `kill` of every witness; the group removed (`policy` variant `remove-readd`, `readd`); from its
//!   invocation to its heal, plus [`GRACE_LEASES`] leases for the system to recover;
//! - an operation in hand: an operator's failover, failback, abort, retry, skip or approval
//!   from its invocation to its completion, plus the same grace.
//!
//! Partitions among witnesses, kills and pauses of a minority or of the leader, loss,
//! delay, clock faults and policy changes of leases or modes excuse nothing: the active
//! region stays healthy and reachable from a quorum, so an outage under them is arbiter's.
//! The longest outage must stay within [`OUTAGE_LEASES_MAX`] leases: generous, because a
//! renewal that cannot finish within a lease under a 400 ms delay or an election costs the
//! lease until the fault heals (a few seconds), and because this catches an arbiter that
//! stops granting leases for good, not a slow one.
//!
//! `outage-total-ms` sums the outages longer than [`PACING_MS_MAX`] (shorter gaps are the
//! writers' pacing).
//!
//! No verdict without evidence: `unknown` without the writes workload, with a writer's
//! `workload-error`, or with fewer than [`WRITES_MIN`] accepted writes.

use super::{fmt_s, CheckResult, Context, OpRef};
use std::collections::BTreeMap;

pub const NAME: &str = "availability";

/// Accepted writes a run must have for its gaps to mean anything: a second of writing.
pub const WRITES_MIN: usize = 20;

/// The longest outage allowed, in leases (10 s at the runs' 2 s lease).
pub const OUTAGE_LEASES_MAX: u64 = 5;

/// How long after an excusing fault heals (or an operator's command completes) a gap is
/// still excused, in leases: the old lease runs out, the failover or recovery finishes and
/// the agent acquires again.
pub const GRACE_LEASES: u64 = 2;

/// Gaps up to this long are the writers' own pacing (a write every 50 ms, a scheduler's
/// delay), not outages: they are left out of `outage-total-ms`.
pub const PACING_MS_MAX: u64 = 250;

/// The lease when `test.json` does not say (the harness's default).
const LEASE_MS_DEFAULT: u64 = 2_000;

/// The operator's commands during which an operation is in hand.
const OPERATOR_FS: &[&str] = &["failover", "failback", "abort", "retry", "skip", "approve"];

/// Whether a nemesis fault (its invocation value) makes a failover due or leaves no quorum.
pub fn excuses(value: &serde_json::Value) -> bool {
    let kind = value["kind"].as_str().unwrap_or("");
    let variant = value["variant"].as_str().unwrap_or("");
    match kind {
        "health" | "split-brain" | "leader-hook" | "paused-agent" | "lease-lowered" | "readd"
        | "clock-rate-beyond" => true,
        "partition" => variant == "db-cut",
        "pause" => variant == "agent",
        "kill" => variant == "all",
        "policy" => variant == "remove-readd",
        _ => false,
    }
}

/// Merged, sorted intervals.
fn merge(mut spans: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    spans.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (a, b) in spans {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// How much of `[a, b)` the merged `spans` cover.
fn covered(spans: &[(u64, u64)], a: u64, b: u64) -> u64 {
    spans
        .iter()
        .map(|&(x, y)| y.min(b).saturating_sub(x.max(a)))
        .sum()
}

/// The spans in which no outage counts: excusing faults to their heal and operator
/// commands to their completion, each plus `grace_ns`.
fn excused(ctx: &Context, grace_ns: u64) -> Vec<(u64, u64)> {
    let end = ctx.end_ns();
    let mut spans = Vec::new();
    let nemesis: Vec<_> = ctx.pairs.iter().filter(|p| p.invoke.is_nemesis()).collect();
    for (i, p) in nemesis.iter().enumerate() {
        if p.invoke.f == "heal" || !excuses(&p.invoke.value) {
            continue;
        }
        // The nemesis is one process: its next heal ends this fault.
        let healed = nemesis[i + 1..]
            .iter()
            .find(|h| h.invoke.f == "heal")
            .map(|h| h.complete.map(|c| c.time_ns).unwrap_or(h.invoke.time_ns))
            .unwrap_or(end);
        spans.push((p.invoke.time_ns, healed.saturating_add(grace_ns)));
    }
    for p in ctx.pairs_of(OPERATOR_FS) {
        if !p.invoke.process.starts_with("operator") {
            continue;
        }
        let done = p.complete.map(|c| c.time_ns).unwrap_or(end);
        spans.push((p.invoke.time_ns, done.saturating_add(grace_ns)));
    }
    merge(spans)
}

/// One accepted write, as the gaps need it.
struct Write {
    region: String,
    epoch: u64,
    invoke_ns: u64,
    end_ns: u64,
    op: OpRef,
}

pub fn check(ctx: &Context) -> CheckResult {
    let mut r = CheckResult::new(NAME);
    if !ctx.has_workload("writes") {
        r.unknown("the run had no writes workload: no availability to measure".into());
        return r;
    }
    for p in ctx.workload_errors("writer-") {
        r.unknown(format!(
            "{} could not write, so its gaps are not the cluster's: {}",
            p.invoke.process,
            p.complete
                .and_then(|c| c.error.clone())
                .unwrap_or_else(|| "no error recorded".into())
        ));
    }
    let lease_ms = ctx
        .spec
        .extra
        .get("lease_ms")
        .and_then(|v| v.as_u64())
        .unwrap_or(LEASE_MS_DEFAULT);
    let bound_ns = OUTAGE_LEASES_MAX * lease_ms * 1_000_000;
    let spans = excused(ctx, GRACE_LEASES * lease_ms * 1_000_000);
    r.count("bound-ms", bound_ns / 1_000_000);
    let mut by_group: BTreeMap<&str, Vec<Write>> = BTreeMap::new();
    for p in ctx.pairs_of(&["write"]).filter(|p| p.is_ok()) {
        let (Some(group), Some(region), Some(epoch), Some(end_ns)) = (
            p.group(),
            p.str_field("region"),
            p.u64_field("epoch"),
            p.end_ns(),
        ) else {
            continue;
        };
        by_group.entry(group).or_default().push(Write {
            region: region.to_string(),
            epoch,
            invoke_ns: p.invoke.time_ns,
            end_ns,
            op: p.op_ref(),
        });
    }
    let total: usize = by_group.values().map(Vec::len).sum();
    r.count("writes", total as u64);
    if total < WRITES_MIN {
        r.unknown(format!(
            "only {total} accepted write(s), fewer than the {WRITES_MIN} needed to measure \
             availability"
        ));
        return r;
    }
    for (group, mut writes) in by_group {
        writes.sort_by_key(|w| (w.invoke_ns, w.op.index));
        let (mut longest, mut longest_failover, mut outage_total, mut over_1s) = (0, 0, 0, 0);
        let mut worst: Option<(&Write, &Write, u64)> = None;
        for pair in writes.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            let (from, to) = (a.end_ns, b.invoke_ns);
            if to <= from {
                continue;
            }
            if (a.region.as_str(), a.epoch) != (b.region.as_str(), b.epoch) {
                longest_failover = longest_failover.max(to - from);
                continue;
            }
            let outage = (to - from) - covered(&spans, from, to);
            if outage > PACING_MS_MAX * 1_000_000 {
                outage_total += outage;
            }
            if outage >= 1_000_000_000 {
                over_1s += 1;
            }
            if outage > longest {
                longest = outage;
                worst = Some((a, b, outage));
            }
        }
        let ms = |ns: u64| ns / 1_000_000;
        // Over every group: the longest of each, the sum of the rest.
        for (key, v) in [
            ("longest-outage-ms", ms(longest)),
            ("longest-failover-gap-ms", ms(longest_failover)),
        ] {
            let slot = r.counts.entry(key.into()).or_default();
            *slot = (*slot).max(v);
        }
        r.count("outage-total-ms", ms(outage_total));
        r.count("outages-over-1s", over_1s);
        let Some((a, b, outage)) = worst else {
            r.note(format!("group {group}: no outage between writes"));
            continue;
        };
        let message = format!(
            "group {group}: {} could not write for {} between its writes at epoch {} \
             (ops {} at {} and {} at {}) with no failover due",
            a.region,
            fmt_s(outage),
            a.epoch,
            a.op.index,
            fmt_s(a.end_ns),
            b.op.index,
            fmt_s(b.invoke_ns),
        );
        if outage > bound_ns {
            r.offend(
                format!(
                    "{message}: longer than the bound of {OUTAGE_LEASES_MAX} leases ({} ms)",
                    ms(bound_ns)
                ),
                vec![a.op.clone(), b.op.clone()],
            );
        } else {
            r.note(format!("longest outage: {message}"));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covered_counts_only_the_overlap_of_merged_spans() {
        let spans = merge(vec![(10, 20), (15, 30), (50, 60)]);
        assert_eq!(spans, vec![(10, 30), (50, 60)]);
        assert_eq!(covered(&spans, 0, 100), 30);
        assert_eq!(covered(&spans, 25, 55), 10);
        assert_eq!(covered(&spans, 30, 50), 0);
    }
}
