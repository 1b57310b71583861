//! Workloads: the clients of the system under test, each a set of processes recording
//! invoke/complete pairs in the history.
//!
//! - `writes` ([`writer`]): per region, a writer that appends `(region, epoch, seq)` to a
//!   log on its database host while that region's `arbiter agent` holds the lease.
//! - `operator` ([`operator`]): failovers, failbacks, mode changes and approvals via the CLI;
//!   and ([`step_actions`]) aborts, retries, skips and approvals of the running operation at
//!   seeded random moments, so that every step meets each action.
//! - `reads` ([`reader`]): `status` and `fence-check` from every witness host, and
//!   ([`dns_reader`]) what a random DNS source answers for the group's name.

pub mod dns_reader;
pub mod operator;
pub mod reader;
pub mod step_actions;
pub mod writer;

/// Every workload `all` stands for.
pub const ALL: &[&str] = &["writes", "operator", "reads"];

/// Expands `all` and checks every name.
pub fn parse(list: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for w in list {
        let w = w.trim();
        if w == "all" {
            out.extend(ALL.iter().map(|s| s.to_string()));
        } else if ALL.contains(&w) {
            out.push(w.to_string());
        } else {
            anyhow::bail!(
                "--workload: unknown workload {w:?} (known: all, {})",
                ALL.join(", ")
            );
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Error kinds (`arbiter-error`) after which the request definitely changed nothing.
pub const DEFINITE_KINDS: &[&str] = &[
    "unknown-group",
    "not-candidate",
    "already-active",
    "frozen",
    "stale-policy",
    "no-policy",
    "active-removed",
    "invalid-argument",
    "invalid-policy",
    "operation-in-progress",
    "unknown-operation",
    "operation-state",
    "wrong-step",
    "not-skippable",
    "already-activated",
    "unknown-region",
    "operation-region-removed",
    "promote-started",
    "removals-pending",
    "epochs-exhausted",
    "not-leader",
    "already-initialized",
];
