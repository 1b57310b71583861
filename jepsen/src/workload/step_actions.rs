//! The operator's step actions: a second operator process (`operator-1`) that watches the
//! group's unfinished operation in `status --json` and, at seeded random moments, aborts it,
//! retries it, skips a step of it (the current one or a random one) or approves it, so
//! that every step of a failover, the fence and the promote included, meets each action
//! while it runs, halts or waits for an approval.
//!
//! Most of these actions are refused, and that is the point: a running operation cannot
//! be retried or skipped (`operation-state`), a skip names the current step of a halted
//! operation or is refused (`wrong-step`), never a step that guards S1 (`not-skippable`),
//! and an abort after the rpo-check is `promote-started` (after the activation
//! `already-activated`). A refusal is a `fail` (it changed nothing), an accepted action an
//! `ok` that S4 then looks for in the final state, anything else `info`.
//!
//! Past half the run, a kind of action it has not issued yet is issued at its next action,
//! so that a run meeting few operations still meets each kind.
//!
//! It never waits for the operation it acted on (`--no-wait`): the next step must get its
//! turn. It changes no mode and declares no operation; the main operator loop does that.
//!
//! So that retries and skips also meet halted operations, it sometimes arms a failure of
//! the hooks of one step (`fence`, `promote` or `validate`: `nodes/hook-fail`, which the
//! hook program reads) still ahead of an operation when it first sees it, recorded as `hook-fail` with the
//! step; the operation halts there after its attempts, and the file is emptied once it
//! is seen halted (or after [`ARMED_MAX`]), so that a retry can succeed.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::ctx::Ctx;
use crate::history::{OpType, STEPS};
use crate::rng::Rng;
use crate::spec::GROUP;

/// Pause between two looks at the group's operation, in milliseconds (uniform): short
/// enough that a step of a few hundred milliseconds is sometimes seen, long enough that
/// the CLI processes leave the two cores to the witnesses.
const POLL_MS: (u64, u64) = (60, 200);
/// How long a look (`status --json`) may take before it is given up.
const LOOK_TIMEOUT: Duration = Duration::from_secs(3);
/// The kill deadline of an action (it never waits for the operation).
const ACT_TIMEOUT: Duration = Duration::from_secs(15);
/// The chance that a look that found an operation leads to an action: the seeded random
/// moment. Below 1 so that an operation is not acted on at every look.
const ACT_CHANCE: f64 = 0.5;
/// The chance that a newly seen operation gets a step whose hooks fail.
const ARM_CHANCE: f64 = 0.4;
/// The steps whose hooks the run's policy has, which an armed failure halts.
const FAIL_STEPS: [&str; 3] = ["fence", "promote", "validate"];
/// How long an armed failure lasts at most: the step's attempts and backoff, with room.
pub const ARMED_MAX: Duration = Duration::from_secs(12);
/// The steps a skip may name when it does not name the current one: every step but
/// `declare`.
fn skippable() -> &'static [&'static str] {
    &STEPS[1..]
}
/// The action kinds, as `f` in the history.
pub const ACTIONS: [&str; 4] = ["abort", "retry", "skip", "approve"];
/// The share of the run after which a kind of action not yet issued is issued at the next
/// action: the seeded choice alone leaves a rare kind (an abort) unissued in a run that
/// meets few operations, and then the run has not attacked the invariants with it.
const COVER_AFTER: f64 = 0.5;

const PROCESS: &str = "operator-1";

/// What a look found: the group's unfinished operation.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    id: u64,
    state: String,
    step: String,
}

/// The group's unfinished operation in a `status --json` answer (the lowest id when
/// there are several, which a group does not have).
fn seen(status: &Value) -> Option<Seen> {
    status["operations"]
        .as_array()?
        .iter()
        .filter(|o| o["group"] == GROUP)
        .filter_map(|o| {
            Some(Seen {
                id: o["id"].as_u64()?,
                state: o["state"].as_str()?.to_string(),
                step: o["step"].as_str()?.to_string(),
            })
        })
        .min_by_key(|s| s.id)
}

