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
    /// The caller's identity used its allowance of writes on this witness; nothing was done.
    #[error(
        "rate limited: {identity:?} made {per_minute} writes in the last minute on this witness \
         (access.writes_per_minute); {method} is refused for {retry_after_ms} ms more"
    )]
    RateLimited {
        method: String,
        identity: String,
        per_minute: u32,
        retry_after_ms: u64,
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
            ApiError::RateLimited { .. } => ErrorKind::RateLimited,
            ApiError::Internal(_) => ErrorKind::Internal,
        }
    }
}

/// Longest message of a refusal sent to a client, in bytes. The message travels in the
/// `grpc-message` trailer, percent-encoded (up to three bytes per byte), and a client drops
/// the whole reply, as an HTTP/2 protocol error, when the trailers pass its header-list
/// limit (16 KiB by default): a refusal that quotes a long value the caller sent must still
/// arrive. 1 KiB keeps every message we write whole.
pub const STATUS_MESSAGE_BYTES_MAX: usize = 1024;

/// `message` cut to [`STATUS_MESSAGE_BYTES_MAX`] at a character boundary, saying how long it
/// was.
fn bounded(message: String) -> String {
    if message.len() <= STATUS_MESSAGE_BYTES_MAX {
        return message;
    }
    let mut end = STATUS_MESSAGE_BYTES_MAX - 64;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}... (cut: {} bytes in all)",
        &message[..end],
        message.len()
    )
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let mut status = Status::new(e.kind().grpc_code(), bounded(e.to_string()));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a refusal quoting a long value still fits a client's trailer limit, and a
    /// short one is untouched. Method: a mode of 16 000 multi-byte characters.
    #[test]
    fn a_refusal_message_is_bounded_at_a_character_boundary() {
        let short = ApiError::invalid("mode", "\"x\" is not a mode");
        assert_eq!(Status::from(short).message(), "mode: \"x\" is not a mode");
        let long = ApiError::invalid(
            "mode",
            format!("{:?} is not a mode", "\u{e9}".repeat(16_000)),
        );
        let status = Status::from(long);
        assert!(
            status.message().len() <= STATUS_MESSAGE_BYTES_MAX,
            "{}",
            status.message().len()
        );
        assert!(
            status.message().starts_with("mode: \"\u{e9}"),
            "{}",
            status.message()
        );
        assert!(
            status.message().ends_with("bytes in all)"),
            "{}",
            status.message()
        );
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
}
