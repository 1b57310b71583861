//! Linearizability of each group's `(active, epoch)` register.
//!
//! Model: the register holds `(active, epoch)`. An activation (a failover or failback, or an
//! automatic operation only the final state knows of) is a write of `(to, e)` that requires
//! `e` to be greater than the current epoch; when its epoch is unknown the write sets "some
//! epoch above the current one", fixed by the next read. An ok `status` read (and an allowed
//! `fence-check`) must return the current value. A write whose outcome is unknown (`info`,
//! an ok that returned before the operation finished, an automatic operation) is open-ended:
//! it may take effect at any time after its invocation, or never.
//!
//! Every activation the final state records must be explained: by a recorded operator
//! command (matched by operation id, or by kind and target), by a re-creation of the group
//! in the audit log, or by an operation the cluster started itself — actor `arbiter`, an
//! `automatic` failover carrying its quorum verdict's `down` reports, or an automatic
//! failback ([`FinalOperation::automatic_evidence`]). Any other activation is a finding:
//! something activated a region that neither an operator nor the cluster's own rules asked
//! for.
//!
//! No verdict without evidence: `unknown` without a final state, or for a group without a
//! single ok read.
//!
//! Search: Wing & Gong's algorithm with Lowe's memoisation — a cache of (set of linearized
//! operations, model state) pairs already explored — run per group, with a step budget
//! that yields `unknown`. The set is kept as a 128-bit Zobrist hash of the linearized
//! operations, so memory stays at a few dozen bytes per cached configuration whatever the
//! history length (two different sets colliding on 128 bits is not a practical concern).

use super::epochs::failover_done;
use super::final_state::FinalOperation;
use super::{CheckResult, Context, OpRef};
use std::collections::HashSet;

pub const NAME: &str = "linearizable";

/// The model's state. Regions are numbered per group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Nothing known yet (no final state to say how the group started).
    Any,
    /// `exact`: the epoch is `epoch`; otherwise it is some value above `epoch`.
    Known {
        active: u32,
        epoch: u64,
        exact: bool,
    },
}

/// What an operation does to the register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Write { to: u32, epoch: Option<u64> },
    Read { active: u32, epoch: u64 },
}

/// One operation of a group's register history.
#[derive(Debug, Clone)]
pub struct LinOp {
    pub kind: Kind,
    pub call_ns: u64,
    /// `None`: open-ended.
    pub ret_ns: Option<u64>,
    /// History index of the completion, when there is one.
    pub ret_index: Option<u64>,
    pub op: Option<OpRef>,
    /// For findings: what the operation is and did.
    pub describe: String,
}

/// Applies one operation; `None` when it cannot happen in this state.
pub fn step(state: State, kind: Kind) -> Option<State> {
    match (state, kind) {
        (State::Any, Kind::Read { active, epoch }) => Some(State::Known {
            active,
            epoch,
            exact: true,
        }),
        (State::Any, Kind::Write { to, epoch }) => Some(State::Known {
            active: to,
            epoch: epoch.unwrap_or(0),
            exact: epoch.is_some(),
        }),
        (
            State::Known {
                active,
                epoch,
                exact,
            },
            Kind::Read {
                active: a,
                epoch: e,
            },
        ) => {
            let fits = active == a && if exact { e == epoch } else { e > epoch };
            fits.then_some(State::Known {
                active: a,
                epoch: e,
                exact: true,
            })
        }
        (State::Known { epoch, exact, .. }, Kind::Write { to, epoch: e }) => {
            // The least epoch the register may hold now.
            let least = if exact { epoch } else { epoch + 1 };
            match e {
                Some(e) if e > least => Some(State::Known {
                    active: to,
                    epoch: e,
                    exact: true,
                }),
                Some(_) => None,
                None => Some(State::Known {
                    active: to,
                    epoch: least,
                    exact: false,
                }),
            }
        }
    }
}

/// How a search ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Linearizable,
    /// The operation (index into the ops) that could not be linearized at the deepest point
    /// the search reached, with the last operation linearized before it and the state there.
    NotLinearizable {
        op: usize,
        after: Option<usize>,
        state: State,
        linearized: usize,
    },
    /// The step budget ran out.
    Budget {
        steps: u64,
    },
}

