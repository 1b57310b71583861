//! The openraft type configuration of arbiter and the witness node record.

use serde::{Deserialize, Serialize};

use crate::state::{Proposal, Response};

/// A witness as recorded in the Raft membership: where to reach it and where it stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessNode {
    /// gRPC address, `host:port`; the host must match the witness's certificate.
    pub addr: String,
    /// Failure domain: `region-a`, `region-b`, `tiebreaker`, ...
    pub site: String,
}

impl std::fmt::Display for WitnessNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.site, self.addr)
    }
}

openraft::declare_raft_types!(
    /// arbiter's Raft types: proposals in, responses out, witnesses as nodes.
    pub TypeConfig:
        D = Proposal,
        R = Response,
        Node = WitnessNode,
        AsyncRuntime = super::runtime::SeedableTokio,
);
