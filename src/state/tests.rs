//! Unit tests of the pure state machine: table-driven refusals and invariants.

use super::*;
use crate::config::Policy;

pub(super) const POLICY: &str = r#"
[[regions]]
name = "region-a"
[[regions]]
name = "region-b"
[[regions]]
name = "region-c"

[[groups]]
name = "checkout"
candidates = ["region-a", "region-b"]
mode = "manual"
lease_ms = 1000
"#;

pub(super) fn proposal(request_id: &str, command: Command) -> Proposal {
    Proposal {
        actor: "operator".into(),
        at_ms: 1,
        request_id: request_id.into(),
        command,
    }
}

pub(super) fn with_policy() -> ClusterState {
    let mut s = ClusterState::default();
    let policy = Policy::parse("p", POLICY).unwrap();
    let r = s.apply(
        1,
        &proposal(
            "",
            Command::ApplyPolicy {
                policy,
                if_version: 0,
            },
        ),
    );
    assert_eq!(r.outcome, Ok(Outcome::PolicyApplied { version: 1 }));
    s
}

pub(super) fn failover(to: &str) -> Command {
    Command::StartOperation {
        group: "checkout".into(),
        to: to.into(),
        kind: OperationKind::Failover,
        reason: "test".into(),
        approval_required: false,
        requested: true,
    }
}

/// An operation the leader proposes in manual mode: it waits for approval.
pub(super) fn proposed_for_approval() -> Command {
    Command::StartOperation {
        group: "checkout".into(),
        to: "region-b".into(),
        kind: OperationKind::Automatic,
        reason: "region-a down".into(),
        approval_required: true,
        requested: false,
    }
}

pub(super) fn approve(operation: u64) -> Command {
    Command::ApproveOperation {
        operation,
        break_glass: None,
    }
}

pub(super) fn complete(operation: u64, step: Step) -> Command {
    Command::CompleteStep {
        operation,
        step,
        outcome: StepOutcome::Completed,
        detail: String::new(),
    }
}

/// Starts a failover to `to` at log index `index` and completes every step; returns the
/// next free index.
pub(super) fn run_failover(s: &mut ClusterState, index: u64, to: &str) -> u64 {
    let r = s.apply(index, &proposal("", failover(to)));
    let Ok(Outcome::Operation(op)) = r.outcome else {
        panic!("{r:?}")
    };
    let mut i = index + 1;
    for step in [
        Step::Revoke,
        Step::Fence,
        Step::RpoCheck,
        Step::Promote,
        Step::Activate,
        Step::Dns,
        Step::Validate,
    ] {
        let r = s.apply(i, &proposal("", complete(op.id, step)));
        assert!(r.outcome.is_ok(), "{step}: {r:?}");
        i += 1;
    }
    i
}

#[test]
fn new_group_starts_on_first_candidate_at_epoch_one() {
    let s = with_policy();
    let g = &s.groups["checkout"];
    assert_eq!(
        (g.active.as_str(), g.epoch, g.mode),
        ("region-a", 1, Mode::Manual)
    );
    assert_eq!(s.audit.back().unwrap().kind, AuditKind::Policy);
}

