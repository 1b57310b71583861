//! What kind of decision an audit entry records. The wire text (`bootstrap`, `policy`,
//! `operation-done`, ...) is what `status`, `watch` and the audit log have always shown; this
//! enum only makes the set closed, so a new kind is added here or nowhere.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The kind of an [`super::AuditEntry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditKind {
    /// The cluster was initialised with its first policy.
    Bootstrap,
    /// A new policy version was applied.
    Policy,
    /// A group appeared in the policy (first time, or again after a removal).
    GroupCreated,
    /// A group left the policy; its leases are remembered until they expired.
    GroupRemoved,
    /// The leases a removed group could have granted have all expired.
    RemovedLeasesExpired,
    /// A group's mode changed (auto, manual, frozen).
    Mode,
    /// A region's quorum verdict changed.
    Verdict,
    /// The reconciler repaired a DNS server.
    DnsRepair,
    /// A failover or failback was declared.
    OperationDeclared,
    /// An operation waiting for approval was approved (or one of the approvals its group
    /// asks for was recorded).
    OperationApproved,
    /// An operation was approved alone with a break-glass certificate where its group asks
    /// for more approvers: alert on it.
    BreakGlass,
    /// A halted operation was retried.
    OperationRetry,
    /// An operation's step failed and the operation halted.
    OperationHalted,
    /// A step of an operation completed (or was skipped).
    Step,
    /// An abort was asked and its cleanup (unfence) is running.
    OperationAborting,
    /// An operation ended without activating its target.
    OperationAborted,
    /// An operation ran its last step.
    OperationDone,
    /// The witness membership changed.
    Membership,
    /// The witness membership changed in a way that weakens the cluster's failure domains,
    /// the operator having accepted that with a reason: alert on it.
    SiteRiskAccepted,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Bootstrap => "bootstrap",
            AuditKind::Policy => "policy",
            AuditKind::GroupCreated => "group-created",
            AuditKind::GroupRemoved => "group-removed",
            AuditKind::RemovedLeasesExpired => "removed-leases-expired",
            AuditKind::Mode => "mode",
            AuditKind::Verdict => "verdict",
            AuditKind::DnsRepair => "dns-repair",
            AuditKind::OperationDeclared => "operation-declared",
            AuditKind::OperationApproved => "operation-approved",
            AuditKind::BreakGlass => "break-glass",
            AuditKind::OperationRetry => "operation-retry",
            AuditKind::OperationHalted => "operation-halted",
            AuditKind::Step => "step",
            AuditKind::OperationAborting => "operation-aborting",
            AuditKind::OperationAborted => "operation-aborted",
            AuditKind::OperationDone => "operation-done",
            AuditKind::Membership => "membership",
            AuditKind::SiteRiskAccepted => "site-risk-accepted",
        }
    }
}

impl fmt::Display for AuditKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire text is the serde name and `as_str` alike, so JSON and the CLI agree.
    #[test]
    fn wire_text_is_the_serde_name() {
        use AuditKind::*;
        let all = [
            Bootstrap,
            Policy,
            GroupCreated,
            GroupRemoved,
            RemovedLeasesExpired,
            Mode,
            Verdict,
            DnsRepair,
            OperationDeclared,
            OperationApproved,
            BreakGlass,
            OperationRetry,
            OperationHalted,
            Step,
            OperationAborting,
            OperationAborted,
            OperationDone,
            Membership,
            SiteRiskAccepted,
        ];
        for k in all {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(serde_json::from_str::<AuditKind>(&json).unwrap(), k);
        }
    }
}
