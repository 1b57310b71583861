//! The history of a run: every client, operator and nemesis operation as Jepsen records it,
//! one JSON object per line in `history.jsonl`.
//!
//! An operation is written twice: an `invoke` when it starts and a completion (`ok`, `fail`
//! or `info`) when it ends, both with the same `process` (a process has at most one
//! operation outstanding, as in Jepsen). `fail` means it definitely did not happen; `info`
//! means the outcome is unknown (it may take effect at any later time, or never).
//!
//! This module owns the format and its vocabulary; it never runs anything.
//!
//! # Vocabulary (`f` and `value`)
//!
//! | f | process | invoke value | completion value |
//! |---|---|---|---|
//! | `write` | `writer-<region>` | `{group, region, epoch, seq}` | same (ok once the record is durable on the host) |
//! | `failover`, `failback` | `operator-<n>` | `{group, to?, request_id}` | ok: `{group, to, epoch, operation, state?}` |
//! | `mode` | `operator-<n>` | `{group, mode, request_id}` | ok: `{group, mode}` |
//! | `approve`, `retry`, `abort`, `skip` | `operator-<n>` | `{group, operation, step, seen_state?, seen_step?}` (`step`: the step it targets, for a skip the one it names; `seen_*`: what the look before it saw) | the same, plus `error_kind` when the CLI printed one (`operation-state`, `wrong-step`, `not-skippable`, `promote-started`, ...) |
//! | `status` | `reader-<node>` | `{group}` | ok: `{group, active, epoch}` (linearizable read) |
//! | `fence-check` | `reader-<node>` | `{group, region, epoch}` | ok: `{group, region, epoch, allowed}` |
//! | `dns-read` | `reader-dns` | `{group, source}` | ok: `{group, source, answer, records, error?}` (what that DNS source answered; S5 judges that every region answered had a committed activation by then) |
//! | `lease` | `agent-<region>` | `{group, region}` | ok: `{group, region, epoch, held}` (an agent's hold changed) |
//! | nemesis names (`partition`, `kill`, `pause`, `clock`, `loss`, `delay`, `heal`) | `nemesis` | `{kind, targets, ...}` | ok/info: `{installed: bool, ...}` |
//! | `hook` | `hook-<witness host>` | `{hook, group, from, to, epoch, operation, step, witness, term, mono_ns, pid}` | ok: the same plus `call_ns` (a policy hook's call as the hook program logged it when it started, or the webhook endpoint when the request arrived, with `kind: "http"`; `call_ns` is that start on the run's clock, from `CLOCK_MONOTONIC`; recorded when the runner collects the log, so `time_ns` is later); info with `error` for a line that does not parse |
//! | `hook-fail` | `operator-1` | `{group, operation, step}` | ok: the hooks of `step` fail from now on (`nodes/hook-fail`) until the step actions see the operation halted, a newer one, or 12 s pass |
//! | `workload-error` | `writer-<region>`, ... | `{group, region?, what}` | fail, with `error`: the workload could not do its job (S1 is then unknown) |
//! | `final` | `checker` | `{}` | ok: `{status, operations, dns?}`: the final `arbiter status --json` and `arbiter operations --json` after healing, and what every DNS source answers |
//!
//! Notes on values the checkers rely on:
//!
//! - `failover`/`failback` ok `state` is the operation's state when the command returned
//!   (`done`, `awaiting-approval`, `halted`, ...). Absent means `done`: the CLI waits for the
//!   operation by default. An ok whose state is not `done` was declared but has not (yet)
//!   activated: the checkers treat its activation as open-ended, like an `info`.
//! - `final.value.status` should be asked with an audit limit that covers the whole run
//!   (`arbiter status --json --audit 10000`): S4 looks up acknowledged commands in it.
//! - `final.value.dns`, when present and not empty, is what each DNS source (a witness's
//!   embedded server, BIND, ...) answers for each group after healing, one entry per source
//!   and group: either `{source, group, answer}`, `answer` being the region its records
//!   belong to (`null` when it answered nothing or records of no region; then `error`
//!   says which), the harness adding `records` (the addresses) — or the CLI's own entry as
//!   `arbiter status --json` prints it (`{group, name, source, expected, found, matches,
//!   error}`), judged by `matches`. Without it, S5 reads `status.dns`.
//! - `lease` events count for the epoch checks only when `held` is true.
//!
//! `time_ns` is the host's `CLOCK_REALTIME` derived from its monotonic clock (all network
//! namespaces share one kernel clock, so times from different hosts compare exactly), in
//! nanoseconds since the start of the run.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::Path;

