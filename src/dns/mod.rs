//! DNS: publishing the active region of each group (S5 in DESIGN.md: only committed,
//! applied state is ever published).
//!
//! - [`server`]: the embedded authoritative server of every witness, answering from the
//!   applied state.
//! - [`update`]: external authoritative servers: one TSIG-signed RFC 2136 UPDATE per server
//!   replaces a group's record set, and a read-back compares what a server publishes (the
//!   drift check). It never decides *what* to publish, and never puts a TSIG secret into an
//!   error, a log line or a report.

pub mod server;
pub mod update;

pub use server::{
    answer, published, Answer, DnsListeners, DnsServer as EmbeddedServer, Query, ZoneView,
};
pub use update::{
    drift, normalise, publish, query_rrset, query_rrset_at, replace_rrset, soa_serial,
    DnsUpdateError, Drift, PublishReport, ServerOutcome, UpdateReport,
};
