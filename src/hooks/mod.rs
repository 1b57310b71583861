//! Hooks: how a failover step acts on the world. [`run`] executes one configured [`Hook`]
//! (a program, a signed webhook or a built-in PostgreSQL action) for one step of one
//! operation and reports a [`HookOutcome`]; [`parse_lag`] reads the replication lag an
//! `rpo-check` hook reports. [`wal`] keeps, on every witness, the last known WAL position
//! of each group's PostgreSQL primary, which the built-in rpo-check measures against (S8).
//!
//! This module owns running hooks and bounding them (deadline, captured output size). It must
//! never decide whether a step may run (that is the operation's job, after the decision is
//! committed, see S3 in DESIGN.md), never panic or return an error instead of an outcome, and
//! never put a secret into an outcome, a log line or an error message.
//!
//! # What a hook receives
//!
//! Every hook call carries the [`HookContext`]: `group`, `from` (the region being left),
//! `to` (the region being activated), `epoch`, `operation` (the operation id), `step`
//! (`fence`, `rpo-check`, `promote`, `dns` or `validate`), and `witness` and `term` (the
//! leader that calls it, so a target can refuse a call from an older term). Steps are retried after a leader
//! change (S6), so a hook must be idempotent for a given `(group, epoch, operation, step)`.
//!
//! ## `exec` hooks
//!
//! - Each argument has the placeholders `{group}`, `{from}`, `{to}`, `{epoch}`,
//!   `{operation}`, `{step}`, `{witness}` and `{term}` replaced by the context values, in one pass (a value that
//!   itself contains `{step}` is not expanded again). Other text in braces is left as is.
//! - The environment variables `ARBITER_GROUP`, `ARBITER_FROM`, `ARBITER_TO`,
//!   `ARBITER_EPOCH`, `ARBITER_OPERATION`, `ARBITER_STEP`, `ARBITER_WITNESS` and
//!   `ARBITER_TERM` carry the same values. The rest
//!   of the witness's environment is inherited: hook programs are configured by the operator
//!   and trusted like the witness itself.
//! - Standard input is `/dev/null`; standard output and standard error share one pipe, so the
//!   captured output interleaves them as a terminal would.
//! - Exit code 0 is success. The program runs in a process group of its own; at the deadline
//!   the whole group is killed with `SIGKILL`, and so is it when the caller drops the future
//!   returned by [`run`] (for example because this witness stopped being leader).
//!
//! ## `http` hooks
//!
//! A `POST` to the configured URL with `Content-Type: application/json` and the body
//! `{"group":..,"from":..,"to":..,"epoch":..,"operation":..,"step":..,"witness":..,"term":..}`
//! (epoch, operation, witness and term are JSON numbers). Any 2xx status is success; redirects are not followed.
//!
//! The request is signed with the hook's secret (read when the hook runs, from the file,
//! without its trailing newline, or from the environment variable the policy names):
//!
//! ```text
//! X-Arbiter-Timestamp: <unix time in seconds, decimal>
//! X-Arbiter-Signature: sha256=<lowercase hex of HMAC-SHA256(secret, "<timestamp>.<body>")>
//! ```
//!
//! where `<timestamp>` is the exact header value, `.` is one ASCII full stop and `<body>` is
//! the exact request body bytes. A receiver recomputes the HMAC over the same bytes, compares
//! it in constant time, and should refuse timestamps more than a few minutes from its own
//! clock so a captured request cannot be replayed later. The timestamp is wall-clock time and
//! is used for nothing else: no safety decision of the arbiter depends on it.
//!
//! ## `postgres` hooks
//!
//! Built-in PostgreSQL actions, one per hook: `rpo-check` and `promote` and `validate` act
//! on the server of `to`, `fence` on the server of `from`. Each prints a one-line JSON
//! report; `rpo-check`'s carries `lag_ms` and `lag_bytes`, and `"exceeds_rpo": true` when
//! the lag is over the group's RPO or cannot be proven within it (for that it is given the
//! RPO and the history of the old primary's WAL position in [`HookContext::rpo`], which no
//! other kind of hook receives). What each guarantees, and what it does not, is in
//! `docs/postgres.md`.
//!
//! ## Output and outcome
//!
//! The outcome keeps at most [`OUTPUT_BYTES_MAX`] bytes of output (the program's stdout and
//! stderr, or the response body); longer output is cut and ends with [`TRUNCATED_MARKER`].

mod exec;
mod fence;
mod http;
mod lag;
mod postgres;
pub mod rpo;
pub mod wal;

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::config::Hook;

