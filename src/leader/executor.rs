//! The executor of failover operations, a leader duty (started and cancelled by the term
//! supervisor): for each running operation it performs the current step as planned by
//! [`super::plan::plan`], then proposes the step's completion (or a halt) and waits for that
//! commit before the next step starts. A new leader resumes at the operation's current step;
//! steps are idempotent and every hook call carries the group, epoch and operation id (S3,
//! S6). Before every external action the leader confirms its leadership with a quorum.
//!
//! The fence step's lease wait is measured on this witness's monotonic clock from when it
//! saw the revoke applied ([`super::Observations`], noted whatever the witness's role),
//! which is never earlier than the commit: a leader change can only make the wait longer,
//! never shorter (S1).
//!
//! It must never act for a decision that is not committed, never run a step whose previous
//! step's completion it has not seen applied, and never end a lease wait before
//! [`super::plan::fence_deadline`] unless the group opted in and every fence hook confirmed
//! a hard fence.

use std::collections::HashMap;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::plan::{plan, StepPlan};
use super::propose::propose;
use super::{Duty, LeaderTables};
use crate::config::{GroupPolicy, Hook, Policy};
use crate::dns::DnsClient;
use crate::hooks::{
    self, HookContext, HookOutcome, HookRunner, RpoBound, RpoContext, WalHistories,
};
use crate::raft::Consensus;
use crate::state::{Command, LeaseBound, Operation, OperationState, Refusal, Step, StepOutcome};
use crate::telemetry::Metrics;

/// How often the executor looks at the state when nothing is applied.
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

/// What performing a step came to.
enum StepResult {
    Complete {
        outcome: StepOutcome,
        detail: String,
    },
    Halt(String),
    /// This witness could not confirm its leadership: leave the step to the next leader.
    Abandon,
}

/// The operation duty of one term; runs until the supervisor cancels it. Every task it
/// started is aborted with it (the task handles abort on drop).
pub async fn run(duty: Duty) {
    let consensus = duty.consensus.clone();
    let mut applied = consensus.subscribe_applied();
    let mut tasks: HashMap<u64, (Step, StepTask)> = HashMap::new();
    // Aborting operations whose unfence hooks run.
    let mut unfence_tasks: HashMap<u64, StepTask> = HashMap::new();
    // Removed groups (name, epoch) whose leases' expiry is waited for and recorded.
    let mut expiry_tasks: HashMap<(String, u64), StepTask> = HashMap::new();
    loop {
        let (operations, removed): (Vec<Operation>, Vec<(String, u64, LeaseBound)>) = consensus
            .with_state(|s| {
                let operations = s
                    .operations
                    .values()
                    .filter(|o| !o.state.is_finished())
                    .cloned()
                    .collect();
                let removed = s
                    .removed
                    .iter()
                    .filter(|(_, r)| !r.leases_expired)
                    .map(|(name, r)| (name.clone(), r.epoch, r.lease_bound))
                    .collect();
                (operations, removed)
            });
        expiry_tasks.retain(|(name, epoch), task| {
            !task.is_finished() && removed.iter().any(|(n, e, _)| n == name && e == epoch)
        });
        unfence_tasks.retain(|id, task| {
            !task.is_finished()
                && operations
                    .iter()
                    .any(|o| o.id == *id && matches!(o.state, OperationState::Aborting { .. }))
        });
        // Halted, aborted or finished operations have no task.
        tasks.retain(|id, (_, task)| {
            !task.is_finished()
                && operations
                    .iter()
                    .any(|o| o.id == *id && o.state == OperationState::Running)
        });
        let to_start = operations.iter().any(|o| match &o.state {
            OperationState::Running => tasks.get(&o.id).map(|(step, _)| *step) != Some(o.step),
            OperationState::Aborting { .. } => !unfence_tasks.contains_key(&o.id),
            _ => false,
        }) || removed
            .iter()
            .any(|(n, e, _)| !expiry_tasks.contains_key(&(n.clone(), *e)));
        // A leader that cannot confirm its leadership with a quorum starts nothing new (its
        // running steps confirm again before each external action).
        let confirmed = if to_start {
            match consensus.confirm_leadership().await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "leadership not confirmed: starting no step");
                    false
                }
            }
        } else {
            false
        };
        if confirmed {
            for (name, epoch, bound) in &removed {
                let key = (name.clone(), *epoch);
                if expiry_tasks.contains_key(&key) {
                    continue;
                }
                // Seen now or earlier: never before the removal was applied here, so the
                // wait counted from it covers every lease granted before (as for a revoke).
                let seen = duty
                    .observations
                    .removed_seen(name, *epoch)
                    .unwrap_or_else(Instant::now);
                let deadline = super::plan::fence_deadline(seen, *bound);
                let task = StepTask(tokio::spawn(record_removed_leases_expired(
                    duty.clone(),
                    name.clone(),
                    *epoch,
                    deadline,
                )));
                expiry_tasks.insert(key, task);
            }
            for op in operations
                .iter()
                .filter(|o| matches!(o.state, OperationState::Aborting { .. }))
            {
                if unfence_tasks.contains_key(&op.id) {
                    continue;
                }
                let task = StepTask(tokio::spawn(unfence_task(duty.clone(), op.clone())));
                unfence_tasks.insert(op.id, task);
            }
            for op in operations
                .iter()
                .filter(|o| o.state == OperationState::Running)
            {
                if tasks.get(&op.id).map(|(step, _)| *step) == Some(op.step) {
                    continue;
                }
                let seen = duty
                    .observations
                    .revoke_seen(op.id)
                    .unwrap_or_else(Instant::now);
                let task = StepTask(tokio::spawn(step_task(duty.clone(), op.clone(), seen)));
                // Replacing a task of an earlier step drops (and so aborts) it.
                tasks.insert(op.id, (op.step, task));
            }
        }
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
}

