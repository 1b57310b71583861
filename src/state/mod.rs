//! The replicated state machine, pure: `apply(command)` returns the new state and a
//! response, and does no I/O, reads no clock and opens no socket. Times in commands are
//! stamped by the proposer and are informational (audit log); safety never depends on them.
//!
//! Invariants asserted at the point of change: a group's epoch never decreases, and its
//! active region is always one of its candidate regions.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::config::{Mode, Policy};

mod operation;

pub use operation::{Operation, OperationKind, OperationState, Step, StepOutcome, StepRecord};

/// Audit entries kept in the replicated state; older ones are dropped (the full history is
/// in the Raft log until it is compacted). Bounded so snapshots stay small.
pub const AUDIT_ENTRIES_MAX: usize = 10_000;
/// Request ids remembered for deduplication of client retries.
pub const REQUEST_IDS_MAX: usize = 4_096;
/// Reasons and actors are bounded: they are stored in every snapshot.
pub const REASON_BYTES_MAX: usize = 1_024;
/// Step details and halt errors (hook output excerpts) are bounded for the same reason.
pub const DETAIL_BYTES_MAX: usize = 8 * 1_024;
/// Finished operations kept in the replicated state for `arbiter operations`.
pub const FINISHED_OPERATIONS_MAX: usize = 1_000;

/// A command proposed through Raft, with who asked and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Who asked: the certificate identity of the client, or `arbiter` for the cluster.
    pub actor: String,
    /// Wall-clock milliseconds since the Unix epoch at the proposer; for the audit log only.
    pub at_ms: u64,
    /// Client-chosen id; a retried request with the same id is answered from the first
    /// result instead of being applied twice. Empty: no deduplication.
    pub request_id: String,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Records the cluster id, once, right after initialisation.
    Bootstrap { cluster_id: String },
    /// Replaces the policy (already validated by the proposer).
    ApplyPolicy {
        policy: Policy,
        /// Refuse unless the current version equals this (0: no check).
        if_version: u64,
    },
    /// Declares a failover operation of `group` to region `to`: reserves epoch + 1. The
    /// operation waits for approval when `approval_required`, otherwise starts running.
    StartOperation {
        group: String,
        to: String,
        kind: OperationKind,
        reason: String,
        approval_required: bool,
    },
    /// The leader finished `step` of an operation. A completion of a step already recorded
    /// (a new leader resuming) is acknowledged and changes nothing.
    CompleteStep {
        operation: u64,
        step: Step,
        outcome: StepOutcome,
        detail: String,
    },
    /// `step` kept failing: the operation waits for an operator.
    HaltOperation {
        operation: u64,
        step: Step,
        error: String,
    },
    /// Operator: run a halted operation's step again.
    RetryOperation { operation: u64 },
    /// Operator: skip a halted operation's step (only where safe, see `Step::skippable`).
    SkipStep { operation: u64, step: Step },
    /// Operator: let an operation waiting for approval run, or accept a halted rpo-check
    /// (replication lag above the RPO) and continue.
    ApproveOperation { operation: u64 },
    /// Operator: stop an operation before the new region is activated; the old region stays
    /// active and its lease may be renewed again.
    AbortOperation { operation: u64, reason: String },
    /// The leader found an external DNS server publishing something other than the
    /// committed state for a group and repaired it.
    RecordDnsRepair {
        group: String,
        server: String,
        detail: String,
    },
    /// The leader's quorum verdict about a region changed.
    RecordVerdict {
        region: String,
        verdict: String,
        evidence: String,
    },
    SetMode {
        group: String,
        mode: Mode,
        reason: String,
    },
}

