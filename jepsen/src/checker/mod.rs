//! Checkers: each judges a recorded history (and the state read after healing) against one
//! safety or liveness property and returns a [`CheckResult`] naming the offending operations
//! by history index and process. Checkers only read; they never run anything, and a checker
//! that cannot decide says `unknown` rather than guess: no verdict without evidence. A
//! missing or unparsable final state, an empty history, too few writes or DNS answers (each
//! checker states its minimum as a named constant), a workload that recorded it could not
//! do its job, or missing node logs make the checkers that need them `unknown`.
//!
//! # Layout
//!
//! - `final_state`: the `final` operation's value, parsed once for every checker.
//! - `single_writer` (S1), `epochs` (S2), `consensus_before_action` (S3, on the hook calls),
//!   `acknowledged` (S4), `dns` (S5), `operations` (S6), `quorum_verdict` (S7).
//! - `linearizable`: each group's `(active, epoch)` register, Wing–Gong search with Lowe's
//!   memoisation and a step budget.
//! - `availability`: the longest time the active region could not write with no failover
//!   due, against a bound.
//! - `faults`, `node_logs`, `recovery`: the run did what it was asked (faults happened, no
//!   process panicked, the cluster answered again soon after healing).

pub mod acknowledged;
pub mod availability;
pub mod consensus_before_action;
pub mod dns;
pub mod epochs;
pub mod faults;
pub mod final_state;
pub mod linearizable;
pub mod node_logs;
pub mod operations;
pub mod quorum_verdict;
pub mod recovery;
pub mod single_writer;

use crate::history::{History, Op, OpType, WORKLOAD_ERROR};
use crate::spec::TestSpec;
use final_state::FinalState;
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;
use std::path::Path;

/// How many offences one checker lists in full; the rest are only counted (a broken run
/// can produce thousands and the report must stay readable).
pub const ERRORS_LISTED_MAX: usize = 100;

/// A checker's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Valid {
    True,
    False,
    /// The checker could not decide (missing data, search budget spent).
    Unknown,
}

impl Valid {
    /// Both must hold: any `False` wins, then any `Unknown`.
    pub fn and(self, other: Valid) -> Valid {
        match (self, other) {
            (Valid::False, _) | (_, Valid::False) => Valid::False,
            (Valid::Unknown, _) | (_, Valid::Unknown) => Valid::Unknown,
            _ => Valid::True,
        }
    }

    /// The process exit code of `jepsen analyze` for this verdict: valid 0, invalid 1,
    /// unknown 2.
    pub fn exit_code(self) -> i32 {
        match self {
            Valid::True => 0,
            Valid::False => 1,
            Valid::Unknown => 2,
        }
    }
}

impl Serialize for Valid {
    /// `true`, `false` or `"unknown"`, as Jepsen writes it.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Valid::True => s.serialize_bool(true),
            Valid::False => s.serialize_bool(false),
            Valid::Unknown => s.serialize_str("unknown"),
        }
    }
}

/// An operation named in a finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpRef {
    /// History index of the event (the invocation unless said otherwise).
    pub index: u64,
    pub process: String,
    pub f: String,
}

impl OpRef {
    pub fn of(op: &Op) -> OpRef {
        OpRef {
            index: op.index,
            process: op.process.clone(),
            f: op.f.clone(),
        }
    }
}

/// One violation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Offence {
    pub message: String,
    /// The operations involved, first the one that breaks the property.
    pub ops: Vec<OpRef>,
    /// A file (relative to the run directory) and line, for findings in node logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
}

/// What one checker found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub valid: Valid,
    /// At most [`ERRORS_LISTED_MAX`]; `counts.errors` has the total.
    pub errors: Vec<Offence>,
    /// Why a result is unknown, what was skipped, what was measured.
    pub notes: Vec<String>,
    pub counts: BTreeMap<String, u64>,
}

impl CheckResult {
    pub fn new(name: &str) -> CheckResult {
        CheckResult {
            name: name.to_string(),
            valid: Valid::True,
            errors: Vec::new(),
            notes: Vec::new(),
            counts: BTreeMap::new(),
        }
    }

    /// Records a violation: the result becomes invalid.
    pub fn offend(&mut self, message: String, ops: Vec<OpRef>) {
        self.push(Offence {
            message,
            ops,
            file: None,
            line: None,
        });
    }

    pub fn push(&mut self, offence: Offence) {
        self.valid = Valid::False;
        *self.counts.entry("errors".to_string()).or_default() += 1;
        if self.errors.len() < ERRORS_LISTED_MAX {
            self.errors.push(offence);
        }
    }

    /// Records why the checker cannot decide (invalid stays invalid).
    pub fn unknown(&mut self, why: String) {
        self.valid = self.valid.and(Valid::Unknown);
        self.notes.push(why);
    }

    pub fn note(&mut self, what: String) {
        self.notes.push(what);
    }

    pub fn count(&mut self, key: &str, n: u64) {
        *self.counts.entry(key.to_string()).or_default() += n;
    }

    /// The history indexes named by the errors (for tests and the report).
    pub fn offending_indexes(&self) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .errors
            .iter()
            .flat_map(|e| e.ops.iter().map(|o| o.index))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// An invocation and its completion (`None` when the run ended first: unknown, like `info`).
#[derive(Debug, Clone, Copy)]
pub struct Pair<'a> {
    pub invoke: &'a Op,
    pub complete: Option<&'a Op>,
}

impl<'a> Pair<'a> {
    /// How the operation ended; a missing completion is `info`.
    pub fn kind(&self) -> OpType {
        self.complete.map(|c| c.kind).unwrap_or(OpType::Info)
    }

