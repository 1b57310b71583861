//! Leases and fencing epochs for databases, their sidecar agents and shell hooks.
//!
//! The server side ([`Fencing`]) answers acquire, renew and check over gRPC and HTTP from a
//! batched linearizable read of the committed state: a region may hold the lease only while
//! it is the group's active region, at the current epoch, and not revoked by a failover.
//! The client side ([`LeaseClient`]) keeps the holder's rule in one place: the deadline is
//! the *send* time of the successful request plus the lease, on the holder's monotonic
//! clock, so the holder stops before the leader can activate another region (S1).
//! [`LeaseService`] is the holder's seam (the agent asks through it; a simulation answers).
//!
//! It must never grant or renew from a state this witness has not just confirmed with a
//! quorum, and never let a holder count its lease from the time an answer arrived.

mod client;
mod http;
mod service;

pub use crate::state::LeaseKind;
pub use client::{LeaseClient, LeaseService, LeaseState};
pub use http::{error_response, router};
pub use service::{Fencing, FencingService};
