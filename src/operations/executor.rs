//! The executor of failover operations. Runs on every witness and acts only while it is the
//! leader: for each running operation it performs the current step, then proposes the
//! step's completion (or a halt) and waits for that commit before the next step starts.
//! A new leader resumes at the operation's current step; steps are idempotent and every
//! hook call carries the group, epoch and operation id (S3, S6).
//!
//! The fence step's lease wait is measured on this witness's monotonic clock from when it
//! saw the revoke applied, which is never earlier than the commit: a leader change can only
//! make the wait longer, never shorter (S1).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::LeaderTables;
use crate::api::now_ms;
use crate::config::{GroupPolicy, Hook, Policy};
use crate::hooks::{self, HookContext, HookOutcome, RpoBound, RpoContext, WalHistories};
use crate::raft::{Consensus, ConsensusError};
use crate::state::{Command, Operation, OperationState, Proposal, Step, StepOutcome};
use crate::telemetry::Metrics;

/// How often the executor looks at the state when nothing is applied (leadership changes
/// are not applies).
const TICK: Duration = Duration::from_millis(200);
/// Backoff between attempts of a failing step: doubles from the first, capped.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Pause between rpo-check measurements while the lag is above the RPO.
const RPO_POLL: Duration = Duration::from_secs(1);
/// Hook output kept in a step's detail or a halt error.
const OUTPUT_EXCERPT_BYTES: usize = 1_024;

/// UNSAFE, only in builds with the `unsafe-skip-lease-wait` feature (the jepsen split-brain
/// demonstration): when set (by `serve --unsafe-skip-lease-wait`), the fence step does not
/// wait for the old region's lease to expire, which breaks S1 on purpose. Normal builds
/// contain neither this switch nor the code path that reads it.
#[cfg(feature = "unsafe-skip-lease-wait")]
pub static UNSAFE_SKIP_LEASE_WAIT: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Who the executor's proposals are from, in the audit log.
const ACTOR: &str = "arbiter";

/// What performing a step came to.
enum StepResult {
    Complete {
        outcome: StepOutcome,
        detail: String,
    },
    Halt(String),
    /// This witness stopped being the leader: leave the step to the next one.
    Abandon,
}

/// Runs forever; spawn it once per witness. `wal` is this witness's history of each group's
/// primary WAL position, which the rpo-check step hands to its hook.
pub async fn run(
    consensus: Arc<Consensus>,
    tables: Arc<LeaderTables>,
    metrics: Arc<Metrics>,
    wal: Arc<WalHistories>,
) {
    let mut applied = consensus.subscribe_applied();
    // When this witness first saw each operation's revoke applied.
    let mut revoke_seen: HashMap<u64, Instant> = HashMap::new();
    let mut tasks: HashMap<u64, (Step, StepTask)> = HashMap::new();
    let mut was_leader = false;
    loop {
        let operations: Vec<Operation> = consensus.with_state(|s| {
            s.operations
                .values()
                .filter(|o| !o.state.is_finished())
                .cloned()
                .collect()
        });
        for op in &operations {
            if op.has_completed(Step::Revoke) {
                revoke_seen.entry(op.id).or_insert_with(Instant::now);
            }
        }
        revoke_seen.retain(|id, _| operations.iter().any(|o| o.id == *id));
        tasks.retain(|_, (_, task)| !task.is_finished());

        let leader = consensus.is_leader();
        if !leader {
            if was_leader {
                tracing::info!(
                    tasks = tasks.len(),
                    "no longer leader: stopping operation steps"
                );
                tables.clear();
            }
            for (_, (_, task)) in tasks.drain() {
                task.abort();
            }
        } else {
            for op in operations
                .iter()
                .filter(|o| o.state == OperationState::Running)
            {
                let current = tasks.get(&op.id).map(|(step, _)| *step);
                if current == Some(op.step) {
                    continue;
                }
                if let Some((_, old)) = tasks.remove(&op.id) {
                    old.abort();
                }
                let seen = revoke_seen
                    .get(&op.id)
                    .copied()
                    .unwrap_or_else(Instant::now);
                let task = StepTask(tokio::spawn(step_task(
                    consensus.clone(),
                    tables.clone(),
                    metrics.clone(),
                    wal.clone(),
                    op.clone(),
                    seen,
                )));
                tasks.insert(op.id, (op.step, task));
            }
            // Halted, aborted or finished operations have no task.
            tasks.retain(|id, (_, task)| {
                let keep = operations
                    .iter()
                    .any(|o| o.id == *id && o.state == OperationState::Running);
                if !keep {
                    task.abort();
                }
                keep
            });
        }
        was_leader = leader;
        if let Ok(Err(_)) = tokio::time::timeout(TICK, applied.changed()).await {
            tokio::time::sleep(TICK).await;
        }
    }
}

