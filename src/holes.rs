//! UNSAFE, only in builds with the `unsafe-holes` feature (the jepsen demonstrations): holes
//! that the safety work closed, each put back when its name is listed in the environment
//! variable `ARBITER_UNSAFE_HOLES` (comma-separated) of `arbiter serve`, so that a checker
//! can be shown to catch it. Normal builds contain neither this module nor the code paths
//! that read it.
//!
//! - `wait-current-policy`: the fence step waits with today's policy terms instead of the
//!   longest lease granted since the old region's activation (a lowered lease shortens it).
//! - `readd-without-wait`: a group removed and added again grants leases at once, while the
//!   leases of its removed incarnation may still be held.
//! - `no-leader-confirm`: the leader acts on openraft's `Leader` state alone, without a
//!   quorum's confirmation (a deposed leader keeps calling hooks).
//! - `abort-reuses-epoch`: an operation declared after an aborted one reserves the aborted
//!   one's epoch again, so one epoch names two decisions (S2).
//! - `dns-rollback`: a publisher ignores a newer decision's marker on the DNS server and
//!   overwrites it with its own older one (a deposed or lagging witness moves the name back).
//! - `one-witness-verdict`: one witness's failing probes make a region `down`, not a
//!   majority's (a witness that cannot see a region starts a failover, S7).
//!
//! It must never be compiled into a build that runs in production: the feature is for the
//! harness's own target directory only.

use std::sync::atomic::{AtomicBool, Ordering};

/// The environment variable that lists the holes to open.
pub const ENV: &str = "ARBITER_UNSAFE_HOLES";

pub static WAIT_CURRENT_POLICY: AtomicBool = AtomicBool::new(false);
pub static READD_WITHOUT_WAIT: AtomicBool = AtomicBool::new(false);
pub static NO_LEADER_CONFIRM: AtomicBool = AtomicBool::new(false);
pub static ABORT_REUSES_EPOCH: AtomicBool = AtomicBool::new(false);
pub static DNS_ROLLBACK: AtomicBool = AtomicBool::new(false);
pub static ONE_WITNESS_VERDICT: AtomicBool = AtomicBool::new(false);

/// The holes by name.
const HOLES: [(&str, &AtomicBool); 6] = [
    ("wait-current-policy", &WAIT_CURRENT_POLICY),
    ("readd-without-wait", &READD_WITHOUT_WAIT),
    ("no-leader-confirm", &NO_LEADER_CONFIRM),
    ("abort-reuses-epoch", &ABORT_REUSES_EPOCH),
    ("dns-rollback", &DNS_ROLLBACK),
    ("one-witness-verdict", &ONE_WITNESS_VERDICT),
];

/// Opens the holes named in [`ENV`]; an unknown name is an error naming it.
pub fn open_from_env() -> Result<(), String> {
    let Ok(list) = std::env::var(ENV) else {
        return Ok(());
    };
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let Some((_, flag)) = HOLES.iter().find(|(n, _)| *n == name) else {
            return Err(format!(
                "{ENV}: unknown hole {name:?} (known: {})",
                HOLES.map(|(n, _)| n).join(", ")
            ));
        };
        flag.store(true, Ordering::Relaxed);
        tracing::warn!(hole = name, "UNSAFE: a closed safety hole is open again");
    }
    Ok(())
}

/// Whether the hole behind `flag` is open.
pub fn open(flag: &AtomicBool) -> bool {
    flag.load(Ordering::Relaxed)
}