/// The action for an operation seen in `state` at `step`, and the step it targets.
fn choose(rng: &mut Rng, s: &Seen) -> (&'static str, String) {
    if s.state == "awaiting-approval" && rng.chance(0.6) {
        return ("approve", s.step.clone());
    }
    if s.state == "halted" {
        // A halted operation waits for exactly these: most often a skip of its step
        // (accepted where skippable, `not-skippable` at the fence) or a retry.
        return match rng.range(0, 99) {
            0..=9 => ("abort", s.step.clone()),
            10..=34 => ("retry", s.step.clone()),
            35..=44 => ("approve", s.step.clone()),
            45..=84 => ("skip", s.step.clone()),
            _ => ("skip", rng.pick(skippable()).to_string()),
        };
    }
    match rng.range(0, 99) {
        // Aborts are the rarest: an accepted one ends a failover before its later steps.
        0..=2 => ("abort", s.step.clone()),
        3..=32 => ("retry", s.step.clone()),
        33..=59 => ("approve", s.step.clone()),
        60..=79 => ("skip", s.step.clone()),
        _ => ("skip", rng.pick(skippable()).to_string()),
    }
}

/// Watches and acts until `until`.
pub async fn run(ctx: Ctx, seed: u64, until: Instant) {
    let mut rng = Rng::new(seed);
    let look: Vec<String> = ["status", "--json"].iter().map(|s| s.to_string()).collect();
    let fail_file = ctx
        .cluster()
        .dir
        .join("nodes")
        .join(crate::hook_log::FAIL_FILE);
    // The armed failure: the operation it was armed for and since when.
    let mut armed: Option<(u64, Instant)> = None;
    let mut last_seen: Option<u64> = None;
    // The last operation an abort was tried on: one try per operation, so that most
    // operations live on to meet the actions at their later steps.
    let mut abort_tried: Option<u64> = None;
    // The kinds of action issued so far, for the coverage rule ([`COVER_AFTER`]).
    let mut issued: Vec<&'static str> = Vec::new();
    let start = Instant::now();
    let span = until.saturating_duration_since(start).as_secs_f64();
    while Instant::now() < until {
        if armed.is_some_and(|(_, at)| at.elapsed() > ARMED_MAX) {
            disarm(&fail_file, &mut armed);
        }
        tokio::time::sleep(Duration::from_millis(rng.range(POLL_MS.0, POLL_MS.1))).await;
        if Instant::now() >= until {
            break;
        }
        let host = rng.pick(&ctx.witnesses()).clone();
        let out = ctx.cli.run(&host, &look, LOOK_TIMEOUT).await;
        if out.code != Some(0) {
            continue;
        }
        let Some(s) = serde_json::from_str::<Value>(out.stdout.trim())
            .ok()
            .as_ref()
            .and_then(seen)
        else {
            continue;
        };
        if armed.is_some_and(|(id, _)| id != s.id || s.state == "halted") {
            disarm(&fail_file, &mut armed);
        }
        if last_seen != Some(s.id) {
            last_seen = Some(s.id);
            if s.state == "running" && armed.is_none() && rng.chance(ARM_CHANCE) {
                // A step still ahead: a fence hook runs as the fence step starts, so an
                // operation first seen at its fence has called it already.
                let ahead: Vec<&str> = FAIL_STEPS
                    .iter()
                    .copied()
                    .filter(|f| step_order(f) > step_order(&s.step))
                    .collect();
                let step = if ahead.is_empty() {
                    "validate"
                } else {
                    *rng.pick(&ahead)
                };
                let value = json!({"group": GROUP, "operation": s.id, "step": step});
                ctx.rec.invoke("hook-fail", value.clone(), PROCESS, None);
                match std::fs::write(&fail_file, step) {
                    Ok(()) => {
                        armed = Some((s.id, Instant::now()));
                        ctx.rec
                            .complete(OpType::Ok, "hook-fail", value, PROCESS, None, None);
                    }
                    Err(e) => ctx.rec.complete(
                        OpType::Fail,
                        "hook-fail",
                        value,
                        PROCESS,
                        None,
                        Some(e.to_string()),
                    ),
                }
            }
        }
        if !rng.chance(ACT_CHANCE) {
            continue;
        }
        let (mut f, mut step) = choose(&mut rng, &s);
        let share = if span > 0.0 {
            start.elapsed().as_secs_f64() / span
        } else {
            1.0
        };
        if let Some(missing) = uncovered(&issued, share) {
            f = missing;
            step = s.step.clone();
        }
        if f == "abort" && abort_tried.replace(s.id) == Some(s.id) {
            f = "retry";
        }
        if !issued.contains(&f) {
            issued.push(f);
        }
        act(&ctx, &mut rng, f, &step, &s).await;
    }
    disarm(&fail_file, &mut armed);
}