/// A running step; aborted when dropped, so a stopped executor (this witness lost the
/// leadership or is shutting down) issues no further hook calls (S3).
struct StepTask(JoinHandle<()>);

impl StepTask {
    fn is_finished(&self) -> bool {
        self.0.is_finished()
    }

    fn abort(&self) {
        self.0.abort();
    }
}

impl Drop for StepTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Performs one step of one operation and proposes its outcome.
async fn step_task(
    consensus: Arc<Consensus>,
    tables: Arc<LeaderTables>,
    metrics: Arc<Metrics>,
    wal: Arc<WalHistories>,
    op: Operation,
    revoke_seen: Instant,
) {
    let Some((policy, group_policy)) = consensus.with_state(|s| {
        let policy = s.policy.clone()?;
        let gp = policy.group(&op.group)?.clone();
        Some((policy, gp))
    }) else {
        let command = Command::HaltOperation {
            operation: op.id,
            step: op.step,
            error: format!("group {} is not in the policy", op.group),
        };
        let _ = propose(&consensus, command).await;
        return;
    };
    let started = Instant::now();
    tracing::info!(operation = op.id, group = %op.group, step = %op.step, "step started");
    let ctx = StepContext {
        consensus: &consensus,
        tables: &tables,
        metrics: &metrics,
        wal: &wal,
        op: &op,
        policy: &policy,
        group: &group_policy,
        revoke_seen,
    };
    let result = ctx.perform().await;
    let outcome = match &result {
        StepResult::Complete {
            outcome: StepOutcome::NoOp,
            ..
        } => "no-op",
        StepResult::Complete { .. } => "completed",
        StepResult::Halt(_) => "halted",
        StepResult::Abandon => "abandoned",
    };
    metrics.step(op.step, outcome, started.elapsed());
    let command = match result {
        StepResult::Complete { outcome, detail } => {
            tracing::info!(operation = op.id, group = %op.group, step = %op.step, took_ms = started.elapsed().as_millis() as u64, %detail, "step finished");
            Command::CompleteStep {
                operation: op.id,
                step: op.step,
                outcome,
                detail,
            }
        }
        StepResult::Halt(error) => {
            tracing::warn!(operation = op.id, group = %op.group, step = %op.step, %error, "operation halted");
            Command::HaltOperation {
                operation: op.id,
                step: op.step,
                error,
            }
        }
        StepResult::Abandon => return,
    };
    if let Err(e) = propose(&consensus, command).await {
        tracing::info!(operation = op.id, step = %op.step, error = %e, "step outcome not committed here; the next leader resumes the step");
    }
}

async fn propose(consensus: &Consensus, command: Command) -> Result<(), ConsensusError> {
    let proposal = Proposal {
        actor: ACTOR.to_string(),
        at_ms: now_ms(),
        request_id: String::new(),
        command,
    };
    let response = consensus.propose(proposal).await?;
    if let Err(refusal) = response.outcome {
        tracing::info!(%refusal, "step outcome refused (the operation moved on)");
    }
    Ok(())
}

struct StepContext<'a> {
    consensus: &'a Consensus,
    tables: &'a LeaderTables,
    metrics: &'a Metrics,
    wal: &'a WalHistories,
    op: &'a Operation,
    policy: &'a Policy,
    group: &'a GroupPolicy,
    revoke_seen: Instant,
}

