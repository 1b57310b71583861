//! Configuration input: the node file (local to a witness) and the policy (replicated).
//! Everything here turns raw TOML into validated, typed values; nothing here binds a port,
//! proposes a command or reads a secret's contents.
//!
//! Probe specifications ([`probe`]), secret references and the bounds every hook shares live
//! here too: they are policy input, validated before anything is proposed.

mod dns;
mod error;
mod hook;
mod node;
mod policy;
mod postgres;
pub mod probe;
mod secret_ref;

pub use dns::{
    check_fqdn, in_zone, DnsPolicy, DnsServer, DnsZone, GroupDns, RecordKind, RecordSet,
    TsigAlgorithm, WhenIsolated, MARKER_LABEL,
};
pub(crate) use error::check_name;
pub use error::ConfigError;
pub(crate) use node::check_addr;
pub use node::{NodeConfig, Peer, Storage, Timing, EXIT_CONFIG};
pub use policy::{
    normalise_serial, AccessPolicy, GroupHooks, GroupPolicy, Hook, Mode, Policy, Region, SecretRef,
    DENIED_SERIALS_MAX, GROUPS_MAX, LEASE_MS_DEFAULT, LEASE_MS_MAX, LEASE_MS_MIN,
    POLICY_JSON_BYTES_MAX, REGIONS_MAX, WRITES_PER_MINUTE_DEFAULT, WRITES_PER_MINUTE_MAX,
};
pub use postgres::{
    split_tls, PostgresAction, PostgresHook, PostgresRegion, PostgresTls, StopCommand,
};
pub use probe::{ProbeSpec, ProbeTarget};
