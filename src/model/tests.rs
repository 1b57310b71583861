//! The checks: the model as the code is passes exhaustively within bounds; each switch
//! that re-opens a closed hole yields a counterexample, printed step by step; and so does
//! the promote hook that opens writes by itself, which the code does today (see
//! `Switches::promote_opens_writes`).
//!
//! Run with `cargo test --lib model -- --nocapture` to see the states explored, the time
//! and the counterexamples.

use std::collections::HashMap;
use std::time::Instant;

use stateright::{Checker, HasDiscoveries, Model, Path};

use super::policies::{
    bound_ticks, holder_units, PolicyId, DRIFT_PERCENT, GROUP, RATE_FAST, RATE_NOMINAL, RATE_SLOW,
    TICK_MS,
};
use super::state::{Budget, ModelState};
use super::*;

/// What one check found: each discovery, rendered.
struct Run {
    discoveries: HashMap<&'static str, String>,
    unique: usize,
}

/// Runs a breadth-first check on one thread and prints what it explored. `until_failure`:
/// stop at the first property violated.
fn check(label: &str, model: LeaseModel, until_failure: bool) -> Run {
    let started = Instant::now();
    let mut builder = model.checker().threads(1);
    if until_failure {
        builder = builder.finish_when(HasDiscoveries::AnyFailures);
    }
    let checker = builder.spawn_bfs().join();
    let took = started.elapsed();
    println!(
        "model check {label}: {} states generated, {} unique, depth {}, {:.1} s",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        took.as_secs_f64()
    );
    let model = checker.model();
    let discoveries = checker
        .discoveries()
        .into_iter()
        .map(|(name, path)| (name, render(model, name, path)))
        .collect();
    Run {
        discoveries,
        unique: checker.unique_state_count(),
    }
}

/// A discovery step by step: each transition with the state it leads to, real time in
/// ticks of `TICK_MS`, up to the first state that breaks the property.
fn render(model: &LeaseModel, name: &'static str, path: Path<ModelState, Action>) -> String {
    let holds = model.property(name).condition;
    let steps = path.into_vec();
    let Some((first, _)) = steps.first() else {
        return String::new();
    };
    let mut out = vec![
        format!(
            "holder clocks: region-a {} units/tick, region-b {} units/tick ({RATE_NOMINAL} = the witnesses' rate)",
            first.agents[0].rate, first.agents[1].rate
        ),
        format!("t=0   start: {}", first.summary()),
    ];
    let mut tick = 0;
    for pair in steps.windows(2) {
        let (Some(action), (next, _)) = (&pair[0].1, &pair[1]) else {
            continue;
        };
        if *action == Action::Tick {
            tick += 1;
        }
        out.push(format!("t={tick:<3} {action}: {}", next.summary()));
        if !holds(model, next) {
            break;
        }
    }
    format!(
        "{name} ({} transitions, 1 tick = {TICK_MS} ms):\n  {}",
        out.len() - 2,
        out.join("\n  ")
    )
}

fn budget(
    operations: u8,
    policy_changes: u8,
    elections: u8,
    interventions: u8,
    halts: u8,
) -> Budget {
    Budget {
        operations,
        policy_changes,
        elections,
        interventions,
        halts,
    }
}

/// Asserts that no safety property has a counterexample and that every reachability
/// property in `reached` has an example (the bounds are not vacuous).
fn assert_passes(run: &Run, reached: &[&str]) {
    for name in [S1_WRITES, S1_LEASES, S2_EPOCHS] {
        if let Some(path) = run.discoveries.get(name) {
            panic!("counterexample to {path}");
        }
    }
    for name in reached {
        assert!(
            run.discoveries.contains_key(name),
            "no reachable state where {name:?}: the bounds miss what the check is about"
        );
    }
    assert!(run.unique > 1_000, "the check explored almost nothing");
}

/// Asserts that `name` has a counterexample and prints it.
fn assert_fails(run: &Run, name: &str) {
    let path = run
        .discoveries
        .get(name)
        .unwrap_or_else(|| panic!("the checker found no counterexample to {name:?}"));
    println!("counterexample to {path}");
}

/// Goal: the model's time is the code's arithmetic: every wait is `LeaseBound::wait_ms`
/// in whole ticks, and the slowest holder's lease ends exactly when a wait without margin
/// does, so a wait one tick short is a counterexample rather than lost in rounding.
/// Method: the bounds of the model's policies, through the real `LeaseBound`, against the
/// slowest holder clock.
#[test]
fn model_time_is_the_code_arithmetic_in_whole_ticks() {
    let bound = |p: PolicyId| {
        let policy = p.policy();
        LeaseBound::of(policy.group(GROUP).expect("the policy has the group"))
    };
    assert_eq!(bound(PolicyId::Initial).wait_ms(), 3_500);
    assert_eq!(bound_ticks(bound(PolicyId::Initial)), 7);
    assert_eq!(bound_ticks(bound(PolicyId::Lowered)), 3);
    assert_eq!(
        bound_ticks(bound(PolicyId::Initial).max(bound(PolicyId::Lowered))),
        7,
        "the recorded bound keeps the longest terms"
    );
    for lease_ms in [1_000, 2_000] {
        let slowest_ticks = holder_units(lease_ms) / RATE_SLOW;
        let no_margin = LeaseBound {
            lease_ms,
            clock_drift_percent: DRIFT_PERCENT,
            lease_margin_ms: 0,
        };
        assert_eq!(u32::from(bound_ticks(no_margin)), slowest_ticks);
        assert_eq!(holder_units(lease_ms) % RATE_SLOW, 0);
    }
}

