//! [`ApiError`]: every error the public API returns, and the one place it is mapped to a
//! gRPC status (and back, on the client side). Each status carries a machine-readable kind
//! in the `arbiter-error` metadata key; a `not-leader` status also carries the leader's id
//! and address, so clients follow the leader without parsing messages.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::config::ConfigError;
use crate::raft::ConsensusError;
use crate::state::Refusal;

pub const META_ERROR: &str = "arbiter-error";
pub const META_LEADER_ID: &str = "arbiter-leader-id";
pub const META_LEADER_ADDR: &str = "arbiter-leader-addr";

/// An error of the public API, typed so callers know what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// Ask the leader instead (definite: nothing was done here).
    #[error("{0}")]
    Consensus(#[from] ConsensusError),
    /// The state machine refused the command; nothing changed.
    #[error("{0}")]
    Refused(#[from] Refusal),
    /// A request field is invalid; nothing was proposed.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// The submitted policy is invalid; nothing was proposed.
    #[error("invalid policy: {0}")]
    Policy(#[from] ConfigError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        ApiError::InvalidArgument {
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    /// The stable, machine-readable kind of this error.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::Consensus(c) => match c {
                ConsensusError::NotLeader { .. } => "not-leader",
                ConsensusError::Unavailable(_) => "unavailable",
                ConsensusError::Indeterminate(_) => "indeterminate",
                ConsensusError::AlreadyInitialized { .. } => "already-initialized",
                ConsensusError::Membership(_) => "membership",
                ConsensusError::Storage(_) => "storage",
                ConsensusError::ShuttingDown => "shutting-down",
                ConsensusError::TooLarge { .. } => "invalid-argument",
            },
            ApiError::Refused(r) => match r {
                Refusal::UnknownGroup { .. } => "unknown-group",
                Refusal::NotCandidate { .. } => "not-candidate",
                Refusal::AlreadyActive { .. } => "already-active",
                Refusal::Frozen { .. } => "frozen",
                Refusal::StalePolicy { .. } => "stale-policy",
                Refusal::NoPolicy => "no-policy",
                Refusal::ActiveRemoved { .. } => "active-removed",
                Refusal::AlreadyBootstrapped { .. } => "already-initialized",
                Refusal::ReasonTooLong { .. } => "invalid-argument",
                Refusal::OperationInProgress { .. } => "operation-in-progress",
                Refusal::UnknownOperation { .. } => "unknown-operation",
                Refusal::OperationState { .. } => "operation-state",
                Refusal::WrongStep { .. } => "wrong-step",
                Refusal::NotSkippable { .. } => "not-skippable",
                Refusal::AlreadyActivated { .. } => "already-activated",
                Refusal::UnknownRegion { .. } => "unknown-region",
                Refusal::OperationRegionRemoved { .. } => "operation-region-removed",
                Refusal::RemovalsPending { .. } => "removals-pending",
                Refusal::InvalidPolicy { .. } => "invalid-policy",
                Refusal::FieldTooLong { .. } => "invalid-argument",
                Refusal::PromoteStarted { .. } => "promote-started",
                Refusal::EpochsExhausted { .. } => "epochs-exhausted",
            },
            ApiError::InvalidArgument { .. } => "invalid-argument",
            ApiError::Policy(_) => "invalid-policy",
            ApiError::Internal(_) => "internal",
        }
    }

    fn code(&self) -> Code {
        match self.kind() {
            "not-leader" => Code::FailedPrecondition,
            "unavailable" | "shutting-down" => Code::Unavailable,
            "indeterminate" => Code::Unknown,
            "already-initialized" => Code::AlreadyExists,
            "unknown-group" | "unknown-operation" | "unknown-region" => Code::NotFound,
            "stale-policy" => Code::Aborted,
            "invalid-argument" | "invalid-policy" => Code::InvalidArgument,
            "not-candidate"
            | "already-active"
            | "frozen"
            | "no-policy"
            | "active-removed"
            | "membership"
            | "operation-in-progress"
            | "operation-state"
            | "wrong-step"
            | "not-skippable"
            | "already-activated"
            | "operation-region-removed"
            | "promote-started"
            | "epochs-exhausted" => Code::FailedPrecondition,
            "removals-pending" => Code::Unavailable,
            _ => Code::Internal,
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let mut status = Status::new(e.code(), e.to_string());
        let meta = status.metadata_mut();
        meta.insert(META_ERROR, MetadataValue::from_static(e.kind()));
        if let ApiError::Consensus(ConsensusError::NotLeader {
            leader_id,
            leader_addr,
        }) = &e
        {
            if let Some(id) = leader_id {
                meta.insert(META_LEADER_ID, MetadataValue::from(*id));
            }
            if let Some(addr) = leader_addr.as_deref().and_then(|a| a.parse().ok()) {
                meta.insert(META_LEADER_ADDR, addr);
            }
        }
        status
    }
}
