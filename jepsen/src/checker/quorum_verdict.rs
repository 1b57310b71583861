//! S7, quorum verdict, judged on the operations the cluster started by itself (actor
//! `arbiter`) as the final state records them, each on its committed evidence, read the way
//! the linearizability checker reads it ([`FinalOperation::automatic_evidence`]):
//!
//! - every automatic failover (kind `automatic`) must be the cluster's own and its reason
//!   must carry the quorum verdict (`V voters, majority M:` and one `witness N: down for
//!   ...` line per witness) with at least M `down` reports: a majority of voters saw the
//!   active region down;
//! - every other operation of the cluster's own must be an automatic failback whose reason
//!   says so (the target has been up for the group's failback period), the only other
//!   operation the cluster starts.
//!
//! Anything else is invalid. What it cannot see: whether the probes behind each report
//! were right (each witness's own measurement), nor the windows beyond what the reason says.
//!
//! Unknown when there is no final state or no operation of the cluster's own in it
//! (`AUTOMATIC_OPERATIONS_MIN`). A run whose cluster-started operations are all failbacks
//! judges the failback rule only; the note and the `automatic-failovers` count say so.
//!
//! [`FinalOperation::automatic_evidence`]: super::final_state::FinalOperation::automatic_evidence

use super::final_state::AUTOMATIC_ACTOR;
use super::{CheckResult, Context};

pub const NAME: &str = "quorum-verdict";

/// Fewer operations of the cluster's own in the final state than this: nothing to judge.
pub const AUTOMATIC_OPERATIONS_MIN: usize = 1;

pub fn check(ctx: &Context) -> CheckResult {
    let mut r = CheckResult::new(NAME);
    let Some(final_state) = &ctx.final_state else {
        r.unknown(ctx.final_missing.clone());
        return r;
    };
    let op_ref = final_state.op.clone().into_iter().collect::<Vec<_>>();
    let (mut failovers, mut failbacks) = (0u64, 0u64);
    for op in final_state.operations.values() {
        let automatic = op.kind == "automatic";
        if !automatic && op.actor != AUTOMATIC_ACTOR {
            continue;
        }
        match op.automatic_evidence() {
            Some(evidence) if automatic => {
                failovers += 1;
                r.note(format!("operation {}: {evidence}", op.id));
            }
            Some(_) => failbacks += 1,
            None if automatic => r.offend(
                format!(
                    "automatic operation {} ({} {} -> {}, epoch {}, actor {:?}) has no majority of witnesses seeing {} down in its evidence: {:?}",
                    op.id, op.group, op.from, op.to, op.to_epoch, op.actor, op.from, op.reason
                ),
                op_ref.clone(),
            ),
            None => r.offend(
                format!(
                    "operation {} ({} {} of {} -> {}, epoch {}) was started by the cluster but is neither an automatic failover with a quorum verdict nor an automatic failback: {:?}",
                    op.id, op.kind, op.group, op.from, op.to, op.to_epoch, op.reason
                ),
                op_ref.clone(),
            ),
        }
    }
    r.count("automatic-failovers", failovers);
    r.count("automatic-failbacks", failbacks);
    let judged = (failovers + failbacks) as usize + r.errors.len();
    if judged < AUTOMATIC_OPERATIONS_MIN {
        r.unknown(format!(
            "{judged} operation(s) of the cluster's own in the final state, fewer than {AUTOMATIC_OPERATIONS_MIN}: nothing to judge"
        ));
    } else if failovers == 0 {
        r.note(format!(
            "no automatic failover in the final state: only the failback rule was judged ({failbacks} automatic failback(s))"
        ));
    }
    r
}
