//! Unit tests of the pure state machine: table-driven refusals and invariants.

use super::*;
use crate::config::Policy;

const POLICY: &str = r#"
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
"#;

fn proposal(request_id: &str, command: Command) -> Proposal {
    Proposal {
        actor: "operator".into(),
        at_ms: 1,
        request_id: request_id.into(),
        command,
    }
}

fn with_policy() -> ClusterState {
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

fn failover(to: &str) -> Command {
    Command::Failover {
        group: "checkout".into(),
        to: to.into(),
        reason: "test".into(),
    }
}

#[test]
fn new_group_starts_on_first_candidate_at_epoch_one() {
    let s = with_policy();
    let g = &s.groups["checkout"];
    assert_eq!(
        (g.active.as_str(), g.epoch, g.mode),
        ("region-a", 1, Mode::Manual)
    );
    assert_eq!(s.audit.back().unwrap().kind, "policy");
}

#[test]
fn failover_bumps_epoch_once_and_is_audited() {
    let mut s = with_policy();
    let r = s.apply(2, &proposal("req-1", failover("region-b")));
    let Ok(Outcome::Group(g)) = r.outcome.clone() else {
        panic!("{r:?}")
    };
    assert_eq!((g.active.as_str(), g.epoch), ("region-b", 2));
    // The same request retried (e.g. after a leader change) is answered, not applied again.
    let again = s.apply(3, &proposal("req-1", failover("region-b")));
    assert_eq!(again, r);
    assert_eq!(s.groups["checkout"].epoch, 2);
    let last = s.audit.back().unwrap();
    assert_eq!(
        (last.kind.as_str(), last.epoch, last.index),
        ("failover", 2, 2)
    );
}

/// A command and a predicate on the refusal it must get.
type RefusalCase = (Command, fn(&Refusal) -> bool);

#[test]
fn refusals_change_nothing() {
    let cases: Vec<RefusalCase> = vec![
        (
            Command::Failover {
                group: "nope".into(),
                to: "region-b".into(),
                reason: String::new(),
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
            Command::Failover {
                group: "checkout".into(),
                to: "region-b".into(),
                reason: "x".repeat(REASON_BYTES_MAX + 1),
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
    s.apply(2, &proposal("", failover("region-b")));

    // A policy without the group (built in code: groups cleared).
    let mut empty = Policy::parse("p", POLICY).unwrap();
    empty.groups.clear();

    s.apply(
        3,
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
        4,
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
fn audit_log_is_bounded() {
    let mut s = with_policy();
    for i in 0..(AUDIT_ENTRIES_MAX as u64 + 10) {
        let to = if i % 2 == 0 { "region-b" } else { "region-a" };
        s.apply(10 + i, &proposal("", failover(to)));
    }
    assert_eq!(s.audit.len(), AUDIT_ENTRIES_MAX);
    assert_eq!(s.groups["checkout"].epoch, AUDIT_ENTRIES_MAX as u64 + 11);
}