/// Why a command was refused. A refused command changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("unknown group {group:?}")]
    UnknownGroup { group: String },
    #[error(
        "region {region:?} is not a candidate of group {group:?} (candidates: {candidates:?})"
    )]
    NotCandidate {
        group: String,
        region: String,
        candidates: Vec<String>,
    },
    #[error("region {region:?} is already active for group {group:?} at epoch {epoch}")]
    AlreadyActive {
        group: String,
        region: String,
        epoch: u64,
    },
    #[error("group {group:?} is frozen: change its mode before failing over")]
    Frozen { group: String },
    #[error("policy version is {current}, not {expected}: show the policy again and retry")]
    StalePolicy { current: u64, expected: u64 },
    #[error("no policy has been applied yet: run `arbiter policy apply`")]
    NoPolicy,
    #[error("the policy would leave group {group:?} active in {region:?}, which is no longer a candidate: fail over first")]
    ActiveRemoved { group: String, region: String },
    #[error("the cluster id is already set to {cluster_id:?}")]
    AlreadyBootstrapped { cluster_id: String },
    #[error("reason is {len} bytes, more than {REASON_BYTES_MAX}")]
    ReasonTooLong { len: usize },
    #[error("group {group:?} already has operation {operation} in progress")]
    OperationInProgress { group: String, operation: u64 },
    #[error("unknown operation {operation}")]
    UnknownOperation { operation: u64 },
    #[error("operation {operation} is {state}, which does not allow this")]
    OperationState { operation: u64, state: String },
    #[error("operation {operation} is at step {current}, not {requested}")]
    WrongStep {
        operation: u64,
        current: Step,
        requested: Step,
    },
    #[error(
        "step {step} of operation {operation} cannot be skipped: it guards single-writer safety"
    )]
    NotSkippable { operation: u64, step: Step },
    #[error(
        "operation {operation} has already activated {to}: run a failback instead of aborting"
    )]
    AlreadyActivated { operation: u64, to: String },
    #[error("unknown region {region:?}")]
    UnknownRegion { region: String },
}

/// The result of applying a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Log index at which the command was applied.
    pub index: u64,
    pub outcome: Result<Outcome, Refusal>,
}

impl Default for Response {
    fn default() -> Self {
        Response {
            index: 0,
            outcome: Ok(Outcome::Noop),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A log entry without a command (blank or membership entry).
    Noop,
    Bootstrapped,
    PolicyApplied {
        version: u64,
    },
    /// The group after the change.
    Group(GroupState),
    /// The operation after the change.
    Operation(Box<Operation>),
    /// An observation (verdict change, DNS repair) was recorded in the audit log.
    Recorded,
}

/// The replicated state of one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    pub name: String,
    pub candidates: Vec<String>,
    pub active: String,
    /// Fencing token: +1 at every change of active region, never reused.
    pub epoch: u64,
    pub mode: Mode,
    /// Log index of the last change of active region.
    pub changed_at_index: u64,
    /// The active region's lease is revoked by a running operation: no acquire or renewal
    /// succeeds until the operation activates another region or is aborted.
    #[serde(default)]
    pub revoked: bool,
    /// The operation in progress, if any (at most one per group).
    #[serde(default)]
    pub operation: Option<u64>,
    /// Proposer's wall clock of the last activation; anti-flap cooldown only, never safety.
    #[serde(default)]
    pub activated_at_ms: u64,
}

/// Why the lease of a (group, region) cannot be granted, renewed or confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum LeaseRefusal {
    #[error("unknown group {group:?}")]
    UnknownGroup { group: String },
    #[error(
        "region {region:?} is not active for group {group:?}: {active:?} is, at epoch {epoch}"
    )]
    NotActive {
        group: String,
        region: String,
        active: String,
        epoch: u64,
    },
    #[error("epoch {requested} of group {group:?} is stale: the current epoch is {epoch} ({active:?} active)")]
    StaleEpoch {
        group: String,
        requested: u64,
        active: String,
        epoch: u64,
    },
    #[error("the lease of {active:?} for group {group:?} is revoked by operation {operation}: a failover is under way")]
    Revoked {
        group: String,
        active: String,
        epoch: u64,
        operation: u64,
    },
}