#[test]
fn operation_runs_its_steps_in_order_and_bumps_the_epoch_once() {
    let mut s = with_policy();
    let r = s.apply(2, &proposal("req-1", failover("region-b")));
    let Ok(Outcome::Operation(op)) = r.outcome.clone() else {
        panic!("{r:?}")
    };
    assert_eq!((op.from_epoch, op.to_epoch, op.step), (1, 2, Step::Revoke));
    assert_eq!(
        s.groups["checkout"].epoch, 1,
        "declaring reserves the epoch, it does not change it"
    );
    // The same request retried (e.g. after a leader change) is answered, not applied again.
    assert_eq!(s.apply(3, &proposal("req-1", failover("region-b"))), r);
    assert_eq!(s.last_operation_id, 1);
    // A second operation for the same group is refused while this one runs.
    let busy = s.apply(4, &proposal("", failover("region-b")));
    assert!(
        matches!(busy.outcome, Err(Refusal::OperationInProgress { .. })),
        "{busy:?}"
    );

    assert_eq!(
        s.lease_check("checkout", "region-a", Some(1)),
        Ok((1, 1000))
    );
    s.apply(5, &proposal("", complete(op.id, Step::Revoke)));
    assert!(
        matches!(
            s.lease_check("checkout", "region-a", Some(1)),
            Err(LeaseRefusal::Revoked { .. })
        ),
        "no renewal after revoke"
    );
    let wrong = s.apply(6, &proposal("", complete(op.id, Step::Promote)));
    assert!(
        matches!(wrong.outcome, Err(Refusal::WrongStep { .. })),
        "{wrong:?}"
    );
    for (i, step) in [Step::Fence, Step::RpoCheck, Step::Promote]
        .into_iter()
        .enumerate()
    {
        s.apply(7 + i as u64, &proposal("", complete(op.id, step)));
    }
    assert_eq!(s.groups["checkout"].epoch, 1);
    s.apply(10, &proposal("", complete(op.id, Step::Activate)));
    let g = &s.groups["checkout"];
    assert_eq!(
        (g.active.as_str(), g.epoch, g.revoked),
        ("region-b", 2, false)
    );
    assert_eq!(
        s.lease_check("checkout", "region-b", Some(2)),
        Ok((2, 1000))
    );
    assert!(matches!(
        s.lease_check("checkout", "region-a", Some(1)),
        Err(LeaseRefusal::NotActive { .. })
    ));
    assert!(matches!(
        s.lease_check("checkout", "region-b", Some(1)),
        Err(LeaseRefusal::StaleEpoch { epoch: 2, .. })
    ));
    // A resumed leader reporting a finished step again changes nothing.
    let before = s.clone();
    let dup = s.apply(11, &proposal("", complete(op.id, Step::Fence)));
    assert!(dup.outcome.is_ok());
    assert_eq!(s.operations, before.operations);
    s.apply(12, &proposal("", complete(op.id, Step::Dns)));
    s.apply(13, &proposal("", complete(op.id, Step::Validate)));
    let op = &s.operations[&1];
    assert_eq!(op.state, OperationState::Done);
    let steps: Vec<Step> = op.steps.iter().map(|r| r.step).collect();
    assert_eq!(
        steps,
        Step::ALL[..8].to_vec(),
        "every step recorded once, in order"
    );
    assert_eq!(s.groups["checkout"].operation, None);
    assert_eq!(
        s.audit
            .iter()
            .filter(|a| a.kind == AuditKind::OperationDone)
            .count(),
        1
    );
}

#[test]
fn halted_operation_retries_skips_only_safe_steps_and_aborts_before_activation() {
    let mut s = with_policy();
    s.apply(2, &proposal("", failover("region-b")));
    s.apply(3, &proposal("", complete(1, Step::Revoke)));
    let halt = |step| Command::HaltOperation {
        operation: 1,
        step,
        error: "hook failed".into(),
    };
    s.apply(4, &proposal("", halt(Step::Fence)));
    assert!(matches!(
        s.operations[&1].state,
        OperationState::Halted { .. }
    ));
    let skip = s.apply(
        5,
        &proposal(
            "",
            Command::SkipStep {
                operation: 1,
                step: Step::Fence,
            },
        ),
    );
    assert!(
        matches!(skip.outcome, Err(Refusal::NotSkippable { .. })),
        "the lease wait is never skipped"
    );
    s.apply(6, &proposal("", Command::RetryOperation { operation: 1 }));
    s.apply(7, &proposal("", complete(1, Step::Fence)));
    s.apply(8, &proposal("", halt(Step::RpoCheck)));
    let skip = s.apply(
        10,
        &proposal(
            "",
            Command::SkipStep {
                operation: 1,
                step: Step::RpoCheck,
            },
        ),
    );
    assert!(skip.outcome.is_ok(), "{skip:?}");
    assert_eq!(s.operations[&1].step, Step::Promote);
    let abort = |reason: &str| Command::AbortOperation {
        operation: 1,
        reason: reason.into(),
    };
    let late = s.apply(11, &proposal("", abort("changed my mind")));
    assert!(
        matches!(late.outcome, Err(Refusal::PromoteStarted { .. })),
        "promote may have started: {late:?}"
    );

    // Another operation, aborted while its rpo-check is halted (nothing promoted yet).
    s.apply(12, &proposal("", halt(Step::Promote)));
    s.apply(
        13,
        &proposal(
            "",
            Command::SkipStep {
                operation: 1,
                step: Step::Promote,
            },
        ),
    );
    for (i, step) in [Step::Activate, Step::Dns, Step::Validate]
        .into_iter()
        .enumerate()
    {
        s.apply(14 + i as u64, &proposal("", complete(1, step)));
    }
    s.apply(17, &proposal("", failover("region-a")));
    s.apply(18, &proposal("", complete(2, Step::Revoke)));
    s.apply(19, &proposal("", complete(2, Step::Fence)));
    let halt2 = Command::HaltOperation {
        operation: 2,
        step: Step::RpoCheck,
        error: "lag above the RPO".into(),
    };
    s.apply(20, &proposal("", halt2));
    let abort2 = Command::AbortOperation {
        operation: 2,
        reason: "changed my mind".into(),
    };
    s.apply(21, &proposal("", abort2));
    let op = &s.operations[&2];
    assert!(matches!(op.state, OperationState::Aborted { .. }));
    let g = &s.groups["checkout"];
    assert_eq!(
        (g.active.as_str(), g.epoch, g.revoked, g.operation),
        ("region-b", 2, false, None)
    );
    assert_eq!(
        s.lease_check("checkout", "region-b", Some(2)),
        Ok((2, 1000)),
        "the old region may renew again"
    );

    // After activation an abort is refused: the new region is already active.
    run_failover(&mut s, 30, "region-a");
    let late = s.apply(
        50,
        &proposal(
            "",
            Command::AbortOperation {
                operation: 3,
                reason: "too late".into(),
            },
        ),
    );
    assert!(
        matches!(late.outcome, Err(Refusal::OperationState { .. })),
        "{late:?}"
    );
}

