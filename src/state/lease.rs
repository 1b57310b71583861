//! What the replicated state remembers about leases that may still be held: the longest
//! lease terms in force since a region was activated ([`LeaseBound`]), and the groups that
//! were removed while their active region may still hold a lease ([`RemovedGroup`]).
//! Pure data and arithmetic; the leader measures the waits on its own monotonic clock.

use serde::{Deserialize, Serialize};

use crate::config::GroupPolicy;

/// Lease terms that bound how long a holder may still believe in its lease after its last
/// renewal could succeed: the longest lease granted, the largest clock drift and margin in
/// force. A policy change that shortens any of them does not shorten the wait for leases
/// granted before it (S1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseBound {
    pub lease_ms: u64,
    pub clock_drift_percent: u64,
    pub lease_margin_ms: u64,
}

impl LeaseBound {
    /// The terms a group's policy grants now.
    pub fn of(group: &GroupPolicy) -> LeaseBound {
        LeaseBound {
            lease_ms: group.lease_ms,
            clock_drift_percent: group.clock_drift_percent,
            lease_margin_ms: group.lease_margin_ms,
        }
    }

    /// The larger of each term: covers every lease granted under either.
    pub fn max(self, other: LeaseBound) -> LeaseBound {
        LeaseBound {
            lease_ms: self.lease_ms.max(other.lease_ms),
            clock_drift_percent: self.clock_drift_percent.max(other.clock_drift_percent),
            lease_margin_ms: self.lease_margin_ms.max(other.lease_margin_ms),
        }
    }

    /// `lease x (1 + drift) + margin`: counted on the leader's monotonic clock from when it
    /// saw the revoke (or removal) applied, every lease granted under these terms has
    /// expired on its holder's clock by then. The one place this formula lives.
    pub fn wait_ms(self) -> u64 {
        let lease = u128::from(self.lease_ms);
        let stretched = lease * (100 + u128::from(self.clock_drift_percent)) / 100;
        u64::try_from(stretched + u128::from(self.lease_margin_ms)).unwrap_or(u64::MAX)
    }
}

impl std::fmt::Display for LeaseBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lease {} ms, drift {}%, margin {} ms",
            self.lease_ms, self.clock_drift_percent, self.lease_margin_ms
        )
    }
}

/// A group removed from the policy. Kept so that the group, added again, continues above
/// its last epoch (S2) and grants no lease until the leases of its removed incarnation have
/// certainly expired (S1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedGroup {
    /// The highest epoch issued or reserved for the group before its removal.
    pub epoch: u64,
    /// The region that was active, and may still hold a lease.
    pub active: String,
    /// The terms of the leases that may still be held.
    pub lease_bound: LeaseBound,
    /// Log index of the removal.
    pub index: u64,
    /// The leader waited `lease_bound.wait_ms()` after seeing the removal applied and
    /// recorded it: no lease of the removed group can be held any more.
    pub leases_expired: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_covers_lease_drift_and_margin_and_max_takes_each_term() {
        let a = LeaseBound {
            lease_ms: 30_000,
            clock_drift_percent: 5,
            lease_margin_ms: 200,
        };
        let b = LeaseBound {
            lease_ms: 2_000,
            clock_drift_percent: 10,
            lease_margin_ms: 1_000,
        };
        assert_eq!(a.wait_ms(), 31_700);
        assert_eq!(
            a.max(b),
            LeaseBound {
                lease_ms: 30_000,
                clock_drift_percent: 10,
                lease_margin_ms: 1_000
            }
        );
        assert_eq!(a.max(b).wait_ms(), 34_000);
        let huge = LeaseBound {
            lease_ms: u64::MAX,
            clock_drift_percent: 100,
            lease_margin_ms: u64::MAX,
        };
        assert_eq!(huge.wait_ms(), u64::MAX, "saturates, never wraps");
    }
}

/// The three questions a database's agent (or a script) asks about a lease: take it, keep it,
/// or may I still act at this epoch. Answered by `crate::fencing`, counted by telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseKind {
    Acquire,
    Renew,
    Check,
}
