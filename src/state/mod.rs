//! The replicated state machine, pure: `apply(command)` returns the new state and a
//! response, and does no I/O, reads no clock and opens no socket. Times in commands are
//! stamped by the proposer and are informational (audit log); safety never depends on them.
//!
//! `apply` is total: every command is checked completely before anything changes, and a
//! command that would break an invariant is refused (a refusal changes nothing). No
//! committed entry can panic a witness, on first apply or on replay after a restart. The
//! invariants (a group's epoch never decreases, its active region is one of its candidates,
//! no epoch names two regions) are also asserted after each change in debug builds, which
//! the tests run.
//!
//! Every part of the state is bounded ([`limits`]), so its worst case fits a snapshot.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::config::{Mode, Policy};
use crate::health::Verdict;

mod audit;
mod lease;
pub mod limits;
mod operation;

pub use audit::AuditKind;
pub use lease::{LeaseBound, LeaseKind, RemovedGroup};
pub use limits::{
    text, AUDIT_DETAIL_BYTES_MAX, AUDIT_ENTRIES_MAX, DETAIL_BYTES_MAX, FINISHED_OPERATIONS_MAX,
    NAME_BYTES_MAX, PROPOSAL_BYTES_MAX, REASON_BYTES_MAX, REQUEST_IDS_MAX, REQUEST_ID_BYTES_MAX,
    STATE_BYTES_MAX,
};
pub use operation::{Operation, OperationKind, OperationState, Step, StepOutcome, StepRecord};

use limits::{
    ACTOR_BYTES_MAX, CLUSTER_ID_BYTES_MAX, REMOVED_GROUPS_MAX, REMOVED_PENDING_MAX,
    SERVER_BYTES_MAX,
};

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
    /// Declares a failover operation of `group` to region `to`: reserves an epoch above
    /// every epoch issued or reserved for the group. The operation waits for approval when
    /// `approval_required`, otherwise starts running.
    StartOperation {
        group: String,
        to: String,
        kind: OperationKind,
        reason: String,
        approval_required: bool,
        /// An operator asked for it (`failover`, `failback`): where the group's policy asks
        /// for more than one approval, it waits for the others, its requester counting as
        /// the first.
        #[serde(default)]
        requested: bool,
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
    /// (replication lag above the RPO) and continue. Where the group's policy asks for
    /// `approvals_required` distinct approvers, each approval is recorded until there are
    /// enough. `break_glass` (the reason, from a break-glass certificate) is enough alone.
    ApproveOperation {
        operation: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        break_glass: Option<String>,
    },
    /// Operator: stop an operation before its promote may have started; the old region
    /// stays active and its lease may be renewed again. When fence hooks may have run and
    /// the group has unfence hooks, the operation is `aborting` until the leader ran them.
    AbortOperation { operation: u64, reason: String },
    /// The leader ran the unfence hooks of an aborting operation (`detail` says how that
    /// went); the abort is complete.
    FinishAbort { operation: u64, detail: String },
    /// The leader waited out the leases of removed group `group` (up to `epoch`) after
    /// seeing its removal applied: none can be held any more.
    RemovedLeasesExpired { group: String, epoch: u64 },
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
        verdict: Verdict,
        evidence: String,
    },
    SetMode {
        group: String,
        mode: Mode,
        reason: String,
    },
    /// The leader changed the witness membership (`change` says how). `accepted_risk` is the
    /// operator's reason for a change that weakens the cluster's failure domains
    /// ([`crate::sites`]), recorded as its own kind of entry so that it can be alerted on.
    RecordMembership {
        change: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        accepted_risk: Option<String>,
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
    #[error("group {group:?} is frozen: no new operation, approval, retry or skip until its mode changes (an operation may still be aborted)")]
    Frozen { group: String },
    #[error("policy version is {current}, not {expected}: show the policy again and retry")]
    StalePolicy { current: u64, expected: u64 },
    #[error("no policy has been applied yet: run `arbiter policy apply`")]
    NoPolicy,
    #[error("the policy would leave group {group:?} active in {region:?}, which is no longer a candidate: fail over first")]
    ActiveRemoved { group: String, region: String },
    #[error("group {group:?} has operation {operation} in progress, which moves it through {region:?}: the policy must keep {region:?} a candidate until the operation is done or aborted")]
    OperationRegionRemoved {
        group: String,
        operation: u64,
        region: String,
    },
    #[error("{pending} removed groups still wait for their leases to expire (at most {max}): apply this policy again after one lease period")]
    RemovalsPending { pending: usize, max: usize },
    #[error("invalid policy: {reason}")]
    InvalidPolicy { reason: String },
    #[error("the cluster id is already set to {cluster_id:?}")]
    AlreadyBootstrapped { cluster_id: String },
    #[error("reason is {len} bytes, more than {REASON_BYTES_MAX}")]
    ReasonTooLong { len: usize },
    #[error("{field} is {len} bytes, more than {max}")]
    FieldTooLong {
        field: String,
        len: usize,
        max: usize,
    },
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
    #[error("operation {operation} is at {step}: its promote may already have run, so {to}'s database may accept writes; an abort would leave two writable regions. Retry or skip the step to finish the failover, then fail back")]
    PromoteStarted {
        operation: u64,
        step: Step,
        to: String,
    },
    #[error("group {group:?} has used every epoch (the last is {epoch})")]
    EpochsExhausted { group: String, epoch: u64 },
    #[error("unknown region {region:?}")]
    UnknownRegion { region: String },
    #[error("operation {operation} is already approved by {actor}: group {group:?} needs {required} distinct approvers, so another operator must approve (or a break-glass certificate, with a reason)")]
    AlreadyApproved {
        operation: u64,
        group: String,
        actor: String,
        required: u32,
    },
    #[error("a break-glass approval needs a reason (it is audited and alerted on)")]
    BreakGlassWithoutReason,
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
    /// An observation (verdict change, DNS repair, expired leases) was recorded.
    Recorded,
    /// How a remembered response names its operation: a retried request is answered with
    /// the operation as it is now. Seen by a client only if the operation is no longer kept.
    OperationId(u64),
    /// How a remembered response names its group (answered with the group as it is now).
    GroupName(String),
}

