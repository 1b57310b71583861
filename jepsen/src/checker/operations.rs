//! S6 resumable operations: after healing and recovery, every operation in the final state
//! has ended `done` or `aborted`, or is visibly `halted` (or waits for an approval nobody
//! gave) — none is still `running` — and no step is recorded twice.
//!
//! No verdict without evidence: `unknown` without a final state (or one that does not
//! parse) and when the final state has no operation at all (nothing was interrupted or
//! resumed, so S6 was not tested).

use super::{CheckResult, Context};
use std::collections::BTreeMap;

pub const NAME: &str = "operations";

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
    }
    r.count("operations", f.operations.len() as u64);
    r
}