impl Drop for StepTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Performs one step of one operation and proposes its outcome.
async fn step_task(duty: Duty, op: Operation, revoke_seen: Instant) {
    let consensus = &duty.consensus;
    let Some((policy, group_policy, bound)) = consensus.with_state(|s| {
        let policy = s.policy.clone()?;
        let gp = policy.group(&op.group)?.clone();
        // The group's record, not today's policy: leases granted under earlier terms may
        // still be held.
        let bound = s.groups.get(&op.group)?.lease_bound;
        // UNSAFE (feature `unsafe-holes` only): today's terms, the hole of a lowered lease.
        #[cfg(feature = "unsafe-holes")]
        let bound = if crate::holes::open(&crate::holes::WAIT_CURRENT_POLICY) {
            crate::state::LeaseBound::of(&gp)
        } else {
            bound
        };
        Some((policy, gp, bound))
    }) else {
        let command = Command::HaltOperation {
            operation: op.id,
            step: op.step,
            error: format!("group {} is not in the policy", op.group),
        };
        let _ = propose(consensus, command).await;
        return;
    };
    let started = Instant::now();
    tracing::info!(operation = op.id, group = %op.group, step = %op.step, "step started");
    let ctx = StepContext {
        consensus,
        tables: &duty.tables,
        metrics: &duty.metrics,
        wal: &duty.wal,
        hooks: duty.hooks.as_ref(),
        dns: duty.dns.as_ref(),
        op: &op,
        policy: &policy,
        group: &group_policy,
    };
    let result = ctx
        .perform(plan(
            &op,
            &policy,
            &group_policy,
            bound,
            revoke_seen,
            Instant::now(),
        ))
        .await;
    let outcome = match &result {
        StepResult::Complete {
            outcome: StepOutcome::NoOp,
            ..
        } => "no-op",
        StepResult::Complete { .. } => "completed",
        StepResult::Halt(_) => "halted",
        StepResult::Abandon => "abandoned",
    };
    duty.metrics.step(op.step, outcome, started.elapsed());
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
    match propose(consensus, command).await {
        Err(e) => {
            tracing::info!(operation = op.id, step = %op.step, error = %e, "step outcome not committed here; the next leader resumes the step");
        }
        // The operation moved on (an operator acted, or another leader recorded it).
        Ok(Err(
            Refusal::OperationState { .. }
            | Refusal::WrongStep { .. }
            | Refusal::UnknownOperation { .. },
        )) => {}
        // The state machine will not record this step (for example the target is no
        // longer a candidate): the operation waits for an operator with the reason, rather
        // than the step being tried again forever.
        Ok(Err(refusal)) => {
            tracing::warn!(operation = op.id, step = %op.step, %refusal, "step refused: halting the operation");
            let halt = Command::HaltOperation {
                operation: op.id,
                step: op.step,
                error: format!("the cluster refused to record {}: {refusal}", op.step),
            };
            let _ = propose(consensus, halt).await;
        }
        Ok(Ok(())) => {}
    }
}

