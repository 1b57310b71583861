//! Readiness of a witness (`/readyz`): a pure function of its Raft status.
//!
//! A witness is **ready** when all of these hold:
//!
//! 1. it knows a leader (itself or another witness);
//! 2. it had contact with that leader within `contact_max` (the election timeout maximum of
//!    its node file): on a follower, the last AppendEntries it accepted from the leader; on
//!    the leader, the last time a quorum acknowledged it. A follower that has not heard from
//!    its leader for that long would already have started an election;
//! 3. its state machine has caught up: the applied index is at most [`APPLY_LAG_MAX`]
//!    entries behind the highest commit index it knows of (its own, or the one its leader
//!    last reported, which is ahead while it is missing entries).
//!
//! A ready witness answers reads of the applied state (`status --local`, DNS) from a state
//! at most a moment old and can forward requests to a live leader. Not ready says nothing
//! about the cluster as a whole: a minority witness is not ready while the majority serves.

use std::time::Duration;

use crate::raft::RaftStatus;

/// Entries the applied index may trail the known commit index by and still count as caught
/// up: a burst of commits is applied in batches, and readiness must not flap during one.
/// A witness restoring a snapshot or replaying a long log is far beyond this.
pub const APPLY_LAG_MAX: u64 = 64;

/// Why a witness is not ready; the text is the body of a 503.
pub fn readiness(status: &RaftStatus, contact_max: Duration) -> Result<(), String> {
    let Some(leader) = status.leader else {
        return Err(format!(
            "no leader known (role {}, term {})",
            status.role, status.term
        ));
    };
    match status.leader_contact_age {
        None => {
            return Err(format!("no contact with leader {leader} yet"));
        }
        Some(age) if age > contact_max => {
            return Err(format!(
                "no contact with leader {leader} for {} ms (more than {} ms)",
                age.as_millis(),
                contact_max.as_millis()
            ));
        }
        Some(_) => {}
    }
    let committed = status.committed_index.max(status.cluster_committed_index);
    let lag = committed.saturating_sub(status.applied_index);
    if lag > APPLY_LAG_MAX {
        return Err(format!(
            "applied index {} is {lag} entries behind commit index {committed} (at most {APPLY_LAG_MAX})",
            status.applied_index
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTACT_MAX: Duration = Duration::from_millis(3_000);

    fn healthy() -> RaftStatus {
        RaftStatus {
            role: "follower",
            term: 4,
            leader: Some(2),
            last_log_index: 100,
            committed_index: 100,
            cluster_committed_index: 100,
            applied_index: 100,
            leader_contact_age: Some(Duration::from_millis(150)),
        }
    }

    /// Goal: each condition alone makes a witness not ready, with a reason naming it; the
    /// bounds are inclusive.
    #[test]
    fn each_condition_is_required() {
        assert_eq!(readiness(&healthy(), CONTACT_MAX), Ok(()));

        let no_leader = RaftStatus {
            leader: None,
            leader_contact_age: None,
            role: "candidate",
            ..healthy()
        };
        let e = readiness(&no_leader, CONTACT_MAX).unwrap_err();
        assert!(e.contains("no leader"), "{e}");

        let never = RaftStatus {
            leader_contact_age: None,
            ..healthy()
        };
        assert!(readiness(&never, CONTACT_MAX)
            .unwrap_err()
            .contains("no contact"));

        let at_bound = RaftStatus {
            leader_contact_age: Some(CONTACT_MAX),
            ..healthy()
        };
        assert_eq!(readiness(&at_bound, CONTACT_MAX), Ok(()));
        let stale = RaftStatus {
            leader_contact_age: Some(CONTACT_MAX + Duration::from_millis(1)),
            ..healthy()
        };
        let e = readiness(&stale, CONTACT_MAX).unwrap_err();
        assert!(e.contains("leader 2") && e.contains("3000 ms"), "{e}");

        let batch = RaftStatus {
            applied_index: 100 - APPLY_LAG_MAX,
            ..healthy()
        };
        assert_eq!(readiness(&batch, CONTACT_MAX), Ok(()));
        let behind = RaftStatus {
            applied_index: 99 - APPLY_LAG_MAX,
            ..healthy()
        };
        assert!(readiness(&behind, CONTACT_MAX)
            .unwrap_err()
            .contains("behind"));

        // Missing entries: the leader's commit index is ahead of this witness's log.
        let missing = RaftStatus {
            cluster_committed_index: 1_000,
            ..healthy()
        };
        assert!(readiness(&missing, CONTACT_MAX)
            .unwrap_err()
            .contains("commit index 1000"));
    }
}
