//! S1 single writer: per group, no two regions write at the same real-time instant, and
//! every write carries an epoch that was current when it was written.
//!
//! A *write window* is a maximal run of consecutive `ok` writes by one region at one epoch,
//! spanning [invocation of its first write, completion of its last]. Windows of different
//! regions must not intersect. `info` writes (outcome unknown) are not part of windows — they
//! can only add evidence, never remove it — but their invocations count for the stale-epoch
//! rule: no write at epoch e completes after a write at a higher epoch was invoked. Each
//! window's epoch must be one the final state says was activated for that region.

use super::{fmt_s, CheckResult, Context, OpRef, Pair};
use crate::history::OpType;
use std::collections::BTreeMap;

pub const NAME: &str = "single-writer";

/// A maximal run of one region's writes at one epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub group: String,
    pub region: String,
    pub epoch: u64,
    /// Invocation time of the first write.
    pub start_ns: u64,
    /// Completion time of the last write.
    pub end_ns: u64,
    pub first: OpRef,
    pub last: OpRef,
    pub writes: usize,
}

impl Window {
    fn describe(&self) -> String {
        format!(
            "{} writes of {} at epoch {} from {} to {} (ops {}..{})",
            self.writes,
            self.region,
            self.epoch,
            fmt_s(self.start_ns),
            fmt_s(self.end_ns),
            self.first.index,
            self.last.index
        )
    }
}

/// One write: group, region, epoch from its value.
struct Write<'a> {
    pair: &'a Pair<'a>,
    group: &'a str,
    region: &'a str,
    epoch: u64,
}

fn writes<'a>(ctx: &'a Context<'a>) -> Vec<Write<'a>> {
    ctx.pairs_of(&["write"])
        .filter_map(|p| {
            Some(Write {
                pair: p,
                group: p.group()?,
                region: p.str_field("region")?,
                epoch: p.u64_field("epoch")?,
            })
        })
        .collect()
}

/// The write windows of every group, sorted by group then start.
pub fn windows(ctx: &Context) -> Vec<Window> {
    // Per (group, region), ok writes in invocation order.
    let mut runs: BTreeMap<(&str, &str), Vec<&Write>> = BTreeMap::new();
    let all = writes(ctx);
    for w in all.iter().filter(|w| w.pair.is_ok()) {
        runs.entry((w.group, w.region)).or_default().push(w);
    }
    let mut out = Vec::new();
    for ((group, region), mut ws) in runs {
        ws.sort_by_key(|w| (w.pair.invoke.time_ns, w.pair.invoke.index));
        let mut current: Option<Window> = None;
        for w in ws {
            let end = w.pair.end_ns().unwrap_or(w.pair.invoke.time_ns);
            match &mut current {
                Some(win) if win.epoch == w.epoch => {
                    win.end_ns = win.end_ns.max(end);
                    win.last = w.pair.op_ref();
                    win.writes += 1;
                }
                _ => {
                    out.extend(current.take());
                    current = Some(Window {
                        group: group.to_string(),
                        region: region.to_string(),
                        epoch: w.epoch,
                        start_ns: w.pair.invoke.time_ns,
                        end_ns: end,
                        first: w.pair.op_ref(),
                        last: w.pair.op_ref(),
                        writes: 1,
                    });
                }
            }
        }
        out.extend(current);
    }
    out.sort_by(|a, b| (&a.group, a.start_ns).cmp(&(&b.group, b.start_ns)));
    out
}

