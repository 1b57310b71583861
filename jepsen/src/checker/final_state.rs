//! The `final` operation's value (`arbiter status --json`, `arbiter operations --json` and
//! optionally DNS answers, read after healing), parsed leniently: a field the CLI did not
//! print reads as empty, and the checkers that need it say `unknown`.

use super::OpRef;
use crate::history::{History, OpType, FINAL};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// The arbiter keeps this many finished operations (`FINISHED_OPERATIONS_MAX`); an older one
/// missing from the final state may have been trimmed, not lost.
pub const FINISHED_OPERATIONS_KEPT: usize = 256;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct FinalGroup {
    pub name: String,
    pub active: String,
    pub epoch: u64,
    pub mode: String,
    pub candidates: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct FinalStep {
    pub step: String,
    pub outcome: String,
    pub detail: String,
    pub index: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct FinalOperation {
    pub id: u64,
    pub group: String,
    pub kind: String,
    pub from: String,
    pub to: String,
    pub from_epoch: u64,
    pub to_epoch: u64,
    /// `awaiting-approval`, `running`, `halted`, `done` or `aborted`.
    pub state: String,
    pub error: String,
    pub step: String,
    pub steps: Vec<FinalStep>,
}

impl FinalOperation {
    /// Whether its `activate` step was committed: `to` became active at `to_epoch`.
    pub fn activated(&self) -> bool {
        self.steps.iter().any(|s| s.step == "activate")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct FinalAudit {
    pub seq: u64,
    pub group: String,
    pub kind: String,
    pub detail: String,
    pub epoch: u64,
}

/// What one DNS source answers for a group after healing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DnsAnswer {
    pub source: String,
    pub group: String,
    /// The region the answer belongs to (from `final.value.dns`).
    pub answer: Option<String>,
    /// Whether it matches the committed region (from `status.dns`, when only that exists).
    pub matches: Option<bool>,
    pub error: Option<String>,
}

/// One epoch activated for two regions: `(epoch, first region, second region)`.
pub type Conflict = (u64, String, String);

/// The state read after healing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FinalState {
    /// The `final` operation (its invocation).
    pub op: Option<OpRef>,
    /// When the `final` operation was invoked.
    pub invoke_ns: u64,
    /// When it completed.
    pub time_ns: u64,
    pub groups: BTreeMap<String, FinalGroup>,
    /// By id, from `operations` and `status.operations`.
    pub operations: BTreeMap<u64, FinalOperation>,
    pub audit: Vec<FinalAudit>,
    /// `None` when the run recorded no DNS answers.
    pub dns: Option<Vec<DnsAnswer>>,
}

impl FinalState {
    /// The last ok `final` of the history, if any.
    pub fn from_history(history: &History) -> Option<FinalState> {
        let pairs = history.pairs();
        let (invoke, done) = pairs
            .iter()
            .rev()
            .find(|(i, c)| i.f == FINAL && c.is_some_and(|c| c.kind == OpType::Ok))?;
        let done = done.expect("found with a completion");
        let mut state = FinalState::parse(&done.value);
        state.op = Some(OpRef::of(invoke));
        state.invoke_ns = invoke.time_ns;
        state.time_ns = done.time_ns;
        Some(state)
    }

    /// Parses `{status, operations, dns?}`.
    pub fn parse(value: &Value) -> FinalState {
        let status = value.get("status").cloned().unwrap_or(Value::Null);
        let list = |v: Option<&Value>| -> Vec<Value> {
            v.and_then(|v| v.as_array()).cloned().unwrap_or_default()
        };
        let groups = list(status.get("groups"))
            .into_iter()
            .filter_map(|g| serde_json::from_value::<FinalGroup>(g).ok())
            .map(|g| (g.name.clone(), g))
            .collect();
        let mut operations = BTreeMap::new();
        for o in list(status.get("operations"))
            .into_iter()
            .chain(list(value.get("operations")))
        {
            if let Ok(o) = serde_json::from_value::<FinalOperation>(o) {
                operations.insert(o.id, o);
            }
        }
        let audit = list(status.get("audit"))
            .into_iter()
            .filter_map(|a| serde_json::from_value::<FinalAudit>(a).ok())
            .collect();
        let text = |v: &Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        // `final.value.dns` (`answer`), or the CLI's `status.dns` (`matches`); the runner may
        // copy the latter into the former, so both shapes are read from either place.
        let answers = value
            .get("dns")
            .and_then(|d| d.as_array())
            .filter(|d| !d.is_empty())
            .or_else(|| status.get("dns").and_then(|d| d.as_array()))
            .filter(|d| !d.is_empty());
        let dns = answers.map(|answers| {
            answers
                .iter()
                .map(|a| DnsAnswer {
                    source: text(a, "source").unwrap_or_default(),
                    group: text(a, "group").unwrap_or_default(),
                    answer: text(a, "answer"),
                    matches: a.get("matches").and_then(|m| m.as_bool()),
                    error: text(a, "error").filter(|e| !e.is_empty()),
                })
                .collect()
        });
        FinalState {
            op: None,
            invoke_ns: 0,
            time_ns: 0,
            groups,
            operations,
            audit,
            dns,
        }
    }

    /// Whether the audit log starts at its first entry (nothing was cut off by the limit).
    pub fn audit_complete(&self) -> bool {
        self.audit.iter().map(|a| a.seq).min() == Some(1)
    }

    /// Whether an operation with this id may have been trimmed from the final list.
    pub fn may_have_trimmed(&self, id: u64) -> bool {
        let finished = self
            .operations
            .values()
            .filter(|o| o.state == "done" || o.state == "aborted")
            .count();
        finished >= FINISHED_OPERATIONS_KEPT
            && self
                .operations
                .keys()
                .next()
                .is_some_and(|first| id < *first)
    }

    /// Every creation of `group` the audit log records (the first, and each re-creation
    /// after a removal by the policy), as `(epoch, active region)` in epoch order.
    pub fn creations(&self, group: &str) -> Vec<(u64, String)> {
        let mut out: Vec<(u64, String)> = self
            .audit
            .iter()
            .filter(|a| a.group == group && a.kind == "group-created")
            .filter_map(|a| {
                let rest = a.detail.split("active ").nth(1)?;
                Some((a.epoch, rest.split(" at epoch").next()?.to_string()))
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Every activation of `group` the final state records, epoch -> region: the group's
    /// creation (its first candidate at epoch 1 unless the audit says otherwise), each
    /// operation whose `activate` step committed, the audit's activations, and the current
    /// `(active, epoch)`. A conflict (one epoch, two regions) keeps the first and is
    /// returned in the second list for S2.
    pub fn activations(&self, group: &str) -> (BTreeMap<u64, String>, Vec<Conflict>) {
        let mut map = BTreeMap::new();
        let mut conflicts = Vec::new();
        let mut add = |epoch: u64, region: &str| match map.get(&epoch) {
            None => {
                map.insert(epoch, region.to_string());
            }
            Some(r) if r != region => conflicts.push((epoch, r.clone(), region.to_string())),
            Some(_) => {}
        };
        let created = self.creations(group);
        if created.is_empty() {
            if let Some(first) = self.groups.get(group).and_then(|g| g.candidates.first()) {
                add(1, first);
            }
        }
        for (epoch, region) in &created {
            add(*epoch, region);
        }
        for o in self.operations.values() {
            if o.group == group && o.activated() {
                add(o.to_epoch, &o.to);
            }
        }
        for a in &self.audit {
            if a.group != group || !(a.kind == "step" || a.kind == "operation-done") {
                continue;
            }
            // "operation N: REGION active at epoch E"
            if let Some((_, rest)) = a.detail.split_once(": ") {
                if let Some((region, epoch)) = rest.split_once(" active at epoch ") {
                    if let Ok(epoch) = epoch.trim().parse::<u64>() {
                        add(epoch, region);
                    }
                }
            }
        }
        if let Some(g) = self.groups.get(group) {
            if !g.active.is_empty() {
                add(g.epoch, &g.active);
            }
        }
        (map, conflicts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn activations_come_from_creation_operations_and_audit() {
        let value = json!({
            "status": {
                "groups": [{"name": "g", "active": "b", "epoch": 2, "mode": "auto", "candidates": ["a", "b"]}],
                "audit": [
                    {"seq": 1, "group": "g", "kind": "group-created", "detail": "group created, active a at epoch 1", "epoch": 1},
                    {"seq": 5, "group": "g", "kind": "step", "detail": "operation 1: b active at epoch 2", "epoch": 2}
                ]
            },
            "operations": [{"id": 1, "group": "g", "kind": "failover", "from": "a", "to": "b",
                "from_epoch": 1, "to_epoch": 2, "state": "done", "step": "done",
                "steps": [{"step": "declare"}, {"step": "activate"}]}]
        });
        let f = FinalState::parse(&value);
        let (map, conflicts) = f.activations("g");
        assert_eq!(map.get(&1).map(String::as_str), Some("a"));
        assert_eq!(map.get(&2).map(String::as_str), Some("b"));
        assert!(conflicts.is_empty());
        assert!(f.audit_complete());
    }
}