/// The replicated state of one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    pub name: String,
    pub candidates: Vec<String>,
    pub active: String,
    /// Fencing token: grows at every change of active region, never reused.
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
    /// The highest epoch reserved by an operation of this group, aborted ones included:
    /// the next operation reserves above it, so no epoch ever names two regions (S2).
    #[serde(default)]
    pub reserved_epoch: u64,
    /// The longest lease terms in force since the active region was activated: the fence
    /// wait of an operation moving away from it covers every lease it may hold (S1).
    pub lease_bound: LeaseBound,
    /// Approvals made alone with a break-glass certificate since the group was created
    /// (`arbiter_break_glass_approvals_total`): each one is worth a page.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub break_glass_approvals: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl GroupState {
    /// The highest epoch issued or reserved for this group.
    pub fn last_epoch(&self) -> u64 {
        self.epoch.max(self.reserved_epoch)
    }
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
    #[error("group {group:?} was removed and added again: no lease is granted until the leases of its removed incarnation (region {removed_active:?}, up to epoch {removed_epoch}) have certainly expired")]
    RemovedLeasesPending {
        group: String,
        active: String,
        epoch: u64,
        removed_active: String,
        removed_epoch: u64,
    },
}

impl LeaseRefusal {
    /// The group's active region and epoch as known when refusing (empty/0 if unknown group).
    pub fn current(&self) -> (&str, u64) {
        match self {
            LeaseRefusal::UnknownGroup { .. } => ("", 0),
            LeaseRefusal::NotActive { active, epoch, .. }
            | LeaseRefusal::StaleEpoch { active, epoch, .. }
            | LeaseRefusal::Revoked { active, epoch, .. }
            | LeaseRefusal::RemovedLeasesPending { active, epoch, .. } => (active, *epoch),
        }
    }

    /// The stable, machine-readable kind of this refusal (the `refusal` field of a reply).
    pub fn kind(&self) -> &'static str {
        match self {
            LeaseRefusal::UnknownGroup { .. } => "unknown-group",
            LeaseRefusal::NotActive { .. } => "not-active",
            LeaseRefusal::StaleEpoch { .. } => "stale-epoch",
            LeaseRefusal::Revoked { .. } => "revoked",
            LeaseRefusal::RemovedLeasesPending { .. } => "removed-leases-pending",
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
    pub kind: AuditKind,
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
    /// Removed groups: their last epoch, so a group removed and added again continues above
    /// it (S2), and whether leases of theirs may still be held (S1). Bounded by
    /// REMOVED_GROUPS_MAX + REMOVED_PENDING_MAX.
    #[serde(default)]
    pub removed: BTreeMap<String, RemovedGroup>,
    /// Every epoch of a removed group forgotten to keep `removed` bounded is at most this:
    /// a group created later starts above it.
    #[serde(default)]
    pub epoch_floor: u64,
    /// Recent request ids and their responses, oldest first (bounded by REQUEST_IDS_MAX).
    /// Responses are kept compact: operations and groups by name, not by value.
    pub requests: VecDeque<(String, Response)>,
    /// Operations by id: every unfinished one, and the newest finished ones (bounded by
    /// FINISHED_OPERATIONS_MAX).
    #[serde(default)]
    pub operations: BTreeMap<u64, Operation>,
    /// Last operation id issued.
    #[serde(default)]
    pub last_operation_id: u64,
    /// Last recorded quorum verdict per region (`up`, `down`, `unknown` on the wire).
    #[serde(default)]
    pub verdicts: BTreeMap<String, Verdict>,
}

impl ClusterState {
    /// Applies one committed proposal at log index `index`. Never panics.
    pub fn apply(&mut self, index: u64, proposal: &Proposal) -> Response {
        if !proposal.request_id.is_empty() {
            if let Some((_, earlier)) = self
                .requests
                .iter()
                .find(|(id, _)| *id == proposal.request_id)
            {
                return self.expand(earlier);
            }
        }
        let outcome = check_proposal(proposal).and_then(|()| self.apply_command(index, proposal));
        let response = Response { index, outcome };
        #[cfg(debug_assertions)]
        self.debug_check_invariants();
        if !proposal.request_id.is_empty() && proposal.request_id.len() <= REQUEST_ID_BYTES_MAX {
            if self.requests.len() >= REQUEST_IDS_MAX {
                self.requests.pop_front();
            }
            self.requests
                .push_back((proposal.request_id.clone(), compact(&response)));
        }
        response
    }

