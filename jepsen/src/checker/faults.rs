//! The faults asked for happened: every nemesis kind in `test.json` has at least one
//! invocation whose completion says `installed: true`. A run whose faults never took hold
//! proves nothing.

use super::{CheckResult, Context};

pub const NAME: &str = "faults-happened";

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
                p.complete
                    .and_then(|c| c.value.get("installed"))
                    .and_then(|v| v.as_bool())
                    == Some(true)
            })
            .count();
        r.count(&format!("{kind}-invoked"), matching.len() as u64);
        r.count(&format!("{kind}-installed"), installed as u64);
        if installed == 0 {
            r.offend(
                format!(
                    "nemesis {kind} was asked for but never installed ({} attempt(s))",
                    matching.len()
                ),
                matching.iter().map(|p| p.op_ref()).collect(),
            );
        }
    }
    r
}
