//! The model's world: one group over two regions, the four policies an operator can apply,
//! and the discretisation of time (real ticks, holder clock units). Owns the arithmetic that
//! turns the policy's milliseconds into ticks; must never invent a wait of its own: every
//! wait comes from [`LeaseBound::wait_ms`].

use crate::config::Policy;
use crate::state::LeaseBound;

/// One tick of real time. Every lease, drift and margin in the policies below is a whole
/// number of ticks for the slowest holder, so the lease wait and the slowest holder's lease
/// end exactly on a tick: a wait one tick too short is a counterexample, not a rounding.
pub(super) const TICK_MS: u64 = 500;
/// A holder clock counts `UNITS_PER_TICK` units per tick of real time when it runs at the
/// witnesses' rate; `RATE_SLOW` and `RATE_FAST` are the extremes the drift bound allows.
pub(super) const UNITS_PER_TICK: u32 = 6;
/// `clock_drift_percent` of every policy, and the real drift of the holders' clocks: a
/// holder clock runs between `1 / (1 + drift)` and `1 + drift` times the witnesses' rate.
pub(super) const DRIFT_PERCENT: u64 = 50;
pub(super) const RATE_SLOW: u32 = 4;
pub(super) const RATE_NOMINAL: u32 = UNITS_PER_TICK;
pub(super) const RATE_FAST: u32 = 9;
const _: () = assert!(RATE_SLOW as u64 * (100 + DRIFT_PERCENT) == UNITS_PER_TICK as u64 * 100);
const _: () = assert!(RATE_FAST as u64 * 100 == UNITS_PER_TICK as u64 * (100 + DRIFT_PERCENT));

/// The one group of the model.
pub(super) const GROUP: &str = "checkout";
/// Region 0 and region 1; the group starts active in region 0.
pub(super) const REGIONS: [&str; 2] = ["region-a", "region-b"];

/// The policies an operator applies in the model. `Initial` grants the long lease; the
/// others lower the lease and the margin (the hole reproduced before the recorded bound:
/// 30 s lowered to 2 s before a failover), remove the group, or add it again with the other
/// region first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum PolicyId {
    /// Candidates a, b; lease 2000 ms, margin 500 ms: wait 3500 ms (7 ticks).
    Initial,
    /// Candidates a, b; lease 1000 ms, margin 0: wait 1500 ms (3 ticks).
    Lowered,
    /// The group removed.
    Removed,
    /// The group again, region-b first; lease 1000 ms, margin 0.
    Readded,
}

impl PolicyId {
    pub(super) const ALL: [PolicyId; 4] = [
        PolicyId::Initial,
        PolicyId::Lowered,
        PolicyId::Removed,
        PolicyId::Readded,
    ];

    fn source(self) -> String {
        let regions = "[[regions]]\nname = \"region-a\"\n[[regions]]\nname = \"region-b\"\n";
        // Fence and unfence hooks: an abort after the revoke goes through `aborting` and
        // the leader's FinishAbort, as in a group whose fence hooks may have run.
        let hooks = "[hooks.fence-db]\nkind = \"exec\"\nprogram = \"/bin/true\"\n\n\
                     [hooks.unfence-db]\nkind = \"exec\"\nprogram = \"/bin/true\"\n";
        let group = |candidates: &str, lease_ms: u64, margin_ms: u64| {
            format!(
                "[[groups]]\nname = \"{GROUP}\"\ncandidates = {candidates}\nmode = \"manual\"\n\
                 lease_ms = {lease_ms}\nclock_drift_percent = {DRIFT_PERCENT}\n\
                 lease_margin_ms = {margin_ms}\n\
                 [groups.hooks]\nfence = [\"fence-db\"]\nunfence = [\"unfence-db\"]\n"
            )
        };
        let groups = match self {
            PolicyId::Initial => group(r#"["region-a", "region-b"]"#, 2_000, 500),
            PolicyId::Lowered => group(r#"["region-a", "region-b"]"#, 1_000, 0),
            // A top-level key, so before the first table.
            PolicyId::Removed => return format!("groups = []\n{regions}\n{hooks}"),
            PolicyId::Readded => group(r#"["region-b", "region-a"]"#, 1_000, 0),
        };
        format!("{regions}\n{groups}\n{hooks}")
    }

    /// The policy, parsed and validated as `arbiter policy apply` would.
    pub(super) fn policy(self) -> Policy {
        Policy::parse("model", &self.source())
            .unwrap_or_else(|e| panic!("model policy {self:?} is invalid: {e}"))
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            PolicyId::Initial => "initial (lease 2000 ms, margin 500 ms)",
            PolicyId::Lowered => "lowered (lease 1000 ms, margin 0)",
            PolicyId::Removed => "group removed",
            PolicyId::Readded => "group added again, region-b first (lease 1000 ms, margin 0)",
        }
    }
}

/// The ticks a witness waits for `wait_ms` on its clock: the first tick at or after the
/// deadline (the executor sleeps until the deadline, then commits).
pub(super) fn wait_ticks(wait_ms: u64) -> u8 {
    u8::try_from(wait_ms.div_ceil(TICK_MS)).expect("model waits fit in u8 ticks")
}

/// The ticks of `bound`'s wait: [`LeaseBound::wait_ms`], the formula the executor uses.
pub(super) fn bound_ticks(bound: LeaseBound) -> u8 {
    wait_ticks(bound.wait_ms())
}

/// A granted lease in holder clock units: `lease_ms` on the holder's own clock.
pub(super) fn holder_units(lease_ms: u64) -> u32 {
    let units = lease_ms * u64::from(UNITS_PER_TICK);
    assert_eq!(
        units % TICK_MS,
        0,
        "lease {lease_ms} ms is not a whole number of holder units"
    );
    u32::try_from(units / TICK_MS).expect("model leases fit in u32 units")
}
