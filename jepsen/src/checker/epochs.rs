//! S2 monotone epochs: every activation of a group gets a greater epoch than any before it,
//! and an epoch names one region only.
//!
//! Observations of `(group, region, epoch)` come from ok `status` reads, ok (done)
//! `failover`/`failback` results, `lease` events with `held`, allowed `fence-check`s and the
//! final state. Two rules: an epoch never maps to two regions; and in real time, an
//! observation that starts after another ended never shows a lower epoch. The final
//! operations, in id order, activate strictly increasing epochs.
//!
//! No verdict without evidence: `unknown` without a final state (or one that does not
//! parse), or without a single observation of an epoch during the run.

use super::{fmt_s, CheckResult, Context, OpRef};
use std::collections::BTreeMap;

pub const NAME: &str = "monotone-epochs";

/// One sighting of a group's active region and epoch.
#[derive(Debug, Clone)]
pub struct Observation {
    pub group: String,
    pub region: String,
    pub epoch: u64,
    pub start_ns: u64,
    pub end_ns: u64,
    pub op: OpRef,
}

/// Whether a failover/failback ok means its activation happened before it returned.
pub fn failover_done(state: Option<&str>) -> bool {
    matches!(state, None | Some("done"))
}

/// Every observation in the history, in invocation order.
pub fn observations(ctx: &Context) -> Vec<Observation> {
    let mut out = Vec::new();
    for p in ctx.pairs.iter().filter(|p| p.is_ok()) {
        let (region_key, ok) = match p.invoke.f.as_str() {
            "status" => ("active", true),
            "failover" | "failback" => ("to", failover_done(p.str_field("state"))),
            "lease" => ("region", p.bool_field("held") == Some(true)),
            "fence-check" => ("region", p.bool_field("allowed") == Some(true)),
            _ => continue,
        };
        let (Some(group), Some(region), Some(epoch), Some(end)) = (
            p.group(),
            p.str_field(region_key),
            p.u64_field("epoch"),
            p.end_ns(),
        ) else {
            continue;
        };
        if !ok || region.is_empty() {
            continue;
        }
        out.push(Observation {
            group: group.to_string(),
            region: region.to_string(),
            epoch,
            start_ns: p.invoke.time_ns,
            end_ns: end,
            op: p.op_ref(),
        });
    }
    if let Some(f) = &ctx.final_state {
        if let Some(op) = &f.op {
            for g in f.groups.values().filter(|g| !g.active.is_empty()) {
                out.push(Observation {
                    group: g.name.clone(),
                    region: g.active.clone(),
                    epoch: g.epoch,
                    start_ns: f.invoke_ns,
                    end_ns: f.time_ns,
                    op: op.clone(),
                });
            }
        }
    }
    out
}

pub fn check(ctx: &Context) -> CheckResult {
    let mut r = CheckResult::new(NAME);
    let obs = observations(ctx);
    r.count("observations", obs.len() as u64);
    let during_run = obs
        .iter()
        .filter(|o| ctx.final_state.as_ref().and_then(|f| f.op.as_ref()) != Some(&o.op))
        .count();
    if during_run == 0 {
        r.unknown("no epoch was observed during the run (no ok read, lease, fence check or failover): nothing to judge S2 on".into());
    }
    let mut by_group: BTreeMap<&str, Vec<&Observation>> = BTreeMap::new();
    for o in &obs {
        by_group.entry(o.group.as_str()).or_default().push(o);
    }
    for (group, list) in &by_group {
        // One region per epoch, including the final state's record of activations.
        let final_map = ctx
            .final_state
            .as_ref()
            .map(|f| f.activations(group).0)
            .unwrap_or_default();
        let mut seen: BTreeMap<u64, &Observation> = BTreeMap::new();
        for o in list {
            match seen.get(&o.epoch) {
                Some(first) if first.region != o.region => r.offend(
                    format!(
                        "group {group}: epoch {} names two regions: {} ({} {}) and {} ({} {})",
                        o.epoch,
                        first.region,
                        first.op.f,
                        first.op.index,
                        o.region,
                        o.op.f,
                        o.op.index
                    ),
                    vec![o.op.clone(), first.op.clone()],
                ),
                Some(_) => {}
                None => {
                    seen.insert(o.epoch, o);
                }
            }
            if let Some(region) = final_map.get(&o.epoch) {
                if *region != o.region && seen.get(&o.epoch).is_some_and(|s| s.op == o.op) {
                    r.offend(
                        format!(
                            "group {group}: {} {} saw {} at epoch {}, but the final state \
                             activated epoch {} for {region}",
                            o.op.f, o.op.index, o.region, o.epoch, o.epoch
                        ),
                        vec![o.op.clone()],
                    );
                }
            }
        }
        r.count("epochs", seen.len() as u64);

        // Real-time order: nothing started after an observation of e ended shows less than e.
        let mut by_end: Vec<&Observation> = list.to_vec();
        by_end.sort_by_key(|o| o.end_ns);
        let mut by_start: Vec<&Observation> = list.to_vec();
        by_start.sort_by_key(|o| o.start_ns);
        let mut next = 0;
        let mut max: Option<&Observation> = None;
        for b in by_start {
            while next < by_end.len() && by_end[next].end_ns < b.start_ns {
                let a = by_end[next];
                if max.is_none_or(|m| a.epoch > m.epoch) {
                    max = Some(a);
                }
                next += 1;
            }
            if let Some(m) = max {
                if m.epoch > b.epoch {
                    r.offend(
                        format!(
                            "group {group}: epoch went back from {} to {}: {} {} ({}) ended at {} \
                             and saw {} at {}; {} {} ({}) started at {} and saw {} at {}",
                            m.epoch,
                            b.epoch,
                            m.op.f,
                            m.op.index,
                            m.op.process,
                            fmt_s(m.end_ns),
                            m.region,
                            m.epoch,
                            b.op.f,
                            b.op.index,
                            b.op.process,
                            fmt_s(b.start_ns),
                            b.region,
                            b.epoch
                        ),
                        vec![b.op.clone(), m.op.clone()],
                    );
                }
            }
        }
    }

    // The final state's own record.
    if let Some(f) = &ctx.final_state {
        let final_op = f.op.clone().into_iter().collect::<Vec<_>>();
        for group in f.groups.keys() {
            for (epoch, a, b) in f.activations(group).1 {
                r.offend(
                    format!("group {group}: the final state activates epoch {epoch} for both {a} and {b}"),
                    final_op.clone(),
                );
            }
        }
        let mut last: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for o in f.operations.values().filter(|o| o.activated()) {
            if o.to_epoch <= o.from_epoch {
                r.offend(
                    format!(
                        "group {}: operation {} activated epoch {} not above its from-epoch {}",
                        o.group, o.id, o.to_epoch, o.from_epoch
                    ),
                    final_op.clone(),
                );
            }
            if let Some((id, epoch)) = last.get(o.group.as_str()) {
                if o.to_epoch <= *epoch {
                    r.offend(
                        format!(
                            "group {}: operation {} activated epoch {} after operation {id} had activated {epoch}",
                            o.group, o.id, o.to_epoch
                        ),
                        final_op.clone(),
                    );
                }
            }
            last.insert(o.group.as_str(), (o.id, o.to_epoch));
        }
    } else {
        r.unknown(format!(
            "{}: the record of activations is not checked",
            ctx.final_missing
        ));
    }
    r
}
