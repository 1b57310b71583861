//! What one group's publication on the external servers is, taken from a committed state:
//! the record set of its active region, the decision its marker records and the bounds of
//! what was issued. The `dns` step, the reconciler and `arbiter dns check` all build it here,
//! so the three never disagree on what "the committed state" publishes.
//!
//! Pure: reads a state, never a clock or a socket. Whether that state is current is the
//! caller's business (a linearizable read right before, S3).

use super::marker::{Decision, Issued};
use crate::config::{DnsServer, RecordKind, RecordSet};
use crate::state::ClusterState;

/// One group's record set and decision, as published on every external server of its zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub zone: String,
    /// The group's owner name, fully qualified.
    pub name: String,
    pub ttl: u32,
    /// The records of the active region.
    pub set: RecordSet,
    /// Every type the group's regions use: an UPDATE deletes them all first, so a switch
    /// from A to CNAME leaves no A behind.
    pub old_kinds: Vec<RecordKind>,
    /// What the server's marker will say once it takes this publication.
    pub decision: Decision,
    /// Bounds beyond which a marker is not this cluster's doing.
    pub issued: Issued,
}

impl Publication {
    /// The publication of `group` in `state`, and the external servers of its zone (in
    /// policy order; empty: the embedded servers alone publish it). `None` when there is
    /// nothing to publish: no policy, no such group, no DNS record, or no record set for the
    /// active region.
    pub fn from_state(state: &ClusterState, group: &str) -> Option<(Publication, Vec<DnsServer>)> {
        let policy = state.policy.as_ref()?;
        let gp = policy.group(group)?;
        let gd = gp.dns.as_ref()?;
        let g = state.groups.get(group)?;
        let set = gd.records.get(&g.active)?.clone();
        let mut old_kinds: Vec<RecordKind> = Vec::new();
        for s in gd.records.values() {
            if !old_kinds.contains(&s.kind) {
                old_kinds.push(s.kind);
            }
        }
        let servers = policy
            .dns
            .servers
            .iter()
            .filter(|s| s.zone.eq_ignore_ascii_case(&gd.zone))
            .cloned()
            .collect();
        let publication = Publication {
            zone: gd.zone.clone(),
            name: gd.name.clone(),
            ttl: gd.ttl,
            set,
            old_kinds,
            decision: Decision {
                group: group.to_string(),
                region: g.active.clone(),
                epoch: g.epoch,
                policy_version: state.policy_version,
            },
            issued: Issued {
                epoch: g.last_epoch(),
                policy_version: state.policy_version,
            },
        };
        Some((publication, servers))
    }
}
