//! What every witness notes about when it saw decisions applied, on its own monotonic clock,
//! whatever its role: the revoke of each running operation (the fence wait counts from
//! there), each removed group whose leases may still be held (its wait counts from there),
//! and each group's last activation and abort (the anti-flap cooldown counts from there).
//!
//! Kept on every witness so that a new leader already knows: an instant noted here is never
//! earlier than the commit it stands for, so a wait counted from it is never shorter than
//! one counted from the commit (S1), and an election does not restart the cooldown. A
//! witness that starts notes what its state already holds from its start (it cannot know
//! better, and later is safe). This module must never change the replicated state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::raft::Consensus;
use crate::state::{ClusterState, OperationState, Step};

/// How often the observer looks when nothing is applied.
const TICK: Duration = Duration::from_millis(200);

/// When this witness first saw each group's latest activation and latest aborted operation
/// applied. Never the wall clock: the proposer's and the leader's may disagree by any amount.
#[derive(Debug, Default, Clone)]
pub struct Activations {
    /// Group -> (log index of its last change of active region, first seen).
    activated: HashMap<String, (u64, Instant)>,
    /// Group -> (id of its newest aborted operation, first seen).
    aborted: HashMap<String, (u64, Instant)>,
}

impl Activations {
    pub fn observe(&mut self, state: &ClusterState, now: Instant) {
        for g in state.groups.values() {
            // A group that no operation has activated yet has no cooldown.
            if g.activated_at_ms == 0 {
                continue;
            }
            let seen = self
                .activated
                .entry(g.name.clone())
                .or_insert((g.changed_at_index, now));
            if seen.0 != g.changed_at_index {
                *seen = (g.changed_at_index, now);
            }
        }
        for op in state.operations.values() {
            if !matches!(op.state, OperationState::Aborted { .. }) {
                continue;
            }
            let seen = self.aborted.entry(op.group.clone()).or_insert((op.id, now));
            if seen.0 < op.id {
                *seen = (op.id, now);
            }
        }
        self.activated.retain(|g, _| state.groups.contains_key(g));
        self.aborted.retain(|g, _| state.groups.contains_key(g));
    }

    /// Whether `cooldown` has passed, on this witness's clock, since it saw the group's
    /// last activation or abort.
    pub fn cooled(&self, group: &str, cooldown: Duration, now: Instant) -> bool {
        let since = [self.activated.get(group), self.aborted.get(group)]
            .into_iter()
            .flatten()
            .map(|(_, t)| *t)
            .max();
        since.is_none_or(|t| now.duration_since(t) >= cooldown)
    }
}

#[derive(Debug, Default)]
struct Seen {
    /// Operation id -> when its revoke was first seen applied.
    revoke: HashMap<u64, Instant>,
    /// (removed group, epoch of its record) -> when first seen with leases pending.
    removed: HashMap<(String, u64), Instant>,
    activations: Activations,
}

/// The notes of one witness, shared by its observer loop and its leader duties.
#[derive(Debug, Default)]
pub struct Observations {
    seen: Mutex<Seen>,
}

impl Observations {
    /// Notes what `state` holds that was not noted yet, as seen at `now`.
    pub fn observe(&self, state: &ClusterState, now: Instant) {
        let mut seen = self.seen.lock().expect("observations lock");
        let running: Vec<u64> = state
            .operations
            .values()
            .filter(|o| !o.state.is_finished())
            .map(|o| o.id)
            .collect();
        for op in state.operations.values().filter(|o| !o.state.is_finished()) {
            if op.has_completed(Step::Revoke) {
                seen.revoke.entry(op.id).or_insert(now);
            }
        }
        seen.revoke.retain(|id, _| running.contains(id));
        let pending: Vec<(String, u64)> = state
            .removed
            .iter()
            .filter(|(_, r)| !r.leases_expired)
            .map(|(name, r)| (name.clone(), r.epoch))
            .collect();
        for key in &pending {
            seen.removed.entry(key.clone()).or_insert(now);
        }
        seen.removed.retain(|key, _| pending.contains(key));
        seen.activations.observe(state, now);
    }

    /// When this witness saw operation `id`'s revoke applied, if it has.
    pub fn revoke_seen(&self, id: u64) -> Option<Instant> {
        self.seen
            .lock()
            .expect("observations lock")
            .revoke
            .get(&id)
            .copied()
    }

    /// When this witness saw removed group `group` (its record at `epoch`) applied.
    pub fn removed_seen(&self, group: &str, epoch: u64) -> Option<Instant> {
        self.seen
            .lock()
            .expect("observations lock")
            .removed
            .get(&(group.to_string(), epoch))
            .copied()
    }

