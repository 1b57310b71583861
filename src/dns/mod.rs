//! DNS providers: the embedded authoritative server of every witness. Everything here
//! publishes only the applied (committed) state (S5).

pub mod server;

pub use server::{answer, Answer, DnsListeners, DnsServer, Query, ZoneView};
