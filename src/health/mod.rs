//! Region health: the witness's probes and probe loop, the leader's
//! table of reports, and the pure quorum verdict (S7).
//!
//! Witnesses probe every region and report what they see; the leader keeps the latest report
//! of each witness and judges each region by a majority of voters. This module decides
//! nothing about failover and never touches replicated state: it only says `up`, `down` or
//! `unknown`, with evidence, for the failover policy to act on.
//!
//! - [`probe`]: one probe, run once with its deadline.
//! - [`prober`]: the per-region probe loop on a witness.
//! - [`table`]: the leader's latest report per (region, witness).
//! - [`verdict`]: the pure quorum rule.

pub mod probe;
pub mod prober;
pub mod table;
pub mod verdict;

pub use probe::{check_source, probe_once, ProbeOptions, ProbeResult};
pub use prober::{ProbeRunner, Prober, RegionObservation};
pub use table::{RecordError, RegionSummary, RegionView, ReportTable, TABLE_REGIONS_MAX};
pub use verdict::{verdict, Evidence, Observation, Seen, Verdict, WitnessEvidence};
