//! arbiter: a failover arbiter for multi-region disaster recovery.
//!
//! # Layout
//!
//! - [`raft`]: openraft glue. Type configuration, the redb-backed log and state-machine
//!   stores, and the gRPC network between witnesses. openraft types never leave this module.
pub mod raft;
pub mod config;
pub mod state;
