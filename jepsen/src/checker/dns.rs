//! S5 DNS follows consensus: after healing, every DNS source answers the group's committed
//! active region. Only runs that recorded DNS answers (`final.value.dns`, or `status.dns`)
//! are checked.

use super::{CheckResult, Context};

pub const NAME: &str = "dns";

pub fn check(ctx: &Context) -> CheckResult {
    let mut r = CheckResult::new(NAME);
    let Some(f) = &ctx.final_state else {
        r.note("no final state: nothing to check".into());
        return r;
    };
    let Some(answers) = &f.dns else {
        r.note("the run recorded no DNS answers".into());
        return r;
    };
    let final_op: Vec<_> = f.op.clone().into_iter().collect();
    for a in answers {
        r.count("answers", 1);
        r.count(&format!("answers from {}", a.source), 1);
        let committed = f.groups.get(&a.group).map(|g| g.active.as_str());
        let wrong = match (&a.answer, a.matches) {
            (Some(answer), _) => committed != Some(answer.as_str()),
            (None, Some(matches)) => !matches,
            (None, None) => true,
        };
        if wrong {
            r.offend(
                format!(
                    "group {}: DNS source {} answers {} but the committed active region is {}{}",
                    a.group,
                    a.source,
                    a.answer.as_deref().unwrap_or("something else (or nothing)"),
                    committed.unwrap_or("unknown"),
                    a.error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ),
                final_op.clone(),
            );
        }
    }
    r
}