impl LeaseRefusal {
    /// The group's active region and epoch as known when refusing (empty/0 if unknown group).
    pub fn current(&self) -> (&str, u64) {
        match self {
            LeaseRefusal::UnknownGroup { .. } => ("", 0),
            LeaseRefusal::NotActive { active, epoch, .. }
            | LeaseRefusal::StaleEpoch { active, epoch, .. }
            | LeaseRefusal::Revoked { active, epoch, .. } => (active, *epoch),
        }
    }
}

/// One decision in the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the audit log, from 1, never reused.
    pub seq: u64,
    /// Raft log index of the decision.
    pub index: u64,
    pub at_ms: u64,
    pub actor: String,
    /// Empty for cluster-wide decisions.
    pub group: String,
    /// `bootstrap`, `policy`, `failover`, `mode`, `group-created`, `group-removed`.
    pub kind: String,
    pub detail: String,
    /// The group's epoch after the decision (0 for cluster-wide decisions).
    pub epoch: u64,
}

/// Everything replicated by Raft besides membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub cluster_id: Option<String>,
    pub policy: Option<Policy>,
    /// 0 before the first policy; +1 for every applied policy.
    pub policy_version: u64,
    /// Keyed by group name; the hot read path `group -> (active, epoch)`.
    pub groups: BTreeMap<String, GroupState>,
    pub audit: VecDeque<AuditEntry>,
    /// Next audit sequence number.
    pub audit_next_seq: u64,
    /// Last epoch of each removed group, so a group removed and added again continues
    /// above it: epochs are never reused (S2).
    pub retired_epochs: BTreeMap<String, u64>,
    /// Recent request ids and their responses, oldest first (bounded by REQUEST_IDS_MAX).
    pub requests: VecDeque<(String, Response)>,
    /// Operations by id: every unfinished one, and the newest finished ones (bounded by
    /// FINISHED_OPERATIONS_MAX).
    #[serde(default)]
    pub operations: BTreeMap<u64, Operation>,
    /// Last operation id issued.
    #[serde(default)]
    pub last_operation_id: u64,
    /// Last recorded quorum verdict per region (`up`, `down`, `unknown`).
    #[serde(default)]
    pub verdicts: BTreeMap<String, String>,
}

impl ClusterState {
    /// Applies one committed proposal at log index `index`.
    pub fn apply(&mut self, index: u64, proposal: &Proposal) -> Response {
        if !proposal.request_id.is_empty() {
            if let Some((_, earlier)) = self
                .requests
                .iter()
                .find(|(id, _)| *id == proposal.request_id)
            {
                return earlier.clone();
            }
        }
        let outcome = self.apply_command(index, proposal);
        let response = Response { index, outcome };
        if !proposal.request_id.is_empty() {
            if self.requests.len() >= REQUEST_IDS_MAX {
                self.requests.pop_front();
            }
            self.requests
                .push_back((proposal.request_id.clone(), response.clone()));
        }
        response
    }