    /// A copy of the activation notes, for a pure decision.
    pub fn activations(&self) -> Activations {
        self.seen
            .lock()
            .expect("observations lock")
            .activations
            .clone()
    }
}

/// Runs forever on every witness: notes each applied state.
pub async fn run(consensus: Arc<Consensus>, observations: Arc<Observations>) {
    let mut applied = consensus.subscribe_applied();
    loop {
        consensus.with_state(|s| observations.observe(s, Instant::now()));
        if let Ok(Err(_)) = tokio::time::timeout(TICK, applied.changed()).await {
            tokio::time::sleep(TICK).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Policy;
    use crate::state::{Command, OperationKind, Proposal, Step, StepOutcome};
    use crate::wallclock::now_ms;

    fn apply(s: &mut ClusterState, index: u64, at_ms: u64, command: Command) {
        let p = Proposal {
            actor: "test".into(),
            at_ms,
            request_id: String::new(),
            command,
        };
        let r = s.apply(index, &p);
        assert!(r.outcome.is_ok(), "{r:?}");
    }

    fn failover(s: &mut ClusterState, index: u64, at_ms: u64, to: &str) -> u64 {
        let id = s.last_operation_id + 1;
        let start = Command::StartOperation {
            group: "checkout".into(),
            to: to.into(),
            kind: OperationKind::Failover,
            reason: String::new(),
            approval_required: false,
            requested: false,
        };
        apply(s, index, at_ms, start);
        let mut i = index;
        for step in [
            Step::Revoke,
            Step::Fence,
            Step::RpoCheck,
            Step::Promote,
            Step::Activate,
            Step::Dns,
            Step::Validate,
        ] {
            i += 1;
            let complete = Command::CompleteStep {
                operation: id,
                step,
                outcome: StepOutcome::Completed,
                detail: String::new(),
            };
            apply(s, i, at_ms, complete);
        }
        i + 1
    }

    /// Goal: the anti-flap cooldown runs on this witness's monotonic clock from when it saw
    /// the activation applied, whatever the proposer's wall clock said, and an abort
    /// restarts it. Method: an activation stamped an hour ahead (a proposer whose clock is
    /// wrong); the wall-clock rule this replaced would hold the group back for that hour.
    #[test]
    fn cooldown_runs_from_when_the_activation_was_seen_not_from_the_proposers_clock() {
        let policy = Policy::parse(
            "p",
            "[[regions]]\nname = \"region-a\"\n[[regions]]\nname = \"region-b\"\n\n[[groups]]\nname = \"checkout\"\ncandidates = [\"region-a\", \"region-b\"]\nmode = \"auto\"\ncooldown_ms = 60000\n",
        )
        .unwrap();
        let cooldown = Duration::from_millis(60_000);
        let mut s = ClusterState::default();
        let wall = now_ms();
        apply(
            &mut s,
            1,
            wall,
            Command::ApplyPolicy {
                policy,
                if_version: 0,
            },
        );
        let mut activations = Activations::default();
        let t0 = Instant::now();
        activations.observe(&s, t0);
        assert!(
            activations.cooled("checkout", cooldown, t0),
            "no activation yet: no cooldown"
        );

        let skewed = wall + 3_600_000;
        let next = failover(&mut s, 2, skewed, "region-b");
        let t1 = t0 + Duration::from_secs(1);
        activations.observe(&s, t1);
        assert!(!activations.cooled("checkout", cooldown, t1 + cooldown / 2));
        assert!(activations.cooled("checkout", cooldown, t1 + cooldown));
        let g = &s.groups["checkout"];
        assert!(
            now_ms().saturating_sub(g.activated_at_ms) < cooldown.as_millis() as u64,
            "the wall-clock rule would still hold the group back"
        );
        // Seeing the same state again later does not restart the cooldown.
        activations.observe(&s, t1 + cooldown);
        assert!(activations.cooled("checkout", cooldown, t1 + cooldown));

        // An aborted operation restarts it from when it was seen.
        let id = s.last_operation_id + 1;
        apply(
            &mut s,
            next,
            wall,
            Command::StartOperation {
                group: "checkout".into(),
                to: "region-a".into(),
                kind: OperationKind::Failover,
                reason: String::new(),
                approval_required: false,
                requested: false,
            },
        );
        apply(
            &mut s,
            next + 1,
            wall,
            Command::AbortOperation {
                operation: id,
                reason: "operator".into(),
            },
        );
        let t2 = t1 + cooldown * 2;
        activations.observe(&s, t2);
        assert!(!activations.cooled("checkout", cooldown, t2 + cooldown / 2));
        assert!(activations.cooled("checkout", cooldown, t2 + cooldown));
    }
}