pub use fence::parse_fence_claim;
pub use http::{verify_signature, SIGNATURE_HEADER, TIMESTAMP_HEADER};
pub use lag::{parse_lag, Lag};
pub use postgres::VALIDATE_TABLE;
pub use rpo::{RpoBound, RpoContext, WalSample};
pub use wal::WalHistories;

/// Captured output kept in an outcome, marker included: enough for an error message or a
/// small JSON report, small enough to keep in the audit log of every step.
pub const OUTPUT_BYTES_MAX: usize = 4096;

/// Ends an output that was cut at [`OUTPUT_BYTES_MAX`].
pub const TRUNCATED_MARKER: &str = "...(truncated)";

/// What a hook is told about the step it acts for. Serialised as the JSON body of `http`
/// hooks, with the field names below, in this order (`rpo` excepted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HookContext {
    /// The failover group the operation moves.
    pub group: String,
    /// The region being left (the active region before the operation).
    pub from: String,
    /// The region being activated.
    pub to: String,
    /// The epoch the operation activates `to` with; lets the world refuse stale requests.
    pub epoch: u64,
    /// The operation id, so a retried step is recognisable as the same request.
    pub operation: u64,
    /// The step: `fence`, `rpo-check`, `promote`, `dns`, `validate` or `unfence`.
    pub step: String,
    /// The witness that calls, as leader, and its Raft term: a hook target can tell a call
    /// of a deposed leader (an older term) from the current leader's.
    pub witness: u64,
    pub term: u64,
    /// rpo-check only: the group's RPO and this witness's sightings of the old primary's WAL
    /// position, for the built-in `postgres` hook. Neither in an `http` body nor in an `exec`
    /// hook's arguments or environment: the sightings are instants of this witness's
    /// monotonic clock, meaningless anywhere else.
    #[serde(skip)]
    pub rpo: Option<RpoContext>,
}

impl HookContext {
    /// The context as (placeholder name, value) pairs: one list for argument placeholders
    /// and environment variables, so the two can never disagree.
    fn fields(&self) -> [(&'static str, String); 8] {
        [
            ("group", self.group.clone()),
            ("from", self.from.clone()),
            ("to", self.to.clone()),
            ("epoch", self.epoch.to_string()),
            ("operation", self.operation.to_string()),
            ("step", self.step.clone()),
            ("witness", self.witness.to_string()),
            ("term", self.term.to_string()),
        ]
    }
}

/// The result of one hook call. Always produced: failures to start, deadlines and refusals
/// are outcomes with `success: false`, never errors or panics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookOutcome {
    /// Exit code 0 (`exec`) or a 2xx status (`http`). Nothing else counts as success.
    pub success: bool,
    /// One line for operators and the audit log: the exit code or HTTP status and the
    /// duration, or why the hook could not run or finish.
    pub summary: String,
    /// Captured stdout and stderr, or the response body; at most [`OUTPUT_BYTES_MAX`] bytes.
    pub output: String,
    /// From the start of [`run`] until the outcome was known.
    pub duration: Duration,
    /// The epoch this call positively confirmed a hard fence for (see [`parse_fence_claim`]):
    /// an `exec` hook's report after exit 0, an `http` hook's `200 OK` body, the built-in
    /// PostgreSQL fence's confirmed stop. `None` for every other outcome.
    pub fence_confirmed: Option<u64>,
    /// The HTTP status of an `http` hook's answer.
    pub http_status: Option<u16>,
}

impl HookOutcome {
    fn new(success: bool, summary: String, output: String, started: Instant) -> Self {
        Self {
            success,
            summary,
            output,
            duration: started.elapsed(),
            fence_confirmed: None,
            http_status: None,
        }
    }

    /// A hook that could not run at all: nothing was captured.
    fn failed(summary: String, started: Instant) -> Self {
        Self::new(false, summary, String::new(), started)
    }
}

/// The one way a step calls a hook: the leader's executor holds one of these and never calls
/// [`run`] itself, so a simulation can record and script every hook call. [`LocalHooks`] is
/// the real one.
pub trait HookRunner: Send + Sync + 'static {
    /// Runs hook `name` for the step in `ctx`; the contract of [`run`] (bounded, never
    /// panics, dropping the future abandons the call).
    fn run<'a>(
        &'a self,
        name: &'a str,
        hook: &'a Hook,
        ctx: &'a HookContext,
    ) -> futures::future::BoxFuture<'a, HookOutcome>;
}

/// Runs hooks on this witness for real: programs, webhooks, PostgreSQL ([`run`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalHooks;

