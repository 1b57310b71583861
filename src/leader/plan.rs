//! What the leader does for the current step of a running operation, pure: from the
//! operation, the policy, the group's recorded lease bound, when this witness saw the revoke
//! applied and `now`. It reads no clock and runs nothing; the executor performs the plan.
//! The lease-wait arithmetic lives in [`fence_deadline`] and nowhere else.

use tokio::time::Instant;

use crate::config::{GroupPolicy, Policy};
use crate::state::{LeaseBound, Operation, Step, StepOutcome};
use std::time::Duration;

/// The work of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepPlan {
    /// Nothing to do outside the cluster: record the step.
    Complete {
        outcome: StepOutcome,
        detail: String,
    },
    /// Run these hooks in order, each until it succeeds (bounded attempts), then record.
    RunHooks { hooks: Vec<String> },
    /// Run the fence hooks, then wait until `wait_until` unless `ends_early` and every hook
    /// confirmed a hard fence for the operation's epoch.
    Fence {
        hooks: Vec<String>,
        wait_until: Instant,
        bound: LeaseBound,
        ends_early: bool,
    },
    /// Measure the target's lag with `hook` until it is within the RPO; halt at `give_up`.
    RpoCheck { hook: String, give_up: Instant },
    /// Publish the committed decision on the group's external DNS servers.
    PublishDns,
    /// Run the validate hooks, then, when the new region has probes, wait for its `up`.
    Validate { hooks: Vec<String>, probed: bool },
}

/// When the lease wait of a revoke seen at `revoke_seen` ends: `lease x (1 + drift) +
/// margin` later, with the longest terms in force since the old region was activated. Any
/// lease the old region may hold has expired on its holder's clock by then (S1): the holder
/// counts its lease from when it sent the request, which was before the revoke committed,
/// and `revoke_seen` is never before the commit.
pub fn fence_deadline(revoke_seen: Instant, bound: LeaseBound) -> Instant {
    revoke_seen + Duration::from_millis(bound.wait_ms())
}

/// The plan for `op`'s current step.
pub fn plan(
    op: &Operation,
    policy: &Policy,
    group: &GroupPolicy,
    bound: LeaseBound,
    revoke_seen: Instant,
    now: Instant,
) -> StepPlan {
    let nothing = |what: &str| StepPlan::Complete {
        outcome: StepOutcome::NoOp,
        detail: what.to_string(),
    };
    match op.step {
        Step::Declare | Step::Done => nothing(""),
        Step::Revoke => StepPlan::Complete {
            outcome: StepOutcome::Completed,
            detail: format!(
                "no renewal of {}'s lease (epoch {}) succeeds from this commit on",
                op.from, op.from_epoch
            ),
        },
        Step::Fence => StepPlan::Fence {
            hooks: group.hooks.fence.clone(),
            wait_until: fence_deadline(revoke_seen, bound),
            bound,
            ends_early: group.fence_ends_lease_wait,
        },
        Step::RpoCheck => match &group.hooks.rpo_check {
            None => nothing("no rpo-check hook configured"),
            Some(hook) => StepPlan::RpoCheck {
                hook: hook.clone(),
                give_up: now + Duration::from_millis(group.rpo_wait_ms),
            },
        },
        Step::Promote if group.hooks.promote.is_empty() => nothing("no promote hook configured"),
        Step::Promote => StepPlan::RunHooks {
            hooks: group.hooks.promote.clone(),
        },
        Step::Activate => StepPlan::Complete {
            outcome: StepOutcome::Completed,
            detail: format!("{} active at epoch {}", op.to, op.to_epoch),
        },
        Step::Dns if group.dns.is_none() => nothing("the group has no DNS record"),
        Step::Dns => StepPlan::PublishDns,
        Step::Validate => StepPlan::Validate {
            hooks: group.hooks.validate.clone(),
            probed: policy
                .regions
                .iter()
                .any(|r| r.name == op.to && !r.probes.is_empty()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{OperationKind, OperationState};

    fn op(step: Step) -> Operation {
        Operation {
            id: 4,
            group: "checkout".into(),
            kind: OperationKind::Failover,
            from: "region-a".into(),
            to: "region-b".into(),
            from_epoch: 3,
            to_epoch: 5,
            reason: String::new(),
            actor: "t".into(),
            state: OperationState::Running,
            step,
            steps: Vec::new(),
            created_at_ms: 0,
            unfenced: None,
            approvals: Vec::new(),
        }
    }

    /// Goal: each step's plan, table-driven, and the lease wait counted from when the revoke
    /// was seen with the recorded longest terms (never today's policy).
    #[test]
    fn each_step_plans_its_work_and_the_fence_waits_the_recorded_bound() {
        let policy = Policy::parse(
            "p",
            "[[regions]]\nname = \"region-a\"\n[[regions]]\nname = \"region-b\"\n\
             [[groups]]\nname = \"checkout\"\ncandidates = [\"region-a\", \"region-b\"]\n\
             lease_ms = 2000\nrpo_wait_ms = 7000\n\
             [groups.hooks]\nfence = [\"f\"]\npromote = [\"p1\", \"p2\"]\n\
             [hooks.f]\nkind = \"exec\"\nprogram = \"/bin/true\"\n\
             [hooks.p1]\nkind = \"exec\"\nprogram = \"/bin/true\"\n\
             [hooks.p2]\nkind = \"exec\"\nprogram = \"/bin/true\"\n",
        )
        .unwrap();
        let group = &policy.groups[0];
        let recorded = LeaseBound {
            lease_ms: 30_000,
            clock_drift_percent: 5,
            lease_margin_ms: 200,
        };
        let seen = Instant::now();
        let now = seen + Duration::from_secs(3);
        let at = |step| plan(&op(step), &policy, group, recorded, seen, now);
        assert!(matches!(
            at(Step::Revoke),
            StepPlan::Complete {
                outcome: StepOutcome::Completed,
                ..
            }
        ));
        assert_eq!(
            at(Step::Fence),
            StepPlan::Fence {
                hooks: vec!["f".into()],
                wait_until: seen + Duration::from_millis(31_700),
                bound: recorded,
                ends_early: false,
            },
            "the recorded 30 s lease, not the policy's 2 s"
        );
        assert_eq!(
            at(Step::RpoCheck),
            StepPlan::Complete {
                outcome: StepOutcome::NoOp,
                detail: "no rpo-check hook configured".into()
            }
        );
        assert_eq!(
            at(Step::Promote),
            StepPlan::RunHooks {
                hooks: vec!["p1".into(), "p2".into()]
            }
        );
        assert!(
            matches!(at(Step::Activate), StepPlan::Complete { detail, .. } if detail == "region-b active at epoch 5")
        );
        assert!(matches!(
            at(Step::Dns),
            StepPlan::Complete {
                outcome: StepOutcome::NoOp,
                ..
            }
        ));
        assert_eq!(
            at(Step::Validate),
            StepPlan::Validate {
                hooks: Vec::new(),
                probed: false
            }
        );
        let mut with_rpo = group.clone();
        with_rpo.hooks.rpo_check = Some("f".into());
        assert_eq!(
            plan(&op(Step::RpoCheck), &policy, &with_rpo, recorded, seen, now),
            StepPlan::RpoCheck {
                hook: "f".into(),
                give_up: now + Duration::from_millis(7_000)
            }
        );
    }
}