pub fn check(ctx: &Context) -> CheckResult {
    let mut r = CheckResult::new(NAME);
    let all = writes(ctx);
    // No verdict without evidence: a run without an accepted write proves nothing about S1,
    // and a write the checker cannot read (no group, region or epoch) is evidence lost.
    let unreadable = ctx.pairs_of(&["write"]).count() - all.len();
    if unreadable > 0 {
        r.count("writes-unreadable", unreadable as u64);
        r.unknown(format!(
            "{unreadable} write(s) without a group, region or epoch: they cannot be judged"
        ));
    }
    if !all.iter().any(|w| w.pair.is_ok()) {
        r.unknown("no accepted write in the history: nothing to judge S1 on".into());
    }
    for w in &all {
        let key = match w.pair.kind() {
            OpType::Ok => "writes-ok",
            OpType::Fail => "writes-fail",
            _ => "writes-info",
        };
        r.count(key, 1);
    }
    let wins = windows(ctx);
    r.count("windows", wins.len() as u64);

    // Overlapping windows of different regions.
    for (i, a) in wins.iter().enumerate() {
        for b in wins[i + 1..].iter() {
            if b.group != a.group || b.start_ns >= a.end_ns {
                break;
            }
            if b.region != a.region {
                r.offend(
                    format!(
                        "group {}: write windows overlap: {} and {}",
                        a.group,
                        a.describe(),
                        b.describe()
                    ),
                    vec![
                        b.first.clone(),
                        a.last.clone(),
                        a.first.clone(),
                        b.last.clone(),
                    ],
                );
            }
        }
    }

    // Stale epochs: a write at e completing after a write at e' > e was invoked.
    let mut first_invoke: BTreeMap<&str, BTreeMap<u64, &Write>> = BTreeMap::new();
    for w in all.iter().filter(|w| w.pair.kind() != OpType::Fail) {
        let slot = first_invoke
            .entry(w.group)
            .or_default()
            .entry(w.epoch)
            .or_insert(w);
        if w.pair.invoke.time_ns < slot.pair.invoke.time_ns {
            *slot = w;
        }
    }
    // Per group and epoch: the earliest-invoked write at any higher epoch.
    let mut higher: BTreeMap<(&str, u64), &Write> = BTreeMap::new();
    for (group, by_epoch) in &first_invoke {
        let mut best: Option<&Write> = None;
        for (epoch, w) in by_epoch.iter().rev() {
            if let Some(b) = best {
                higher.insert((group, *epoch), b);
            }
            if best.is_none_or(|b| w.pair.invoke.time_ns < b.pair.invoke.time_ns) {
                best = Some(w);
            }
        }
    }
    let mut stale: BTreeMap<(&str, &str, u64), (usize, &Write, &Write)> = BTreeMap::new();
    for w in all.iter().filter(|w| w.pair.is_ok()) {
        let Some(h) = higher.get(&(w.group, w.epoch)) else {
            continue;
        };
        let end = w.pair.end_ns().unwrap_or(0);
        if end > h.pair.invoke.time_ns {
            stale
                .entry((w.group, w.region, w.epoch))
                .and_modify(|(n, _, _)| *n += 1)
                .or_insert((1, w, h));
        }
    }
    for ((group, region, epoch), (n, w, h)) in stale {
        r.offend(
            format!(
                "group {group}: {n} write(s) of {region} at epoch {epoch} completed after a write \
                 at epoch {} was invoked; first: {} completed at {}, after {} of {}",
                h.epoch,
                w.pair.describe(),
                fmt_s(w.pair.end_ns().unwrap_or(0)),
                h.pair.describe(),
                h.region
            ),
            vec![w.pair.op_ref(), h.pair.op_ref()],
        );
    }

    // Every window's epoch was activated for its region.
    match &ctx.final_state {
        None => r.unknown(
            "no final state: cannot tell which epochs were activated for which region".into(),
        ),
        Some(f) => {
            let mut maps = BTreeMap::new();
            for win in &wins {
                let (map, _) = maps
                    .entry(win.group.clone())
                    .or_insert_with(|| f.activations(&win.group));
                match map.get(&win.epoch) {
                    Some(region) if *region == win.region => {}
                    Some(region) => r.offend(
                        format!(
                            "group {}: {} but epoch {} was activated for {region}",
                            win.group,
                            win.describe(),
                            win.epoch
                        ),
                        vec![win.first.clone()],
                    ),
                    None if !f.audit_complete() && f.may_have_trimmed(0) => r.unknown(format!(
                        "group {}: epoch {} is not in the (trimmed) final state",
                        win.group, win.epoch
                    )),
                    None => r.offend(
                        format!(
                            "group {}: {} but the final state never activated epoch {}",
                            win.group,
                            win.describe(),
                            win.epoch
                        ),
                        vec![win.first.clone()],
                    ),
                }
            }
        }
    }
    r
}