/// The first kind of action not yet `issued` once `share` of the run has passed
/// [`COVER_AFTER`]; before that, or when every kind was issued, none.
fn uncovered(issued: &[&str], share: f64) -> Option<&'static str> {
    if share < COVER_AFTER {
        return None;
    }
    ACTIONS.iter().copied().find(|f| !issued.contains(f))
}

/// The position of `step` in a failover (`declare` first), for "still ahead".
fn step_order(step: &str) -> usize {
    STEPS.iter().position(|s| *s == step).unwrap_or(usize::MAX)
}

/// Ends an armed hook failure: the file emptied, so the step's next attempt succeeds.
fn disarm(path: &std::path::Path, armed: &mut Option<(u64, Instant)>) {
    if armed.take().is_some() {
        // An error leaves the hooks failing, which halts operations: visible, not unsafe.
        let _ = std::fs::write(path, "");
    }
}

/// Issues one action and records it: `{operation, step}` (the step it targets), with the
/// state and step the look saw; the completion adds `error_kind` when the CLI printed one.
async fn act(ctx: &Ctx, rng: &mut Rng, f: &str, step: &str, s: &Seen) {
    let value = json!({
        "group": GROUP, "operation": s.id, "step": step,
        "seen_state": s.state, "seen_step": s.step,
    });
    let mut args: Vec<String> = vec![f.into(), s.id.to_string()];
    match f {
        "abort" => args.extend(["--reason".into(), "jepsen step action".into()]),
        "skip" => args.extend(["--step".into(), step.into(), "--no-wait".into()]),
        _ => args.push("--no-wait".into()),
    }
    ctx.rec.invoke(f, value.clone(), PROCESS, None);
    let host = rng.pick(&ctx.witnesses()).clone();
    let out = ctx.cli.run(&host, &args, ACT_TIMEOUT).await;
    super::operator::complete_with_kind(ctx, f, value, &out, PROCESS);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_look_finds_the_groups_unfinished_operation() {
        let status = json!({"operations": [
            {"id": 9, "group": "other", "state": "running", "step": "dns"},
            {"id": 4, "group": GROUP, "state": "halted", "step": "validate"},
        ]});
        assert_eq!(
            seen(&status),
            Some(Seen {
                id: 4,
                state: "halted".into(),
                step: "validate".into()
            })
        );
        assert_eq!(seen(&json!({"operations": []})), None);
    }

    #[test]
    fn a_kind_not_yet_issued_is_issued_after_half_the_run() {
        assert_eq!(uncovered(&[], 0.4), None);
        assert_eq!(uncovered(&["retry", "skip"], 0.6), Some("abort"));
        assert_eq!(uncovered(&["abort", "retry", "skip"], 0.5), Some("approve"));
        assert_eq!(uncovered(&ACTIONS, 0.9), None);
    }

    #[test]
    fn every_action_is_chosen_for_a_running_operation() {
        let mut rng = Rng::new(3);
        let s = Seen {
            id: 1,
            state: "running".into(),
            step: "fence".into(),
        };
        let mut kinds = std::collections::BTreeSet::new();
        let mut other_step = false;
        for _ in 0..200 {
            let (f, step) = choose(&mut rng, &s);
            kinds.insert(f);
            other_step |= f == "skip" && step != "fence";
        }
        assert_eq!(kinds.len(), ACTIONS.len(), "{kinds:?}");
        assert!(other_step, "a skip sometimes names another step");
    }
}
