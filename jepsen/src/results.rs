//! What a run's checkers concluded, as `results.json` holds it: the shared value between
//! `analyze` (which produces it) and `report` (which shows it), and what the run covered
//! (the operator's actions per step). It runs nothing and judges nothing.

use crate::checker::{CheckResult, Valid};
use crate::history::{History, OpType};
use serde::Serialize;
use std::collections::BTreeMap;

/// The operator's actions on operations (`f` of the history).
pub const OPERATOR_ACTIONS: [&str; 4] = ["abort", "retry", "skip", "approve"];

/// What `results.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// All checkers together: any invalid makes it `false`, else any unknown `"unknown"`.
    pub valid: Valid,
    pub checkers: BTreeMap<String, CheckResult>,
    /// Coverage, not a verdict: per action (`abort`, `retry`, `skip`, `approve`) and per
    /// step it targeted, how many the cluster accepted, refused or left unknown.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub operator_actions: BTreeMap<String, BTreeMap<String, ActionCounts>>,
}

/// How the actions of one kind on one step ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ActionCounts {
    /// `ok`: the cluster committed it.
    pub accepted: u64,
    /// `fail`: a definite refusal.
    pub refused: u64,
    /// `info` or never completed.
    pub unknown: u64,
    /// Refusals and unknowns by the CLI's error kind (`operation-state`, `wrong-step`,
    /// `promote-started`, ...; `none` when it printed none).
    pub kinds: BTreeMap<String, u64>,
}

/// Counts every operator action of `history` by kind and targeted step (`value.step`;
/// `unknown` when the action named none).
pub fn operator_actions(history: &History) -> BTreeMap<String, BTreeMap<String, ActionCounts>> {
    let mut out: BTreeMap<String, BTreeMap<String, ActionCounts>> = BTreeMap::new();
    for (invoke, complete) in history.pairs() {
        if !OPERATOR_ACTIONS.contains(&invoke.f.as_str()) {
            continue;
        }
        let step = invoke.value["step"].as_str().unwrap_or("unknown");
        let c = out
            .entry(invoke.f.clone())
            .or_default()
            .entry(step.to_string())
            .or_default();
        match complete.map(|c| c.kind) {
            Some(OpType::Ok) => {
                c.accepted += 1;
                continue;
            }
            Some(OpType::Fail) => c.refused += 1,
            _ => c.unknown += 1,
        }
        let kind = complete
            .and_then(|c| c.value["error_kind"].as_str())
            .unwrap_or("none");
        *c.kinds.entry(kind.to_string()).or_default() += 1;
    }
    out
}

impl Results {
    /// The process exit code for these results (valid 0, invalid 1, unknown 2).
    pub fn exit_code(&self) -> i32 {
        exit_code(self.valid)
    }
}

/// The exit code of `jepsen test` / `jepsen analyze`: valid 0, invalid 1, unknown 2.
pub fn exit_code(valid: Valid) -> i32 {
    valid.exit_code()
}
