//! Durable operations: a failover as a sequence of steps recorded in the Raft log. Pure
//! data and transitions; the leader's executor performs the steps and
//! proposes their completion.

use serde::{Deserialize, Serialize};

/// The steps of an active-passive failover, in order. `Declare` is completed by the commit
/// that creates the operation; `Done` is not a step but the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Declare,
    /// Commit that no lease renewal for the old region succeeds any more.
    Revoke,
    /// Fence hooks confirm, or the old region's lease has certainly expired.
    Fence,
    /// The target's replication lag is within the group's RPO (or an operator overrides).
    RpoCheck,
    /// Promote hooks: promote the database, scale up services.
    Promote,
    /// Commit the new active region with the reserved epoch.
    Activate,
    /// Publish the new region in DNS.
    Dns,
    /// The new region's probes and validate hooks pass.
    Validate,
    Done,
}

impl Step {
    pub const ALL: [Step; 9] = [
        Step::Declare,
        Step::Revoke,
        Step::Fence,
        Step::RpoCheck,
        Step::Promote,
        Step::Activate,
        Step::Dns,
        Step::Validate,
        Step::Done,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Declare => "declare",
            Step::Revoke => "revoke",
            Step::Fence => "fence",
            Step::RpoCheck => "rpo-check",
            Step::Promote => "promote",
            Step::Activate => "activate",
            Step::Dns => "dns",
            Step::Validate => "validate",
            Step::Done => "done",
        }
    }

    pub fn next(self) -> Step {
        let i = Step::ALL
            .iter()
            .position(|s| *s == self)
            .expect("step is listed");
        Step::ALL.get(i + 1).copied().unwrap_or(Step::Done)
    }

    /// Steps an operator may skip when they halt. Never the lease wait (`fence`), the
    /// revocation or the activation: skipping those would break single-writer safety (S1).
    pub fn skippable(self) -> bool {
        matches!(
            self,
            Step::RpoCheck | Step::Promote | Step::Dns | Step::Validate
        )
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Step {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Step::ALL
            .iter()
            .find(|step| step.as_str() == s)
            .copied()
            .ok_or_else(|| format!("{s:?} is not a step"))
    }
}

/// Why an operation exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OperationKind {
    /// An operator asked for a failover.
    Failover,
    /// An operator asked to move back to a higher-priority region.
    Failback,
    /// The leader started it on a quorum verdict.
    Automatic,
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Failover => "failover",
            OperationKind::Failback => "failback",
            OperationKind::Automatic => "automatic",
        }
    }
}

/// Where an operation stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OperationState {
    /// Manual mode: declared, waits for `arbiter approve`.
    AwaitingApproval,
    /// The leader is executing `Operation::step`.
    Running,
    /// `Operation::step` kept failing; an operator retries, skips (where safe) or aborts.
    Halted {
        error: String,
    },
    Done,
    /// Aborted by an operator after its fence hooks may have run: the leader runs the
    /// group's unfence hooks, then records the abort as finished. The old region is active
    /// and may renew its lease meanwhile; no other operation of the group starts.
    Aborting {
        reason: String,
    },
    Aborted {
        reason: String,
    },
}

impl OperationState {
    pub fn is_finished(&self) -> bool {
        matches!(self, OperationState::Done | OperationState::Aborted { .. })
    }

    pub fn name(&self) -> &'static str {
        match self {
            OperationState::AwaitingApproval => "awaiting-approval",
            OperationState::Running => "running",
            OperationState::Halted { .. } => "halted",
            OperationState::Done => "done",
            OperationState::Aborting { .. } => "aborting",
            OperationState::Aborted { .. } => "aborted",
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepOutcome {
    Completed,
    /// Nothing to do (no hook configured, no DNS provider yet).
    NoOp,
    /// An operator skipped it.
    Skipped,
}

/// One finished step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: Step,
    pub outcome: StepOutcome,
    /// What happened: which hook confirmed, how long the lease wait was, the measured lag.
    pub detail: String,
    /// Proposer's wall clock when the step was committed (for reports; never for safety).
    pub finished_at_ms: u64,
    /// Raft log index of the commit.
    pub index: u64,
}

/// A failover (or failback) of one group from one region to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Cluster-wide, from 1, never reused.
    pub id: u64,
    pub group: String,
    pub kind: OperationKind,
    pub from: String,
    pub to: String,
    /// The group's epoch when the operation was declared (the old region's).
    pub from_epoch: u64,
    /// The epoch reserved for the new region, committed by `activate`.
    pub to_epoch: u64,
    pub reason: String,
    pub actor: String,
    pub state: OperationState,
    /// The next step to execute (`Done` when finished).
    pub step: Step,
    pub steps: Vec<StepRecord>,
    pub created_at_ms: u64,
    /// After an abort: what became of the old primary's fence (the unfence hooks' outcome,
    /// or a warning when fence hooks may have run and none can undo them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unfenced: Option<String>,
    /// The distinct identities that have approved what the operation waits for now (its
    /// start, or the data loss of a halted rpo-check), while the group's
    /// `approvals_required` is not yet reached; emptied when it goes on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<String>,
}

impl Operation {
    /// Whether `step` has already been recorded (a resumed leader's duplicate completion).
    pub fn has_completed(&self, step: Step) -> bool {
        self.steps.iter().any(|r| r.step == step)
    }
}
