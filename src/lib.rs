//! arbiter: a failover arbiter for multi-region disaster recovery.
//!
//! # Layout
//!
//! - [`raft`]: openraft glue. Type configuration, the redb-backed log and state-machine
//!   stores, and the gRPC network between witnesses. openraft types never leave this module.
//! - [`tls`]: mutual TLS material (cluster CA, node certificate and key), tonic server and
//!   client configurations, and the peer identity of a request.
//! - [`certs`]: the development CA behind `arbiter certs init`.
pub mod certs;
pub mod raft;
pub mod tls;
