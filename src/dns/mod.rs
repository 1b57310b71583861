//! DNS: publishing the active region of each group (S5 in DESIGN.md: only committed,
//! applied state is ever published).
//!
//! - [`server`]: the embedded authoritative server of every witness, answering from the
//!   applied state.
//! - [`publication`]: what a committed state publishes for a group on the external servers.
//! - [`marker`]: the `_arbiter.<name>` TXT record on each external server that names the
//!   decision it last took, and the order of decisions (pure).
//! - [`update`]: external authoritative servers: one TSIG-signed RFC 2136 UPDATE per server
//!   replaces a group's record set and its marker, on condition that the marker still holds
//!   what was read, so an older decision never overwrites a newer one; and a read-back that
//!   compares what a server publishes (the drift check). It never decides *what* to
//!   publish, and never puts a TSIG secret into an error, a log line or a report.

pub mod marker;
pub mod publication;
pub mod server;
pub mod update;

pub use marker::{marker_name, Decision, Issued, MarkerProblem, MarkerVerdict};
pub use publication::Publication;
pub use server::{
    answer, published, Answer, DnsListeners, DnsServer as EmbeddedServer, Query, ZoneView,
};
pub use update::{
    conditional_replace, drift, normalise, publish, publish_to, publish_with, query_rrset,
    query_rrset_at, read_marker, record_drift, replace_rrset, soa_serial, DnsClient,
    DnsUpdateError, Drift, DriftReport, MarkerRead, PublishReport, Published, Rfc2136,
    ServerOutcome, UpdateReport, PREREQUISITE_ROUNDS_MAX,
};
