//! Proof that the simulation can fail: each hole of `src/holes.rs` (feature
//! `unsafe-holes`) opened in turn, and the simulation must catch it with the invariant it
//! breaks within the CI budget of seeds. The holes are process-global switches, so this is a
//! binary of its own (no clean seed runs beside them) and its tests take one lock in turn.
//!
//! `cargo test --features unsafe-holes --test sim_holes -- --nocapture`

// The simulation's modules are shared with tests/sim/, which uses what this binary does not.
#![allow(dead_code)]

#[path = "../sim/check.rs"]
mod check;
#[path = "../sim/disk.rs"]
mod disk;
#[path = "../sim/plan.rs"]
mod plan;
#[path = "../sim/run.rs"]
mod run;
#[path = "../sim/world.rs"]
mod world;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use arbiter::holes;

/// Seeds a hole may take to be found: the CI budget of the clean run (`SIM_HOLE_SEEDS`
/// sets another).
const BUDGET: u64 = 1_000;

/// One hole open at a time.
static ONE_HOLE: Mutex<()> = Mutex::new(());

/// Opens `flag`, runs seeds until one breaks `invariant` (a violation starting with it),
/// closes the hole, and asserts it was found within [`BUDGET`].
fn found_within_budget(name: &str, flag: &AtomicBool, invariant: &str) {
    let _one = ONE_HOLE.lock().unwrap_or_else(|e| e.into_inner());
    flag.store(true, Ordering::SeqCst);
    let start = std::time::Instant::now();
    let caught = |o: &run::Outcome| o.violations.iter().any(|v| v.starts_with(invariant));
    let budget = run::env_u64("SIM_HOLE_SEEDS").unwrap_or(BUDGET);
    let outcomes = run::run_until(0, budget, run::threads(), caught);
    flag.store(false, Ordering::SeqCst);
    let first = outcomes.iter().find(|o| caught(o));
    let found = outcomes.iter().filter(|o| caught(o)).count();
    println!(
        "hole {name}: {found} of {} seeds run broke {invariant} ({:.1} s){}",
        outcomes.len(),
        start.elapsed().as_secs_f64(),
        first
            .map(|o| format!("; first seed {}: {}", o.seed, o.violations[0]))
            .unwrap_or_default()
    );
    assert!(
        first.is_some(),
        "hole {name} not caught by {invariant} in {budget} seeds"
    );
}

/// Goal: the fence wait with today's (lowered) lease lets two regions hold a lease (S1).
#[test]
fn wait_with_current_policy_breaks_single_writer() {
    found_within_budget("wait-current-policy", &holes::WAIT_CURRENT_POLICY, "S1");
}

/// Goal: a group removed and re-added grants at once while leases of its removed
/// incarnation may be held (S1).
#[test]
fn readd_without_wait_breaks_single_writer() {
    found_within_budget("readd-without-wait", &holes::READD_WITHOUT_WAIT, "S1");
}

/// Goal: a leader acting on openraft's `Leader` state alone keeps calling hooks after it
/// was deposed (S3).
#[test]
fn no_leader_confirm_breaks_consensus_before_action() {
    found_within_budget("no-leader-confirm", &holes::NO_LEADER_CONFIRM, "S3");
}

/// Goal: an operation after an aborted one reserving the aborted one's epoch again (S2).
#[test]
fn abort_reusing_its_epoch_breaks_monotone_epochs() {
    found_within_budget("abort-reuses-epoch", &holes::ABORT_REUSES_EPOCH, "S2");
}

/// Goal: a publisher that ignores a newer decision's marker moves the name back (S5).
/// Ignored: not found in the 1000 seeds of the CI budget. The plans' jittery DNS path makes
/// UPDATEs reach the server after later ones, but a rollback needs the UPDATE of a group's
/// previous decision still in flight when its next decision is published: two activations
/// of one group within one UPDATE's flight, which the plans' failovers do not come close to.
#[test]
#[ignore = "not found within the CI budget: no plan makes two activations of one group within one UPDATE's flight"]
fn dns_rollback_breaks_dns_follows_consensus() {
    found_within_budget("dns-rollback", &holes::DNS_ROLLBACK, "S5");
}

/// Goal: one witness's failing probes start an automatic failover (S7).
#[test]
fn one_witness_verdict_breaks_quorum_verdict() {
    found_within_budget("one-witness-verdict", &holes::ONE_WITNESS_VERDICT, "S7");
}
