//! S1 single writer: per group, no two regions write at the same real-time instant, and
//! every write carries an epoch that was current when it was written.
//!
//! A *write window* is a maximal run of consecutive `ok` writes by one region at one epoch,
//! spanning [invocation of its first write, completion of its last]. Windows of different
//! regions must not intersect. `info` writes (outcome unknown) are not part of windows — they
//! can only add evidence, never remove it — but their invocations count for the stale-epoch
//! rule: no write at epoch e completes after a write at a higher epoch was invoked. Each
//! window's epoch must be one the final state says was activated for that region.
//!
//! No verdict without evidence: the checker answers `unknown` (never `valid`) when a writer
//! recorded that it could not do its job (`workload-error`), when a write's value lacks its
//! group, region or epoch, when the final state is missing, and when there are too few
//! writes to have tested the property: fewer than [`WRITES_PER_REGION_MIN`] accepted writes
//! by a region whose database was open, or fewer than [`WRITES_PER_HELD_EPOCH_MIN`] at an
//! epoch it was open at (a `database` event with `open`; in histories from before the
//! database model, a `lease` event with `held`), each once it stayed open long enough to
//! allow them.

use super::{fmt_s, CheckResult, Context, OpRef, Pair};
use crate::history::OpType;
use std::collections::BTreeMap;

pub const NAME: &str = "single-writer";

/// Accepted writes each region that held the lease for at least [`HELD_REGION_JUDGED_MS`]
/// must have made. A writer writes every 50 ms while its agent holds the lease (about 100
/// writes in that time), so a region this short of writes had a writer that was not
/// writing; the runs of `tests/runs.rs` record well over 100 per region.
pub const WRITES_PER_REGION_MIN: usize = 20;

/// How long a region must have held the lease, in all, for [`WRITES_PER_REGION_MIN`] to
/// apply.
pub const HELD_REGION_JUDGED_MS: u64 = 5_000;

/// Accepted writes each (region, epoch) whose lease an agent was seen to hold for at least
/// [`HELD_EPOCH_JUDGED_MS`] must have made: about 20 in that time at one write per 50 ms,
/// so fewer than this means the window was barely tested; the runs of `tests/runs.rs`
/// record at least 50 per epoch.
pub const WRITES_PER_HELD_EPOCH_MIN: usize = 5;

/// How long an agent must have held the lease at one epoch for
/// [`WRITES_PER_HELD_EPOCH_MIN`] to apply (a hold that began in the workload's last second
/// has room for few writes).
pub const HELD_EPOCH_JUDGED_MS: u64 = 1_000;

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
    for p in ctx.workload_errors("writer-") {
        r.count("writer-errors", 1);
        r.unknown(format!(
            "{} could not write: {}",
            p.invoke.process,
            p.complete
                .and_then(|c| c.error.clone())
                .or_else(|| p.str_field("what").map(str::to_string))
                .unwrap_or_else(|| "no error recorded".into())
        ));
    }
    enough_writes(ctx, &all, &mut r);
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
        None => r.unknown(format!(
            "{}: cannot tell which epochs were activated for which region",
            ctx.final_missing
        )),
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

/// An agent's hold changing, as the writer saw it: `(time ns, held, epoch)`.
type Hold = (u64, bool, u64);

