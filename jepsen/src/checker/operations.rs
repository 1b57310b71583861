//! S6 resumable operations: after healing and recovery, every operation in the final state
//! has ended `done` or `aborted`, or is visibly `halted` (or waits for an approval nobody
//! gave) — none is still `running` — and no step is recorded twice.
//!
//! Aborted and skipped steps are accounted for: an `aborted` operation never recorded its
//! activation (an abort is refused from the promote on); a `done` one recorded every step
//! from `declare` to `validate`, in order (completed, no-op or skipped); a skipped step is
//! one an operator may skip (`rpo-check`, `promote`, `dns`, `validate`: never `revoke`,
//! `fence` or `activate`, which guard S1), and one `skipped by` an operator has a skip
//! command of that operation and step in the history that may have taken effect (one
//! `superseded by` a newer operation is the cluster's own).
//!
//! No verdict without evidence: `unknown` without a final state (or one that does not
//! parse) and when the final state has no operation at all (nothing was interrupted or
//! resumed, so S6 was not tested).

use super::{CheckResult, Context};
use crate::history::{OpType, STEPS};
use std::collections::BTreeMap;

pub const NAME: &str = "operations";

/// The steps an operator may skip (arbiter's `Step::skippable`).
const SKIPPABLE: [&str; 4] = ["rpo-check", "promote", "dns", "validate"];

pub fn check(ctx: &Context) -> CheckResult {
    let mut r = CheckResult::new(NAME);
    let Some(f) = &ctx.final_state else {
        r.unknown(format!(
            "{}: cannot tell how operations ended",
            ctx.final_missing
        ));
        return r;
    };
    if f.operations.is_empty() {
        r.unknown("the final state lists no operation: nothing to judge S6 on".into());
    }
    let final_op: Vec<_> = f.op.clone().into_iter().collect();
    // (operation, step) of every skip that may have taken effect.
    let skips: Vec<(u64, &str)> = ctx
        .pairs_of(&["skip"])
        .filter(|p| p.kind() != OpType::Fail)
        .filter_map(|p| Some((p.u64_field("operation")?, p.str_field("step")?)))
        .collect();
    for o in f.operations.values() {
        r.count(&format!("state-{}", o.state), 1);
        match o.state.as_str() {
            "done" | "aborted" | "halted" | "awaiting-approval" => {}
            other => r.offend(
                format!(
                    "operation {} ({} of group {} from {} to {}) is still {other} at step {} after recovery",
                    o.id, o.kind, o.group, o.from, o.to, o.step
                ),
                final_op.clone(),
            ),
        }
        let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
        for s in &o.steps {
            if let Some(first) = seen.insert(s.step.as_str(), s.index) {
                r.offend(
                    format!(
                        "operation {} recorded step {} twice (log indexes {first} and {})",
                        o.id, s.step, s.index
                    ),
                    final_op.clone(),
                );
            }
        }
        if o.state == "done" && !o.activated() {
            r.offend(
                format!("operation {} is done without an activate step", o.id),
                final_op.clone(),
            );
        }
        if o.state == "aborted" && o.activated() {
            r.offend(
                format!(
                    "operation {} is aborted but recorded its activate step",
                    o.id
                ),
                final_op.clone(),
            );
        }
        let recorded: Vec<&str> = o.steps.iter().map(|s| s.step.as_str()).collect();
        if o.state == "done" && recorded != STEPS {
            r.offend(
                format!(
                    "operation {} is done but recorded the steps {recorded:?}, not each of {STEPS:?} in order",
                    o.id
                ),
                final_op.clone(),
            );
        }
        for s in o.steps.iter().filter(|s| s.outcome == "skipped") {
            r.count("skipped-steps", 1);
            if !SKIPPABLE.contains(&s.step.as_str()) {
                r.offend(
                    format!(
                        "operation {} skipped step {}, which guards single-writer safety ({})",
                        o.id, s.step, s.detail
                    ),
                    final_op.clone(),
                );
            } else if s.detail.starts_with("skipped by")
                && !skips.contains(&(o.id, s.step.as_str()))
            {
                r.offend(
                    format!(
                        "operation {} recorded step {} {}, but no skip command of it may have taken effect",
                        o.id, s.step, s.detail
                    ),
                    final_op.clone(),
                );
            }
        }
    }
    r.count("operations", f.operations.len() as u64);
    r
}
