//! S4 nothing acknowledged is lost: every operator command that returned `ok` is reflected
//! in the final state. An ok failover/failback's operation exists (with its group and target;
//! if it returned `done` it is not aborted afterwards); an ok approve left its operation out
//! of `awaiting-approval`; an ok abort left it `aborted`; an ok retry is in the audit log; an
//! ok skip left the step it named recorded `skipped` in its operation; an ok mode change is the group's final mode unless a later mode command may have replaced it,
//! and is in the audit log either way.
//!
//! No verdict without evidence: `unknown` without a final state (or one that does not
//! parse), and when the run asked for the operator workload but no command was
//! acknowledged.

use super::final_state::{FinalOperation, FinalState};
use super::{CheckResult, Context, Pair};
use crate::history::OpType;

pub const NAME: &str = "acknowledged-commands";

pub fn check(ctx: &Context) -> CheckResult {
    let mut r = CheckResult::new(NAME);
    let acked: Vec<&Pair> = ctx
        .pairs_of(&crate::history::OPERATOR_COMMANDS)
        .filter(|p| p.is_ok())
        .collect();
    r.count("acknowledged", acked.len() as u64);
    if acked.is_empty() && ctx.has_workload("operator") {
        r.unknown(
            "the operator workload ran but no command was acknowledged: nothing to judge S4 on"
                .into(),
        );
    }
    let Some(f) = &ctx.final_state else {
        r.unknown(format!(
            "{}: acknowledged commands cannot be looked up",
            ctx.final_missing
        ));
        return r;
    };
    for p in &acked {
        match p.invoke.f.as_str() {
            "failover" | "failback" => failover(&mut r, f, p),
            "approve" | "retry" | "abort" | "skip" => action(&mut r, f, p),
            "mode" => mode(&mut r, ctx, f, p),
            _ => {}
        }
    }
    r
}

/// The final operation an acknowledged command names, or a finding that it is missing.
fn find<'f>(r: &mut CheckResult, f: &'f FinalState, p: &Pair) -> Option<&'f FinalOperation> {
    let Some(id) = p.u64_field("operation") else {
        r.unknown(format!("{}: the ok value names no operation", p.describe()));
        return None;
    };
    if let Some(o) = f.operations.get(&id) {
        return Some(o);
    }
    let declared = format!("operation {id} ");
    let in_audit = f
        .audit
        .iter()
        .any(|a| a.kind == "operation-declared" && a.detail.starts_with(&declared));
    if in_audit {
        r.count("found-in-audit-only", 1);
    } else if f.may_have_trimmed(id) {
        r.unknown(format!(
            "{}: operation {id} may have been trimmed from the final state",
            p.describe()
        ));
    } else {
        r.offend(
            format!(
                "acknowledged {} lost: operation {id} is neither in the final operations nor in the audit log ({})",
                p.invoke.f,
                p.describe()
            ),
            vec![p.op_ref()],
        );
    }
    None
}

fn failover(r: &mut CheckResult, f: &FinalState, p: &Pair) {
    let Some(o) = find(r, f, p) else { return };
    let (group, to) = (p.group().unwrap_or(""), p.str_field("to").unwrap_or(""));
    if o.group != group || (!to.is_empty() && o.to != to) {
        r.offend(
            format!(
                "acknowledged {} of group {group} to {to} names operation {}, which moves group {} to {} ({})",
                p.invoke.f,
                o.id,
                o.group,
                o.to,
                p.describe()
            ),
            vec![p.op_ref()],
        );
    }
    if super::epochs::failover_done(p.str_field("state")) && !o.activated() {
        r.offend(
            format!(
                "acknowledged {} returned done but operation {} ended {} without activating {} ({})",
                p.invoke.f,
                o.id,
                o.state,
                o.to,
                p.describe()
            ),
            vec![p.op_ref()],
        );
    }
}

fn action(r: &mut CheckResult, f: &FinalState, p: &Pair) {
    let Some(o) = find(r, f, p) else { return };
    let id = o.id;
    let lost = match p.invoke.f.as_str() {
        "approve" => (o.state == "awaiting-approval")
            .then(|| format!("operation {id} still awaits approval")),
        "abort" => (o.state != "aborted").then(|| format!("operation {id} ended {}", o.state)),
        "skip" => {
            let step = p.str_field("step").unwrap_or("");
            let skipped = o
                .steps
                .iter()
                .any(|s| s.step == step && s.outcome == "skipped");
            (!skipped).then(|| format!("operation {id} has no skipped step {step:?}"))
        }
        _ => {
            let prefix = format!("operation {id}:");
            let seen = f
                .audit
                .iter()
                .any(|a| a.kind == "operation-retry" && a.detail.starts_with(&prefix));
            (!seen && f.audit_complete())
                .then(|| format!("the audit log has no retry of operation {id}"))
        }
    };
    if let Some(why) = lost {
        r.offend(
            format!("acknowledged {} lost: {why} ({})", p.invoke.f, p.describe()),
            vec![p.op_ref()],
        );
    }
}

fn mode(r: &mut CheckResult, ctx: &Context, f: &FinalState, p: &Pair) {
    let (Some(group), Some(mode)) = (p.group(), p.str_field("mode")) else {
        r.unknown(format!(
            "{}: the ok value names no group or mode",
            p.describe()
        ));
        return;
    };
    // Another mode command on the group that may have taken effect after this one: it
    // had not ended (or never did) when this one started.
    let superseded = ctx.pairs_of(&["mode"]).any(|q| {
        q.invoke.index != p.invoke.index
            && q.group() == Some(group)
            && q.kind() != OpType::Fail
            && q.end_ns().is_none_or(|e| e > p.invoke.time_ns)
    });
    let audited = f
        .audit
        .iter()
        .any(|a| a.group == group && a.kind == "mode" && a.detail.contains(&format!("-> {mode}:")));
    if !audited && f.audit_complete() {
        r.offend(
            format!(
                "acknowledged mode change of {group} to {mode} lost: not in the audit log ({})",
                p.describe()
            ),
            vec![p.op_ref()],
        );
        return;
    }
    if superseded {
        return;
    }
    match f.groups.get(group) {
        Some(g) if g.mode != mode => r.offend(
            format!(
                "acknowledged mode change of {group} to {mode} lost: the final mode is {} and no later mode command explains it ({})",
                g.mode,
                p.describe()
            ),
            vec![p.op_ref()],
        ),
        Some(_) => {}
        None => r.offend(
            format!("acknowledged mode change of {group}: the group is not in the final state ({})", p.describe()),
            vec![p.op_ref()],
        ),
    }
}
