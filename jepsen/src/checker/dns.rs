//! S5 DNS follows consensus, judged twice:
//!
//! - *During the run*: no DNS source ever publishes a region whose activation is not
//!   committed. Every `dns-read` answer that names a region must name one with an
//!   activation (in the final state's record) that may already have been committed when
//!   the read completed. DNS may lag by design, so an answer naming a region that was
//!   active earlier is allowed; an answer naming a region before any of its activations
//!   could have committed is not. When an activation committed is bounded from below by
//!   the linearizable `status` reads: a read invoked at `t` that saw an epoch below `e`
//!   proves epoch `e` was not committed before `t`.
//! - *After healing*: every DNS source answers the group's committed active region
//!   (`final.value.dns`, or the CLI's `status.dns`).
//!
//! No verdict without evidence: `unknown` without a final state, without final answers, or
//! with fewer than [`DNS_READS_MIN`] answers naming a region recorded during the run.

use super::{fmt_s, CheckResult, Context, Pair};
use std::collections::BTreeMap;

pub const NAME: &str = "dns";

/// Answers naming a region that the DNS reader must have recorded during the run for the
/// in-run rule to have been tested. It reads every 0.5–1.5 s, so even a 30 s run records
/// about 30 (the runs of `tests/runs.rs` record 45 to 100).
pub const DNS_READS_MIN: usize = 10;

pub fn check(ctx: &Context) -> CheckResult {
    let mut r = CheckResult::new(NAME);
    let Some(f) = &ctx.final_state else {
        r.unknown(format!(
            "{}: cannot tell which activations were committed nor what DNS converged to",
            ctx.final_missing
        ));
        return r;
    };
    during_the_run(ctx, &mut r);
    let Some(answers) = &f.dns else {
        r.unknown("the final state recorded no DNS answers: convergence not judged".into());
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

/// The earliest instant each epoch of `group` may have been committed: after the
/// invocation of every ok `status` read that saw a lower epoch (0 when no read bounds it).
fn earliest_commit_ns(ctx: &Context, group: &str, epochs: &[u64]) -> BTreeMap<u64, u64> {
    let reads: Vec<(u64, u64)> = ctx
        .pairs_of(&["status"])
        .filter(|p| p.is_ok() && p.group() == Some(group))
        .filter_map(|p| Some((p.u64_field("epoch")?, p.invoke.time_ns)))
        .collect();
    epochs
        .iter()
        .map(|e| {
            let after = reads
                .iter()
                .filter(|(seen, _)| seen < e)
                .map(|(_, t)| *t)
                .max()
                .unwrap_or(0);
            (*e, after)
        })
        .collect()
}

/// Per group: its activations (epoch -> region) and the earliest instant each may have
/// been committed (epoch -> ns).
type Bounds = (BTreeMap<u64, String>, BTreeMap<u64, u64>);

/// The in-run rule and its minimum.
fn during_the_run(ctx: &Context, r: &mut CheckResult) {
    let Some(f) = &ctx.final_state else {
        return;
    };
    let reads: Vec<&Pair> = ctx.pairs_of(&["dns-read"]).collect();
    let mut named = 0usize;
    let mut bounds: BTreeMap<String, Bounds> = BTreeMap::new();
    for p in &reads {
        let key = match p.kind() {
            crate::history::OpType::Ok => "reads-ok",
            crate::history::OpType::Fail => "reads-fail",
            _ => "reads-info",
        };
        r.count(key, 1);
        if !p.is_ok() {
            continue;
        }
        let (Some(group), Some(end)) = (p.group(), p.end_ns()) else {
            r.unknown(format!("{}: a DNS read without a group", p.describe()));
            continue;
        };
        let Some(region) = p.str_field("answer") else {
            // No records, or records of no region: nothing published to judge.
            r.count("reads-no-region", 1);
            continue;
        };
        named += 1;
        let (activations, earliest) = bounds.entry(group.to_string()).or_insert_with(|| {
            let map = f.activations(group).0;
            let epochs: Vec<u64> = map.keys().copied().collect();
            let earliest = earliest_commit_ns(ctx, group, &epochs);
            (map, earliest)
        });
        let mine: Vec<u64> = activations
            .iter()
            .filter(|(_, r)| r.as_str() == region)
            .map(|(e, _)| *e)
            .collect();
        if mine.iter().any(|e| earliest[e] < end) {
            continue;
        }
        let why = match mine.iter().min() {
            None => format!("the final state never activated {region}"),
            Some(e) => format!(
                "its first activation, epoch {e}, was committed after {} (a status read \
                 invoked then saw an older epoch)",
                fmt_s(earliest[e])
            ),
        };
        r.offend(
            format!(
                "group {group}: DNS source {} answered {region} in {}, before any activation \
                 of {region} could have been committed: {why}",
                p.str_field("source").unwrap_or("?"),
                p.describe()
            ),
            vec![p.op_ref()],
        );
    }
    r.count("reads-naming-a-region", named as u64);
    if named < DNS_READS_MIN {
        r.unknown(format!(
            "only {named} DNS answer(s) naming a region were recorded during the run, fewer \
             than the {DNS_READS_MIN} needed to judge that DNS never ran ahead of consensus"
        ));
    }
}