/// Goal: with the code as it is, lowering (and raising again) the lease and the margin
/// around a failover and a failback, with leader changes during the fence wait, never
/// lets two regions' databases accept writes at once (S1), and epochs strictly increase
/// and name one region each (S2).
/// Method: exhaustive breadth-first check; policies `Initial` and `Lowered`; the slowest
/// holder clocks (they hold every lease longest); bounds: 3 operations (a failover, a
/// failback and another failover), 2 policy changes, 1 election, 1 intervention, 1 halt.
/// Also checks that a failover took writes in region-b, that the lease was lowered under
/// a long one, and that a new leader ended a fence wait, so the bounds reach what the
/// check is about.
#[test]
fn single_writer_and_epochs_hold_across_lease_changes_failovers_and_leader_changes() {
    let bounds = Bounds {
        budget: budget(3, 2, 1, 1, 1),
        rates: [vec![RATE_SLOW], vec![RATE_SLOW]],
        policies: vec![PolicyId::Initial, PolicyId::Lowered],
        answers_travel: false,
    };
    let model = LeaseModel::new(bounds, Switches::default());
    let run = check(
        "lease changes, failover, failback, leader changes",
        model,
        false,
    );
    assert_passes(
        &run,
        &[REACH_FAILOVER, REACH_LOWERED, REACH_NEW_LEADER_FENCE],
    );
}

/// Goal: a group removed while its region holds a lease, and added again with the other
/// region first (under a shorter lease), grants nothing until the removed incarnation's
/// leases have certainly expired: S1 and S2 hold.
/// Method: exhaustive check with all four policies; the slowest holder clocks; bounds: 1
/// operation, 3 policy changes, 1 election, no intervention or halt. Checks that region-b
/// took writes in the group added again.
#[test]
fn single_writer_and_epochs_hold_when_a_group_is_removed_and_added_again() {
    let bounds = Bounds {
        budget: budget(1, 3, 1, 0, 0),
        rates: [vec![RATE_SLOW], vec![RATE_SLOW]],
        policies: PolicyId::ALL.to_vec(),
        answers_travel: false,
    };
    let model = LeaseModel::new(bounds, Switches::default());
    let run = check("removal and re-addition", model, false);
    assert_passes(&run, &[REACH_READDED, REACH_LOWERED]);
}

/// Goal: aborts at every step (the state machine refusing those past the rpo-check),
/// approvals, retries and skips of halted steps never open a second writer; S2 holds
/// across aborted operations' burned epochs.
/// Method: exhaustive check; policies `Initial` and `Lowered`; the slowest holder clocks;
/// bounds: 2 operations, 1 policy change, 1 election, 3 interventions, 2 halts. Checks
/// that region-a took writes again after an abort past the revoke.
#[test]
fn single_writer_and_epochs_hold_under_aborts_approvals_retries_and_skips() {
    let bounds = Bounds {
        budget: budget(2, 1, 1, 3, 2),
        rates: [vec![RATE_SLOW], vec![RATE_SLOW]],
        policies: vec![PolicyId::Initial, PolicyId::Lowered],
        answers_travel: false,
    };
    let model = LeaseModel::new(bounds, Switches::default());
    let run = check("aborts, approvals, retries, skips", model, false);
    assert_passes(&run, &[REACH_ABORT, REACH_FAILOVER]);
}

/// Goal: S1 holds for every holder clock rate the drift bound allows, on either agent,
/// with answers that travel for any number of ticks (the deadline counted from the send).
/// Method: exhaustive check; each agent's clock slow, at the witnesses' rate, or fast;
/// answers delivered late; policies `Initial` and `Lowered`; bounds: 1 operation, 1
/// policy change, 1 election, no intervention or halt.
#[test]
fn single_writer_holds_for_every_clock_rate_and_late_answers() {
    let rates = vec![RATE_SLOW, RATE_NOMINAL, RATE_FAST];
    let bounds = Bounds {
        budget: budget(1, 1, 1, 0, 0),
        rates: [rates.clone(), rates],
        policies: vec![PolicyId::Initial, PolicyId::Lowered],
        answers_travel: true,
    };
    let model = LeaseModel::new(bounds, Switches::default());
    let run = check("clock rates and late answers", model, false);
    assert_passes(&run, &[REACH_FAILOVER, REACH_LOWERED]);
}