impl HookRunner for LocalHooks {
    fn run<'a>(
        &'a self,
        name: &'a str,
        hook: &'a Hook,
        ctx: &'a HookContext,
    ) -> futures::future::BoxFuture<'a, HookOutcome> {
        Box::pin(run(name, hook, ctx))
    }
}

/// Runs hook `name` for the step described by `ctx` and waits for its outcome, at most the
/// hook's `timeout_ms` (plus a few seconds to reap a killed program). Never panics.
///
/// Call it only for a committed decision while this witness is leader; drop the future to
/// abandon the call (an `exec` hook's process group is then killed).
pub async fn run(name: &str, hook: &Hook, ctx: &HookContext) -> HookOutcome {
    let outcome = match hook {
        Hook::Exec {
            program,
            args,
            timeout_ms,
        } => exec::run(program, args, *timeout_ms, ctx).await,
        Hook::Http {
            url,
            secret,
            timeout_ms,
        } => http::run(url, secret, *timeout_ms, ctx).await,
        Hook::Postgres(pg) => postgres::run(pg, ctx).await,
    };
    let outcome = HookOutcome {
        fence_confirmed: match hook {
            // The built-in PostgreSQL fence writes the claim only for a confirmed stop.
            Hook::Exec { .. } | Hook::Postgres(_) if outcome.success => {
                parse_fence_claim(&outcome.output)
            }
            Hook::Http { .. } if outcome.http_status == Some(200) => {
                parse_fence_claim(&outcome.output)
            }
            _ => None,
        },
        ..outcome
    };
    tracing::info!(
        hook = name,
        group = %ctx.group,
        epoch = ctx.epoch,
        operation = ctx.operation,
        step = %ctx.step,
        success = outcome.success,
        duration_ms = outcome.duration.as_millis() as u64,
        summary = %outcome.summary,
        "hook finished"
    );
    outcome
}

/// Keeps captured bytes up to the output limit and counts what it drops, so a chatty hook
/// costs a bounded amount of memory however much it writes.
#[derive(Debug, Default)]
struct Capture {
    /// The first bytes, at most [`OUTPUT_BYTES_MAX`].
    kept: Vec<u8>,
    /// Whether anything beyond `kept` was received (and dropped); readers may stop then.
    overflowed: bool,
}

impl Capture {
    fn push(&mut self, bytes: &[u8]) {
        let room = OUTPUT_BYTES_MAX - self.kept.len();
        let take = bytes.len().min(room);
        self.kept.extend_from_slice(&bytes[..take]);
        self.overflowed |= take < bytes.len();
    }

    /// The output as text (invalid UTF-8 replaced), at most [`OUTPUT_BYTES_MAX`] bytes
    /// including the marker when it had to be cut.
    fn into_output(self) -> String {
        let text = String::from_utf8_lossy(&self.kept);
        if !self.overflowed && text.len() <= OUTPUT_BYTES_MAX {
            return text.into_owned();
        }
        let mut cut = OUTPUT_BYTES_MAX - TRUNCATED_MARKER.len();
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut out = String::with_capacity(OUTPUT_BYTES_MAX);
        out.push_str(&text[..cut]);
        out.push_str(TRUNCATED_MARKER);
        out
    }
}

/// Milliseconds for summaries: whole milliseconds read best in one line.
fn millis(d: Duration) -> u128 {
    d.as_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_output_is_kept_whole() {
        let mut c = Capture::default();
        c.push(b"hello ");
        c.push(b"world");
        assert_eq!(c.into_output(), "hello world");
    }

    #[test]
    fn long_output_is_cut_with_marker_within_limit() {
        let mut c = Capture::default();
        for _ in 0..100 {
            c.push(&[b'x'; 1000]);
        }
        assert!(c.overflowed);
        let out = c.into_output();
        assert_eq!(out.len(), OUTPUT_BYTES_MAX);
        assert!(out.ends_with(TRUNCATED_MARKER), "{out}");
    }

    #[test]
    fn exactly_the_limit_is_not_marked() {
        let mut c = Capture::default();
        c.push(&[b'y'; OUTPUT_BYTES_MAX]);
        assert_eq!(c.into_output(), "y".repeat(OUTPUT_BYTES_MAX));
    }

    #[test]
    fn cut_respects_utf8_boundaries() {
        let mut c = Capture::default();
        // 3-byte characters: the cut point falls inside one of them.
        c.push("€".repeat(2000).as_bytes());
        let out = c.into_output();
        assert!(out.len() <= OUTPUT_BYTES_MAX);
        assert!(out.ends_with(TRUNCATED_MARKER));
        assert!(out
            .trim_end_matches(TRUNCATED_MARKER)
            .chars()
            .all(|ch| ch == '€'));
    }
}