#[test]
fn approval_gates_an_operation_and_accepts_a_halted_rpo_check() {
    let mut s = with_policy();
    s.apply(2, &proposal("", proposed_for_approval()));
    assert_eq!(s.operations[&1].state, OperationState::AwaitingApproval);
    let early = s.apply(3, &proposal("", complete(1, Step::Revoke)));
    assert!(early.outcome.is_err(), "nothing runs before approval");
    s.apply(4, &proposal("", approve(1)));
    s.apply(5, &proposal("", complete(1, Step::Revoke)));
    s.apply(6, &proposal("", complete(1, Step::Fence)));
    s.apply(
        7,
        &proposal(
            "",
            Command::HaltOperation {
                operation: 1,
                step: Step::RpoCheck,
                error: "lag 9000 ms".into(),
            },
        ),
    );
    s.apply(8, &proposal("", approve(1)));
    let op = &s.operations[&1];
    assert_eq!(op.step, Step::Promote);
    assert_eq!(op.steps.last().unwrap().outcome, StepOutcome::Skipped);
    let unknown = s.apply(
        9,
        &proposal(
            "",
            Command::ApproveOperation {
                operation: 77,
                break_glass: None,
            },
        ),
    );
    assert!(matches!(
        unknown.outcome,
        Err(Refusal::UnknownOperation { operation: 77 })
    ));
}

