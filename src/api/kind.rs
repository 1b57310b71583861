//! [`ErrorKind`]: every kind of error the cluster or the client reports, with its one
//! mapping to a gRPC code, an HTTP status, a CLI exit code, whether a client retries it and
//! whether it is definite (nothing was done). Every map is exhaustive: a new kind must be
//! placed in each. The wire text (`as_str`, the `arbiter-error` metadata) is stable.

/// What went wrong, as the caller must act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    // Consensus.
    NotLeader,
    Unavailable,
    Indeterminate,
    AlreadyInitialized,
    Membership,
    Storage,
    ShuttingDown,
    // Refusals of the state machine.
    UnknownGroup,
    NotCandidate,
    AlreadyActive,
    Frozen,
    StalePolicy,
    NoPolicy,
    ActiveRemoved,
    OperationRegionRemoved,
    RemovalsPending,
    OperationInProgress,
    UnknownOperation,
    OperationState,
    /// This identity already approved; another must (two-person approval).
    AlreadyApproved,
    WrongStep,
    NotSkippable,
    AlreadyActivated,
    PromoteStarted,
    EpochsExhausted,
    UnknownRegion,
    // Requests.
    InvalidArgument,
    InvalidPolicy,
    /// The caller's certificate lacks the role the request needs.
    PermissionDenied,
    /// The caller's identity used its `access.writes_per_minute`; try again later.
    RateLimited,
    Internal,
    // The client's own: the connection, and its TLS material.
    Transport,
    Tls,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 33] = [
        ErrorKind::NotLeader,
        ErrorKind::Unavailable,
        ErrorKind::Indeterminate,
        ErrorKind::AlreadyInitialized,
        ErrorKind::Membership,
        ErrorKind::Storage,
        ErrorKind::ShuttingDown,
        ErrorKind::UnknownGroup,
        ErrorKind::NotCandidate,
        ErrorKind::AlreadyActive,
        ErrorKind::Frozen,
        ErrorKind::StalePolicy,
        ErrorKind::NoPolicy,
        ErrorKind::ActiveRemoved,
        ErrorKind::OperationRegionRemoved,
        ErrorKind::RemovalsPending,
        ErrorKind::OperationInProgress,
        ErrorKind::UnknownOperation,
        ErrorKind::OperationState,
        ErrorKind::AlreadyApproved,
        ErrorKind::WrongStep,
        ErrorKind::NotSkippable,
        ErrorKind::AlreadyActivated,
        ErrorKind::PromoteStarted,
        ErrorKind::EpochsExhausted,
        ErrorKind::UnknownRegion,
        ErrorKind::InvalidArgument,
        ErrorKind::InvalidPolicy,
        ErrorKind::PermissionDenied,
        ErrorKind::RateLimited,
        ErrorKind::Internal,
        ErrorKind::Transport,
        ErrorKind::Tls,
    ];

    /// The stable, machine-readable name (`arbiter-error` metadata, CLI output).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotLeader => "not-leader",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Indeterminate => "indeterminate",
            ErrorKind::AlreadyInitialized => "already-initialized",
            ErrorKind::Membership => "membership",
            ErrorKind::Storage => "storage",
            ErrorKind::ShuttingDown => "shutting-down",
            ErrorKind::UnknownGroup => "unknown-group",
            ErrorKind::NotCandidate => "not-candidate",
            ErrorKind::AlreadyActive => "already-active",
            ErrorKind::Frozen => "frozen",
            ErrorKind::StalePolicy => "stale-policy",
            ErrorKind::NoPolicy => "no-policy",
            ErrorKind::ActiveRemoved => "active-removed",
            ErrorKind::OperationRegionRemoved => "operation-region-removed",
            ErrorKind::RemovalsPending => "removals-pending",
            ErrorKind::OperationInProgress => "operation-in-progress",
            ErrorKind::UnknownOperation => "unknown-operation",
            ErrorKind::OperationState => "operation-state",
            ErrorKind::AlreadyApproved => "already-approved",
            ErrorKind::WrongStep => "wrong-step",
            ErrorKind::NotSkippable => "not-skippable",
            ErrorKind::AlreadyActivated => "already-activated",
            ErrorKind::PromoteStarted => "promote-started",
            ErrorKind::EpochsExhausted => "epochs-exhausted",
            ErrorKind::UnknownRegion => "unknown-region",
            ErrorKind::InvalidArgument => "invalid-argument",
            ErrorKind::InvalidPolicy => "invalid-policy",
            ErrorKind::PermissionDenied => "permission-denied",
            ErrorKind::RateLimited => "rate-limited",
            ErrorKind::Internal => "internal",
            ErrorKind::Transport => "transport",
            ErrorKind::Tls => "tls",
        }
    }

    /// The kind a name stands for (`None` for a name this version does not know).
    pub fn parse(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The gRPC code of a status carrying this kind. A refusal the caller must act on is
    /// `FAILED_PRECONDITION`, `ABORTED` or `ALREADY_EXISTS`, never `INTERNAL`.
    pub fn grpc_code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            ErrorKind::NotLeader => Code::FailedPrecondition,
            ErrorKind::Unavailable | ErrorKind::ShuttingDown | ErrorKind::Transport => {
                Code::Unavailable
            }
            ErrorKind::Indeterminate => Code::Unknown,
            ErrorKind::AlreadyInitialized => Code::AlreadyExists,
            ErrorKind::UnknownGroup | ErrorKind::UnknownOperation | ErrorKind::UnknownRegion => {
                Code::NotFound
            }
            ErrorKind::StalePolicy => Code::Aborted,
            ErrorKind::InvalidArgument | ErrorKind::InvalidPolicy => Code::InvalidArgument,
            ErrorKind::Membership
            | ErrorKind::NotCandidate
            | ErrorKind::AlreadyActive
            | ErrorKind::Frozen
            | ErrorKind::NoPolicy
            | ErrorKind::ActiveRemoved
            | ErrorKind::OperationRegionRemoved
            | ErrorKind::RemovalsPending
            | ErrorKind::OperationInProgress
            | ErrorKind::OperationState
            | ErrorKind::AlreadyApproved
            | ErrorKind::WrongStep
            | ErrorKind::NotSkippable
            | ErrorKind::AlreadyActivated
            | ErrorKind::PromoteStarted
            | ErrorKind::EpochsExhausted => Code::FailedPrecondition,
            ErrorKind::Tls => Code::Unauthenticated,
            ErrorKind::PermissionDenied => Code::PermissionDenied,
            ErrorKind::RateLimited => Code::ResourceExhausted,
            ErrorKind::Storage | ErrorKind::Internal => Code::Internal,
        }
    }

    /// The HTTP status of an HTTP answer carrying this kind.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidArgument | ErrorKind::InvalidPolicy => 400,
            ErrorKind::Tls => 401,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::RateLimited => 429,
            ErrorKind::UnknownGroup | ErrorKind::UnknownOperation | ErrorKind::UnknownRegion => 404,
            ErrorKind::AlreadyInitialized
            | ErrorKind::Membership
            | ErrorKind::NotCandidate
            | ErrorKind::AlreadyActive
            | ErrorKind::Frozen
            | ErrorKind::StalePolicy
            | ErrorKind::NoPolicy
            | ErrorKind::ActiveRemoved
            | ErrorKind::OperationRegionRemoved
            | ErrorKind::RemovalsPending
            | ErrorKind::OperationInProgress
            | ErrorKind::OperationState
            | ErrorKind::AlreadyApproved
            | ErrorKind::WrongStep
            | ErrorKind::NotSkippable
            | ErrorKind::AlreadyActivated
            | ErrorKind::PromoteStarted
            | ErrorKind::EpochsExhausted => 409,
            ErrorKind::NotLeader
            | ErrorKind::Unavailable
            | ErrorKind::ShuttingDown
            | ErrorKind::Transport => 503,
            ErrorKind::Indeterminate => 504,
            ErrorKind::Storage | ErrorKind::Internal => 500,
        }
    }

    /// Whether a client tries another witness (or the same one later) on its own. An
    /// indeterminate outcome is retried too: requests carry an id, so a retry is applied
    /// at most once.
    pub fn retryable(self) -> bool {
        match self {
            ErrorKind::NotLeader
            | ErrorKind::Unavailable
            | ErrorKind::Transport
            | ErrorKind::ShuttingDown
            | ErrorKind::Indeterminate => true,
            ErrorKind::AlreadyInitialized
            | ErrorKind::Membership
            | ErrorKind::Storage
            | ErrorKind::UnknownGroup
            | ErrorKind::NotCandidate
            | ErrorKind::AlreadyActive
            | ErrorKind::Frozen
            | ErrorKind::StalePolicy
            | ErrorKind::NoPolicy
            | ErrorKind::ActiveRemoved
            | ErrorKind::OperationRegionRemoved
            | ErrorKind::RemovalsPending
            | ErrorKind::OperationInProgress
            | ErrorKind::UnknownOperation
            | ErrorKind::OperationState
            | ErrorKind::AlreadyApproved
            | ErrorKind::WrongStep
            | ErrorKind::NotSkippable
            | ErrorKind::AlreadyActivated
            | ErrorKind::PromoteStarted
            | ErrorKind::EpochsExhausted
            | ErrorKind::UnknownRegion
            | ErrorKind::InvalidArgument
            | ErrorKind::InvalidPolicy
            | ErrorKind::Internal
            | ErrorKind::PermissionDenied
            | ErrorKind::RateLimited
            | ErrorKind::Tls => false,
        }
    }

    /// Whether the request certainly changed nothing. An indeterminate outcome, or a
    /// connection lost after the request may have been sent, may have been applied: retry
    /// with the same request id, or look.
    pub fn definite(self) -> bool {
        !matches!(self, ErrorKind::Indeterminate | ErrorKind::Transport)
    }

    /// The CLI's exit code for this kind (README, "Errors and exit codes").
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Unavailable | ErrorKind::Transport | ErrorKind::ShuttingDown => 69,
            ErrorKind::InvalidArgument | ErrorKind::InvalidPolicy => 64,
            ErrorKind::PermissionDenied => 77,
            ErrorKind::RateLimited => 75,
            ErrorKind::NotLeader
            | ErrorKind::Tls
            | ErrorKind::Indeterminate
            | ErrorKind::AlreadyInitialized
            | ErrorKind::Membership
            | ErrorKind::Storage
            | ErrorKind::UnknownGroup
            | ErrorKind::NotCandidate
            | ErrorKind::AlreadyActive
            | ErrorKind::Frozen
            | ErrorKind::StalePolicy
            | ErrorKind::NoPolicy
            | ErrorKind::ActiveRemoved
            | ErrorKind::OperationRegionRemoved
            | ErrorKind::RemovalsPending
            | ErrorKind::OperationInProgress
            | ErrorKind::UnknownOperation
            | ErrorKind::OperationState
            | ErrorKind::AlreadyApproved
            | ErrorKind::WrongStep
            | ErrorKind::NotSkippable
            | ErrorKind::AlreadyActivated
            | ErrorKind::PromoteStarted
            | ErrorKind::EpochsExhausted
            | ErrorKind::UnknownRegion
            | ErrorKind::Internal => 1,
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ErrorKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: every kind round-trips its wire name, and no refusal a caller must act on is
    /// an internal error to a raw gRPC client.
    #[test]
    fn kinds_round_trip_and_refusals_are_never_internal() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(kind.as_str()), Some(kind));
            if !matches!(kind, ErrorKind::Storage | ErrorKind::Internal) {
                assert_ne!(kind.grpc_code(), tonic::Code::Internal, "{kind}");
                assert_ne!(kind.http_status(), 500, "{kind}");
            }
        }
        let names: std::collections::BTreeSet<_> =
            ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), ErrorKind::ALL.len(), "names are distinct");
        assert!(!ErrorKind::Indeterminate.definite());
        assert_eq!(ErrorKind::parse("no-such-kind"), None);
    }
}