/// Goal: a leader that changes twice during a wait, to a witness that applied the revoke
/// or removal late or to one re-elected with its earlier sighting, never ends the fence
/// wait or a removed group's wait early.
/// Method: exhaustive check with all four policies; the slowest holder clocks; bounds: 1
/// operation, 2 policy changes, 2 elections, no intervention or halt. Checks that a new
/// leader ended a fence wait and that region-b took writes in the group added again.
#[test]
fn single_writer_and_epochs_hold_when_the_leader_changes_twice_during_a_wait() {
    let bounds = Bounds {
        budget: budget(1, 2, 2, 0, 0),
        rates: [vec![RATE_SLOW], vec![RATE_SLOW]],
        policies: PolicyId::ALL.to_vec(),
        answers_travel: false,
    };
    let model = LeaseModel::new(bounds, Switches::default());
    let run = check("two leader changes", model, false);
    assert_passes(&run, &[REACH_NEW_LEADER_FENCE, REACH_READDED]);
}

/// Goal: the check can fail. A fence step that waits the current policy's terms (the hole
/// of a lease lowered from 30 s to 2 s before a failover) is caught: two regions'
/// databases accept writes at once.
/// Method: `fence_wait_from_current_policy`; breadth-first until the first violation; the
/// counterexample is printed.
#[test]
fn fence_wait_from_the_current_policy_breaks_single_writer() {
    let bounds = Bounds {
        budget: budget(1, 1, 0, 0, 0),
        rates: [vec![RATE_SLOW], vec![RATE_SLOW]],
        policies: vec![PolicyId::Initial, PolicyId::Lowered],
        answers_travel: false,
    };
    let switches = Switches {
        fence_wait_from_current_policy: true,
        ..Switches::default()
    };
    let run = check(
        "fence wait from the current policy",
        LeaseModel::new(bounds, switches),
        true,
    );
    assert_fails(&run, S1_WRITES);
}

/// Goal: the check can fail. A group added again that grants a lease before the removed
/// incarnation's leases have expired (the expiry recorded without the wait) is caught.
/// Method: `removed_expiry_without_wait`; policies `Removed` and `Readded` from `Initial`;
/// breadth-first until the first violation; the counterexample is printed.
#[test]
fn readded_group_granting_before_the_removed_leases_expire_breaks_single_writer() {
    let bounds = Bounds {
        budget: budget(0, 2, 0, 0, 0),
        rates: [vec![RATE_SLOW], vec![RATE_SLOW]],
        policies: vec![PolicyId::Removed, PolicyId::Readded],
        answers_travel: false,
    };
    let switches = Switches {
        removed_expiry_without_wait: true,
        ..Switches::default()
    };
    let run = check(
        "re-added group without the wait",
        LeaseModel::new(bounds, switches),
        true,
    );
    assert_fails(&run, S1_WRITES);
}

/// Goal: the holder's rule matters. A holder that counts its deadline from the arrival of
/// a grant, not from its send, holds past the leader's wait: caught.
/// Method: `holder_deadline_from_receipt` with answers that travel; breadth-first until
/// the first violation; the counterexample is printed.
#[test]
fn holder_deadline_from_the_arrival_breaks_single_writer() {
    let bounds = Bounds {
        budget: budget(1, 0, 0, 0, 0),
        rates: [vec![RATE_SLOW], vec![RATE_SLOW]],
        policies: vec![PolicyId::Initial],
        answers_travel: true,
    };
    let switches = Switches {
        holder_deadline_from_receipt: true,
        ..Switches::default()
    };
    let run = check(
        "holder deadline from the arrival",
        LeaseModel::new(bounds, switches),
        true,
    );
    assert_fails(&run, S1_WRITES);
}

/// Goal: S1 over writes is stronger than S1 over leases. When the promote hook opens the
/// new primary by itself (as the built-in PostgreSQL promote does, lifting read-only), a
/// region whose agent never held a lease after the promote keeps accepting writes through
/// the next failover: the agent closes its database only when it loses a lease it held,
/// or once at start. No two agents ever hold the lease at once.
/// Method: `promote_opens_writes`; a failover and a failback; exhaustive, so that the
/// absence of a lease counterexample is established too; the writes counterexample is
/// printed.
#[test]
fn promote_opening_writes_breaks_single_writer_over_writes_but_not_over_leases() {
    let bounds = Bounds {
        budget: budget(2, 0, 0, 0, 0),
        rates: [vec![RATE_SLOW], vec![RATE_SLOW]],
        policies: vec![PolicyId::Initial],
        answers_travel: false,
    };
    let switches = Switches {
        promote_opens_writes: true,
        ..Switches::default()
    };
    let run = check(
        "promote opens writes",
        LeaseModel::new(bounds, switches),
        false,
    );
    assert!(
        !run.discoveries.contains_key(S1_LEASES),
        "the leases stay single"
    );
    assert_fails(&run, S1_WRITES);
}