#[test]
fn refusals_change_nothing() {
    type IsExpected = fn(&Refusal) -> bool;
    let cases: Vec<(Command, IsExpected)> = vec![
        (
            Command::StartOperation {
                group: "nope".into(),
                to: "region-b".into(),
                kind: OperationKind::Failover,
                reason: String::new(),
                approval_required: false,
                requested: false,
            },
            |r| matches!(r, Refusal::UnknownGroup { .. }),
        ),
        (failover("region-c"), |r| {
            matches!(r, Refusal::NotCandidate { .. })
        }),
        (failover("region-a"), |r| {
            matches!(r, Refusal::AlreadyActive { .. })
        }),
        (
            Command::StartOperation {
                group: "checkout".into(),
                to: "region-b".into(),
                kind: OperationKind::Failover,
                reason: "x".repeat(REASON_BYTES_MAX + 1),
                approval_required: false,
                requested: false,
            },
            |r| matches!(r, Refusal::ReasonTooLong { .. }),
        ),
        (
            Command::ApplyPolicy {
                policy: Policy::parse("p", POLICY).unwrap(),
                if_version: 7,
            },
            |r| {
                matches!(
                    r,
                    Refusal::StalePolicy {
                        current: 1,
                        expected: 7
                    }
                )
            },
        ),
        (
            Command::ApplyPolicy {
                policy: Policy::parse(
                    "p",
                    &POLICY.replace(r#"["region-a", "region-b"]"#, r#"["region-b", "region-c"]"#),
                )
                .unwrap(),
                if_version: 0,
            },
            |r| matches!(r, Refusal::ActiveRemoved { .. }),
        ),
        (
            Command::RecordMembership {
                change: "witness 4 added".into(),
                accepted_risk: Some("x".repeat(REASON_BYTES_MAX + 1)),
            },
            |r| matches!(r, Refusal::ReasonTooLong { .. }),
        ),
        (
            Command::RecordMembership {
                change: "x".repeat(AUDIT_DETAIL_BYTES_MAX + 1),
                accepted_risk: None,
            },
            |r| matches!(r, Refusal::FieldTooLong { field, .. } if field == "change"),
        ),
    ];
    for (command, expected) in cases {
        let mut s = with_policy();
        let before = s.clone();
        let r = s.apply(9, &proposal("", command.clone()));
        let refusal = r.outcome.expect_err("command must be refused");
        assert!(expected(&refusal), "{command:?} gave {refusal:?}");
        assert_eq!(s, before, "{command:?} changed the state");
    }
}

#[test]
fn frozen_group_refuses_failover_until_mode_changes() {
    let mut s = with_policy();
    let mode = |m| Command::SetMode {
        group: "checkout".into(),
        mode: m,
        reason: "drill".into(),
    };
    s.apply(2, &proposal("", mode(Mode::Frozen)));
    let r = s.apply(3, &proposal("", failover("region-b")));
    assert!(matches!(r.outcome, Err(Refusal::Frozen { .. })), "{r:?}");
    s.apply(4, &proposal("", mode(Mode::Manual)));
    let r = s.apply(5, &proposal("", failover("region-b")));
    assert!(r.outcome.is_ok(), "{r:?}");
}

#[test]
fn removed_and_readded_group_never_reuses_an_epoch() {
    let mut s = with_policy();
    run_failover(&mut s, 2, "region-b");

    // A policy without the group (built in code: groups cleared).
    let mut empty = Policy::parse("p", POLICY).unwrap();
    empty.groups.clear();

    s.apply(
        30,
        &proposal(
            "",
            Command::ApplyPolicy {
                policy: empty,
                if_version: 0,
            },
        ),
    );
    assert!(!s.groups.contains_key("checkout"));
    let policy = Policy::parse("p", POLICY).unwrap();
    s.apply(
        31,
        &proposal(
            "",
            Command::ApplyPolicy {
                policy,
                if_version: 0,
            },
        ),
    );
    assert_eq!(
        s.groups["checkout"].epoch, 3,
        "re-added group continues above its last epoch"
    );
}

#[test]
fn policy_mode_change_changes_group_mode_but_unchanged_policy_keeps_operator_mode() {
    let mut s = with_policy();
    s.apply(
        2,
        &proposal(
            "",
            Command::SetMode {
                group: "checkout".into(),
                mode: Mode::Frozen,
                reason: String::new(),
            },
        ),
    );
    let same = Policy::parse("p", POLICY).unwrap();
    s.apply(
        3,
        &proposal(
            "",
            Command::ApplyPolicy {
                policy: same,
                if_version: 0,
            },
        ),
    );
    assert_eq!(
        s.groups["checkout"].mode,
        Mode::Frozen,
        "re-applying the same policy keeps the operator's mode"
    );
    let auto = Policy::parse("p", &POLICY.replace("manual", "auto")).unwrap();
    s.apply(
        4,
        &proposal(
            "",
            Command::ApplyPolicy {
                policy: auto,
                if_version: 0,
            },
        ),
    );
    assert_eq!(s.groups["checkout"].mode, Mode::Auto);
}

#[test]
fn bootstrap_happens_once() {
    let mut s = ClusterState::default();
    let b = |id: &str| {
        proposal(
            "",
            Command::Bootstrap {
                cluster_id: id.into(),
            },
        )
    };
    assert_eq!(s.apply(1, &b("c1")).outcome, Ok(Outcome::Bootstrapped));
    assert!(matches!(
        s.apply(2, &b("c2")).outcome,
        Err(Refusal::AlreadyBootstrapped { .. })
    ));
    assert_eq!(s.cluster_id.as_deref(), Some("c1"));
}

#[test]
fn audit_log_and_finished_operations_are_bounded() {
    let mut s = with_policy();
    let count = (AUDIT_ENTRIES_MAX / 8 + 10) as u64;
    let mut index = 10;
    for i in 0..count {
        let to = if i % 2 == 0 { "region-b" } else { "region-a" };
        index = run_failover(&mut s, index, to);
    }
    assert_eq!(s.audit.len(), AUDIT_ENTRIES_MAX);
    assert_eq!(s.operations.len(), FINISHED_OPERATIONS_MAX);
    assert_eq!(s.groups["checkout"].epoch, count + 1);
}

/// Goal: an operation halted after its activation (a failing `validate` or `dns`) does not
/// keep its group from failing over again; one halted before activation still does.
#[test]
fn new_operation_supersedes_one_halted_after_activation_only() {
    let mut s = with_policy();
    let halt = |operation, step| Command::HaltOperation {
        operation,
        step,
        error: "region-b is not seen up by a majority".into(),
    };

    // Halted before activation (lease revoked, fence pending): still in progress.
    s.apply(2, &proposal("", failover("region-b")));
    s.apply(3, &proposal("", complete(1, Step::Revoke)));
    s.apply(4, &proposal("", halt(1, Step::Fence)));
    assert_eq!(s.supersedable_operation("checkout"), None);
    let busy = s.apply(5, &proposal("", failover("region-c")));
    assert!(
        matches!(busy.outcome, Err(Refusal::OperationInProgress { .. })),
        "{busy:?}"
    );
    s.apply(6, &proposal("", Command::RetryOperation { operation: 1 }));
    let mut i = 7;
    for step in [
        Step::Fence,
        Step::RpoCheck,
        Step::Promote,
        Step::Activate,
        Step::Dns,
    ] {
        let r = s.apply(i, &proposal("", complete(1, step)));
        assert!(r.outcome.is_ok(), "{step}: {r:?}");
        i += 1;
    }

    // Halted at validate, after region-b was activated at epoch 2.
    s.apply(i, &proposal("", halt(1, Step::Validate)));
    assert_eq!(s.supersedable_operation("checkout"), Some(1));
    assert_eq!(s.groups["checkout"].operation, Some(1));
    let audit_before = s.audit.len();

    // A refused request changes nothing, even with a supersedable operation around.
    let refused = s.apply(i + 1, &proposal("", failover("region-b")));
    assert!(
        matches!(refused.outcome, Err(Refusal::AlreadyActive { .. })),
        "{refused:?}"
    );
    assert!(matches!(
        s.operations[&1].state,
        OperationState::Halted { .. }
    ));
    assert_eq!(s.audit.len(), audit_before);

    let next = s.apply(i + 2, &proposal("", failover("region-a")));
    let Ok(Outcome::Operation(op)) = next.outcome else {
        panic!("{next:?}")
    };
    assert_eq!((op.id, op.from_epoch, op.to_epoch), (2, 2, 3));
    let old = &s.operations[&1];
    assert_eq!(old.state, OperationState::Done);
    let last = old.steps.last().unwrap();
    assert_eq!(
        (last.step, last.outcome),
        (Step::Validate, StepOutcome::Skipped)
    );
    assert!(
        last.detail.contains("superseded by operation 2"),
        "{last:?}"
    );
    assert_eq!(
        old.steps
            .iter()
            .filter(|r| r.step == Step::Validate)
            .count(),
        1,
        "each step recorded once"
    );
    let g = &s.groups["checkout"];
    assert_eq!(
        (g.active.as_str(), g.epoch, g.operation),
        ("region-b", 2, Some(2))
    );
}

/// Goal: a membership change is audited cluster-wide, and one whose site risk the operator
/// accepted is an entry of its own kind, with the reason, that alerts can match.
#[test]
fn membership_changes_are_audited_with_any_accepted_risk() {
    let mut s = with_policy();
    let record = |change: &str, accepted_risk: Option<&str>| Command::RecordMembership {
        change: change.into(),
        accepted_risk: accepted_risk.map(String::from),
    };
    s.apply(9, &proposal("", record("witness 4 removed", None)))
        .outcome
        .unwrap();
    s.apply(
        10,
        &proposal("", record("witness 5 added", Some("growing to five"))),
    )
    .outcome
    .unwrap();
    let last: Vec<_> = s.audit.iter().rev().take(2).collect();
    assert_eq!(last[1].kind, AuditKind::Membership);
    assert_eq!(last[1].detail, "witness 4 removed");
    assert_eq!(last[1].group, "");
    assert_eq!(last[0].kind, AuditKind::SiteRiskAccepted);
    assert_eq!(
        last[0].detail,
        "witness 5 added; site risk accepted: growing to five"
    );
}