/// A search's result and its cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    pub outcome: Outcome,
    pub steps: u64,
    pub cache: usize,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Searches for a linearization of `ops` from `init`, taking at most `budget` steps.
pub fn search(ops: &[LinOp], init: State, budget: u64) -> Search {
    const HEAD: usize = 0;
    const NIL: usize = usize::MAX;
    // Entries 1..=2n: a call and a return per operation, in time order. At equal times calls
    // come first, so operations that touch are concurrent (the lenient reading).
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * ops.len());
    for (i, o) in ops.iter().enumerate() {
        events.push((o.call_ns, 0, i));
        events.push((o.ret_ns.unwrap_or(u64::MAX), 1, i));
    }
    events.sort();
    let len = events.len() + 1;
    let mut next = vec![NIL; len];
    let mut prev = vec![NIL; len];
    let mut op_of = vec![0usize; len];
    let mut is_call = vec![false; len];
    let mut ret_of = vec![NIL; len];
    let mut call_entry = vec![NIL; ops.len()];
    for (k, (_, kind, i)) in events.iter().enumerate() {
        let e = k + 1;
        op_of[e] = *i;
        is_call[e] = *kind == 0;
        prev[e] = k;
        next[k] = e;
        if *kind == 0 {
            call_entry[*i] = e;
        } else {
            ret_of[call_entry[*i]] = e;
        }
    }
    let zobrist: Vec<u128> = (0..ops.len() as u64)
        .map(|i| ((splitmix(2 * i) as u128) << 64) | splitmix(2 * i + 1) as u128)
        .collect();

    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        for x in [e, ret_of[e]] {
            next[prev[x]] = next[x];
            if next[x] != NIL {
                prev[next[x]] = prev[x];
            }
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        for x in [ret_of[e], e] {
            next[prev[x]] = x;
            if next[x] != NIL {
                prev[next[x]] = x;
            }
        }
    };

    let mut cache: HashSet<(u128, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state = init;
    let mut hash: u128 = 0;
    let mut entry = next[HEAD];
    let mut steps: u64 = 0;
    let mut deepest: Option<(usize, usize, Option<usize>, State)> = None;
    while next[HEAD] != NIL {
        steps += 1;
        if steps > budget {
            return Search {
                outcome: Outcome::Budget { steps: budget },
                steps,
                cache: cache.len(),
            };
        }
        let i = op_of[entry];
        if is_call[entry] {
            if let Some(after) = step(state, ops[i].kind) {
                let h = hash ^ zobrist[i];
                if cache.insert((h, after)) {
                    stack.push((entry, state));
                    state = after;
                    hash = h;
                    lift(&mut next, &mut prev, entry);
                    entry = next[HEAD];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            if ops[i].ret_ns.is_none() {
                // Every operation left is open-ended: they may never take effect.
                break;
            }
            let depth = stack.len();
            if deepest.is_none_or(|(d, ..)| depth > d) {
                let last = stack.last().map(|(e, _)| op_of[*e]);
                deepest = Some((depth, i, last, state));
            }
            let Some((e, s)) = stack.pop() else {
                let (linearized, op, after, state) = deepest.expect("set just above");
                return Search {
                    outcome: Outcome::NotLinearizable {
                        op,
                        after,
                        state,
                        linearized,
                    },
                    steps,
                    cache: cache.len(),
                };
            };
            hash ^= zobrist[op_of[e]];
            state = s;
            unlift(&mut next, &mut prev, e);
            entry = next[e];
        }
    }
    Search {
        outcome: Outcome::Linearizable,
        steps,
        cache: cache.len(),
    }
}

/// One group's register history, ready to search.
pub struct GroupHistory {
    pub regions: Vec<String>,
    pub init: State,
    pub ops: Vec<LinOp>,
    /// Whether automatic activations are known (from a final state).
    pub complete: bool,
    /// Activations of the final state that no recorded command and no evidence of an
    /// automatic operation explain: `(operation id, what)`.
    pub unexplained: Vec<(u64, String)>,
}

impl GroupHistory {
    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        to: &str,
        epoch: Option<u64>,
        call_ns: u64,
        ret: Option<&crate::history::Op>,
        op: Option<OpRef>,
        describe: String,
    ) {
        let to = self.region(to);
        self.ops.push(LinOp {
            kind: Kind::Write { to, epoch },
            call_ns,
            ret_ns: ret.map(|c| c.time_ns),
            ret_index: ret.map(|c| c.index),
            op,
            describe,
        });
    }

    fn region(&mut self, name: &str) -> u32 {
        match self.regions.iter().position(|r| r == name) {
            Some(i) => i as u32,
            None => {
                self.regions.push(name.to_string());
                self.regions.len() as u32 - 1
            }
        }
    }

    pub fn describe_state(&self, s: State) -> String {
        match s {
            State::Any => "anything".into(),
            State::Known {
                active,
                epoch,
                exact,
            } => format!(
                "({}, {}{})",
                self.regions[active as usize],
                if exact { "" } else { "above " },
                epoch
            ),
        }
    }
}

/// Builds the register history of `group` from the history and the final state.
pub fn group_history(ctx: &Context, group: &str) -> GroupHistory {
    let mut g = GroupHistory {
        regions: Vec::new(),
        init: State::Any,
        ops: Vec::new(),
        complete: ctx.final_state.is_some(),
        unexplained: Vec::new(),
    };
    let in_group = |p: &&super::Pair| p.group() == Some(group);
    for p in ctx.pairs_of(&["status", "fence-check"]).filter(in_group) {
        let region_key = if p.invoke.f == "status" {
            "active"
        } else {
            "region"
        };
        if !p.is_ok() || (p.invoke.f == "fence-check" && p.bool_field("allowed") != Some(true)) {
            continue;
        }
        let (Some(region), Some(epoch), Some(end)) =
            (p.str_field(region_key), p.u64_field("epoch"), p.end_ns())
        else {
            continue;
        };
        let active = g.region(region);
        g.ops.push(LinOp {
            kind: Kind::Read { active, epoch },
            call_ns: p.invoke.time_ns,
            ret_ns: Some(end),
            ret_index: p.complete.map(|c| c.index),
            op: Some(p.op_ref()),
            describe: format!("{} read ({region}, {epoch})", p.describe()),
        });
    }

    let commands: Vec<&super::Pair> = ctx
        .pairs_of(&["failover", "failback"])
        .filter(in_group)
        .filter(|p| p.kind() != crate::history::OpType::Fail)
        .collect();
    let mut claimed = vec![false; commands.len()];
    if let Some(f) = &ctx.final_state {
        let (map, _) = f.activations(group);
        if let Some((epoch, region)) = map.iter().next() {
            let active = g.region(region);
            g.init = State::Known {
                active,
                epoch: *epoch,
                exact: true,
            };
        }
        // A group removed and added again by the policy starts over at a higher epoch: a
        // write the history does not time (the policy apply), explained by its audit entry.
        for (epoch, region) in f.creations(group).into_iter().skip(1) {
            let d = format!("group re-created by a policy: ({region}, {epoch})");
            g.write(&region, Some(epoch), 0, None, None, d);
        }
        for o in f
            .operations
            .values()
            .filter(|o| o.group == group && o.activated())
        {
            let by_id = commands
                .iter()
                .position(|p| p.is_ok() && p.u64_field("operation") == Some(o.id));
            // An operation of the cluster's own (actor `arbiter`, e.g. an automatic
            // failback) is never an operator command's, however alike they look: a halted
            // failback command (`info`, its invocation naming no target) must stay free for
            // its own operation.
            let by_shape = || {
                commands.iter().enumerate().position(|(k, p)| {
                    !claimed[k]
                        && o.actor != super::final_state::AUTOMATIC_ACTOR
                        && p.invoke.f == o.kind
                        && p.u64_field("operation").is_none_or(|id| id == o.id)
                        && p.str_field("to").is_none_or(|t| t == o.to)
                })
            };
            let what = format!("operation {} activating ({}, {})", o.id, o.to, o.to_epoch);
            match by_id.or_else(by_shape) {
                Some(k) => {
                    claimed[k] = true;
                    let p = commands[k];
                    let ret = p
                        .complete
                        .filter(|_| p.is_ok() && failover_done(p.str_field("state")));
                    let d = format!("{}: {what}", p.describe());
                    g.write(
                        &o.to,
                        Some(o.to_epoch),
                        p.invoke.time_ns,
                        ret,
                        Some(p.op_ref()),
                        d,
                    );
                }
                None => match o.automatic_evidence() {
                    Some(evidence) => {
                        let d = format!("{} {what} (by the cluster: {evidence})", o.kind);
                        g.write(&o.to, Some(o.to_epoch), 0, None, None, d);
                    }
                    None => g.unexplained.push((o.id, unexplained(o, &what))),
                },
            }
        }
    }
    for (k, p) in commands.iter().enumerate() {
        if claimed[k] {
            continue;
        }
        let done = p.is_ok() && failover_done(p.str_field("state"));
        // With a final state, an unclaimed command that did not finish never activated.
        if ctx.final_state.is_some() && !done {
            continue;
        }
        let Some(to) = p.str_field("to") else {
            continue;
        };
        let epoch = p.u64_field("epoch").filter(|_| p.is_ok());
        let ret = p.complete.filter(|_| done);
        let d = format!(
            "{}: activating ({to}, {})",
            p.describe(),
            epoch.map(|e| e.to_string()).unwrap_or("?".into())
        );
        g.write(to, epoch, p.invoke.time_ns, ret, Some(p.op_ref()), d);
    }
    narrow_unknown_starts(&mut g.ops);
    g
}

/// Why an activation is not explained, for the finding.
fn unexplained(o: &FinalOperation, what: &str) -> String {
    format!(
        "{what} ({}, actor {:?}) matches no recorded operator command and is not an \
         operation of the cluster's own with its evidence (reason: {:?})",
        o.kind,
        o.actor,
        o.reason.lines().next().unwrap_or("")
    )
}

/// An activation no command in the history explains (an automatic failover) may have
/// happened any time; searching it from time 0 makes every step of the search consider it.
/// The register's epoch only grows, so an activation of epoch e took effect after every
/// read that saw a lower epoch had started: that read's invocation is a sound earliest
/// start.
fn narrow_unknown_starts(ops: &mut [LinOp]) {
    let reads: Vec<(u64, u64)> = ops
        .iter()
        .filter_map(|o| match o.kind {
            Kind::Read { epoch, .. } => Some((epoch, o.call_ns)),
            Kind::Write { .. } => None,
        })
        .collect();
    for o in ops.iter_mut().filter(|o| o.op.is_none()) {
        if let Kind::Write { epoch: Some(e), .. } = o.kind {
            let earliest = reads
                .iter()
                .filter(|(seen, _)| *seen < e)
                .map(|(_, call)| *call)
                .max()
                .unwrap_or(0);
            o.call_ns = o.call_ns.max(earliest);
        }
    }
}

pub fn check(ctx: &Context, budget: u64) -> CheckResult {
    let mut r = CheckResult::new(NAME);
    if ctx.final_state.is_none() {
        r.unknown(format!(
            "{}: the activations cannot be told apart from unexplained ones",
            ctx.final_missing
        ));
    }
    for group in ctx.groups() {
        let g = group_history(ctx, &group);
        if !g.ops.iter().any(|o| matches!(o.kind, Kind::Read { .. })) {
            r.unknown(format!(
                "group {group}: no ok status read or allowed fence check: nothing to judge \
                 linearizability on"
            ));
        }
        let final_op: Vec<OpRef> = ctx
            .final_state
            .as_ref()
            .and_then(|f| f.op.clone())
            .into_iter()
            .collect();
        for (id, what) in &g.unexplained {
            r.count(&format!("{group}-unexplained"), 1);
            r.offend(
                format!("group {group}: operation {id}: {what}"),
                final_op.clone(),
            );
        }
        let s = search(&g.ops, g.init, budget);
        r.count(&format!("{group}-ops"), g.ops.len() as u64);
        r.count(&format!("{group}-steps"), s.steps);
        r.count(&format!("{group}-cache"), s.cache as u64);
        match s.outcome {
            Outcome::Linearizable => {}
            Outcome::Budget { steps } => r.unknown(format!(
                "group {group}: search budget of {steps} steps spent on {} operations",
                g.ops.len()
            )),
            Outcome::NotLinearizable {
                op,
                after,
                state,
                linearized,
            } => {
                let bad = &g.ops[op];
                let mut named: Vec<OpRef> = bad.op.iter().cloned().collect();
                let before = match after {
                    Some(a) => {
                        named.extend(g.ops[a].op.iter().cloned());
                        format!(
                            "; the last operation linearized before it: {}",
                            g.ops[a].describe
                        )
                    }
                    None => String::new(),
                };
                let message = format!(
                    "group {group}: not linearizable: {} cannot be placed; with {linearized} \
                     operations linearized the register could hold {}{before}; \
                     the smallest failing prefix of the history ends at event {}",
                    bad.describe,
                    g.describe_state(state),
                    bad.ret_index
                        .map(|i| i.to_string())
                        .unwrap_or_else(|| "the end".into())
                );
                if g.complete {
                    r.offend(message, named);
                } else {
                    r.unknown(format!(
                        "{message} (no final state: automatic activations are unknown, so \
                         this may be one of them)"
                    ));
                }
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(active: u32, epoch: u64, call: u64, ret: u64) -> LinOp {
        LinOp {
            kind: Kind::Read { active, epoch },
            call_ns: call,
            ret_ns: Some(ret),
            ret_index: None,
            op: None,
            describe: format!("read ({active},{epoch})"),
        }
    }

    fn write(to: u32, epoch: Option<u64>, call: u64, ret: Option<u64>) -> LinOp {
        LinOp {
            kind: Kind::Write { to, epoch },
            call_ns: call,
            ret_ns: ret,
            ret_index: None,
            op: None,
            describe: format!("write ({to},{epoch:?})"),
        }
    }

    const A1: State = State::Known {
        active: 0,
        epoch: 1,
        exact: true,
    };

    #[test]
    fn reads_around_a_write() {
        let ops = vec![
            read(0, 1, 0, 10),
            write(1, Some(2), 5, Some(20)),
            read(1, 2, 15, 25),
            read(1, 2, 30, 40),
        ];
        assert_eq!(search(&ops, A1, 1000).outcome, Outcome::Linearizable);
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_side() {
        let ops = vec![
            write(1, Some(2), 5, Some(20)),
            read(0, 1, 6, 8),
            read(1, 2, 9, 12),
        ];
        assert_eq!(search(&ops, A1, 1000).outcome, Outcome::Linearizable);
    }

    #[test]
    fn going_back_is_not_linearizable() {
        let ops = vec![
            write(1, Some(2), 5, Some(20)),
            read(1, 2, 21, 25),
            read(0, 1, 30, 40),
        ];
        match search(&ops, A1, 1000).outcome {
            Outcome::NotLinearizable { op, .. } => assert_eq!(op, 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_open_write_may_take_effect_late_or_never() {
        let late = vec![
            write(1, None, 5, None),
            read(0, 1, 10, 11),
            read(1, 7, 50, 51),
        ];
        assert_eq!(search(&late, A1, 1000).outcome, Outcome::Linearizable);
        let never = vec![
            write(1, None, 5, None),
            read(0, 1, 10, 11),
            read(0, 1, 50, 51),
        ];
        assert_eq!(search(&never, A1, 1000).outcome, Outcome::Linearizable);
    }

    #[test]
    fn an_unknown_epoch_is_fixed_by_the_first_read() {
        let ops = vec![
            write(1, None, 5, Some(6)),
            read(1, 4, 10, 11),
            read(1, 5, 20, 21),
        ];
        assert!(matches!(
            search(&ops, A1, 1000).outcome,
            Outcome::NotLinearizable { op: 2, .. }
        ));
    }

    #[test]
    fn the_budget_yields_unknown() {
        let mut ops: Vec<LinOp> = (0..12).map(|i| write(i % 3, None, 0, None)).collect();
        ops.push(read(2, 99, 100, 101));
        ops.push(read(0, 1, 200, 201));
        assert!(matches!(
            search(&ops, A1, 50).outcome,
            Outcome::Budget { .. }
        ));
        // With room, the memoised search finishes: the read of epoch 99 after 12 writes of
        // unknown epoch is possible, but then (0, 1) cannot be read again.
        let full = search(&ops, A1, 10_000_000);
        assert!(
            matches!(full.outcome, Outcome::NotLinearizable { op: 13, .. }),
            "{full:?}"
        );
    }
}