/// Waits until `deadline` (the lease wait of removed group `group`, counted from when this
/// witness saw the removal), then records that its leases have expired.
async fn record_removed_leases_expired(duty: Duty, group: String, epoch: u64, deadline: Instant) {
    tokio::time::sleep_until(deadline).await;
    let command = Command::RemovedLeasesExpired {
        group: group.clone(),
        epoch,
    };
    if let Err(e) = propose(&duty.consensus, command).await {
        tracing::info!(%group, epoch, error = %e, "expiry of a removed group's leases not committed here; the next leader waits again");
    }
}

/// Runs the unfence hooks of an aborting operation, then records the abort as finished
/// with what they did. A failing unfence does not keep the group from its next operation:
/// the abort finishes with the failure on record for the operator.
async fn unfence_task(duty: Duty, op: Operation) {
    let consensus = &duty.consensus;
    let Some((policy, group_policy)) = consensus.with_state(|s| {
        let policy = s.policy.clone()?;
        let gp = policy.group(&op.group)?.clone();
        Some((policy, gp))
    }) else {
        return;
    };
    let ctx = StepContext {
        consensus,
        tables: &duty.tables,
        metrics: &duty.metrics,
        op: &op,
        policy: &policy,
        group: &group_policy,
        wal: &duty.wal,
        hooks: duty.hooks.as_ref(),
        dns: duty.dns.as_ref(),
    };
    let detail = match ctx.run_hooks(&group_policy.hooks.unfence).await {
        StepResult::Complete { detail, .. } => format!("unfenced {}: {detail}", op.from),
        StepResult::Halt(error) => format!(
            "unfence of {} failed, its primary may still be fenced: {error}",
            op.from
        ),
        StepResult::Abandon => return,
    };
    let command = Command::FinishAbort {
        operation: op.id,
        detail,
    };
    if let Err(e) = propose(consensus, command).await {
        tracing::info!(operation = op.id, error = %e, "end of the abort not committed here; the next leader unfences again");
    }
}

struct StepContext<'a> {
    consensus: &'a Consensus,
    tables: &'a LeaderTables,
    metrics: &'a Metrics,
    wal: &'a WalHistories,
    hooks: &'a dyn HookRunner,
    dns: &'a dyn DnsClient,
    op: &'a Operation,
    policy: &'a Policy,
    group: &'a GroupPolicy,
}