impl StepContext<'_> {
    async fn perform(&self) -> StepResult {
        match self.op.step {
            Step::Declare | Step::Done => StepResult::Complete {
                outcome: StepOutcome::NoOp,
                detail: String::new(),
            },
            Step::Revoke => StepResult::Complete {
                outcome: StepOutcome::Completed,
                detail: format!(
                    "no renewal of {}'s lease (epoch {}) succeeds from this commit on",
                    self.op.from, self.op.from_epoch
                ),
            },
            Step::Fence => self.fence().await,
            Step::RpoCheck => self.rpo_check().await,
            Step::Promote => self.run_hooks(&self.group.hooks.promote).await,
            Step::Activate => StepResult::Complete {
                outcome: StepOutcome::Completed,
                detail: format!("{} active at epoch {}", self.op.to, self.op.to_epoch),
            },
            Step::Dns => self.dns().await,
            Step::Validate => self.validate().await,
        }
    }

    fn hook_context(&self) -> HookContext {
        HookContext {
            group: self.op.group.clone(),
            from: self.op.from.clone(),
            to: self.op.to.clone(),
            epoch: self.op.to_epoch,
            operation: self.op.id,
            step: self.op.step.as_str().to_string(),
            // Read at each call: a later measurement sees the newer sightings.
            rpo: (self.op.step == Step::RpoCheck).then(|| RpoContext {
                bound: RpoBound {
                    lag_ms_max: self.group.rpo_lag_ms,
                    lag_bytes_max: self.group.rpo_lag_bytes,
                },
                primary_history: self.wal.samples(&self.op.group, &self.op.from),
            }),
        }
    }

    fn hook(&self, name: &str) -> Option<&Hook> {
        self.policy.hooks.get(name)
    }

    /// Runs one hook, unless this witness is no longer the leader (S3).
    async fn call(&self, name: &str) -> Option<HookOutcome> {
        if !self.consensus.is_leader() {
            return None;
        }
        let Some(hook) = self.hook(name) else {
            return Some(HookOutcome {
                success: false,
                summary: format!("hook {name:?} is not defined in the policy"),
                output: String::new(),
                duration: Duration::ZERO,
            });
        };
        let outcome = hooks::run(name, hook, &self.hook_context()).await;
        self.metrics
            .hook(self.op.step, hook.kind(), outcome.success);
        tracing::info!(operation = self.op.id, step = %self.op.step, hook = name, success = outcome.success, summary = %outcome.summary, "hook ran");
        Some(outcome)
    }

    /// Runs a hook until it succeeds, at most `step_attempts` times with backoff.
    async fn call_with_attempts(&self, name: &str) -> Result<HookOutcome, Option<HookOutcome>> {
        let mut backoff = BACKOFF_FIRST;
        let mut last = None;
        for attempt in 1..=self.group.step_attempts {
            let Some(outcome) = self.call(name).await else {
                return Err(None);
            };
            if outcome.success {
                return Ok(outcome);
            }
            tracing::warn!(operation = self.op.id, step = %self.op.step, hook = name, attempt, summary = %outcome.summary, "hook failed");
            last = Some(outcome);
            if attempt < self.group.step_attempts {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
        Err(last)
    }

    async fn run_hooks(&self, names: &[String]) -> StepResult {
        if names.is_empty() {
            return StepResult::Complete {
                outcome: StepOutcome::NoOp,
                detail: format!("no {} hook configured", self.op.step),
            };
        }
        let mut details = Vec::new();
        for name in names {
            match self.call_with_attempts(name).await {
                Ok(outcome) => details.push(describe(name, &outcome)),
                Err(None) => return StepResult::Abandon,
                Err(Some(outcome)) => {
                    return StepResult::Halt(format!(
                        "{} after {} attempts",
                        describe(name, &outcome),
                        self.group.step_attempts
                    ))
                }
            }
        }
        StepResult::Complete {
            outcome: StepOutcome::Completed,
            detail: details.join("; "),
        }
    }

    /// Fence hooks all succeeding confirm the fence; otherwise the old region's lease must
    /// certainly have expired: `lease x (1 + drift) + margin` after the revoke was applied
    /// here. A failing fence hook is expected when the old region is dark: it only means
    /// the full wait.
    async fn fence(&self) -> StepResult {
        let g = self.group;
        let wait = Duration::from_millis(
            g.lease_ms * (100 + g.clock_drift_percent) / 100 + g.lease_margin_ms,
        );
        let deadline = self.revoke_seen + wait;
        let mut notes = Vec::new();
        if !g.hooks.fence.is_empty() {
            let mut confirmed = true;
            for name in &g.hooks.fence {
                let Some(outcome) = self.call(name).await else {
                    return StepResult::Abandon;
                };
                confirmed &= outcome.success;
                notes.push(describe(name, &outcome));
            }
            if confirmed {
                return StepResult::Complete {
                    outcome: StepOutcome::Completed,
                    detail: format!(
                        "fence of {} confirmed by hooks: {}",
                        self.op.from,
                        notes.join("; ")
                    ),
                };
            }
        }
        // UNSAFE (feature `unsafe-skip-lease-wait` only): activate while the old lease may
        // still be held, so the jepsen S1 checker has a real split brain to catch.
        #[cfg(feature = "unsafe-skip-lease-wait")]
        if UNSAFE_SKIP_LEASE_WAIT.load(std::sync::atomic::Ordering::Relaxed) {
            return StepResult::Complete {
                outcome: StepOutcome::Completed,
                detail: format!(
                    "UNSAFE: lease wait of {} ms skipped (unsafe-skip-lease-wait)",
                    wait.as_millis()
                ),
            };
        }
        tokio::time::sleep_until(deadline).await;
        if !self.consensus.is_leader() {
            return StepResult::Abandon;
        }
        let mut detail = format!(
            "lease of {} (epoch {}) expired: waited {} ms after the revoke (lease {} ms, drift {}%, margin {} ms)",
            self.op.from,
            self.op.from_epoch,
            wait.as_millis(),
            g.lease_ms,
            g.clock_drift_percent,
            g.lease_margin_ms
        );
        if !notes.is_empty() {
            detail += &format!("; fence hooks did not confirm: {}", notes.join("; "));
        }
        StepResult::Complete {
            outcome: StepOutcome::Completed,
            detail,
        }
    }

    /// Measures the target's lag with the rpo-check hook until it is within the RPO, for at
    /// most `rpo_wait_ms`; then halts for an operator's approval. A hook that reports
    /// `exceeds_rpo` is over whatever its numbers say (they may be lower bounds). The wait is
    /// the same whatever the cause: a standby whose WAL receiver is gone will not catch up,
    /// but an old primary that answers again, or a receiver that reconnects, may still bring
    /// it within before the operator has to decide.
    async fn rpo_check(&self) -> StepResult {
        let g = self.group;
        let Some(name) = &g.hooks.rpo_check else {
            return StepResult::Complete {
                outcome: StepOutcome::NoOp,
                detail: "no rpo-check hook configured".to_string(),
            };
        };
        let give_up = Instant::now() + Duration::from_millis(g.rpo_wait_ms);
        let mut failures = 0;
        let mut backoff = BACKOFF_FIRST;
        loop {
            let Some(outcome) = self.call(name).await else {
                return StepResult::Abandon;
            };
            let lag = if outcome.success {
                hooks::parse_lag(&outcome.output)
            } else {
                None
            };
            match lag {
                None => {
                    failures += 1;
                    let why = if outcome.success {
                        format!(
                            "{}: printed no lag (expected {{\"lag_ms\": .., \"lag_bytes\": ..}})",
                            describe(name, &outcome)
                        )
                    } else {
                        describe(name, &outcome)
                    };
                    if failures >= g.step_attempts {
                        return StepResult::Halt(format!("{why} after {failures} attempts"));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Some(lag) => {
                    let over_ms = matches!((lag.ms, g.rpo_lag_ms), (Some(l), Some(max)) if l > max);
                    let over_bytes =
                        matches!((lag.bytes, g.rpo_lag_bytes), (Some(l), Some(max)) if l > max);
                    let measured = format!(
                        "lag {} ms, {} bytes",
                        lag.ms.map_or("?".to_string(), |v| v.to_string()),
                        lag.bytes.map_or("?".to_string(), |v| v.to_string())
                    );
                    let rpo = format!(
                        "RPO {} ms, {} bytes",
                        g.rpo_lag_ms.map_or("-".to_string(), |v| v.to_string()),
                        g.rpo_lag_bytes.map_or("-".to_string(), |v| v.to_string())
                    );
                    let basis = format!("hook {name}: {}", outcome.summary);
                    if !over_ms && !over_bytes && !lag.exceeds_rpo {
                        return StepResult::Complete {
                            outcome: StepOutcome::Completed,
                            detail: format!("{measured} within {rpo}; {basis}"),
                        };
                    }
                    if Instant::now() >= give_up {
                        let verdict = if over_ms || over_bytes {
                            "exceeds"
                        } else {
                            "cannot be proven within"
                        };
                        return StepResult::Halt(format!(
                            "{measured} {verdict} {rpo} after waiting {} ms; {basis}: `arbiter approve {}` accepts the data loss",
                            g.rpo_wait_ms, self.op.id
                        ));
                    }
                    tokio::time::sleep(RPO_POLL).await;
                }
            }
        }
    }

    /// Publishes the new region's record set on every external server of the group's zone
    /// (one TSIG-signed UPDATE each, concurrently). The embedded servers follow the applied
    /// state by themselves. A server that keeps failing halts the operation with its
    /// specific error; the others are updated all the same.
    async fn dns(&self) -> StepResult {
        let Some(gd) = &self.group.dns else {
            return StepResult::Complete {
                outcome: StepOutcome::NoOp,
                detail: "the group has no DNS record".to_string(),
            };
        };
        let Some(set) = gd.records.get(&self.op.to) else {
            return StepResult::Halt(format!(
                "no DNS record set for {} in the policy",
                self.op.to
            ));
        };
        let servers: Vec<_> = self
            .policy
            .dns
            .servers
            .iter()
            .filter(|s| s.zone.eq_ignore_ascii_case(&gd.zone))
            .cloned()
            .collect();
        if servers.is_empty() {
            return StepResult::Complete {
                outcome: StepOutcome::Completed,
                detail: format!(
                    "{} served by the embedded servers only (no external server for {})",
                    gd.name, gd.zone
                ),
            };
        }
        let old_kinds = record_kinds(gd);
        let mut backoff = BACKOFF_FIRST;
        let mut last = String::new();
        for attempt in 1..=self.group.step_attempts {
            if !self.consensus.is_leader() {
                return StepResult::Abandon;
            }
            let report =
                crate::dns::publish(&servers, &gd.zone, &gd.name, gd.ttl, set, &old_kinds).await;
            let summary: Vec<String> = report
                .outcomes
                .iter()
                .map(|o| match &o.result {
                    Ok(serial) => format!("{}: updated (serial {serial})", o.server),
                    Err(e) => format!("{}: {e}", o.server),
                })
                .collect();
            if report.all_ok() {
                return StepResult::Complete {
                    outcome: StepOutcome::Completed,
                    detail: format!(
                        "{} -> {:?} {}: {}",
                        gd.name,
                        set.kind,
                        set.values.join(" "),
                        summary.join("; ")
                    ),
                };
            }
            last = summary.join("; ");
            tracing::warn!(operation = self.op.id, attempt, servers = %last, "DNS update failed");
            if attempt < self.group.step_attempts {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
        StepResult::Halt(format!(
            "DNS update of {} failed after {} attempts: {last}",
            gd.name, self.group.step_attempts
        ))
    }

    /// Validate hooks pass, and the new region's probes pass (its verdict is `up`) when it
    /// has probes.
    async fn validate(&self) -> StepResult {
        let hooks = self.run_hooks(&self.group.hooks.validate).await;
        let hook_detail = match hooks {
            StepResult::Complete { detail, .. } => detail,
            other => return other,
        };
        let probed = self
            .policy
            .regions
            .iter()
            .any(|r| r.name == self.op.to && !r.probes.is_empty());
        if !probed {
            return StepResult::Complete {
                outcome: StepOutcome::Completed,
                detail: format!("{hook_detail}; {} has no probes", self.op.to),
            };
        }
        let mut backoff = BACKOFF_FIRST;
        for _ in 0..self.group.step_attempts {
            if !self.consensus.is_leader() {
                return StepResult::Abandon;
            }
            let verdict = self.tables.regions().get(&self.op.to).map(|r| r.verdict);
            if verdict == Some(crate::health::Verdict::Up) {
                return StepResult::Complete {
                    outcome: StepOutcome::Completed,
                    detail: format!(
                        "{hook_detail}; a majority of witnesses see {} up",
                        self.op.to
                    ),
                };
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        StepResult::Halt(format!(
            "{} is not seen up by a majority of witnesses",
            self.op.to
        ))
    }
}

/// One line about a hook call with an excerpt of its output.
fn describe(name: &str, outcome: &HookOutcome) -> String {
    let output = outcome.output.trim();
    if output.is_empty() {
        format!("hook {name}: {}", outcome.summary)
    } else {
        let mut end = output.len().min(OUTPUT_EXCERPT_BYTES);
        while !output.is_char_boundary(end) {
            end -= 1;
        }
        format!(
            "hook {name}: {}; output: {}",
            outcome.summary,
            &output[..end]
        )
    }
}

/// Every record type the group's regions use, so a switch between types removes the old.
pub(crate) fn record_kinds(gd: &crate::config::GroupDns) -> Vec<crate::config::RecordKind> {
    let mut kinds: Vec<crate::config::RecordKind> = Vec::new();
    for set in gd.records.values() {
        if !kinds.contains(&set.kind) {
            kinds.push(set.kind);
        }
    }
    kinds
}