    pub fn is_ok(&self) -> bool {
        self.kind() == OpType::Ok
    }

    /// The completion time, for operations that definitely ended (`ok` or `fail`).
    pub fn end_ns(&self) -> Option<u64> {
        match self.complete {
            Some(c) if c.kind != OpType::Info => Some(c.time_ns),
            _ => None,
        }
    }

    /// The completion value of an `ok`, else the invocation's.
    pub fn value(&self) -> &'a serde_json::Value {
        match self.complete {
            Some(c) if c.kind == OpType::Ok && !c.value.is_null() => &c.value,
            _ => &self.invoke.value,
        }
    }

    pub fn str_field(&self, key: &str) -> Option<&'a str> {
        self.value().get(key).and_then(|v| v.as_str())
    }

    pub fn u64_field(&self, key: &str) -> Option<u64> {
        self.value().get(key).and_then(|v| v.as_u64())
    }

    pub fn bool_field(&self, key: &str) -> Option<bool> {
        self.value().get(key).and_then(|v| v.as_bool())
    }

    pub fn group(&self) -> Option<&'a str> {
        self.str_field("group")
    }

    /// The invocation, named for findings.
    pub fn op_ref(&self) -> OpRef {
        OpRef::of(self.invoke)
    }

    /// `index (process)` and, when completed, the completion's index.
    pub fn describe(&self) -> String {
        match self.complete {
            Some(c) => format!(
                "{} {} at {}..{} ({})",
                self.invoke.f,
                self.invoke.index,
                fmt_s(self.invoke.time_ns),
                fmt_s(c.time_ns),
                self.invoke.process
            ),
            None => format!(
                "{} {} at {}.. ({})",
                self.invoke.f,
                self.invoke.index,
                fmt_s(self.invoke.time_ns),
                self.invoke.process
            ),
        }
    }
}

/// Nanoseconds since the start of the run as seconds, for messages.
pub fn fmt_s(ns: u64) -> String {
    format!("{:.3}s", ns as f64 / 1e9)
}

/// Everything a checker may read.
pub struct Context<'a> {
    pub history: &'a History,
    pub spec: &'a TestSpec,
    /// Every invocation with its completion, in invocation order.
    pub pairs: Vec<Pair<'a>>,
    /// The state read after healing, when the history has an ok `final` that parses.
    pub final_state: Option<FinalState>,
    /// Why `final_state` is `None`: no ok `final` in the history, or the error its value
    /// gave when parsed (a checker that needs it says `unknown` with this).
    pub final_missing: String,
    /// The run directory (node logs live under `nodes/*/`), when checking a stored run.
    pub dir: Option<&'a Path>,
}

impl<'a> Context<'a> {
    pub fn new(history: &'a History, spec: &'a TestSpec, dir: Option<&'a Path>) -> Context<'a> {
        let pairs = history
            .pairs()
            .into_iter()
            .map(|(invoke, complete)| Pair { invoke, complete })
            .collect();
        let (final_state, final_missing) = match FinalState::from_history(history) {
            None => (None, "the history has no ok final state".to_string()),
            Some(Ok(f)) => (Some(f), String::new()),
            Some(Err(e)) => (None, format!("the final state does not parse: {e}")),
        };
        Context {
            history,
            spec,
            pairs,
            final_state,
            final_missing,
            dir,
        }
    }

    /// The pairs whose `f` is one of `fs`.
    pub fn pairs_of(&self, fs: &[&str]) -> impl Iterator<Item = &Pair<'a>> + '_ {
        let fs: Vec<String> = fs.iter().map(|f| f.to_string()).collect();
        self.pairs.iter().filter(move |p| fs.contains(&p.invoke.f))
    }

    /// Every group the history or the final state mentions, sorted.
    pub fn groups(&self) -> Vec<String> {
        let mut groups: std::collections::BTreeSet<String> = self
            .pairs
            .iter()
            .filter(|p| !p.invoke.is_nemesis())
            .filter_map(|p| p.group().map(str::to_string))
            .collect();
        if let Some(f) = &self.final_state {
            groups.extend(f.groups.keys().cloned());
        }
        groups.extend(self.spec.groups.iter().cloned());
        groups.into_iter().collect()
    }

    /// Whether the run was asked for this workload (`writes`, `operator`, `reads`).
    pub fn has_workload(&self, name: &str) -> bool {
        self.spec
            .workload
            .split(',')
            .any(|w| w.trim() == "all" || w.trim() == name)
    }

    /// The harness's own failures recorded in the history (`workload-error`) by processes
    /// whose name starts with `prefix`: evidence that a workload could not do its job.
    pub fn workload_errors(&self, prefix: &str) -> Vec<&Pair<'a>> {
        self.pairs
            .iter()
            .filter(|p| p.invoke.f == WORKLOAD_ERROR && p.invoke.process.starts_with(prefix))
            .collect()
    }

    /// The end of the history (the last event's time).
    pub fn end_ns(&self) -> u64 {
        self.history
            .ops
            .iter()
            .map(|o| o.time_ns)
            .max()
            .unwrap_or(0)
    }
}

/// Runs every checker, in the order the report lists them.
pub fn check_all(ctx: &Context) -> Vec<CheckResult> {
    vec![
        single_writer::check(ctx),
        epochs::check(ctx),
        consensus_before_action::check(ctx),
        acknowledged::check(ctx),
        dns::check(ctx),
        operations::check(ctx),
        quorum_verdict::check(ctx),
        linearizable::check(ctx, ctx.spec.linearizable_steps),
        availability::check(ctx),
        faults::check(ctx),
        node_logs::check(ctx),
        recovery::check(ctx),
    ]
}
