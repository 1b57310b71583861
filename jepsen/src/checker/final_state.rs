//! The `final` operation's value (`arbiter status --json`, `arbiter operations --json` and
//! optionally DNS answers, read after healing), parsed strictly: a value that is not the
//! shape the CLI prints (no `status` object, no group list, a group, operation or audit
//! entry without its identifying fields) is an error, and every checker that needs the
//! final state then says `unknown` with that error; it is never read as an empty state.
//! Fields that only describe (a step's detail, a mode) may be absent.

use super::OpRef;
use crate::history::{History, OpType, FINAL};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// The arbiter keeps this many finished operations (`FINISHED_OPERATIONS_MAX`); an older one
/// missing from the final state may have been trimmed, not lost.
pub const FINISHED_OPERATIONS_KEPT: usize = 256;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct FinalGroup {
    pub name: String,
    pub active: String,
    pub epoch: u64,
    #[serde(default)]
    pub mode: String,
    #[serde(default)]
    pub candidates: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct FinalStep {
    pub step: String,
    #[serde(default)]
    pub outcome: String,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub index: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct FinalOperation {
    pub id: u64,
    pub group: String,
    /// `failover`, `failback` or `automatic`.
    pub kind: String,
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub from_epoch: u64,
    pub to_epoch: u64,
    /// Who started it: `arbiter` for the cluster's own operations (a quorum verdict, an
    /// automatic failback), else the operator's certificate identity.
    #[serde(default)]
    pub actor: String,
    /// Why it was started; for an automatic failover the quorum verdict's evidence.
    #[serde(default)]
    pub reason: String,
    /// `awaiting-approval`, `running`, `halted`, `done` or `aborted`.
    pub state: String,
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub step: String,
    pub steps: Vec<FinalStep>,
}

impl FinalOperation {
    /// Whether its `activate` step was committed: `to` became active at `to_epoch`.
    pub fn activated(&self) -> bool {
        self.steps.iter().any(|s| s.step == "activate")
    }

    /// Why the cluster itself may have started this operation, or `None` when nothing in
    /// the final state shows it was the cluster's own: `actor` is `arbiter` and either it is
    /// an `automatic` failover whose reason carries the quorum verdict (`V voters, majority
    /// M:` and at least M witnesses that saw the active region `down`), or an automatic
    /// failback (its reason says so). An operator's operation never qualifies.
    pub fn automatic_evidence(&self) -> Option<String> {
        if self.actor != AUTOMATIC_ACTOR {
            return None;
        }
        match self.kind.as_str() {
            "automatic" => {
                let majority: usize = self
                    .reason
                    .split_once(" voters, majority ")?
                    .1
                    .split(':')
                    .next()?
                    .trim()
                    .parse()
                    .ok()?;
                let down = self
                    .reason
                    .lines()
                    .filter(|l| l.trim_start().starts_with("witness ") && l.contains(": down for "))
                    .count();
                (majority > 0 && down >= majority).then(|| {
                    format!(
                        "quorum verdict: {down} witness(es) saw {} down, majority {majority}",
                        self.from
                    )
                })
            }
            "failback" if self.reason.contains("automatic failback") => {
                Some(format!("automatic failback: {}", self.reason))
            }
            _ => None,
        }
    }
}

/// The actor of the operations the cluster starts by itself (`src/leader/propose.rs`).
pub const AUTOMATIC_ACTOR: &str = "arbiter";

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
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
    /// The last ok `final` of the history: `None` when there is none, an error when its
    /// value does not parse (which the checkers report as `unknown`, never as empty).
    pub fn from_history(history: &History) -> Option<Result<FinalState, String>> {
        let pairs = history.pairs();
        let (invoke, done) = pairs
            .iter()
            .rev()
            .find(|(i, c)| i.f == FINAL && c.is_some_and(|c| c.kind == OpType::Ok))?;
        let done = done.expect("found with a completion");
        Some(FinalState::parse(&done.value).map(|mut state| {
            state.op = Some(OpRef::of(invoke));
            state.invoke_ns = invoke.time_ns;
            state.time_ns = done.time_ns;
            state
        }))
    }

    /// Parses `{status: {groups, audit, operations?, dns?}, operations?, dns?}`; at least one
    /// of the two operation lists must be there. An error names what is missing or which
    /// entry does not have the expected shape.
    pub fn parse(value: &Value) -> Result<FinalState, String> {
        let status = value
            .get("status")
            .filter(|s| s.is_object())
            .ok_or("the final value has no `status` object")?;
        fn list<'v>(v: &'v Value, key: &str, what: &str) -> Result<Option<&'v Vec<Value>>, String> {
            match v.get(key) {
                None => Ok(None),
                Some(Value::Array(a)) => Ok(Some(a)),
                Some(other) => Err(format!("{what} `{key}` is not a list: {other}")),
            }
        }
        fn entries<T: serde::de::DeserializeOwned>(
            list: &[Value],
            what: &str,
        ) -> Result<Vec<T>, String> {
            list.iter()
                .enumerate()
                .map(|(i, e)| {
                    serde_json::from_value::<T>(e.clone())
                        .map_err(|err| format!("{what} entry {i} does not parse: {err}: {e}"))
                })
                .collect()
        }
        let groups = list(status, "groups", "status")?.ok_or("the final status has no `groups`")?;
        let groups: Vec<FinalGroup> = entries(groups, "status.groups")?;
        let groups = groups.into_iter().map(|g| (g.name.clone(), g)).collect();
        let status_ops = list(status, "operations", "status")?;
        let ops = list(value, "operations", "the final value")?;
        if status_ops.is_none() && ops.is_none() {
            return Err(
                "the final value has no operation list (`operations` or `status.operations`)"
                    .into(),
            );
        }
        let mut operations = BTreeMap::new();
        for (list, what) in [(status_ops, "status.operations"), (ops, "operations")] {
            for o in entries::<FinalOperation>(list.map(Vec::as_slice).unwrap_or(&[]), what)? {
                operations.insert(o.id, o);
            }
        }
        let audit = list(status, "audit", "status")?.ok_or("the final status has no `audit`")?;
        let audit = entries(audit, "status.audit")?;
        let text = |v: &Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        // `final.value.dns` (`answer`), or the CLI's `status.dns` (`matches`); the runner may
        // copy the latter into the former, so both shapes are read from either place.
        let answers = list(value, "dns", "the final value")?
            .filter(|d| !d.is_empty())
            .or(list(status, "dns", "status")?)
            .filter(|d| !d.is_empty());
        let dns = answers
            .map(|answers| {
                answers
                    .iter()
                    .enumerate()
                    .map(|(i, a)| {
                        let group =
                            text(a, "group").ok_or(format!("dns entry {i} has no group: {a}"))?;
                        Ok(DnsAnswer {
                            source: text(a, "source")
                                .ok_or(format!("dns entry {i} has no source: {a}"))?,
                            group,
                            answer: text(a, "answer"),
                            matches: a.get("matches").and_then(|m| m.as_bool()),
                            error: text(a, "error").filter(|e| !e.is_empty()),
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()
            })
            .transpose()?;
        Ok(FinalState {
            op: None,
            invoke_ns: 0,
            time_ns: 0,
            groups,
            operations,
            audit,
            dns,
        })
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
        let f = FinalState::parse(&value).unwrap();
        let (map, conflicts) = f.activations("g");
        assert_eq!(map.get(&1).map(String::as_str), Some("a"));
        assert_eq!(map.get(&2).map(String::as_str), Some("b"));
        assert!(conflicts.is_empty());
        assert!(f.audit_complete());
    }

    #[test]
    fn a_value_of_another_shape_is_an_error_not_an_empty_state() {
        for (value, says) in [
            (json!({}), "no `status`"),
            (json!({"status": "oops"}), "no `status`"),
            (
                json!({"status": {"audit": [], "operations": []}}),
                "no `groups`",
            ),
            (
                json!({"status": {"groups": [{"name": "g"}], "audit": [], "operations": []}}),
                "status.groups entry 0",
            ),
            (
                json!({"status": {"groups": [], "audit": []}}),
                "no operation list",
            ),
            (
                json!({"status": {"groups": [], "audit": [], "operations": [{"id": 1}]}}),
                "status.operations entry 0",
            ),
            (
                json!({"status": {"groups": [], "operations": []}}),
                "no `audit`",
            ),
            (
                json!({"status": {"groups": {}, "audit": [], "operations": []}}),
                "not a list",
            ),
        ] {
            let err = FinalState::parse(&value).expect_err("must not parse");
            assert!(err.contains(says), "{value}: {err}");
        }
    }

    #[test]
    fn only_the_clusters_own_operations_with_their_evidence_are_automatic() {
        let op = |kind: &str, actor: &str, reason: &str| FinalOperation {
            kind: kind.into(),
            actor: actor.into(),
            reason: reason.into(),
            from: "a".into(),
            ..FinalOperation::default()
        };
        let verdict = "a is down by quorum verdict; b is up\n3 voters, majority 2:\n  witness 1: down for 900 ms (report 5 ms old): timeout\n  witness 2: down for 800 ms (report 9 ms old): timeout\n  witness 3: up for 100 ms (report 1 ms old)";
        assert!(op("automatic", "arbiter", verdict)
            .automatic_evidence()
            .is_some());
        let one_down = verdict.replace("witness 2: down", "witness 2: up");
        assert_eq!(
            op("automatic", "arbiter", &one_down).automatic_evidence(),
            None
        );
        assert_eq!(
            op("automatic", "operator", verdict).automatic_evidence(),
            None
        );
        assert_eq!(
            op("automatic", "arbiter", "no evidence").automatic_evidence(),
            None
        );
        assert!(op(
            "failback",
            "arbiter",
            "a has been up for 4000 ms: automatic failback"
        )
        .automatic_evidence()
        .is_some());
        assert_eq!(
            op(
                "failback",
                "operator",
                "a has been up for 4000 ms: automatic failback"
            )
            .automatic_evidence(),
            None
        );
        assert_eq!(
            op("failover", "arbiter", "automatic failback").automatic_evidence(),
            None
        );
    }
}
