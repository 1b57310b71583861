//! S3, consensus before action, judged on the hooks' calls (`hook` operations: every call
//! of a policy hook, logged by the hook program itself when it starts, with the group,
//! epoch, operation and step arbiter gave it and the calling witness's id and Raft term).
//!
//! What it checks:
//!
//! 1. **Committed decision.** Every call names an operation the final state has, of the same
//!    group and epoch (`to_epoch`), and a step that operation reached: a completed step, or
//!    the step it is at (running, halted, aborted there: for an aborted operation, which
//!    arbiter moves to step `done`, the step after its last recorded one). `unfence` calls need an aborted
//!    operation. A call for anything else acted on a decision that was never committed.
//! 2. **A deposed leader acts no more.** Calls are ordered by when they started, read by the
//!    hook program on `CLOCK_MONOTONIC` (the run's clock; one kernel clock for every
//!    namespace, never faked). A call at term `T` that started more than [`ORDER_MARGIN_NS`]
//!    after a call at a term `T' > T` (any witness, any group: terms are the cluster's) is
//!    invalid: the newer term's leader had confirmed its leadership with a quorum before it
//!    called, so the older term's leader was deposed by then and still acted.
//!
//! What it cannot see: a call that failed before the program started (it logs first), and
//! effects of the DNS step (S5 judges DNS). A call's order is that of its start, not of the
//! leader's confirmation before it: the margin absorbs the time from confirmation to the
//! program's first instruction, far shorter than the election timeout (500 ms in the runs)
//! a newer term needs after the old leader's last confirmation.
//!
//! Unknown when there is no final state, when no hook call was recorded
//! (`HOOK_CALLS_MIN`), when a call lacks a field it is judged on, or when a step of an
//! operation in the final state completed by running hooks (not a `no-op`, and its detail
//! reports `hook NAME: ...`) with no call recorded for it: the log lost evidence.

use std::collections::BTreeSet;

use super::final_state::FinalOperation;
use super::{fmt_s, CheckResult, Context, OpRef, Pair};
use crate::history::STEPS;
use crate::hook_log::HOOK;

pub const NAME: &str = "consensus-before-action";

/// Fewer recorded hook calls than this: nothing to judge.
pub const HOOK_CALLS_MIN: usize = 1;

/// Calls that started less than this apart are not taken as ordered: the time from the
/// leader's confirmation to the hook program's first instruction (a fork and an exec under
/// load), well below the election timeout.
pub const ORDER_MARGIN_NS: u64 = 100_000_000;

/// The steps whose hooks the policy runs, and `unfence`.
const HOOK_STEPS: [&str; 5] = ["fence", "rpo-check", "promote", "validate", "unfence"];

/// One hook call as the history records it.
#[derive(Debug, Clone)]
struct Call<'a> {
    pair: &'a Pair<'a>,
    hook: String,
    group: String,
    epoch: u64,
    operation: u64,
    step: String,
    witness: u64,
    term: u64,
    call_ns: u64,
}

impl Call<'_> {
    fn describe(&self) -> String {
        format!(
            "hook {} for step {} of operation {} ({} epoch {}) by witness {} at term {}, started at {}",
            self.hook,
            self.step,
            self.operation,
            self.group,
            self.epoch,
            self.witness,
            self.term,
            fmt_s(self.call_ns)
        )
    }

    fn op_ref(&self) -> OpRef {
        self.pair.op_ref()
    }
}

fn parse<'a>(pair: &'a Pair<'a>) -> Result<Call<'a>, String> {
    let v = pair.value();
    let text = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or(format!("no `{k}`"))
    };
    let num = |k: &str| v.get(k).and_then(|x| x.as_u64()).ok_or(format!("no `{k}`"));
    Ok(Call {
        pair,
        hook: text("hook")?,
        group: text("group")?,
        epoch: num("epoch")?,
        operation: num("operation")?,
        step: text("step")?,
        witness: num("witness")?,
        term: num("term")?,
        call_ns: num("call_ns")?,
    })
}

