//! The state machine attacked with operator actions rather than faults: policy changes
//! during operations, groups removed and added again, aborts, approvals, retries and skips
//! in frozen groups. Each test stands for a hole a review reproduced with the release
//! binary, and failed on the state machine as it was before the fix.

use super::tests::{
    approve, complete, failover, proposal, proposed_for_approval, with_policy, POLICY,
};
use super::*;
use crate::config::Policy;

fn apply_policy(s: &mut ClusterState, index: u64, policy: Policy) -> Response {
    s.apply(
        index,
        &proposal(
            "",
            Command::ApplyPolicy {
                policy,
                if_version: 0,
            },
        ),
    )
}

/// [`POLICY`] with `from` replaced by `to`.
fn policy_with(from: &str, to: &str) -> Policy {
    let text = POLICY.replace(from, to);
    assert_ne!(text, POLICY, "{from:?} is in the test policy");
    Policy::parse("p", &text).unwrap()
}

const AB: &str = r#"["region-a", "region-b"]"#;

/// A state whose group `checkout` has all three regions as candidates.
fn with_three_candidates() -> ClusterState {
    let mut s = with_policy();
    let r = apply_policy(
        &mut s,
        2,
        policy_with(AB, r#"["region-a", "region-b", "region-c"]"#),
    );
    assert!(r.outcome.is_ok(), "{r:?}");
    s
}

fn start(s: &mut ClusterState, index: u64, to: &str) -> Operation {
    let r = s.apply(index, &proposal("", failover(to)));
    match r.outcome {
        Ok(Outcome::Operation(op)) => *op,
        other => panic!("operation to {to} not started: {other:?}"),
    }
}

fn ok(s: &mut ClusterState, index: u64, command: Command) {
    let r = s.apply(index, &proposal("", command.clone()));
    assert!(r.outcome.is_ok(), "{command:?}: {r:?}");
}

fn refused(s: &mut ClusterState, index: u64, command: Command) -> Refusal {
    let before = s.clone();
    let r = s.apply(index, &proposal("", command.clone()));
    let refusal = r
        .outcome
        .expect_err(&format!("{command:?} must be refused"));
    assert_eq!(*s, before, "the refused {command:?} changed the state");
    refusal
}

fn abort(operation: u64) -> Command {
    Command::AbortOperation {
        operation,
        reason: "operator".into(),
    }
}

fn halt(operation: u64, step: Step) -> Command {
    Command::HaltOperation {
        operation,
        step,
        error: "hook failed".into(),
    }
}

fn set_mode(mode: Mode) -> Command {
    Command::SetMode {
        group: "checkout".into(),
        mode,
        reason: "operator".into(),
    }
}

/// Goal: a group removed from the policy and added again with another region first grants
/// that region no lease while a lease granted before the removal may still be held (S1).
/// Method: region-a's lease is granted at epoch 1; the group is removed, then added back
/// with region-b first; region-b's acquire is refused.
#[test]
fn readded_group_grants_no_lease_while_the_removed_ones_may_be_held() {
    let mut s = with_policy();
    assert_eq!(s.lease_check("checkout", "region-a", None), Ok((1, 1000)));
    let mut empty = Policy::parse("p", POLICY).unwrap();
    empty.groups.clear();
    assert!(apply_policy(&mut s, 2, empty).outcome.is_ok());
    assert!(matches!(
        s.lease_check("checkout", "region-a", Some(1)),
        Err(LeaseRefusal::UnknownGroup { .. })
    ));

    let flipped = policy_with(AB, r#"["region-b", "region-a"]"#);
    assert!(apply_policy(&mut s, 3, flipped).outcome.is_ok());
    let g = &s.groups["checkout"];
    assert_eq!((g.active.as_str(), g.epoch), ("region-b", 2));
    let grant = s.lease_check("checkout", "region-b", None);
    assert!(
        grant.is_err(),
        "region-b is granted a lease while region-a's lease of epoch 1 may still be held: {grant:?}"
    );
    assert!(
        matches!(
            grant,
            Err(LeaseRefusal::RemovedLeasesPending {
                removed_epoch: 1,
                ..
            })
        ),
        "{grant:?}"
    );

    // An expiry for an older incarnation changes nothing; the right one lifts the refusal.
    let expired = |epoch| Command::RemovedLeasesExpired {
        group: "checkout".into(),
        epoch,
    };
    ok(&mut s, 4, expired(0));
    assert!(s.lease_check("checkout", "region-b", None).is_err());
    ok(&mut s, 5, expired(1));
    assert_eq!(s.lease_check("checkout", "region-b", None), Ok((2, 1000)));
    assert!(
        !s.removed.contains_key("checkout"),
        "the record has done its work once the group is back"
    );
}

/// Goal: a group removed, added back and removed again before the first removal's leases
/// expired keeps both incarnations' leases covered: the record's epoch and lease terms are
/// the larger of the two, and the group added a third time starts above both.
#[test]
fn removal_before_an_earlier_removals_leases_expired_covers_both() {
    let mut s = with_policy();
    let mut empty = Policy::parse("p", POLICY).unwrap();
    empty.groups.clear();
    assert!(apply_policy(&mut s, 2, empty.clone()).outcome.is_ok());
    let long = policy_with("lease_ms = 1000", "lease_ms = 9000");
    assert!(apply_policy(&mut s, 3, long).outcome.is_ok());
    assert_eq!(s.groups["checkout"].epoch, 2);
    assert!(apply_policy(&mut s, 4, empty).outcome.is_ok());
    let r = &s.removed["checkout"];
    assert_eq!(
        (r.epoch, r.lease_bound.lease_ms, r.leases_expired),
        (2, 9000, false)
    );
    assert!(apply_policy(&mut s, 5, Policy::parse("p", POLICY).unwrap())
        .outcome
        .is_ok());
    assert_eq!(s.groups["checkout"].epoch, 3);
    assert!(s.lease_check("checkout", "region-a", None).is_err());
}

/// Goal: the lease wait covers the longest lease terms in force since the active region
/// was activated: lowering the lease, the drift or the margin never shortens it; an
/// activation starts a new record under the policy of the day.
#[test]
fn lowering_lease_terms_never_shortens_the_recorded_bound() {
    let mut s = with_policy();
    let bound = |s: &ClusterState| s.groups["checkout"].lease_bound;
    assert_eq!(bound(&s).lease_ms, 1000);
    let high = policy_with(
        "lease_ms = 1000",
        "lease_ms = 30000\nclock_drift_percent = 20\nlease_margin_ms = 3000",
    );
    assert!(apply_policy(&mut s, 2, high).outcome.is_ok());
    let low = policy_with(
        "lease_ms = 1000",
        "lease_ms = 2000\nclock_drift_percent = 1\nlease_margin_ms = 10",
    );
    assert!(apply_policy(&mut s, 3, low).outcome.is_ok());
    assert_eq!(
        bound(&s),
        LeaseBound {
            lease_ms: 30_000,
            clock_drift_percent: 20,
            lease_margin_ms: 3_000
        }
    );
    assert_eq!(bound(&s).wait_ms(), 39_000);
    assert_eq!(
        s.lease_check("checkout", "region-a", None),
        Ok((1, 2000)),
        "new grants use the lowered lease"
    );

    let op = start(&mut s, 4, "region-b");
    for (i, step) in [
        Step::Revoke,
        Step::Fence,
        Step::RpoCheck,
        Step::Promote,
        Step::Activate,
    ]
    .into_iter()
    .enumerate()
    {
        ok(&mut s, 5 + i as u64, complete(op.id, step));
    }
    assert_eq!(
        bound(&s),
        LeaseBound {
            lease_ms: 2_000,
            clock_drift_percent: 1,
            lease_margin_ms: 10
        },
        "region-b's leases are all granted under the lowered terms"
    );
}

fn with_fence_hooks(unfence: bool) -> ClusterState {
    let hooks = if unfence {
        "[groups.hooks]\nfence = [\"fence-db\"]\nunfence = [\"unfence-db\"]\n"
    } else {
        "[groups.hooks]\nfence = [\"fence-db\"]\n"
    };
    let text = format!(
        "{POLICY}{hooks}\n[hooks.fence-db]\nkind = \"exec\"\nprogram = \"/bin/true\"\n\n[hooks.unfence-db]\nkind = \"exec\"\nprogram = \"/bin/true\"\n"
    );
    let mut s = ClusterState::default();
    let r = apply_policy(&mut s, 1, Policy::parse("p", &text).unwrap());
    assert!(r.outcome.is_ok(), "{r:?}");
    s
}

/// Goal: an abort after the fence hooks may have run leaves the old region active and runs
/// the group's unfence hooks before the operation ends (no other operation starts
/// meanwhile); without unfence hooks the abort ends at once with a warning on record.
#[test]
fn abort_after_the_fence_runs_the_unfence_hooks_first() {
    let mut s = with_fence_hooks(true);
    let op = start(&mut s, 2, "region-b");
    ok(&mut s, 3, complete(op.id, Step::Revoke));
    ok(&mut s, 4, abort(op.id));
    assert!(matches!(
        s.operations[&op.id].state,
        OperationState::Aborting { .. }
    ));
    let g = &s.groups["checkout"];
    assert_eq!((g.revoked, g.operation), (false, Some(op.id)));
    assert_eq!(
        s.lease_check("checkout", "region-a", Some(1)),
        Ok((1, 1000)),
        "the old region may renew while it is unfenced"
    );
    let busy = refused(&mut s, 5, failover("region-b"));
    assert!(
        matches!(busy, Refusal::OperationInProgress { .. }),
        "{busy:?}"
    );
    refused(&mut s, 6, abort(op.id));
    refused(&mut s, 7, Command::RetryOperation { operation: op.id });
    ok(
        &mut s,
        8,
        Command::FinishAbort {
            operation: op.id,
            detail: "unfenced region-a".into(),
        },
    );
    let done = &s.operations[&op.id];
    assert!(matches!(done.state, OperationState::Aborted { .. }));
    assert_eq!(done.unfenced.as_deref(), Some("unfenced region-a"));
    assert_eq!(s.groups["checkout"].operation, None);
    // A stale second report changes nothing.
    let before = s.clone();
    ok(
        &mut s,
        9,
        Command::FinishAbort {
            operation: op.id,
            detail: "again".into(),
        },
    );
    assert_eq!(s, before);

    // Aborted before the revoke: no fence hook ran, nothing to undo.
    let second = start(&mut s, 10, "region-b");
    ok(&mut s, 11, abort(second.id));
    assert_eq!(s.operations[&second.id].unfenced, None);

    let mut s = with_fence_hooks(false);
    let op = start(&mut s, 2, "region-b");
    ok(&mut s, 3, complete(op.id, Step::Revoke));
    ok(&mut s, 4, abort(op.id));
    let done = &s.operations[&op.id];
    assert!(matches!(done.state, OperationState::Aborted { .. }));
    assert!(
        done.unfenced
            .as_deref()
            .is_some_and(|w| w.contains("no unfence hook")),
        "{:?}",
        done.unfenced
    );
}

/// Goal: a policy that drops a running operation's target (or source) from the group's
/// candidates is refused; reordering or adding candidates is not. Method: an operation to
/// region-b sits in its lease wait; a policy without region-b is applied.
#[test]
fn policy_dropping_a_running_operations_region_is_refused() {
    let mut s = with_three_candidates();
    let op = start(&mut s, 3, "region-b");
    ok(&mut s, 4, complete(op.id, Step::Revoke));

    let dropped = policy_with(AB, r#"["region-a", "region-c"]"#);
    let before = s.clone();
    let r = apply_policy(&mut s, 5, dropped);
    assert!(
        r.outcome.is_err(),
        "a policy dropping the target of operation {} was accepted: {r:?}",
        op.id
    );
    assert_eq!(s, before, "the refused policy changed the state");

    let reordered = policy_with(AB, r#"["region-b", "region-c", "region-a"]"#);
    assert!(apply_policy(&mut s, 6, reordered).outcome.is_ok());

    for (i, step) in [
        Step::Fence,
        Step::RpoCheck,
        Step::Promote,
        Step::Activate,
        Step::Dns,
        Step::Validate,
    ]
    .into_iter()
    .enumerate()
    {
        ok(&mut s, 7 + i as u64, complete(op.id, step));
    }
    let g = &s.groups["checkout"];
    assert_eq!((g.active.as_str(), g.epoch), ("region-b", 2));
}

/// Goal: a state machine whose state already holds an operation to a region that is no
/// longer a candidate (written by an earlier version that accepted such a policy) refuses
/// the activation instead of panicking, so a witness replaying that log starts and serves.
#[test]
fn activation_of_a_target_no_longer_a_candidate_is_refused_not_a_panic() {
    let mut s = with_three_candidates();
    let op = start(&mut s, 3, "region-b");
    for (i, step) in [Step::Revoke, Step::Fence, Step::RpoCheck, Step::Promote]
        .into_iter()
        .enumerate()
    {
        ok(&mut s, 4 + i as u64, complete(op.id, step));
    }
    // What the old state machine left after accepting a policy without region-b.
    let dropped = policy_with(AB, r#"["region-a", "region-c"]"#);
    s.groups.get_mut("checkout").unwrap().candidates =
        vec!["region-a".to_string(), "region-c".to_string()];
    s.policy = Some(dropped);

    let refusal = refused(&mut s, 10, complete(op.id, Step::Activate));
    assert!(
        matches!(refusal, Refusal::NotCandidate { .. }),
        "{refusal:?}"
    );
    assert_eq!(s.groups["checkout"].active, "region-a");
}

/// Goal: every declared operation burns its epoch, so no epoch ever names two targets
/// (S2). Method: an operation to region-b reserves epoch 2 and is aborted; the next one, to
/// region-c, must reserve epoch 3 and activate region-c at 3.
#[test]
fn aborted_operation_burns_its_epoch() {
    let mut s = with_three_candidates();
    let first = start(&mut s, 3, "region-b");
    assert_eq!(first.to_epoch, 2);
    ok(&mut s, 4, abort(first.id));
    assert_eq!(s.groups["checkout"].epoch, 1, "the old region stays at 1");

    let second = start(&mut s, 5, "region-c");
    assert_eq!(
        second.to_epoch, 3,
        "epoch 2 was reserved for region-b by operation {}: it must never name region-c",
        first.id
    );
    for (i, step) in [
        Step::Revoke,
        Step::Fence,
        Step::RpoCheck,
        Step::Promote,
        Step::Activate,
    ]
    .into_iter()
    .enumerate()
    {
        ok(&mut s, 6 + i as u64, complete(second.id, step));
    }
    let g = &s.groups["checkout"];
    assert_eq!((g.active.as_str(), g.epoch), ("region-c", 3));
    assert_eq!(
        s.lease_check("checkout", "region-c", Some(3)),
        Ok((3, 1000))
    );

    // A burned epoch survives the group's removal: added again, it starts above it.
    ok(&mut s, 20, complete(second.id, Step::Dns));
    ok(&mut s, 21, complete(second.id, Step::Validate));
    let third = start(&mut s, 22, "region-a");
    ok(&mut s, 23, abort(third.id));
    let mut empty = Policy::parse("p", POLICY).unwrap();
    empty.groups.clear();
    assert!(apply_policy(&mut s, 24, empty).outcome.is_ok());
    assert!(
        apply_policy(&mut s, 25, Policy::parse("p", POLICY).unwrap())
            .outcome
            .is_ok()
    );
    assert_eq!(
        s.groups["checkout"].epoch, 5,
        "epoch 4 was burned by operation {}",
        third.id
    );
}

/// Goal: once promote may have started, abort is refused: the standby may already accept
/// writes, and an abort would leave two writable databases. Before promote it is allowed.
#[test]
fn abort_is_refused_once_promote_may_have_started() {
    let mut s = with_policy();
    let op = start(&mut s, 2, "region-b");
    ok(&mut s, 3, complete(op.id, Step::Revoke));
    ok(&mut s, 4, complete(op.id, Step::Fence));
    ok(&mut s, 5, complete(op.id, Step::RpoCheck));
    assert_eq!(s.operations[&op.id].step, Step::Promote);
    refused(&mut s, 6, abort(op.id));
    ok(&mut s, 7, halt(op.id, Step::Promote));
    refused(&mut s, 8, abort(op.id));
    ok(
        &mut s,
        9,
        Command::SkipStep {
            operation: op.id,
            step: Step::Promote,
        },
    );
    assert_eq!(s.operations[&op.id].step, Step::Activate);
    refused(&mut s, 10, abort(op.id));

    // At rpo-check nothing was promoted yet: abort is allowed.
    let mut s = with_policy();
    let op = start(&mut s, 2, "region-b");
    ok(&mut s, 3, complete(op.id, Step::Revoke));
    ok(&mut s, 4, complete(op.id, Step::Fence));
    ok(&mut s, 5, halt(op.id, Step::RpoCheck));
    ok(&mut s, 6, abort(op.id));
    assert!(s.operations[&op.id].state.is_finished());
}

/// Goal: frozen means no new operation, no approval, no retry and no skip; a running
/// operation may only be aborted.
#[test]
fn frozen_group_refuses_approval_retry_and_skip_and_allows_abort() {
    let mut s = with_policy();
    let awaiting = s.apply(2, &proposal("", proposed_for_approval()));
    let Ok(Outcome::Operation(op)) = awaiting.outcome else {
        panic!("{awaiting:?}")
    };
    ok(&mut s, 3, set_mode(Mode::Frozen));
    let r = refused(&mut s, 4, approve(op.id));
    assert!(matches!(r, Refusal::Frozen { .. }), "{r:?}");

    ok(&mut s, 5, set_mode(Mode::Manual));
    ok(&mut s, 6, approve(op.id));
    ok(&mut s, 7, complete(op.id, Step::Revoke));
    ok(&mut s, 8, halt(op.id, Step::Fence));
    ok(&mut s, 9, set_mode(Mode::Frozen));
    let r = refused(&mut s, 10, Command::RetryOperation { operation: op.id });
    assert!(matches!(r, Refusal::Frozen { .. }), "{r:?}");

    ok(&mut s, 11, set_mode(Mode::Manual));
    ok(&mut s, 12, Command::RetryOperation { operation: op.id });
    ok(&mut s, 13, complete(op.id, Step::Fence));
    ok(&mut s, 14, halt(op.id, Step::RpoCheck));
    ok(&mut s, 15, set_mode(Mode::Frozen));
    let r = refused(
        &mut s,
        16,
        Command::SkipStep {
            operation: op.id,
            step: Step::RpoCheck,
        },
    );
    assert!(matches!(r, Refusal::Frozen { .. }), "{r:?}");
    let r = refused(&mut s, 17, approve(op.id));
    assert!(
        matches!(r, Refusal::Frozen { .. }),
        "accepting the data loss is an approval: {r:?}"
    );
    ok(&mut s, 18, abort(op.id));
    let g = &s.groups["checkout"];
    assert_eq!((g.active.as_str(), g.operation), ("region-a", None));
}

/// The test policy with `approvals_required = n` for group `checkout`.
fn approvals(n: u32) -> Policy {
    policy_with(
        "lease_ms = 1000",
        &format!("lease_ms = 1000\napprovals_required = {n}"),
    )
}

/// Applies `command` proposed by `actor`.
fn as_actor(s: &mut ClusterState, index: u64, actor: &str, command: Command) -> Response {
    let mut p = proposal("", command);
    p.actor = actor.into();
    s.apply(index, &p)
}

fn operation_of(r: &Response) -> Operation {
    match &r.outcome {
        Ok(Outcome::Operation(op)) => (**op).clone(),
        other => panic!("no operation: {other:?}"),
    }
}

/// Goal: where a group asks for two approvers, an operator's failover waits for a second
/// identity (its requester counts as the first), the same identity approving twice is
/// refused without changing anything, and the data loss of a halted rpo-check needs two
/// approvers of its own, neither carried over from the start nor across a retry.
#[test]
fn two_person_approval_needs_two_distinct_identities_for_each_decision() {
    let mut s = with_policy();
    assert!(apply_policy(&mut s, 2, approvals(2)).outcome.is_ok());
    let op = operation_of(&as_actor(&mut s, 3, "alice", failover("region-b")));
    assert_eq!(op.state, OperationState::AwaitingApproval);
    assert_eq!(op.approvals, ["alice"]);

    let before = s.clone();
    let r = as_actor(&mut s, 4, "alice", approve(op.id));
    assert!(
        matches!(&r.outcome, Err(Refusal::AlreadyApproved { actor, required: 2, .. }) if actor == "alice"),
        "{r:?}"
    );
    assert_eq!(s, before, "a refused approval changes nothing");

    let running = operation_of(&as_actor(&mut s, 5, "bob", approve(op.id)));
    assert_eq!(running.state, OperationState::Running);
    assert!(running.approvals.is_empty());
    let last = s.audit.back().unwrap();
    assert_eq!(last.kind, AuditKind::OperationApproved);
    assert!(
        last.detail.contains("approved by alice and bob"),
        "{}",
        last.detail
    );

    ok(&mut s, 6, complete(op.id, Step::Revoke));
    ok(&mut s, 7, complete(op.id, Step::Fence));
    ok(&mut s, 8, halt(op.id, Step::RpoCheck));
    let one = operation_of(&as_actor(&mut s, 9, "alice", approve(op.id)));
    assert!(
        matches!(one.state, OperationState::Halted { .. }),
        "{one:?}"
    );
    assert_eq!(one.approvals, ["alice"]);
    // A retry is a new attempt: an approval of the last one's lag does not carry over.
    ok(&mut s, 10, Command::RetryOperation { operation: op.id });
    assert!(s.operations[&op.id].approvals.is_empty());
    ok(&mut s, 11, halt(op.id, Step::RpoCheck));
    let one = operation_of(&as_actor(&mut s, 12, "bob", approve(op.id)));
    assert_eq!(one.approvals, ["bob"], "alice's earlier approval is gone");
    let on = operation_of(&as_actor(&mut s, 13, "carol", approve(op.id)));
    assert_eq!(on.step, Step::Promote, "rpo-check accepted: {on:?}");
    let accepted = on.steps.iter().find(|r| r.step == Step::RpoCheck).unwrap();
    assert!(
        accepted.detail.contains("accepted by bob and carol"),
        "{}",
        accepted.detail
    );
}

/// Goal: a break-glass approval (a reason is required) is enough alone, is audited as
/// break-glass and counted in the group's state; without a reason it is refused and
/// changes nothing.
#[test]
fn break_glass_approves_alone_with_a_reason_and_is_counted() {
    let mut s = with_policy();
    assert!(apply_policy(&mut s, 2, approvals(2)).outcome.is_ok());
    let op = operation_of(&as_actor(&mut s, 3, "alice", failover("region-b")));
    for reason in ["", "   "] {
        let before = s.clone();
        let r = as_actor(
            &mut s,
            4,
            "alice",
            Command::ApproveOperation {
                operation: op.id,
                break_glass: Some(reason.into()),
            },
        );
        assert_eq!(r.outcome, Err(Refusal::BreakGlassWithoutReason));
        assert_eq!(s, before);
    }
    let on = operation_of(&as_actor(
        &mut s,
        5,
        "alice",
        Command::ApproveOperation {
            operation: op.id,
            break_glass: Some("region-a burning, nobody else awake".into()),
        },
    ));
    assert_eq!(on.state, OperationState::Running);
    assert_eq!(s.groups["checkout"].break_glass_approvals, 1);
    let glass = s
        .audit
        .iter()
        .find(|e| e.kind == AuditKind::BreakGlass)
        .expect("a break-glass audit entry");
    assert_eq!(glass.actor, "alice");
    assert!(
        glass.detail.contains("nobody else awake") && glass.detail.contains("2 approvers"),
        "{}",
        glass.detail
    );
}

/// Goal: the count is the policy's at each approval. Raising it while an operation the
/// cluster proposed waits holds it back for a second approver; lowering it lets the next
/// approval through, even from one who approved already. An automatic operation in auto
/// mode and a failover in a group asking for one approver start running as before.
#[test]
fn approvals_follow_the_policy_at_each_approval() {
    let mut s = with_policy();
    let op = operation_of(&as_actor(&mut s, 2, "leader", proposed_for_approval()));
    assert!(op.approvals.is_empty(), "the proposer is not an approver");
    assert!(apply_policy(&mut s, 3, approvals(2)).outcome.is_ok());
    let one = operation_of(&as_actor(&mut s, 4, "alice", approve(op.id)));
    assert_eq!(one.state, OperationState::AwaitingApproval);
    assert!(apply_policy(&mut s, 5, approvals(1)).outcome.is_ok());
    let on = operation_of(&as_actor(&mut s, 6, "alice", approve(op.id)));
    assert_eq!(on.state, OperationState::Running);

    let mut s = with_policy();
    let op = operation_of(&as_actor(&mut s, 2, "alice", failover("region-b")));
    assert_eq!(
        op.state,
        OperationState::Running,
        "one approver: the request"
    );
}
