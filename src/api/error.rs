//! [`ApiError`]: every error the public API returns, and the one place it is mapped to a
//! gRPC status (and back, on the client side). Each status carries a machine-readable kind
//! in the `arbiter-error` metadata key; a `not-leader` status also carries the leader's id
//! and address, so clients follow the leader without parsing messages.

use tonic::metadata::MetadataValue;
use tonic::Status;

pub use super::kind::ErrorKind;
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
    /// The caller's certificate lacks the role the request needs; nothing was done.
    #[error(
        "permission denied: {method} needs {needed}; the certificate of {identity:?} has {has}"
    )]
    PermissionDenied {
        method: String,
        identity: String,
        needed: String,
        has: String,
    },
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

    /// What kind of error this is (one enum, one mapping to codes: [`ErrorKind`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            ApiError::Consensus(c) => match c {
                ConsensusError::NotLeader { .. } => ErrorKind::NotLeader,
                ConsensusError::Unavailable(_) => ErrorKind::Unavailable,
                ConsensusError::Indeterminate(_) => ErrorKind::Indeterminate,
                ConsensusError::AlreadyInitialized { .. } => ErrorKind::AlreadyInitialized,
                ConsensusError::Membership(_) => ErrorKind::Membership,
                ConsensusError::Storage(_) => ErrorKind::Storage,
                ConsensusError::ShuttingDown => ErrorKind::ShuttingDown,
                ConsensusError::TooLarge { .. } => ErrorKind::InvalidArgument,
            },
            ApiError::Refused(r) => match r {
                Refusal::UnknownGroup { .. } => ErrorKind::UnknownGroup,
                Refusal::NotCandidate { .. } => ErrorKind::NotCandidate,
                Refusal::AlreadyActive { .. } => ErrorKind::AlreadyActive,
                Refusal::Frozen { .. } => ErrorKind::Frozen,
                Refusal::StalePolicy { .. } => ErrorKind::StalePolicy,
                Refusal::NoPolicy => ErrorKind::NoPolicy,
                Refusal::ActiveRemoved { .. } => ErrorKind::ActiveRemoved,
                Refusal::AlreadyBootstrapped { .. } => ErrorKind::AlreadyInitialized,
                Refusal::ReasonTooLong { .. } | Refusal::FieldTooLong { .. } => {
                    ErrorKind::InvalidArgument
                }
                Refusal::OperationInProgress { .. } => ErrorKind::OperationInProgress,
                Refusal::UnknownOperation { .. } => ErrorKind::UnknownOperation,
                Refusal::OperationState { .. } => ErrorKind::OperationState,
                Refusal::AlreadyApproved { .. } => ErrorKind::AlreadyApproved,
                Refusal::BreakGlassWithoutReason => ErrorKind::InvalidArgument,
                Refusal::WrongStep { .. } => ErrorKind::WrongStep,
                Refusal::NotSkippable { .. } => ErrorKind::NotSkippable,
                Refusal::AlreadyActivated { .. } => ErrorKind::AlreadyActivated,
                Refusal::UnknownRegion { .. } => ErrorKind::UnknownRegion,
                Refusal::OperationRegionRemoved { .. } => ErrorKind::OperationRegionRemoved,
                Refusal::RemovalsPending { .. } => ErrorKind::RemovalsPending,
                Refusal::InvalidPolicy { .. } => ErrorKind::InvalidPolicy,
                Refusal::PromoteStarted { .. } => ErrorKind::PromoteStarted,
                Refusal::EpochsExhausted { .. } => ErrorKind::EpochsExhausted,
            },
            ApiError::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            ApiError::Policy(_) => ErrorKind::InvalidPolicy,
            ApiError::PermissionDenied { .. } => ErrorKind::PermissionDenied,
            ApiError::Internal(_) => ErrorKind::Internal,
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let mut status = Status::new(e.kind().grpc_code(), e.to_string());
        let meta = status.metadata_mut();
        meta.insert(META_ERROR, MetadataValue::from_static(e.kind().as_str()));
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
