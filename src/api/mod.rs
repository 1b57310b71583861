//! The public API: the `Arbiter` gRPC service and the one mapping of errors to statuses.
//! It validates and bounds every request field before anything reaches consensus; it never
//! touches storage directly.

mod error;
mod kind;
mod service;

pub use error::{ApiError, META_ERROR, META_LEADER_ADDR, META_LEADER_ID};
pub use kind::ErrorKind;
pub use service::{new_request_id, ApiService};