/// Why `call` acted on no committed decision, or `None` when the final state has it.
fn uncommitted(call: &Call, op: &FinalOperation) -> Option<String> {
    if op.group != call.group || op.to_epoch != call.epoch {
        return Some(format!(
            "the committed operation {} moves {} to {} at epoch {}",
            op.id, op.group, op.to, op.to_epoch
        ));
    }
    let aborted = op.state == "aborted" || op.state == "aborting";
    let reached = if call.step == "unfence" {
        aborted
    } else {
        op.step == call.step
            || op.steps.iter().any(|s| s.step == call.step)
            || (aborted && aborted_at(op) == Some(call.step.as_str()))
    };
    (!reached).then(|| {
        format!(
            "operation {} never reached step {} (state {}, at {}, steps {})",
            op.id,
            call.step,
            op.state,
            op.step,
            op.steps
                .iter()
                .map(|s| s.step.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// The step an aborted operation was at when the abort committed: the one after its last
/// recorded step. arbiter moves an aborted operation to `done`, so its `step` no longer
/// says; an abort is refused once the rpo-check is recorded, so the step after the last
/// recorded one is the step that was running (a fence whose hook may have run).
fn aborted_at(op: &FinalOperation) -> Option<&'static str> {
    let last = op.steps.last()?.step.as_str();
    let i = STEPS.iter().position(|s| *s == last)?;
    STEPS.get(i + 1).copied()
}

/// Whether a step's detail reports a hook that ran: `hook NAME: ...`, as the executor
/// describes every call (`no rpo-check hook configured` does not).
fn ran_hook(detail: &str) -> bool {
    detail.match_indices("hook ").any(|(at, _)| {
        let rest = &detail[at + "hook ".len()..];
        rest.split_once(':')
            .is_some_and(|(name, _)| !name.is_empty() && !name.contains(char::is_whitespace))
    })
}

pub fn check(ctx: &Context) -> CheckResult {
    let mut r = CheckResult::new(NAME);
    let Some(final_state) = &ctx.final_state else {
        r.unknown(ctx.final_missing.clone());
        return r;
    };
    let pairs: Vec<&Pair> = ctx.pairs_of(&[HOOK]).collect();
    let mut calls: Vec<Call> = Vec::new();
    for p in &pairs {
        if !p.is_ok() {
            r.unknown(format!(
                "hook call {} was not recorded whole: {}",
                p.describe(),
                p.complete.and_then(|c| c.error.clone()).unwrap_or_default()
            ));
            continue;
        }
        match parse(p) {
            Ok(c) => calls.push(c),
            Err(e) => r.unknown(format!("hook call {}: {e}", p.describe())),
        }
    }
    r.count("hook-calls", calls.len() as u64);
    if calls.len() < HOOK_CALLS_MIN {
        r.unknown(format!(
            "{} hook call(s) recorded, fewer than {HOOK_CALLS_MIN}: nothing to judge",
            calls.len()
        ));
        return r;
    }

    // 1. Every call acts on a committed decision.
    for c in &calls {
        match final_state.operations.get(&c.operation) {
            None if final_state.may_have_trimmed(c.operation) => {
                r.count("calls-of-trimmed-operations", 1);
            }
            None => r.offend(
                format!(
                    "{}: the final state has no operation {}, so no committed decision",
                    c.describe(),
                    c.operation
                ),
                vec![c.op_ref()],
            ),
            Some(op) => {
                if let Some(why) = uncommitted(c, op) {
                    r.offend(
                        format!("{}: not a committed decision: {why}", c.describe()),
                        vec![c.op_ref()],
                    );
                }
            }
        }
    }

    // Evidence: every step that ran hooks in the final state has a recorded call.
    let called: BTreeSet<(String, u64, u64, String)> = calls
        .iter()
        .map(|c| (c.group.clone(), c.epoch, c.operation, c.step.clone()))
        .collect();
    let mut steps_with_hooks = 0;
    for op in final_state.operations.values() {
        for s in &op.steps {
            if !HOOK_STEPS.contains(&s.step.as_str())
                || s.outcome == "no-op"
                || !ran_hook(&s.detail)
            {
                continue;
            }
            steps_with_hooks += 1;
            let key = (op.group.clone(), op.to_epoch, op.id, s.step.clone());
            if !called.contains(&key) {
                r.unknown(format!(
                    "step {} of operation {} ({} epoch {}) ran hooks ({}) but no call of them was recorded",
                    s.step, op.id, op.group, op.to_epoch, s.detail
                ));
            }
        }
    }
    r.count("steps-with-hooks", steps_with_hooks);

    // 2. No call of an older term after a call of a newer one.
    let mut by_time: Vec<&Call> = calls.iter().collect();
    by_time.sort_by_key(|c| (c.call_ns, c.term));
    let terms: BTreeSet<u64> = calls.iter().map(|c| c.term).collect();
    r.count("terms", terms.len() as u64);
    // The newest-term call among those that started at least the margin before the one
    // judged: `by_time[..earlier]`.
    let mut earlier = 0;
    let mut newest: Option<&Call> = None;
    for c in &by_time {
        while earlier < by_time.len() && by_time[earlier].call_ns + ORDER_MARGIN_NS < c.call_ns {
            let e = by_time[earlier];
            if newest.is_none_or(|n| e.term > n.term) {
                newest = Some(e);
            }
            earlier += 1;
        }
        if let Some(n) = newest.filter(|n| n.term > c.term) {
            r.offend(
                format!(
                    "{}: a deposed leader acted: {} came first, at the newer term {}",
                    c.describe(),
                    n.describe(),
                    n.term
                ),
                vec![c.op_ref(), n.op_ref()],
            );
        }
    }
    r
}
