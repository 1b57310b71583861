//! Recovery: after the last `heal` completes, every group answers an ok `status` read within
//! `recovery_s` (test.json). A cluster that stays unavailable after the faults are gone
//! fails here even if nothing unsafe happened.

use super::{fmt_s, CheckResult, Context};
use crate::history::HEAL;

pub const NAME: &str = "recovery";

pub fn check(ctx: &Context) -> CheckResult {
    let mut r = CheckResult::new(NAME);
    let bound_ns = ctx.spec.recovery_s.saturating_mul(1_000_000_000);
    let heal = ctx
        .pairs
        .iter()
        .filter(|p| p.invoke.is_nemesis() && p.invoke.f == HEAL)
        .filter_map(|p| p.complete.map(|c| (p, c.time_ns)))
        .max_by_key(|(_, t)| *t);
    let Some((heal, healed_ns)) = heal else {
        if ctx.spec.nemeses.is_empty() {
            r.note("no faults and no heal: nothing to recover from".into());
        } else {
            r.unknown("the history has no completed heal".into());
        }
        return r;
    };
    r.note(format!("last heal completed at {}", fmt_s(healed_ns)));
    for group in ctx.groups() {
        let reads = ctx
            .pairs_of(&["status"])
            .filter(|p| p.group() == Some(group.as_str()))
            .count();
        if reads == 0 {
            r.unknown(format!("group {group}: the workload read no status"));
            continue;
        }
        let first = ctx
            .pairs_of(&["status"])
            .filter(|p| p.is_ok() && p.group() == Some(group.as_str()))
            .filter(|p| p.invoke.time_ns >= healed_ns)
            .filter_map(|p| p.end_ns().map(|e| (p, e)))
            .min_by_key(|(_, e)| *e);
        match first {
            Some((_, end)) if end - healed_ns <= bound_ns => {
                r.count(&format!("{group}-recovery-ms"), (end - healed_ns) / 1_000_000);
            }
            Some((p, end)) => r.offend(
                format!(
                    "group {group}: first ok status read after the heal ended {} after it (bound {} s): {}",
                    fmt_s(end - healed_ns),
                    ctx.spec.recovery_s,
                    p.describe()
                ),
                vec![p.op_ref(), heal.op_ref()],
            ),
            None => r.offend(
                format!(
                    "group {group}: no ok status read after the heal ({})",
                    heal.describe()
                ),
                vec![heal.op_ref()],
            ),
        }
    }
    r
}