impl StepContext<'_> {
    async fn perform(&self, plan: StepPlan) -> StepResult {
        match plan {
            StepPlan::Complete { outcome, detail } => StepResult::Complete { outcome, detail },
            StepPlan::RunHooks { hooks } => self.run_hooks(&hooks).await,
            StepPlan::Fence {
                hooks,
                wait_until,
                bound,
                ends_early,
            } => self.fence(&hooks, wait_until, bound, ends_early).await,
            StepPlan::RpoCheck { hook, give_up } => self.rpo_check(&hook, give_up).await,
            StepPlan::PublishDns => self.dns().await,
            StepPlan::Validate { hooks, probed } => self.validate(&hooks, probed).await,
        }
    }

    fn hook_context(&self) -> HookContext {
        HookContext {
            group: self.op.group.clone(),
            from: self.op.from.clone(),
            to: self.op.to.clone(),
            epoch: self.op.to_epoch,
            operation: self.op.id,
            step: self.step_name().to_string(),
            witness: self.consensus.id(),
            term: self.consensus.view().term,
            // Read at each call: a later measurement sees the newer sightings.
            rpo: (self.op.step == Step::RpoCheck
                && !matches!(self.op.state, OperationState::Aborting { .. }))
            .then(|| RpoContext {
                bound: RpoBound {
                    lag_ms_max: self.group.rpo_lag_ms,
                    lag_bytes_max: self.group.rpo_lag_bytes,
                },
                primary_history: self.wal.samples(&self.op.group, &self.op.from),
            }),
        }
    }

    /// The step the hooks run for: an aborting operation runs its unfence hooks.
    fn step_name(&self) -> &'static str {
        match self.op.state {
            OperationState::Aborting { .. } => "unfence",
            _ => self.op.step.as_str(),
        }
    }

    /// Whether a quorum confirms, now, that this witness is the leader.
    async fn confirmed(&self) -> bool {
        if !self.consensus.is_leader() {
            return false;
        }
        match self.consensus.confirm_leadership().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(operation = self.op.id, step = %self.op.step, error = %e, "leadership not confirmed: no external action");
                false
            }
        }
    }

    fn hook(&self, name: &str) -> Option<&Hook> {
        self.policy.hooks.get(name)
    }

    /// Runs one hook, unless this witness cannot confirm right now that it is still the
    /// leader (S3): `None` then, and the step is left to the next leader.
    async fn call(&self, name: &str) -> Option<HookOutcome> {
        if !self.confirmed().await {
            return None;
        }
        let Some(hook) = self.hook(name) else {
            return Some(HookOutcome {
                success: false,
                summary: format!("hook {name:?} is not defined in the policy"),
                output: String::new(),
                duration: Duration::ZERO,
                fence_confirmed: None,
                http_status: None,
            });
        };
        let outcome = self.hooks.run(name, hook, &self.hook_context()).await;
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
                detail: format!("no {} hook configured", self.step_name()),
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

    /// The fence hooks run first (they fence the old primary whatever ends the wait); the
    /// step then waits until `wait_until` ([`super::plan::fence_deadline`]), unless the
    /// group opted in (`ends_early`) and every fence hook positively confirmed a hard fence
    /// for this epoch. A failing fence hook is expected when the old region is dark: it only
    /// means the full wait.
    async fn fence(
        &self,
        hooks: &[String],
        wait_until: Instant,
        bound: LeaseBound,
        ends_early: bool,
    ) -> StepResult {
        let deadline = wait_until;
        let wait = Duration::from_millis(bound.wait_ms());
        let mut notes = Vec::new();
        let mut confirmed = !hooks.is_empty();
        for name in hooks {
            let Some(outcome) = self.call(name).await else {
                return StepResult::Abandon;
            };
            confirmed &= outcome.fence_confirmed == Some(self.op.to_epoch);
            notes.push(describe(name, &outcome));
        }
        if confirmed && ends_early {
            return StepResult::Complete {
                outcome: StepOutcome::Completed,
                detail: format!(
                    "hard fence of {} confirmed for epoch {} by every fence hook, which ends the lease wait (fence_ends_lease_wait): {}",
                    self.op.from,
                    self.op.to_epoch,
                    notes.join("; ")
                ),
            };
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
        let mut detail = format!(
            "lease of {} (epoch {}) expired: waited {} ms after the revoke ({}: the longest in force since {} was activated)",
            self.op.from,
            self.op.from_epoch,
            wait.as_millis(),
            bound,
            self.op.from
        );
        if confirmed {
            detail += &format!(
                "; the fence hooks confirmed a hard fence, but this group waits the lease out (fence_ends_lease_wait is off): {}",
                notes.join("; ")
            );
        } else if !notes.is_empty() {
            detail += &format!(
                "; fence hooks did not confirm a hard fence for epoch {}: {}",
                self.op.to_epoch,
                notes.join("; ")
            );
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
    async fn rpo_check(&self, name: &str, give_up: Instant) -> StepResult {
        let g = self.group;
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
    /// (one TSIG-signed UPDATE each, concurrently, conditional on the server's marker so an
    /// older decision never overwrites a newer one: `dns::update`). The embedded servers
    /// follow the applied state by themselves. A server that keeps failing halts the
    /// operation with its specific error; the others are updated all the same. A marker
    /// arbiter will not overwrite halts it at once: only an operator can fix that.
    async fn dns(&self) -> StepResult {
        let mut backoff = BACKOFF_FIRST;
        let mut last = String::new();
        let mut attempts = 0;
        for attempt in 1..=self.group.step_attempts {
            attempts = attempt;
            // Confirmed with a quorum right before the state is read and the UPDATE sent.
            if !self.confirmed().await {
                return StepResult::Abandon;
            }
            // From the state applied now, not the policy this step started with: the
            // marker's policy version must be the one whose record set it carries.
            let Some((publication, servers)) = self
                .consensus
                .with_state(|s| crate::dns::Publication::from_state(s, &self.op.group))
            else {
                return StepResult::Halt(format!(
                    "no DNS record set for {} in the policy",
                    self.op.to
                ));
            };
            let decision = &publication.decision;
            if decision.region != self.op.to || decision.epoch != self.op.to_epoch {
                // The group moved on (this witness's step is stale): publishing this
                // operation's region now would be an older decision.
                tracing::info!(operation = self.op.id, active = %decision.region, epoch = decision.epoch, "group moved on; dns step left");
                return StepResult::Abandon;
            }
            let (name, set) = (&publication.name, &publication.set);
            if servers.is_empty() {
                return StepResult::Complete {
                    outcome: StepOutcome::Completed,
                    detail: format!(
                        "{name} served by the embedded servers only (no external server for {})",
                        publication.zone
                    ),
                };
            }
            let report = crate::dns::publish_with(self.dns, &servers, &publication).await;
            let summary: Vec<String> = report
                .outcomes
                .iter()
                .map(|o| match &o.result {
                    Ok(crate::dns::Published::Updated { serial, .. }) => {
                        format!("{}: updated (serial {serial})", o.server)
                    }
                    Ok(crate::dns::Published::Superseded { by }) => {
                        format!("{}: already publishes a newer decision ({by})", o.server)
                    }
                    Err(e) => format!("{}: {e}", o.server),
                })
                .collect();
            if report.all_ok() {
                return StepResult::Complete {
                    outcome: StepOutcome::Completed,
                    detail: format!(
                        "{name} -> {:?} {} (epoch {}): {}",
                        set.kind,
                        set.values.join(" "),
                        decision.epoch,
                        summary.join("; ")
                    ),
                };
            }
            last = summary.join("; ");
            tracing::warn!(operation = self.op.id, attempt, servers = %last, "DNS update failed");
            if report.failed().all(|(_, e)| e.is_marker_refusal()) {
                break;
            }
            if attempt < self.group.step_attempts {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
        let name = self.group.dns.as_ref().map_or("", |gd| gd.name.as_str());
        StepResult::Halt(format!(
            "DNS update of {name} failed after {attempts} attempts: {last}"
        ))
    }

    /// Validate hooks pass, and the new region's probes pass (its verdict is `up`) when it
    /// has probes.
    async fn validate(&self, hooks: &[String], probed: bool) -> StepResult {
        let hooks = self.run_hooks(hooks).await;
        let hook_detail = match hooks {
            StepResult::Complete { detail, .. } => detail,
            other => return other,
        };
        if !probed {
            return StepResult::Complete {
                outcome: StepOutcome::Completed,
                detail: format!("{hook_detail}; {} has no probes", self.op.to),
            };
        }
        let mut backoff = BACKOFF_FIRST;
        for _ in 0..self.group.step_attempts {
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