    /// A remembered response with its operation or group as they are now.
    fn expand(&self, remembered: &Response) -> Response {
        let outcome = match &remembered.outcome {
            Ok(Outcome::OperationId(id)) => Ok(self
                .operations
                .get(id)
                .map(|op| Outcome::Operation(Box::new(op.clone())))
                .unwrap_or(Outcome::OperationId(*id))),
            Ok(Outcome::GroupName(name)) => Ok(self
                .groups
                .get(name)
                .map(|g| Outcome::Group(g.clone()))
                .unwrap_or_else(|| Outcome::GroupName(name.clone()))),
            other => other.clone(),
        };
        Response {
            index: remembered.index,
            outcome,
        }
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
                    AuditKind::Bootstrap,
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
                requested,
            } => {
                let approvals_required = self.approvals_required(group);
                let awaiting = if *approval_required {
                    Some(Vec::new())
                } else if *requested && approvals_required > 1 {
                    Some(vec![p.actor.clone()])
                } else {
                    None
                };
                self.start_operation(index, p, group, to, *kind, reason, awaiting)
            }
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
                    error: text(error, DETAIL_BYTES_MAX),
                };
                let (group, epoch) = (op.group.clone(), op.from_epoch);
                let out = op.clone();
                self.audit(
                    index,
                    p,
                    &group,
                    AuditKind::OperationHalted,
                    format!("operation {operation} halted at {step}: {error}"),
                    epoch,
                );
                Ok(Outcome::Operation(Box::new(out)))
            }
            Command::RetryOperation { operation } => {
                let op = self.operation(*operation)?;
                if !matches!(op.state, OperationState::Halted { .. }) {
                    return Err(refuse_state(op));
                }
                self.check_not_frozen(&op.group)?;
                let op = self.operation_mut(*operation)?;
                op.state = OperationState::Running;
                op.approvals.clear();
                let (group, epoch, step) = (op.group.clone(), op.from_epoch, op.step);
                let out = op.clone();
                self.audit(
                    index,
                    p,
                    &group,
                    AuditKind::OperationRetry,
                    format!("operation {operation}: retry {step}"),
                    epoch,
                );
                Ok(Outcome::Operation(Box::new(out)))
            }
            Command::SkipStep { operation, step } => {
                let op = self.operation(*operation)?;
                if !matches!(op.state, OperationState::Halted { .. }) {
                    return Err(refuse_state(op));
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
                self.check_not_frozen(&op.group)?;
                self.check_completion(op, *step)?;
                let detail = format!("skipped by {}", p.actor);
                let op = self.operation_mut(*operation)?;
                op.state = OperationState::Running;
                op.approvals.clear();
                self.complete_step(index, p, *operation, *step, StepOutcome::Skipped, &detail)
            }
            Command::ApproveOperation {
                operation,
                break_glass,
            } => self.approve(index, p, *operation, break_glass.as_deref()),
            Command::AbortOperation { operation, reason } => {
                self.abort_operation(index, p, *operation, reason)
            }
            Command::FinishAbort { operation, detail } => {
                let op = self.operation(*operation)?;
                let OperationState::Aborting { reason } = &op.state else {
                    // A stale report from an earlier leader: no change.
                    return Ok(Outcome::Operation(Box::new(op.clone())));
                };
                let reason = reason.clone();
                self.finish_abort(index, p, *operation, &reason, Some(detail))?;
                Ok(Outcome::Operation(Box::new(
                    self.operation(*operation)?.clone(),
                )))
            }
            Command::RemovedLeasesExpired { group, epoch } => {
                let Some(r) = self.removed.get_mut(group) else {
                    return Ok(Outcome::Recorded);
                };
                if r.leases_expired || r.epoch > *epoch {
                    // Already recorded, or the group was removed again since: no change.
                    return Ok(Outcome::Recorded);
                }
                r.leases_expired = true;
                let (active, bound) = (r.active.clone(), r.lease_bound);
                if self.groups.contains_key(group) {
                    // Added again meanwhile: its epochs are above the record, which has done
                    // its work.
                    self.removed.remove(group);
                }
                self.audit(
                    index,
                    p,
                    group,
                    AuditKind::RemovedLeasesExpired,
                    format!(
                        "leases of removed group {group} (region {active}, up to epoch {epoch}) have expired: waited {} ms ({bound})",
                        bound.wait_ms()
                    ),
                    *epoch,
                );
                self.trim_removed();
                Ok(Outcome::Recorded)
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
                    AuditKind::DnsRepair,
                    format!("server {server}: {detail}"),
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
                let previous = self.verdicts.insert(region.clone(), *verdict);
                let from = previous.unwrap_or(Verdict::Unknown);
                self.audit(
                    index,
                    p,
                    "",
                    AuditKind::Verdict,
                    format!("region {region}: {from} -> {verdict}\n{evidence}"),
                    0,
                );
                Ok(Outcome::Recorded)
            }
            Command::RecordMembership {
                change,
                accepted_risk,
            } => {
                let (kind, detail) = match accepted_risk {
                    None => (AuditKind::Membership, change.clone()),
                    Some(reason) => (
                        AuditKind::SiteRiskAccepted,
                        format!("{change}; site risk accepted: {reason}"),
                    ),
                };
                self.audit(index, p, "", kind, detail, 0);
                Ok(Outcome::Recorded)
            }
            Command::SetMode {
                group,
                mode,
                reason,
            } => {
                let g = self.group_mut(group)?;
                let from = g.mode;
                g.mode = *mode;
                let after = g.clone();
                self.audit(
                    index,
                    p,
                    group,
                    AuditKind::Mode,
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
        awaiting: Option<Vec<String>>,
    ) -> Result<Outcome, Refusal> {
        let id = self.last_operation_id + 1;
        let superseded = self.supersedable_operation(group);
        let g = self.group(group)?;
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
        // UNSAFE (feature `unsafe-holes` only): the epoch an aborted operation reserved is
        // reserved again by the next one.
        #[cfg(feature = "unsafe-holes")]
        let last_epoch = if crate::holes::open(&crate::holes::ABORT_REUSES_EPOCH) {
            g.epoch
        } else {
            g.last_epoch()
        };
        #[cfg(not(feature = "unsafe-holes"))]
        let last_epoch = g.last_epoch();
        let to_epoch = last_epoch.checked_add(1).ok_or(Refusal::EpochsExhausted {
            group: group.to_string(),
            epoch: last_epoch,
        })?;
        // Everything is checked: from here on nothing is refused.
        if let Some(old) = superseded {
            self.supersede(index, p, old, id);
        }
        let Some(g) = self.groups.get_mut(group) else {
            return Err(Refusal::UnknownGroup {
                group: group.to_string(),
            });
        };
        g.operation = Some(id);
        g.reserved_epoch = to_epoch;
        let (from, from_epoch) = (g.active.clone(), g.epoch);
        self.last_operation_id = id;
        let op = Operation {
            id,
            group: group.to_string(),
            kind,
            from: from.clone(),
            to: to.to_string(),
            from_epoch,
            to_epoch,
            reason: text(reason, REASON_BYTES_MAX),
            actor: p.actor.clone(),
            state: if awaiting.is_some() {
                OperationState::AwaitingApproval
            } else {
                OperationState::Running
            },
            step: Step::Revoke,
            steps: vec![StepRecord {
                step: Step::Declare,
                outcome: StepOutcome::Completed,
                detail: text(
                    &format!("{} {from} -> {to}: {reason}", kind.as_str()),
                    DETAIL_BYTES_MAX,
                ),
                finished_at_ms: p.at_ms,
                index,
            }],
            created_at_ms: p.at_ms,
            unfenced: None,
            approvals: awaiting.clone().unwrap_or_default(),
        };
        self.operations.insert(id, op.clone());
        self.audit(
            index,
            p,
            group,
            AuditKind::OperationDeclared,
            format!(
                "operation {id} ({}) {from} -> {to}, epoch {to_epoch} reserved{}: {reason}",
                kind.as_str(),
                match &awaiting {
                    None => String::new(),
                    Some(by) if by.is_empty() => ", waiting for approval".into(),
                    Some(by) => format!(
                        ", waiting for approval (requested by {}; {} approvers needed)",
                        by.join(", "),
                        self.approvals_required(group)
                    ),
                }
            ),
            from_epoch,
        );
        Ok(Outcome::Operation(Box::new(op)))
    }

    /// Checks that `step` of `op` may be recorded now (running, at that step, and for
    /// `activate` a target that is still a candidate and an epoch above the current one).
    fn check_completion(&self, op: &Operation, step: Step) -> Result<(), Refusal> {
        if op.step != step {
            return Err(Refusal::WrongStep {
                operation: op.id,
                current: op.step,
                requested: step,
            });
        }
        let g = self.group(&op.group)?;
        if step == Step::Activate {
            if !g.candidates.contains(&op.to) {
                return Err(Refusal::NotCandidate {
                    group: g.name.clone(),
                    region: op.to.clone(),
                    candidates: g.candidates.clone(),
                });
            }
            if op.to_epoch <= g.epoch {
                return Err(Refusal::EpochsExhausted {
                    group: g.name.clone(),
                    epoch: g.epoch,
                });
            }
        }
        Ok(())
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
        let op = self.operation(operation)?;
        if op.has_completed(step) {
            // A resumed leader reporting a step that was already recorded: idempotent.
            return Ok(Outcome::Operation(Box::new(op.clone())));
        }
        if op.state != OperationState::Running {
            return Err(refuse_state(op));
        }
        self.check_completion(op, step)?;
        let group = op.group.clone();
        let new_bound = self
            .policy
            .as_ref()
            .and_then(|p| p.group(&group))
            .map(LeaseBound::of);
        // Everything is checked: from here on nothing is refused.
        let op = self.operation_mut(operation)?;
        op.steps.push(StepRecord {
            step,
            outcome,
            detail: text(detail, DETAIL_BYTES_MAX),
            finished_at_ms: p.at_ms,
            index,
        });
        op.step = step.next();
        if op.step == Step::Done {
            op.state = OperationState::Done;
        }
        let op = op.clone();
        let g = self.group_mut(&group)?;
        match step {
            Step::Revoke => g.revoked = true,
            Step::Activate => {
                g.active = op.to.clone();
                g.epoch = op.to_epoch;
                g.revoked = false;
                g.changed_at_index = index;
                g.activated_at_ms = p.at_ms;
                // Leases of the new region are granted under today's policy from now on;
                // the old region's have expired (that is what the fence step waited for).
                if let Some(bound) = new_bound {
                    g.lease_bound = bound;
                }
            }
            _ => {}
        }
        if op.state == OperationState::Done {
            g.operation = None;
        }
        let kind = if op.state == OperationState::Done {
            AuditKind::OperationDone
        } else {
            AuditKind::Step
        };
        let epoch = if op.has_completed(Step::Activate) {
            op.to_epoch
        } else {
            op.from_epoch
        };
        let line = match step {
            Step::Activate => format!(
                "operation {operation}: {} active at epoch {}",
                op.to, op.to_epoch
            ),
            _ => format!(
                "operation {operation}: {step} {}: {detail}",
                outcome_word(outcome)
            ),
        };
        self.audit(index, p, &group, kind, line, epoch);
        if op.state == OperationState::Done {
            self.trim_operations();
        }
        Ok(Outcome::Operation(Box::new(op)))
    }

    fn abort_operation(
        &mut self,
        index: u64,
        p: &Proposal,
        operation: u64,
        reason: &str,
    ) -> Result<Outcome, Refusal> {
        let op = self.operation(operation)?;
        if op.state.is_finished() || matches!(op.state, OperationState::Aborting { .. }) {
            return Err(refuse_state(op));
        }
        if op.has_completed(Step::Activate) {
            return Err(Refusal::AlreadyActivated {
                operation,
                to: op.to.clone(),
            });
        }
        if op.has_completed(Step::RpoCheck) {
            return Err(Refusal::PromoteStarted {
                operation,
                step: op.step,
                to: op.to.clone(),
            });
        }
        // Fence hooks run in the fence step, right after the revoke: they may have fenced
        // the old primary, which stays active.
        let fence_may_have_run = op.has_completed(Step::Revoke);
        let hooks = self
            .policy
            .as_ref()
            .and_then(|pol| pol.group(&op.group))
            .map(|gp| (!gp.hooks.fence.is_empty(), !gp.hooks.unfence.is_empty()))
            .unwrap_or((false, false));
        let reason = text(reason, REASON_BYTES_MAX);
        let (group, epoch, from) = (op.group.clone(), op.from_epoch, op.from.clone());
        // Everything is checked: from here on nothing is refused.
        let g = self.group_mut(&group)?;
        // The old region stays active and may renew again: nothing was promoted.
        g.revoked = false;
        match (fence_may_have_run, hooks) {
            (true, (_, true)) => {
                let op = self.operation_mut(operation)?;
                op.state = OperationState::Aborting {
                    reason: reason.clone(),
                };
                let out = op.clone();
                self.audit(
                    index,
                    p,
                    &group,
                    AuditKind::OperationAborting,
                    format!("operation {operation} aborted, {from} stays active at epoch {epoch}; its unfence hooks run next: {reason}"),
                    epoch,
                );
                Ok(Outcome::Operation(Box::new(out)))
            }
            (true, (true, false)) => {
                let warning = format!("the fence hooks may have fenced {from}'s primary and the group has no unfence hook: check that it accepts writes");
                self.finish_abort(index, p, operation, &reason, Some(&warning))?;
                Ok(Outcome::Operation(Box::new(
                    self.operation(operation)?.clone(),
                )))
            }
            _ => {
                self.finish_abort(index, p, operation, &reason, None)?;
                Ok(Outcome::Operation(Box::new(
                    self.operation(operation)?.clone(),
                )))
            }
        }
    }

    /// Ends an (aborting) operation as aborted; `unfenced` says what became of the fence.
    fn finish_abort(
        &mut self,
        index: u64,
        p: &Proposal,
        operation: u64,
        reason: &str,
        unfenced: Option<&str>,
    ) -> Result<(), Refusal> {
        let op = self.operation_mut(operation)?;
        op.state = OperationState::Aborted {
            reason: reason.to_string(),
        };
        op.step = Step::Done;
        op.unfenced = unfenced.map(|d| text(d, DETAIL_BYTES_MAX));
        let (group, epoch, from) = (op.group.clone(), op.from_epoch, op.from.clone());
        let g = self.group_mut(&group)?;
        g.revoked = false;
        g.operation = None;
        let tail = unfenced.map_or(String::new(), |d| format!("; {d}"));
        self.audit(
            index,
            p,
            &group,
            AuditKind::OperationAborted,
            format!("operation {operation} aborted, {from} stays active at epoch {epoch}: {reason}{tail}"),
            epoch,
        );
        self.trim_operations();
        Ok(())
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
        let rest_skippable = Step::ALL
            .iter()
            .filter(|s| **s >= op.step && **s != Step::Done)
            .all(|s| s.skippable());
        (halted && op.has_completed(Step::Activate) && rest_skippable).then_some(id)
    }

    /// Ends operation `old` (checked by [`Self::supersedable_operation`]) as done, its
    /// remaining steps recorded as skipped because operation `by` supersedes it.
    fn supersede(&mut self, index: u64, p: &Proposal, old: u64, by: u64) {
        let Some(op) = self.operations.get_mut(&old) else {
            return;
        };
        let error = match &op.state {
            OperationState::Halted { error } => error.clone(),
            _ => String::new(),
        };
        let detail = text(
            &format!("superseded by operation {by} (halted: {error})"),
            DETAIL_BYTES_MAX,
        );
        while op.step != Step::Done {
            op.steps.push(StepRecord {
                step: op.step,
                outcome: StepOutcome::Skipped,
                detail: detail.clone(),
                finished_at_ms: p.at_ms,
                index,
            });
            op.step = op.step.next();
        }
        op.state = OperationState::Done;
        let (group, epoch) = (op.group.clone(), op.to_epoch);
        self.audit(
            index,
            p,
            &group,
            AuditKind::OperationDone,
            format!("operation {old}: {detail}"),
            epoch,
        );
    }

    fn operation(&self, operation: u64) -> Result<&Operation, Refusal> {
        self.operations
            .get(&operation)
            .ok_or(Refusal::UnknownOperation { operation })
    }

    fn operation_mut(&mut self, operation: u64) -> Result<&mut Operation, Refusal> {
        self.operations
            .get_mut(&operation)
            .ok_or(Refusal::UnknownOperation { operation })
    }

    /// How many distinct approvers the policy asks of `group`'s manual operations (1 when
    /// the group is not in the policy).
    fn approvals_required(&self, group: &str) -> u32 {
        self.policy
            .as_ref()
            .and_then(|p| p.group(group))
            .map_or(1, |g| g.approvals_required)
    }

    /// An approval of `operation` by `p.actor`: of its start while it awaits approval, or of
    /// the data loss of its halted rpo-check. It is recorded until the group's
    /// `approvals_required` distinct identities have approved, then the operation goes on;
    /// a `break_glass` reason makes this one approval enough, audited as such. The count is
    /// the policy's at the moment of each approval, so a policy that raises it holds back
    /// an operation still waiting, and one that lowers it lets the next approval through.
    fn approve(
        &mut self,
        index: u64,
        p: &Proposal,
        operation: u64,
        break_glass: Option<&str>,
    ) -> Result<Outcome, Refusal> {
        let op = self.operation(operation)?;
        let rpo_override = match (&op.state, op.step) {
            (OperationState::AwaitingApproval, _) => None,
            (OperationState::Halted { error }, Step::RpoCheck) => Some(error.clone()),
            _ => return Err(refuse_state(op)),
        };
        self.check_not_frozen(&op.group)?;
        if break_glass.is_some_and(|r| r.trim().is_empty()) {
            return Err(Refusal::BreakGlassWithoutReason);
        }
        let group = op.group.clone();
        let epoch = op.from_epoch;
        let required = self.approvals_required(&group);
        let mut approvals = op.approvals.clone();
        let before = approvals.len();
        let already = approvals.contains(&p.actor);
        if !already {
            approvals.push(p.actor.clone());
        }
        let what = match &rpo_override {
            None => "start",
            Some(_) => "data loss",
        };
        if break_glass.is_none() && (approvals.len() as u32) < required {
            if already {
                return Err(Refusal::AlreadyApproved {
                    operation,
                    group,
                    actor: p.actor.clone(),
                    required,
                });
            }
            // Everything is checked: from here on nothing is refused.
            let op = self.operation_mut(operation)?;
            op.approvals = approvals.clone();
            let out = op.clone();
            self.audit(
                index,
                p,
                &group,
                AuditKind::OperationApproved,
                format!(
                    "operation {operation}: {what} approved by {} ({} of {required}; waiting for another operator)",
                    p.actor,
                    approvals.len()
                ),
                epoch,
            );
            return Ok(Outcome::Operation(Box::new(out)));
        }
        // Everything is checked: from here on nothing is refused.
        let by = match break_glass {
            Some(reason) => {
                let reason = text(reason, REASON_BYTES_MAX);
                if let Some(g) = self.groups.get_mut(&group) {
                    g.break_glass_approvals += 1;
                }
                self.audit(
                    index,
                    p,
                    &group,
                    AuditKind::BreakGlass,
                    format!(
                        "operation {operation}: {what} approved by {} alone with a break-glass certificate ({required} approvers asked, {} had approved): {reason}",
                        p.actor, before
                    ),
                    epoch,
                );
                format!("{} (break-glass: {reason})", p.actor)
            }
            None => approvals.join(" and "),
        };
        let op = self.operation_mut(operation)?;
        op.state = OperationState::Running;
        op.approvals.clear();
        match rpo_override {
            None => {
                let out = op.clone();
                self.audit(
                    index,
                    p,
                    &group,
                    AuditKind::OperationApproved,
                    format!("operation {operation} approved by {by}"),
                    epoch,
                );
                Ok(Outcome::Operation(Box::new(out)))
            }
            Some(error) => {
                let detail = format!(
                    "replication lag above the RPO accepted by {by} (data loss accepted: {error})"
                );
                self.complete_step(
                    index,
                    p,
                    operation,
                    Step::RpoCheck,
                    StepOutcome::Skipped,
                    &detail,
                )
            }
        }
    }

    fn check_not_frozen(&self, group: &str) -> Result<(), Refusal> {
        if self.group(group)?.mode == Mode::Frozen {
            return Err(Refusal::Frozen {
                group: group.to_string(),
            });
        }
        Ok(())
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

    /// Folds the oldest removed groups whose leases have expired into `epoch_floor` beyond
    /// REMOVED_GROUPS_MAX of them.
    fn trim_removed(&mut self) {
        let mut expired: Vec<(u64, String)> = self
            .removed
            .iter()
            .filter(|(_, r)| r.leases_expired)
            .map(|(name, r)| (r.index, name.clone()))
            .collect();
        if expired.len() <= REMOVED_GROUPS_MAX {
            return;
        }
        expired.sort();
        for (_, name) in &expired[..expired.len() - REMOVED_GROUPS_MAX] {
            if let Some(r) = self.removed.remove(name) {
                self.epoch_floor = self.epoch_floor.max(r.epoch);
            }
        }
    }

    /// May `region` hold (or keep) the lease of `group`? With `epoch`, the holder's epoch
    /// must also be current. Returns the epoch and the lease to grant. Pure: the caller
    /// makes the read linearizable first.
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
        // UNSAFE (feature `unsafe-holes` only): a re-added group grants at once.
        #[cfg(feature = "unsafe-holes")]
        let removed = if crate::holes::open(&crate::holes::READD_WITHOUT_WAIT) {
            None
        } else {
            self.removed.get(group)
        };
        #[cfg(not(feature = "unsafe-holes"))]
        let removed = self.removed.get(group);
        if let Some(r) = removed.filter(|r| !r.leases_expired) {
            return Err(LeaseRefusal::RemovedLeasesPending {
                group: group.to_string(),
                active: g.active.clone(),
                epoch: g.epoch,
                removed_active: r.active.clone(),
                removed_epoch: r.epoch,
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

    /// Whether `policy` may replace the current one: the checks of `ApplyPolicy`, for a
    /// dry run. Changes nothing.
    pub fn check_policy(&self, policy: &Policy) -> Result<(), Refusal> {
        policy
            .check_structure()
            .map_err(|reason| Refusal::InvalidPolicy { reason })?;
        for g in self.groups.values() {
            let Some(gp) = policy.group(&g.name) else {
                if let Some(operation) = g.operation {
                    return Err(Refusal::OperationInProgress {
                        group: g.name.clone(),
                        operation,
                    });
                }
                continue;
            };
            if !gp.candidates.contains(&g.active) {
                return Err(Refusal::ActiveRemoved {
                    group: gp.name.clone(),
                    region: g.active.clone(),
                });
            }
            if let Some(op) = g.operation.and_then(|id| self.operations.get(&id)) {
                for region in [&op.from, &op.to] {
                    if !gp.candidates.contains(region) {
                        return Err(Refusal::OperationRegionRemoved {
                            group: g.name.clone(),
                            operation: op.id,
                            region: region.clone(),
                        });
                    }
                }
            }
        }
        for gp in &policy.groups {
            if !self.groups.contains_key(&gp.name) && self.first_epoch(&gp.name).is_none() {
                return Err(Refusal::EpochsExhausted {
                    group: gp.name.clone(),
                    epoch: u64::MAX,
                });
            }
        }
        let pending = self.removed.values().filter(|r| !r.leases_expired).count()
            + self
                .groups
                .keys()
                .filter(|name| policy.group(name).is_none() && !self.removed.contains_key(*name))
                .count();
        if pending > REMOVED_PENDING_MAX {
            return Err(Refusal::RemovalsPending {
                pending,
                max: REMOVED_PENDING_MAX,
            });
        }
        Ok(())
    }

    /// The epoch a group named `name` starts at when the policy creates it: above every
    /// epoch its removed incarnations had, and above the floor.
    fn first_epoch(&self, name: &str) -> Option<u64> {
        let last = self.removed.get(name).map_or(0, |r| r.epoch);
        last.max(self.epoch_floor).checked_add(1)
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
        self.check_policy(policy)?;
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
                    // Leases granted under the old terms may still be held.
                    g.lease_bound = g.lease_bound.max(LeaseBound::of(gp));
                }
                None => {
                    let removed = self.removed.get(&gp.name);
                    // check_policy: below u64::MAX.
                    let epoch = self.first_epoch(&gp.name).unwrap_or(u64::MAX);
                    let pending = removed.filter(|r| !r.leases_expired).cloned();
                    if removed.is_some() && pending.is_none() {
                        self.removed.remove(&gp.name);
                    }
                    // check_structure: every group has a candidate.
                    let Some(first) = gp.candidates.first() else {
                        continue;
                    };
                    let g = GroupState {
                        name: gp.name.clone(),
                        candidates: gp.candidates.clone(),
                        active: first.clone(),
                        epoch,
                        mode: gp.mode,
                        changed_at_index: index,
                        revoked: false,
                        operation: None,
                        // No failover yet: the anti-flap cooldown does not hold back the first.
                        activated_at_ms: 0,
                        reserved_epoch: epoch,
                        lease_bound: LeaseBound::of(gp),
                        break_glass_approvals: 0,
                    };
                    let mut detail = format!("group created, active {} at epoch {epoch}", g.active);
                    if let Some(r) = pending {
                        detail += &format!(
                            "; no lease is granted until the leases of its removed incarnation ({} at epoch {}) have expired",
                            r.active, r.epoch
                        );
                    }
                    self.groups.insert(gp.name.clone(), g);
                    self.audit(index, p, &gp.name, AuditKind::GroupCreated, detail, epoch);
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
            let Some(g) = self.groups.remove(&name) else {
                continue;
            };
            let record = match self.removed.remove(&name) {
                // Removed again before the leases of an earlier removal expired: both may
                // still be held.
                Some(earlier) if !earlier.leases_expired => RemovedGroup {
                    epoch: g.last_epoch().max(earlier.epoch),
                    active: g.active.clone(),
                    lease_bound: g.lease_bound.max(earlier.lease_bound),
                    index,
                    leases_expired: false,
                },
                _ => RemovedGroup {
                    epoch: g.last_epoch(),
                    active: g.active.clone(),
                    lease_bound: g.lease_bound,
                    index,
                    leases_expired: false,
                },
            };
            self.audit(
                index,
                p,
                &name,
                AuditKind::GroupRemoved,
                format!(
                    "group removed at epoch {} ({} was active; its lease may be held for {} ms more)",
                    g.epoch,
                    g.active,
                    record.lease_bound.wait_ms()
                ),
                g.epoch,
            );
            self.removed.insert(name, record);
        }
        self.trim_removed();
        self.policy = Some(policy.clone());
        self.policy_version += 1;
        let version = self.policy_version;
        self.audit(
            index,
            p,
            "",
            AuditKind::Policy,
            format!("policy version {version}\n{diff}"),
            0,
        );
        Ok(Outcome::PolicyApplied { version })
    }

    fn group(&self, group: &str) -> Result<&GroupState, Refusal> {
        self.groups.get(group).ok_or_else(|| Refusal::UnknownGroup {
            group: group.to_string(),
        })
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
        kind: AuditKind,
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
            kind,
            detail: text(&detail, AUDIT_DETAIL_BYTES_MAX),
            epoch,
        };
        self.audit_next_seq += 1;
        if self.audit.len() >= AUDIT_ENTRIES_MAX {
            self.audit.pop_front();
        }
        self.audit.push_back(entry);
    }

    /// The invariants, asserted after every apply in debug builds (the tests). Release
    /// builds rely on the refusals that keep them.
    #[cfg(debug_assertions)]
    fn debug_check_invariants(&self) {
        for g in self.groups.values() {
            assert!(
                g.candidates.contains(&g.active),
                "group {} is active in {}, which is not one of its candidates",
                g.name,
                g.active
            );
            assert!(g.epoch >= 1, "group {} has epoch 0", g.name);
            if let Some(op) = g.operation.and_then(|id| self.operations.get(&id)) {
                if !op.has_completed(Step::Activate) {
                    assert!(
                        op.to_epoch > g.epoch && op.to_epoch <= g.reserved_epoch,
                        "operation {} of group {} reserved epoch {} outside ({}, {}]",
                        op.id,
                        g.name,
                        op.to_epoch,
                        g.epoch,
                        g.reserved_epoch
                    );
                }
            }
            if let Some(r) = self.removed.get(&g.name) {
                assert!(
                    g.epoch > r.epoch,
                    "group {} at epoch {} is not above its removed incarnation's epoch {}",
                    g.name,
                    g.epoch,
                    r.epoch
                );
            }
        }
        assert!(self.audit.len() <= AUDIT_ENTRIES_MAX);
        assert!(self.requests.len() <= REQUEST_IDS_MAX);
        assert!(
            self.operations
                .values()
                .filter(|o| o.state.is_finished())
                .count()
                <= FINISHED_OPERATIONS_MAX
        );
        assert!(self.removed.len() <= REMOVED_GROUPS_MAX + REMOVED_PENDING_MAX);
    }
}

/// The size limits of a proposal's fields, checked before anything else: a refused
/// proposal changes nothing, and nothing unbounded reaches the state or a remembered
/// response.
fn check_proposal(p: &Proposal) -> Result<(), Refusal> {
    let too_long = |field: &str, value: &str, max: usize| -> Result<(), Refusal> {
        if value.len() > max {
            return Err(Refusal::FieldTooLong {
                field: field.to_string(),
                len: value.len(),
                max,
            });
        }
        Ok(())
    };
    too_long("actor", &p.actor, ACTOR_BYTES_MAX)?;
    too_long("request_id", &p.request_id, REQUEST_ID_BYTES_MAX)?;
    let name = |field: &str, value: &str| too_long(field, value, NAME_BYTES_MAX);
    let reason = |value: &str| {
        if value.len() > REASON_BYTES_MAX {
            return Err(Refusal::ReasonTooLong { len: value.len() });
        }
        Ok(())
    };
    match &p.command {
        Command::Bootstrap { cluster_id } => {
            too_long("cluster_id", cluster_id, CLUSTER_ID_BYTES_MAX)
        }
        Command::ApplyPolicy { .. }
        | Command::CompleteStep { .. }
        | Command::HaltOperation { .. }
        | Command::RetryOperation { .. }
        | Command::SkipStep { .. }
        | Command::FinishAbort { .. } => Ok(()),
        Command::ApproveOperation { break_glass, .. } => {
            break_glass.as_deref().map_or(Ok(()), reason)
        }
        Command::StartOperation {
            group,
            to,
            reason: r,
            ..
        } => {
            name("group", group)?;
            name("to", to)?;
            reason(r)
        }
        Command::AbortOperation { reason: r, .. } => reason(r),
        Command::RemovedLeasesExpired { group, .. } => name("group", group),
        Command::RecordDnsRepair { group, server, .. } => {
            name("group", group)?;
            too_long("server", server, SERVER_BYTES_MAX)
        }
        Command::RecordVerdict { region, .. } => name("region", region),
        Command::SetMode {
            group, reason: r, ..
        } => {
            name("group", group)?;
            reason(r)
        }
        Command::RecordMembership {
            change,
            accepted_risk,
        } => {
            too_long("change", change, AUDIT_DETAIL_BYTES_MAX)?;
            accepted_risk.as_deref().map_or(Ok(()), reason)
        }
    }
}

/// What is remembered of a response for a retried request: bounded, operations and groups
/// by name.
fn compact(response: &Response) -> Response {
    let outcome = match &response.outcome {
        Ok(Outcome::Operation(op)) => Ok(Outcome::OperationId(op.id)),
        Ok(Outcome::Group(g)) => Ok(Outcome::GroupName(g.name.clone())),
        other => other.clone(),
    };
    Response {
        index: response.index,
        outcome,
    }
}

fn refuse_state(op: &Operation) -> Refusal {
    Refusal::OperationState {
        operation: op.id,
        state: op.state.name().to_string(),
    }
}

fn outcome_word(outcome: StepOutcome) -> &'static str {
    match outcome {
        StepOutcome::Completed => "completed",
        StepOutcome::NoOp => "nothing to do",
        StepOutcome::Skipped => "skipped",
    }
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
            Command::FinishAbort { .. } => "finish-abort",
            Command::RemovedLeasesExpired { .. } => "removed-leases-expired",
            Command::RecordVerdict { .. } => "record-verdict",
            Command::RecordDnsRepair { .. } => "record-dns-repair",
            Command::SetMode { .. } => "set-mode",
            Command::RecordMembership { .. } => "record-membership",
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
mod bounds_tests;
#[cfg(test)]
mod operator_tests;
#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests;
