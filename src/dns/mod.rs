//! DNS: publishing the active region of each group.
//!
//! This module owns talking DNS to external authoritative servers: [`update`] replaces a
//! group's record set with one TSIG-signed RFC 2136 UPDATE per server and reads back what
//! a server publishes (the drift check). It must never decide *what* to publish: callers
//! pass the record set of a region whose activation is already committed (S5 in
//! DESIGN.md). It must never put a TSIG secret into an error, a log line or a report.

pub mod update;

pub use update::{
    drift, publish, query_rrset, replace_rrset, soa_serial, DnsUpdateError, Drift, PublishReport,
    ServerOutcome, UpdateReport,
};
