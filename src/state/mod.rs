//! The replicated state machine, pure: `apply(command)` returns the new state and a
//! response, and does no I/O, reads no clock and opens no socket. Times in commands are
//! stamped by the proposer and are informational (audit log); safety never depends on them.
//!
//! Invariants asserted at the point of change: a group's epoch never decreases, and its
//! active region is always one of its candidate regions.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::config::{Mode, Policy};

/// Audit entries kept in the replicated state; older ones are dropped (the full history is
/// in the Raft log until it is compacted). Bounded so snapshots stay small.
pub const AUDIT_ENTRIES_MAX: usize = 10_000;
/// Request ids remembered for deduplication of client retries.
pub const REQUEST_IDS_MAX: usize = 4_096;
/// Reasons and actors are bounded: they are stored in every snapshot.
pub const REASON_BYTES_MAX: usize = 1_024;

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
    /// Operator-initiated change of the active region.
    Failover {
        group: String,
        to: String,
        reason: String,
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
            Command::Failover { group, to, reason } => {
                check_reason(reason)?;
                let g = self.group_mut(group)?;
                if g.mode == Mode::Frozen {
                    return Err(Refusal::Frozen {
                        group: group.clone(),
                    });
                }
                if !g.candidates.contains(to) {
                    return Err(Refusal::NotCandidate {
                        group: group.clone(),
                        region: to.clone(),
                        candidates: g.candidates.clone(),
                    });
                }
                if g.active == *to {
                    return Err(Refusal::AlreadyActive {
                        group: group.clone(),
                        region: to.clone(),
                        epoch: g.epoch,
                    });
                }
                let from = std::mem::replace(&mut g.active, to.clone());
                let before = g.epoch;
                g.epoch += 1;
                g.changed_at_index = index;
                assert!(
                    g.epoch > before,
                    "epoch monotonicity violated for group {group}"
                );
                let after = g.clone();
                self.audit(
                    index,
                    p,
                    group,
                    "failover",
                    format!("active {from} -> {to}: {reason}"),
                    after.epoch,
                );
                self.check_invariants();
                Ok(Outcome::Group(after))
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
            Command::Failover { .. } => "failover",
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