/// The stated minimums, over the time each agent was seen to hold the lease (from a `lease`
/// event with `held` to the agent's next `lease` event, or to the end of the writes): a
/// (region, epoch) held for at least [`HELD_EPOCH_JUDGED_MS`] has at least
/// [`WRITES_PER_HELD_EPOCH_MIN`] accepted writes, and a region that held the lease for at
/// least [`HELD_REGION_JUDGED_MS`] in all has at least [`WRITES_PER_REGION_MIN`]; otherwise
/// `unknown`. A hold shorter than that (a failover in the last moments of the workload) is
/// only noted: its few writes are all a correct writer could make.
fn enough_writes(ctx: &Context, all: &[Write], r: &mut CheckResult) {
    // The end of the writes workload: every writer stops at the same instant.
    let writes_end = ctx
        .history
        .ops
        .iter()
        .filter(|o| o.process.starts_with("writer-") || o.process.starts_with("agent-"))
        .map(|o| o.time_ns)
        .max()
        .unwrap_or(0);
    // What the writer could write in: the database's open spans where the history has
    // them, else (histories from before the database model) the agent's lease holds.
    let database = crate::workload::writer::DATABASE;
    let (f, field, held) = if ctx.pairs_of(&[database]).next().is_some() {
        (database, "open", "had its database open")
    } else {
        ("lease", "held", "held the lease")
    };
    let mut events: BTreeMap<(&str, &str), Vec<Hold>> = BTreeMap::new();
    for p in ctx.pairs_of(&[f]).filter(|p| p.is_ok()) {
        let (Some(group), Some(region), Some(epoch), Some(held)) = (
            p.group(),
            p.str_field("region"),
            p.u64_field("epoch"),
            p.bool_field(field),
        ) else {
            r.unknown(format!(
                "{}: a {f} event without group, region, epoch or {field}",
                p.describe()
            ));
            continue;
        };
        events.entry((group, region)).or_default().push((
            p.end_ns().unwrap_or(p.invoke.time_ns),
            held,
            epoch,
        ));
    }
    let mut region_held_ns: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut epoch_held_ns: BTreeMap<(&str, &str, u64), u64> = BTreeMap::new();
    for ((group, region), mut list) in events {
        list.sort_by_key(|(t, ..)| *t);
        for (k, (t, held, epoch)) in list.iter().enumerate() {
            if !held {
                continue;
            }
            let until = list.get(k + 1).map(|(t, ..)| *t).unwrap_or(writes_end);
            let span = until.saturating_sub(*t);
            *region_held_ns.entry((group, region)).or_default() += span;
            *epoch_held_ns.entry((group, region, *epoch)).or_default() += span;
        }
    }
    let mut per_region: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut per_epoch: BTreeMap<(&str, &str, u64), usize> = BTreeMap::new();
    for w in all.iter().filter(|w| w.pair.is_ok()) {
        *per_region.entry((w.group, w.region)).or_default() += 1;
        *per_epoch.entry((w.group, w.region, w.epoch)).or_default() += 1;
    }
    for ((_, region), n) in &per_region {
        r.count(&format!("writes-ok {region}"), *n as u64);
    }
    for ((group, region), held_ns) in region_held_ns {
        let n = per_region.get(&(group, region)).copied().unwrap_or(0);
        if held_ns < HELD_REGION_JUDGED_MS * 1_000_000 {
            r.note(format!(
                "group {group}: {region} {held} for only {} ({n} writes): not enough \
                 to apply the minimum",
                fmt_s(held_ns)
            ));
        } else if n < WRITES_PER_REGION_MIN {
            r.unknown(format!(
                "group {group}: {region} {held} for {} but made only {n} accepted \
                 write(s), fewer than the {WRITES_PER_REGION_MIN} needed to judge it",
                fmt_s(held_ns)
            ));
        }
    }
    r.count("held-epochs", epoch_held_ns.len() as u64);
    for ((group, region, epoch), held_ns) in epoch_held_ns {
        let n = per_epoch.get(&(group, region, epoch)).copied().unwrap_or(0);
        if held_ns >= HELD_EPOCH_JUDGED_MS * 1_000_000 {
            // The margin the run had over the minimum, for results.json.
            let fewest = r
                .counts
                .entry("fewest-writes-per-held-epoch".into())
                .or_insert(n as u64);
            *fewest = (*fewest).min(n as u64);
        }
        if held_ns < HELD_EPOCH_JUDGED_MS * 1_000_000 {
            r.note(format!(
                "group {group}: {region} {held} at epoch {epoch} for only {} ({n} \
                 writes): not enough to apply the minimum",
                fmt_s(held_ns)
            ));
        } else if n < WRITES_PER_HELD_EPOCH_MIN {
            r.unknown(format!(
                "group {group}: {region} {held} at epoch {epoch} for {} but its \
                 writer made only {n} accepted write(s) at that epoch, fewer than the \
                 {WRITES_PER_HELD_EPOCH_MIN} needed to judge that window",
                fmt_s(held_ns)
            ));
        }
    }
}
