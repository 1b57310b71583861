//! S7, quorum verdict: every automatic failover in the final state (kind `automatic`) was
//! started by the cluster itself (actor `arbiter`) on committed evidence that a majority of
//! voters saw the active region `down`: its reason carries the quorum verdict (`V voters,
//! majority M:` and one `witness N: down for ...` line per witness), read the way the
//! linearizability checker reads it ([`FinalOperation::automatic_evidence`]). An automatic
//! operation whose reason lacks the verdict, or has fewer than M `down` lines, is invalid.
//! Automatic failbacks (after a stable period, not on a verdict) are only counted.
//!
//! What it cannot see: whether the probes behind each `down` were right (that is the
//! witnesses' own measurement), nor the window of each report beyond what the reason says.
//!
//! Unknown when there is no final state or no automatic failover in it
//! (`AUTOMATIC_OPERATIONS_MIN`): nothing to judge.
//!
//! [`FinalOperation::automatic_evidence`]: super::final_state::FinalOperation::automatic_evidence

use super::{CheckResult, Context};

pub const NAME: &str = "quorum-verdict";

/// Fewer automatic failovers in the final state than this: nothing to judge.
pub const AUTOMATIC_OPERATIONS_MIN: usize = 1;

pub fn check(ctx: &Context) -> CheckResult {
    let mut r = CheckResult::new(NAME);
    let Some(final_state) = &ctx.final_state else {
        r.unknown(ctx.final_missing.clone());
        return r;
    };
    let op_ref = final_state.op.clone().into_iter().collect::<Vec<_>>();
    let mut automatic = 0;
    for op in final_state.operations.values() {
        match op.kind.as_str() {
            "automatic" => {
                automatic += 1;
                match op.automatic_evidence() {
                    Some(evidence) => r.note(format!("operation {}: {evidence}", op.id)),
                    None => r.offend(
                        format!(
                            "automatic operation {} ({} {} -> {}, epoch {}, actor {:?}) has no majority of witnesses seeing {} down in its evidence: {:?}",
                            op.id, op.group, op.from, op.to, op.to_epoch, op.actor, op.from, op.reason
                        ),
                        op_ref.clone(),
                    ),
                }
            }
            "failback" if op.automatic_evidence().is_some() => r.count("automatic-failbacks", 1),
            _ => {}
        }
    }
    r.count("automatic-failovers", automatic as u64);
    if automatic < AUTOMATIC_OPERATIONS_MIN {
        r.unknown(format!(
            "{automatic} automatic failover(s) in the final state, fewer than {AUTOMATIC_OPERATIONS_MIN}: nothing to judge"
        ));
    }
    r
}