    fn apply_command(&mut self, index: u64, p: &Proposal) -> Result<Outcome, Refusal> {
        match &p.command {
            Command::Bootstrap { cluster_id } => {
                if let Some(existing) = &self.cluster_id {
                    return Err(Refusal::AlreadyBootstrapped {
                        cluster_id: existing.clone(),
                    });
                }
                self.cluster_id = Some(cluster_id.clone());
                self.audit(
                    index,
                    p,
                    "",
                    "bootstrap",
                    format!("cluster {cluster_id} initialised"),
                    0,
                );
                Ok(Outcome::Bootstrapped)
            }
            Command::ApplyPolicy { policy, if_version } => {
                self.apply_policy(index, p, policy, *if_version)
            }
            Command::StartOperation {
                group,
                to,
                kind,
                reason,
                approval_required,
            } => self.start_operation(index, p, group, to, *kind, reason, *approval_required),
            Command::CompleteStep {
                operation,
                step,
                outcome,
                detail,
            } => self.complete_step(index, p, *operation, *step, *outcome, detail),
            Command::HaltOperation {
                operation,
                step,
                error,
            } => {
                let op = self.operation_mut(*operation)?;
                if op.state != OperationState::Running || op.step != *step {
                    // A stale report from an earlier leader, or the step moved on: no change.
                    return Ok(Outcome::Operation(Box::new(op.clone())));
                }
                op.state = OperationState::Halted {
                    error: bounded(error, DETAIL_BYTES_MAX),
                };
                let (group, epoch) = (op.group.clone(), op.from_epoch);
                let out = op.clone();
                self.audit(
                    index,
                    p,
                    &group,
                    "operation-halted",
                    format!("operation {operation} halted at {step}: {error}"),
                    epoch,
                );
                Ok(Outcome::Operation(Box::new(out)))
            }
            Command::RetryOperation { operation } => {
                let op = self.operation_mut(*operation)?;
                if !matches!(op.state, OperationState::Halted { .. }) {
                    return Err(Refusal::OperationState {
                        operation: *operation,
                        state: op.state.name().to_string(),
                    });
                }
                op.state = OperationState::Running;
                let (group, epoch, step) = (op.group.clone(), op.from_epoch, op.step);
                let out = op.clone();
                self.audit(
                    index,
                    p,
                    &group,
                    "operation-retry",
                    format!("operation {operation}: retry {step}"),
                    epoch,
                );
                Ok(Outcome::Operation(Box::new(out)))
            }
            Command::SkipStep { operation, step } => {
                let op = self.operation_mut(*operation)?;
                if !matches!(op.state, OperationState::Halted { .. }) {
                    return Err(Refusal::OperationState {
                        operation: *operation,
                        state: op.state.name().to_string(),
                    });
                }
                if op.step != *step {
                    return Err(Refusal::WrongStep {
                        operation: *operation,
                        current: op.step,
                        requested: *step,
                    });
                }
                if !step.skippable() {
                    return Err(Refusal::NotSkippable {
                        operation: *operation,
                        step: *step,
                    });
                }
                op.state = OperationState::Running;
                let detail = format!("skipped by {}", p.actor);
                self.complete_step(index, p, *operation, *step, StepOutcome::Skipped, &detail)
            }
            Command::ApproveOperation { operation } => {
                let op = self.operation_mut(*operation)?;
                match (&op.state, op.step) {
                    (OperationState::AwaitingApproval, _) => {
                        op.state = OperationState::Running;
                        let (group, epoch) = (op.group.clone(), op.from_epoch);
                        let out = op.clone();
                        self.audit(
                            index,
                            p,
                            &group,
                            "operation-approved",
                            format!("operation {operation} approved"),
                            epoch,
                        );
                        Ok(Outcome::Operation(Box::new(out)))
                    }
                    (OperationState::Halted { error }, Step::RpoCheck) => {
                        let detail = format!(
                            "replication lag above the RPO accepted by {} ({error})",
                            p.actor
                        );
                        op.state = OperationState::Running;
                        self.complete_step(
                            index,
                            p,
                            *operation,
                            Step::RpoCheck,
                            StepOutcome::Skipped,
                            &detail,
                        )
                    }
                    (state, _) => Err(Refusal::OperationState {
                        operation: *operation,
                        state: state.name().to_string(),
                    }),
                }
            }
            Command::AbortOperation { operation, reason } => {
                check_reason(reason)?;
                let op = self.operation_mut(*operation)?;
                if op.state.is_finished() {
                    return Err(Refusal::OperationState {
                        operation: *operation,
                        state: op.state.name().to_string(),
                    });
                }
                if op.has_completed(Step::Activate) {
                    return Err(Refusal::AlreadyActivated {
                        operation: *operation,
                        to: op.to.clone(),
                    });
                }
                op.state = OperationState::Aborted {
                    reason: reason.clone(),
                };
                op.step = Step::Done;
                let (group, epoch, from) = (op.group.clone(), op.from_epoch, op.from.clone());
                let out = op.clone();
                let g = self.group_mut(&group)?;
                g.revoked = false;
                g.operation = None;
                self.audit(
                    index,
                    p,
                    &group,
                    "operation-aborted",
                    format!("operation {operation} aborted, {from} stays active at epoch {epoch}: {reason}"),
                    epoch,
                );
                self.trim_operations();
                Ok(Outcome::Operation(Box::new(out)))
            }
            Command::RecordDnsRepair {
                group,
                server,
                detail,
            } => {
                let epoch = self.groups.get(group).map(|g| g.epoch).ok_or_else(|| {
                    Refusal::UnknownGroup {
                        group: group.clone(),
                    }
                })?;
                self.audit(
                    index,
                    p,
                    group,
                    "dns-repair",
                    format!("server {server}: {}", bounded(detail, DETAIL_BYTES_MAX)),
                    epoch,
                );
                Ok(Outcome::Recorded)
            }
            Command::RecordVerdict {
                region,
                verdict,
                evidence,
            } => {
                let known = self
                    .policy
                    .as_ref()
                    .is_some_and(|p| p.regions.iter().any(|r| r.name == *region));
                if !known {
                    return Err(Refusal::UnknownRegion {
                        region: region.clone(),
                    });
                }
                let previous = self.verdicts.insert(region.clone(), verdict.clone());
                let from = previous.as_deref().unwrap_or("unknown");
                self.audit(
                    index,
                    p,
                    "",
                    "verdict",
                    format!(
                        "region {region}: {from} -> {verdict}\n{}",
                        bounded(evidence, DETAIL_BYTES_MAX)
                    ),
                    0,
                );
                Ok(Outcome::Recorded)
            }
            Command::SetMode {
                group,
                mode,
                reason,
            } => {
                check_reason(reason)?;
                let g = self.group_mut(group)?;
                let from = g.mode;
                g.mode = *mode;
                let after = g.clone();
                self.audit(
                    index,
                    p,
                    group,
                    "mode",
                    format!("mode {from} -> {mode}: {reason}"),
                    after.epoch,
                );
                Ok(Outcome::Group(after))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start_operation(
        &mut self,
        index: u64,
        p: &Proposal,
        group: &str,
        to: &str,
        kind: OperationKind,
        reason: &str,
        approval_required: bool,
    ) -> Result<Outcome, Refusal> {
        check_reason(reason)?;
        let id = self.last_operation_id + 1;
        let superseded = self.supersedable_operation(group);
        let g = self.group_mut(group)?;
        if g.mode == Mode::Frozen {
            return Err(Refusal::Frozen {
                group: group.to_string(),
            });
        }
        if let Some(operation) = g.operation.filter(|op| Some(*op) != superseded) {
            return Err(Refusal::OperationInProgress {
                group: group.to_string(),
                operation,
            });
        }
        if !g.candidates.iter().any(|c| c == to) {
            return Err(Refusal::NotCandidate {
                group: group.to_string(),
                region: to.to_string(),
                candidates: g.candidates.clone(),
            });
        }
        if g.active == to {
            return Err(Refusal::AlreadyActive {
                group: group.to_string(),
                region: to.to_string(),
                epoch: g.epoch,
            });
        }
        if let Some(old) = superseded {
            self.supersede(index, p, old, id)?;
        }
        let g = self.group_mut(group)?;
        g.operation = Some(id);
        let (from, from_epoch) = (g.active.clone(), g.epoch);
        self.last_operation_id = id;
        let op = Operation {
            id,
            group: group.to_string(),
            kind,
            from: from.clone(),
            to: to.to_string(),
            from_epoch,
            to_epoch: from_epoch + 1,
            reason: reason.to_string(),
            actor: p.actor.clone(),
            state: if approval_required {
                OperationState::AwaitingApproval
            } else {
                OperationState::Running
            },
            step: Step::Revoke,
            steps: vec![StepRecord {
                step: Step::Declare,
                outcome: StepOutcome::Completed,
                detail: format!("{} {from} -> {to}: {reason}", kind.as_str()),
                finished_at_ms: p.at_ms,
                index,
            }],
            created_at_ms: p.at_ms,
        };
        self.operations.insert(id, op.clone());
        self.audit(
            index,
            p,
            group,
            "operation-declared",
            format!(
                "operation {id} ({}) {from} -> {to}, epoch {} reserved{}: {reason}",
                kind.as_str(),
                from_epoch + 1,
                if approval_required {
                    ", waiting for approval"
                } else {
                    ""
                }
            ),
            from_epoch,
        );
        Ok(Outcome::Operation(Box::new(op)))
    }

    fn complete_step(
        &mut self,
        index: u64,
        p: &Proposal,
        operation: u64,
        step: Step,
        outcome: StepOutcome,
        detail: &str,
    ) -> Result<Outcome, Refusal> {
        let op = self.operation_mut(operation)?;
        if op.has_completed(step) {
            // A resumed leader reporting a step that was already recorded: idempotent.
            return Ok(Outcome::Operation(Box::new(op.clone())));
        }
        if op.state != OperationState::Running {
            return Err(Refusal::OperationState {
                operation,
                state: op.state.name().to_string(),
            });
        }
        if op.step != step {
            return Err(Refusal::WrongStep {
                operation,
                current: op.step,
                requested: step,
            });
        }
        op.steps.push(StepRecord {
            step,
            outcome,
            detail: bounded(detail, DETAIL_BYTES_MAX),
            finished_at_ms: p.at_ms,
            index,
        });
        op.step = step.next();
        if op.step == Step::Done {
            op.state = OperationState::Done;
        }
        let op = op.clone();
        let g = self.group_mut(&op.group)?;
        match step {
            Step::Revoke => g.revoked = true,
            Step::Activate => {
                let before = g.epoch;
                assert!(
                    op.to_epoch > before,
                    "epoch monotonicity violated for group {}",
                    g.name
                );
                g.active = op.to.clone();
                g.epoch = op.to_epoch;
                g.revoked = false;
                g.changed_at_index = index;
                g.activated_at_ms = p.at_ms;
            }
            _ => {}
        }
        if op.state == OperationState::Done {
            g.operation = None;
        }
        let kind = if op.state == OperationState::Done {
            "operation-done"
        } else {
            "step"
        };
        let epoch = if op.has_completed(Step::Activate) {
            op.to_epoch
        } else {
            op.from_epoch
        };
        let text = match step {
            Step::Activate => format!(
                "operation {operation}: {} active at epoch {}",
                op.to, op.to_epoch
            ),
            _ => format!(
                "operation {operation}: {step} {}: {detail}",
                outcome_word(outcome)
            ),
        };
        let group = op.group.clone();
        self.audit(index, p, &group, kind, text, epoch);
        if step == Step::Activate {
            self.check_invariants();
        }
        if op.state == OperationState::Done {
            self.trim_operations();
        }
        Ok(Outcome::Operation(Box::new(op)))
    }

    /// The operation of `group` that a new operation may supersede: one halted after its
    /// activation. Its new region is already active at its epoch and only skippable steps
    /// (`dns`, `validate`) remain, which the new operation does again for its own target.
    /// Without this a halted `validate` would keep the group from failing over at all, even
    /// automatically, until an operator came.
    pub fn supersedable_operation(&self, group: &str) -> Option<u64> {
        let id = self.groups.get(group)?.operation?;
        let op = self.operations.get(&id)?;
        let halted = matches!(op.state, OperationState::Halted { .. });
        (halted && op.has_completed(Step::Activate)).then_some(id)
    }

    /// Ends operation `old` (halted after activation) as done, its remaining steps recorded
    /// as skipped because operation `by` supersedes it.
    fn supersede(&mut self, index: u64, p: &Proposal, old: u64, by: u64) -> Result<(), Refusal> {
        let op = self.operation_mut(old)?;
        let error = match &op.state {
            OperationState::Halted { error } => error.clone(),
            other => unreachable!(
                "only a halted operation is superseded, not {}",
                other.name()
            ),
        };
        let detail = format!("superseded by operation {by} (halted: {error})");
        while let Some(step) = {
            let op = self.operation_mut(old)?;
            (op.step != Step::Done).then_some(op.step)
        } {
            assert!(
                step.skippable(),
                "superseding operation {old} would skip {step}"
            );
            self.operation_mut(old)?.state = OperationState::Running;
            self.complete_step(index, p, old, step, StepOutcome::Skipped, &detail)?;
        }
        Ok(())
    }

    fn operation_mut(&mut self, operation: u64) -> Result<&mut Operation, Refusal> {
        self.operations
            .get_mut(&operation)
            .ok_or(Refusal::UnknownOperation { operation })
    }

    /// Drops the oldest finished operations beyond FINISHED_OPERATIONS_MAX.
    fn trim_operations(&mut self) {
        let finished: Vec<u64> = self
            .operations
            .values()
            .filter(|o| o.state.is_finished())
            .map(|o| o.id)
            .collect();
        if finished.len() > FINISHED_OPERATIONS_MAX {
            for id in &finished[..finished.len() - FINISHED_OPERATIONS_MAX] {
                self.operations.remove(id);
            }
        }
    }

    /// May `region` hold (or keep) the lease of `group`? With `epoch`, the holder's epoch
    /// must also be current. Pure: the caller makes the read linearizable first.
    pub fn lease_check(
        &self,
        group: &str,
        region: &str,
        epoch: Option<u64>,
    ) -> Result<(u64, u64), LeaseRefusal> {
        let g = self
            .groups
            .get(group)
            .ok_or_else(|| LeaseRefusal::UnknownGroup {
                group: group.to_string(),
            })?;
        if g.active != region {
            return Err(LeaseRefusal::NotActive {
                group: group.to_string(),
                region: region.to_string(),
                active: g.active.clone(),
                epoch: g.epoch,
            });
        }
        if let Some(e) = epoch {
            if e != g.epoch {
                return Err(LeaseRefusal::StaleEpoch {
                    group: group.to_string(),
                    requested: e,
                    active: g.active.clone(),
                    epoch: g.epoch,
                });
            }
        }
        if g.revoked {
            return Err(LeaseRefusal::Revoked {
                group: group.to_string(),
                active: g.active.clone(),
                epoch: g.epoch,
                operation: g.operation.unwrap_or(0),
            });
        }
        let lease_ms = self
            .policy
            .as_ref()
            .and_then(|p| p.group(group))
            .map(|gp| gp.lease_ms)
            .unwrap_or(crate::config::LEASE_MS_DEFAULT);
        Ok((g.epoch, lease_ms))
    }

    fn apply_policy(
        &mut self,
        index: u64,
        p: &Proposal,
        policy: &Policy,
        if_version: u64,
    ) -> Result<Outcome, Refusal> {
        if if_version != 0 && if_version != self.policy_version {
            return Err(Refusal::StalePolicy {
                current: self.policy_version,
                expected: if_version,
            });
        }
        // Check everything before changing anything: a refused policy changes nothing.
        for g in self.groups.values() {
            if let (None, Some(operation)) = (policy.group(&g.name), g.operation) {
                return Err(Refusal::OperationInProgress {
                    group: g.name.clone(),
                    operation,
                });
            }
        }
        for gp in &policy.groups {
            if let Some(g) = self.groups.get(&gp.name) {
                if !gp.candidates.contains(&g.active) {
                    return Err(Refusal::ActiveRemoved {
                        group: gp.name.clone(),
                        region: g.active.clone(),
                    });
                }
            }
        }
        let old = self.policy.take();
        let diff = policy.diff(old.as_ref());
        for gp in &policy.groups {
            let old_mode = old.as_ref().and_then(|o| o.group(&gp.name)).map(|o| o.mode);
            match self.groups.get_mut(&gp.name) {
                Some(g) => {
                    g.candidates = gp.candidates.clone();
                    if old_mode != Some(gp.mode) {
                        g.mode = gp.mode;
                    }
                }
                None => {
                    let epoch = self.retired_epochs.remove(&gp.name).unwrap_or(0) + 1;
                    let g = GroupState {
                        name: gp.name.clone(),
                        candidates: gp.candidates.clone(),
                        active: gp.candidates[0].clone(),
                        epoch,
                        mode: gp.mode,
                        changed_at_index: index,
                        revoked: false,
                        operation: None,
                        // No failover yet: the anti-flap cooldown does not hold back the first.
                        activated_at_ms: 0,
                    };
                    let detail = format!("group created, active {} at epoch {epoch}", g.active);
                    self.groups.insert(gp.name.clone(), g);
                    self.audit(index, p, &gp.name, "group-created", detail, epoch);
                }
            }
        }
        let removed: Vec<String> = self
            .groups
            .keys()
            .filter(|name| policy.group(name).is_none())
            .cloned()
            .collect();
        for name in removed {
            if let Some(g) = self.groups.remove(&name) {
                self.retired_epochs.insert(name.clone(), g.epoch);
                self.audit(
                    index,
                    p,
                    &name,
                    "group-removed",
                    format!("group removed at epoch {}", g.epoch),
                    g.epoch,
                );
            }
        }
        self.policy = Some(policy.clone());
        self.policy_version += 1;
        let version = self.policy_version;
        self.audit(
            index,
            p,
            "",
            "policy",
            format!("policy version {version}\n{diff}"),
            0,
        );
        self.check_invariants();
        Ok(Outcome::PolicyApplied { version })
    }

    fn group_mut(&mut self, group: &str) -> Result<&mut GroupState, Refusal> {
        self.groups
            .get_mut(group)
            .ok_or_else(|| Refusal::UnknownGroup {
                group: group.to_string(),
            })
    }

    fn audit(
        &mut self,
        index: u64,
        p: &Proposal,
        group: &str,
        kind: &str,
        detail: String,
        epoch: u64,
    ) {
        self.audit_next_seq = self.audit_next_seq.max(1);
        let entry = AuditEntry {
            seq: self.audit_next_seq,
            index,
            at_ms: p.at_ms,
            actor: p.actor.clone(),
            group: group.to_string(),
            kind: kind.to_string(),
            detail,
            epoch,
        };
        self.audit_next_seq += 1;
        if self.audit.len() >= AUDIT_ENTRIES_MAX {
            self.audit.pop_front();
        }
        self.audit.push_back(entry);
    }

    fn check_invariants(&self) {
        for g in self.groups.values() {
            assert!(
                g.candidates.contains(&g.active),
                "group {} is active in {}, which is not one of its candidates",
                g.name,
                g.active
            );
            assert!(g.epoch >= 1, "group {} has epoch 0", g.name);
        }
    }
}

fn outcome_word(outcome: StepOutcome) -> &'static str {
    match outcome {
        StepOutcome::Completed => "completed",
        StepOutcome::NoOp => "nothing to do",
        StepOutcome::Skipped => "skipped",
    }
}

/// Cuts `text` to at most `max` bytes at a character boundary, marking the cut.
fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...(truncated)", &text[..end])
}

fn check_reason(reason: &str) -> Result<(), Refusal> {
    if reason.len() > REASON_BYTES_MAX {
        return Err(Refusal::ReasonTooLong { len: reason.len() });
    }
    Ok(())
}

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.command {
            Command::Bootstrap { .. } => "bootstrap",
            Command::ApplyPolicy { .. } => "apply-policy",
            Command::StartOperation { .. } => "start-operation",
            Command::CompleteStep { .. } => "complete-step",
            Command::HaltOperation { .. } => "halt-operation",
            Command::RetryOperation { .. } => "retry-operation",
            Command::SkipStep { .. } => "skip-step",
            Command::ApproveOperation { .. } => "approve-operation",
            Command::AbortOperation { .. } => "abort-operation",
            Command::RecordVerdict { .. } => "record-verdict",
            Command::RecordDnsRepair { .. } => "record-dns-repair",
            Command::SetMode { .. } => "set-mode",
        };
        write!(f, "{kind} by {}", self.actor)
    }
}

impl std::fmt::Display for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.outcome {
            Ok(o) => write!(f, "ok at {}: {o:?}", self.index),
            Err(r) => write!(f, "refused at {}: {r}", self.index),
        }
    }
}

#[cfg(test)]
mod tests;
