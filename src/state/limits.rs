//! Limits on every part of the replicated state, and the one way text enters it. The worst
//! case (every collection full, every string at its limit, every character one that JSON
//! escapes) must encode below [`STATE_BYTES_MAX`], so that it always fits a snapshot; the
//! raft layer checks its own snapshot and message limits against these constants, and
//! `bounds_tests` builds that worst case through `apply` and measures it.

/// The encoded state never exceeds this (snapshot budget; the raft layer accepts snapshots
/// larger than this, with room to spare).
pub const STATE_BYTES_MAX: usize = 48 * 1024 * 1024;
/// The largest encoded proposal `Consensus::propose` accepts: a policy at its limit plus
/// the envelope. The raft layer sizes AppendEntries batches with it.
pub const PROPOSAL_BYTES_MAX: usize = crate::config::POLICY_JSON_BYTES_MAX + 64 * 1024;

/// Audit entries kept in the replicated state; older ones are dropped (the full history is
/// in the Raft log until it is compacted).
pub const AUDIT_ENTRIES_MAX: usize = 5_000;
/// An audit entry's detail (policy diffs, verdict evidence, step details) is cut here.
pub const AUDIT_DETAIL_BYTES_MAX: usize = 1_024;
/// Request ids remembered for deduplication of client retries.
pub const REQUEST_IDS_MAX: usize = 4_096;
/// A client-chosen request id.
pub const REQUEST_ID_BYTES_MAX: usize = 128;
/// Reasons are bounded: they are stored in every snapshot.
pub const REASON_BYTES_MAX: usize = 1_024;
/// Step details and halt errors (hook output excerpts) are cut here.
pub const DETAIL_BYTES_MAX: usize = 2 * 1024;
/// Finished operations kept in the replicated state for `arbiter operations`.
pub const FINISHED_OPERATIONS_MAX: usize = 256;
/// Group, region and DNS server names in commands: one DNS label, as the policy requires.
pub const NAME_BYTES_MAX: usize = 63;
/// A DNS server in a command: its `ip:port` address.
pub const SERVER_BYTES_MAX: usize = 128;
/// Who asked: a certificate identity or `arbiter`.
pub const ACTOR_BYTES_MAX: usize = 256;
/// The cluster id written once by `init`.
pub const CLUSTER_ID_BYTES_MAX: usize = 64;
/// Removed groups remembered (their last epoch and whether their leases have expired),
/// so a group added again never reuses an epoch. Beyond this, the oldest records whose
/// leases have expired are folded into one cluster-wide epoch floor.
pub const REMOVED_GROUPS_MAX: usize = crate::config::GROUPS_MAX;
/// Removed groups whose leases may still be held. A policy that would remove more is
/// refused until the leader has recorded the expiry of earlier ones (one lease period).
pub const REMOVED_PENDING_MAX: usize = crate::config::GROUPS_MAX;

/// `value` as stored text: control characters other than newline and tab become `?` (so
/// JSON encodes every byte in at most two), cut to at most `max` bytes at a character
/// boundary, the cut marked.
pub fn text(value: &str, max: usize) -> String {
    const CUT_MARK: &str = "...(truncated)";
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_control() && c != '\n' && c != '\t' {
                    '?'
                } else {
                    c
                }
            })
            .collect()
    };
    if value.len() <= max {
        return clean(value);
    }
    let mut end = max.saturating_sub(CUT_MARK.len());
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{CUT_MARK}", clean(&value[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_at_a_char_boundary_and_loses_control_characters() {
        assert_eq!(text("a\u{1}b\n\tc", 100), "a?b\n\tc");
        let long = "é".repeat(100);
        let cut = text(&long, 51);
        assert!(cut.len() <= 51, "{}", cut.len());
        assert!(cut.ends_with("...(truncated)"));
        assert!(cut.starts_with("éé"));
    }
}
