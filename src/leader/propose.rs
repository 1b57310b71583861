//! The one way the cluster itself proposes a command: actor `arbiter`, the proposer's wall
//! clock for the audit log only, no request id (the leader's duties are idempotent).

use crate::raft::{Consensus, ConsensusError};
use crate::state::{Command, Proposal, Refusal};

/// Who the cluster's own proposals are from, in the audit log.
pub const ACTOR: &str = "arbiter";

/// A proposal of `command` by the cluster itself, stamped `at_ms` (the witness's wall clock).
pub fn proposal(at_ms: u64, command: Command) -> Proposal {
    Proposal {
        actor: ACTOR.to_string(),
        at_ms,
        request_id: String::new(),
        command,
    }
}

/// Proposes `command` as the cluster; `Ok(Err(refusal))` when it committed but was refused.
pub async fn propose(
    consensus: &Consensus,
    command: Command,
) -> Result<Result<(), Refusal>, ConsensusError> {
    let response = consensus
        .propose(proposal(consensus.now_ms(), command))
        .await?;
    if let Err(refusal) = &response.outcome {
        tracing::info!(%refusal, "proposal refused");
    }
    Ok(response.outcome.map(|_| ()))
}
