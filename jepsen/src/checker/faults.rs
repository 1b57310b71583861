//! The faults asked for happened: every nemesis kind in `test.json` has at least one
//! invocation whose completion says `installed: true`. A run whose faults never took hold
//! proves nothing.
//!
//! `installed: true` is the nemesis's claim that the fault took effect, and for each kind it
//! means that: rules in place, signals delivered, policies applied, and for `clock` a process
//! under the host's libfaketime environment read back the faked clock (jump or rate; for
//! `clock-rate` the monotonic clock's rate against the kernel's uptime); a
//! control file written but not read is `installed: false` with the probe's finding, and
//! a `clock` fault counts only with the probes' readings (`verified`) beside it.

use super::{CheckResult, Context};

pub const NAME: &str = "faults-happened";

/// The nemesis kinds (`clock`, `clock-rate`, `clock-rate-beyond`) whose installation must
/// carry the probes' evidence (`verified`).
const CLOCK: &str = "clock";

pub fn check(ctx: &Context) -> CheckResult {
    let mut r = CheckResult::new(NAME);
    let nemesis: Vec<_> = ctx.pairs.iter().filter(|p| p.invoke.is_nemesis()).collect();
    for kind in &ctx.spec.nemeses {
        let matching: Vec<_> = nemesis
            .iter()
            .filter(|p| p.invoke.f == *kind || p.invoke.str_field("kind") == Some(kind.as_str()))
            .collect();
        let installed = matching
            .iter()
            .filter(|p| {
                let done = p.complete.map(|c| &c.value);
                let claimed = done
                    .and_then(|v| v.get("installed"))
                    .and_then(|v| v.as_bool())
                    == Some(true);
                // A clock fault (wall or monotonic) counts only with the probes that read
                // the faked clock back.
                let evidenced = !kind.starts_with(CLOCK)
                    || done.and_then(|v| v.get("verified")).is_some_and(|v| {
                        v.as_array().is_some_and(|a| !a.is_empty())
                            || v["clocks"].as_array().is_some_and(|a| !a.is_empty())
                    });
                claimed && evidenced
            })
            .count();
        r.count(&format!("{kind}-invoked"), matching.len() as u64);
        r.count(&format!("{kind}-installed"), installed as u64);
        if installed == 0 {
            r.offend(
                format!(
                    "nemesis {kind} was asked for but never installed{} ({} attempt(s))",
                    if kind.starts_with(CLOCK) {
                        " with a faked clock read back"
                    } else {
                        ""
                    },
                    matching.len()
                ),
                matching.iter().map(|p| p.op_ref()).collect(),
            );
        }
    }
    r
}