/// How an operation event ends (or that it starts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// One event of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history, from 0, in the order events were recorded.
    pub index: u64,
    #[serde(rename = "type")]
    pub kind: OpType,
    /// What was done: see the vocabulary in the module docs.
    pub f: String,
    #[serde(default)]
    pub value: serde_json::Value,
    /// Who did it; one outstanding operation per process.
    pub process: String,
    /// The host (witness or database host) it ran on or was sent to, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Nanoseconds since the start of the run, on the shared kernel clock.
    pub time_ns: u64,
    /// Why a `fail` or `info` ended that way (error text), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Op {
    /// `value[key]` as a string, when it is one.
    pub fn str_field(&self, key: &str) -> Option<&str> {
        self.value.get(key).and_then(|v| v.as_str())
    }

    /// `value[key]` as an unsigned integer, when it is one.
    pub fn u64_field(&self, key: &str) -> Option<u64> {
        self.value.get(key).and_then(|v| v.as_u64())
    }

    /// `value[key]` as a boolean, when it is one.
    pub fn bool_field(&self, key: &str) -> Option<bool> {
        self.value.get(key).and_then(|v| v.as_bool())
    }

    /// The group the operation is about, when it names one.
    pub fn group(&self) -> Option<&str> {
        self.str_field("group")
    }

    /// Whether this is a fault (or its healing) injected by the nemesis.
    pub fn is_nemesis(&self) -> bool {
        self.process == NEMESIS_PROCESS
    }
}

/// The process that records every nemesis operation.
pub const NEMESIS_PROCESS: &str = "nemesis";

/// The nemesis operation that removes every fault.
pub const HEAL: &str = "heal";

/// The `f` of the operation carrying the state read after healing.
pub const FINAL: &str = "final";
/// A workload that could not do its job (a writer that cannot open its log, an agent's
/// state file that never appears): an invocation and a `fail` with the error, so the
/// checkers see it and never call such a run valid.
pub const WORKLOAD_ERROR: &str = "workload-error";

/// Operator commands (S4 checks that every acknowledged one is in the final state).
pub const OPERATOR_COMMANDS: [&str; 7] = [
    "failover", "failback", "mode", "approve", "retry", "abort", "skip",
];

/// The steps of an operation, in the order arbiter runs them (`arbiter operations --json`
/// names them so); a `done` operation records each once, in this order.
pub const STEPS: [&str; 8] = [
    "declare",
    "revoke",
    "fence",
    "rpo-check",
    "promote",
    "activate",
    "dns",
    "validate",
];

/// A whole history, in recording order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    pub ops: Vec<Op>,
}

impl History {
    /// Reads `history.jsonl`; a malformed line is an error naming its line number.
    pub fn read(path: &Path) -> anyhow::Result<History> {
        let file =
            std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut ops = Vec::new();
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let op: Op = serde_json::from_str(&line)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1))?;
            ops.push(op);
        }
        Ok(History { ops })
    }

    /// Writes `history.jsonl`, one event per line.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        for op in &self.ops {
            serde_json::to_writer(&mut out, op)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        Ok(())
    }

    /// Pairs every invocation with its completion (`None` when the run ended first, which
    /// counts as `info`). Returned in invocation order.
    pub fn pairs(&self) -> Vec<(&Op, Option<&Op>)> {
        let mut open: std::collections::HashMap<&str, usize> = Default::default();
        let mut out: Vec<(&Op, Option<&Op>)> = Vec::new();
        for op in &self.ops {
            match op.kind {
                OpType::Invoke => {
                    open.insert(op.process.as_str(), out.len());
                    out.push((op, None));
                }
                _ => {
                    if let Some(i) = open.remove(op.process.as_str()) {
                        out[i].1 = Some(op);
                    }
                }
            }
        }
        out
    }
}
