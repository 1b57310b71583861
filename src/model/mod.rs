//! A checked model of the lease protocol (test-only): the failover steps, the leases and
//! the operator actions that once broke single-writer safety, explored exhaustively within
//! bounds by `stateright`, with S1 (over the writes the databases accept, and over the
//! leases the agents believe they hold) and S2 (epochs) checked in every reachable state.
//!
//! # Structure
//!
//! - **State** ([`state::ModelState`]): the applied [`ClusterState`]; three witnesses,
//!   each with the instant it saw the current revoke and the current removal applied (the
//!   leader first); the leader's running fence task; two agents (region-a, region-b), each
//!   with its clock rate, the lease it believes it holds, one answer in flight and its
//!   database (open or closed); what the operator and the faults may still do; a few ghost
//!   values for the properties.
//! - **Actions** ([`Action`]): a tick of real time; an agent's request and the arrival of
//!   the answer; an election; the leader's steps (revoke, fence once its wait ended,
//!   rpo-check, promote, activate, dns, validate, halts, the end of an abort, the expiry
//!   of a removed group's leases); the operator's failover (with or without approval),
//!   approve, retry, skip, abort (offered at every step) and policy changes (lower or
//!   raise the lease and the margin, remove the group, add it again with region-b first).
//! - **Properties**: [`S1_WRITES`], [`S1_LEASES`], [`S2_EPOCHS`] always; and a few
//!   `sometimes` properties showing that the bounds reach what a check is about.
//! - **Bounds**: [`Bounds`] per check (`tests.rs`): how many operations, policy changes,
//!   elections, interventions and halts, which clock rates and policies.
//!
//! # What is real and what is mirrored
//!
//! - The replicated state **is** [`ClusterState`], driven through [`ClusterState::apply`]
//!   with the commands the executor and the operator propose. Refusals, epochs, the
//!   recorded [`LeaseBound`], aborts, approvals, retries, skips, supersession and removed
//!   groups are the real code's; so are the debug invariant asserts that `apply` runs.
//! - Every grant is decided by [`ClusterState::lease_check`] on the applied state (the
//!   leader answers after a linearizable read). Every wait is [`LeaseBound::wait_ms`],
//!   read from the state (the group's `lease_bound`, a removed group's record) as the
//!   executor reads it.
//! - Mirrored, because they are I/O: the executor's step tasks and sightings
//!   (`leader::executor`, `leader::plan`), the agent's control flow (`agent::run`) and the holder's
//!   deadline rule (`fencing::client`). Each action's doc comment names what it stands for.
//! - The database accepts writes exactly while its agent has run on-gain and not on-lose
//!   since: the agent's belief, through the agent's own control flow. A promote hook that
//!   opens the database by itself is outside the normal model (a switch, below).
//!
//! # Time
//!
//! Real time advances in ticks of [`policies::TICK_MS`]. Witness clocks run at the real
//! rate; each holder clock runs at a fixed rate between `1 / (1 + drift)` and `1 + drift`
//! of it ([`policies::RATE_SLOW`] .. [`policies::RATE_FAST`] units per tick), which puts
//! the whole relative drift the policy allows between a holder and any leader. All times in
//! a state are relative (units until a deadline, ticks since a sighting, saturating at the
//! longest wait), so the state graph is finite: the check has no time horizon, only the
//! operator's and the faults' budgets ([`state::Budget`]).
//!
//! # Reductions, and why each loses no counterexample
//!
//! - A request is sent and decided at the same instant: a decision comes after the send,
//!   and an earlier send only moves the deadline (`t_sent + lease`) earlier. The answer
//!   then travels for any number of ticks (when [`Bounds::answers_travel`]), during which
//!   the deadline runs down; otherwise it arrives at once, which gives the same deadline.
//! - A new request replaces an answer still in flight: that answer was lost (the agent's
//!   call failed and it tried again). A deadline that passes while an answer travels turns
//!   the answer into a refusal, which is how the agent treats a grant expired on arrival.
//! - The leader's executor is eager: a step it can take is taken before time passes. A
//!   slower executor does the same things later, which only gives leases more time to run
//!   out; operators, agents and elections still interleave between its steps.
//! - A new leader saw what it had not seen either at the commit or at its election: any
//!   sighting between ends its wait between those two, and the fence step may complete at
//!   any time after its wait. Elections are offered only while a revoke or a removal
//!   waits; at any other time a leader change changes nothing the model keeps.
//! - The witnesses differ only in what they saw: the leader is kept first, the followers
//!   sorted. A state's fingerprint leaves out what nothing reads (see `state.rs`):
//!   history such as finished operations and log indices.
//! - The passing checks with many operator actions use the slowest holder clocks, which
//!   hold every lease longest; one check explores every rate on both agents.
//!
//! # Switches
//!
//! [`Switches`] re-open, in the model only, holes the code has closed, so that a test can
//! show the checker finds them (a check that cannot fail proves nothing), and model one
//! behaviour of the code the normal model leaves out (`promote_opens_writes`).

mod policies;
mod state;
#[cfg(test)]
mod tests;

use std::fmt;

use stateright::{Model, Property};

use crate::config::Policy;
use crate::state::{
    ClusterState, Command, LeaseBound, OperationKind, OperationState, Outcome, Proposal, Refusal,
    Step, StepOutcome,
};

use policies::{bound_ticks, holder_units, PolicyId, GROUP, REGIONS};
use state::{Agent, Budget, Ghost, Held, ModelState, Reply, Witness, WITNESSES};

/// Test-only switches, each changing the model (never the code).
#[derive(Clone, Copy, Debug, Default)]
struct Switches {
    /// The fence step waits the *current* policy's terms instead of the group's recorded
    /// `lease_bound` (the hole of a lease lowered from 30 s to 2 s before a failover).
    pub fence_wait_from_current_policy: bool,
    /// The leader records a removed group's leases as expired as soon as it sees the
    /// removal, so a re-added group grants before the removed incarnation's leases ended.
    pub removed_expiry_without_wait: bool,
    /// The holder counts its deadline from when the grant *arrives*, not from the send.
    pub holder_deadline_from_receipt: bool,
    /// Not a closed hole but the code as it is: the promote hook opens the target's
    /// database by itself (the built-in PostgreSQL promote lifts
    /// `default_transaction_read_only`), whatever its agent holds.
    pub promote_opens_writes: bool,
}

/// The bounds of one check.
#[derive(Clone, Debug)]
struct Bounds {
    /// What the operator and the faults may do, in all.
    pub budget: Budget,
    /// Holder clock rates (units per tick) explored for region-a's and region-b's agent.
    pub rates: [Vec<u32>; 2],
    /// The policies the operator may apply (the group starts under `Initial`).
    pub policies: Vec<PolicyId>,
    /// Answers travel for any number of ticks (`Deliver`); otherwise each arrives at
    /// once. A late answer never gives a later deadline than one on time (the deadline
    /// counts from the send), so this only matters to a holder rule that counts from
    /// the arrival.
    pub answers_travel: bool,
}

/// The model: bounds, switches, and the parsed policies.
struct LeaseModel {
    pub bounds: Bounds,
    pub switches: Switches,
    /// Indexed by `PolicyId as usize`.
    policies: Vec<Policy>,
    /// Copies of `policies` lent to the cluster state while it applies or decides.
    lent: std::sync::Mutex<Vec<Option<Policy>>>,
    /// The longest wait any bound can reach (the terms of every policy at their maximum):
    /// ticks since a sighting saturate here.
    seen_cap: u8,
}

/// One transition. The doc comment of each says which code it runs or mirrors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Action {
    /// One tick of real time. Mirrors the agent's self-fence timer (`agent::run`: the
    /// deadline passes without a renewal: on-lose) on each holder's own clock, and the
    /// witnesses' monotonic clocks under `revoke_seen`, `removed_seen` and the fence sleep.
    Tick,
    /// Region `r`'s agent sends acquire (not holding) or renew at its epoch
    /// (`LeaseClient::acquire` / `renew`), and the leader decides with
    /// `ClusterState::lease_check` on the applied state (`Fencing::decide` after its
    /// linearizable read). A grant gives the deadline `t_sent + lease` on the holder's clock
    /// (`fencing::client::state_from`).
    Request(usize),
    /// The answer reaches region `r`'s agent, which acts on it as `agent::run` does: gain
    /// (on-gain), keep, or lose (on-lose, once when not yet fenced).
    Deliver(usize),
    /// Follower `w` (of the sorted followers) becomes leader. By then it has applied every
    /// committed entry: what it had not applied yet, it applied either right after the
    /// commit (`prompt`) or only now, and its executor noted that instant
    /// (`executor::run`: `revoke_seen`, `removed_seen`, never before the commit). It then
    /// restarts the step tasks, its fence wait counted from its own sighting. An instant
    /// between the two gives a wait that ends between them, and a leader may end the fence
    /// step at any time after its wait: the two extremes cover every sighting. Offered
    /// only while a revoke or a removal waits: at any other time a leader change changes
    /// nothing the model keeps.
    Elect { w: usize, prompt: bool },
    /// The leader's executor performs the operation's current step and proposes its
    /// completion (`true`) or a halt (`false`) (`executor::step_task`). The fence step
    /// completes only once its wait has ended (`StepContext::fence`).
    Step(Step, bool),
    /// The leader ran the unfence hooks of an aborting operation (`executor::unfence_task`).
    FinishAbort,
    /// The leader waited out a removed group's leases from when it saw the removal
    /// (`executor::record_removed_leases_expired`).
    RemovedLeasesExpired,
    /// Operator: `arbiter failover` to region `to`, waiting for approval or not
    /// (`Command::StartOperation`).
    Start { to: usize, approval: bool },
    /// Operator: `arbiter approve` (`Command::ApproveOperation`).
    Approve,
    /// Operator: retry a halted step (`Command::RetryOperation`).
    Retry,
    /// Operator: skip a halted step (`Command::SkipStep`).
    Skip,
    /// Operator: abort, at whatever step (`Command::AbortOperation`).
    Abort,
    /// Operator: `arbiter policy apply` (`Command::ApplyPolicy`).
    ApplyPolicy(PolicyId),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Tick => write!(f, "tick"),
            Action::Request(r) => write!(f, "{} agent requests the lease", REGIONS[*r]),
            Action::Deliver(r) => write!(f, "answer reaches {} agent", REGIONS[*r]),
            Action::Elect { w, prompt: true } => write!(
                f,
                "follower {w} becomes leader (had applied the revoke/removal at its commit)"
            ),
            Action::Elect { w, prompt: false } => write!(
                f,
                "follower {w} becomes leader (applies the revoke/removal only now)"
            ),
            Action::Step(step, true) => write!(f, "leader completes {step}"),
            Action::Step(step, false) => write!(f, "leader halts at {step}"),
            Action::FinishAbort => write!(f, "leader finishes the abort (unfenced)"),
            Action::RemovedLeasesExpired => {
                write!(f, "leader records the removed group's leases expired")
            }
            Action::Start { to, approval } => write!(
                f,
                "operator: failover to {}{}",
                REGIONS[*to],
                if *approval { " (needs approval)" } else { "" }
            ),
            Action::Approve => write!(f, "operator: approve"),
            Action::Retry => write!(f, "operator: retry"),
            Action::Skip => write!(f, "operator: skip the halted step"),
            Action::Abort => write!(f, "operator: abort"),
            Action::ApplyPolicy(p) => write!(f, "operator: apply policy {}", p.name()),
        }
    }
}

/// The proposer of the executor's commands in the audit log.
const LEADER: &str = "arbiter";
const OPERATOR: &str = "operator";

fn region_index(name: &str) -> usize {
    REGIONS
        .iter()
        .position(|r| *r == name)
        .expect("the model has two regions")
}

impl LeaseModel {
    fn new(bounds: Bounds, switches: Switches) -> LeaseModel {
        let policies: Vec<Policy> = PolicyId::ALL.iter().map(|p| p.policy()).collect();
        let longest = policies
            .iter()
            .flat_map(|p| p.groups.iter().map(LeaseBound::of))
            .reduce(LeaseBound::max)
            .expect("a model policy has the group");
        LeaseModel {
            bounds,
            switches,
            lent: std::sync::Mutex::new(policies.iter().cloned().map(Some).collect()),
            policies,
            seen_cap: bound_ticks(longest),
        }
    }

    /// Runs `f` on the cluster state with its policy in place. A stored state keeps the
    /// policy by name (`ModelState::policy`) and `cluster.policy` empty, so the states the
    /// checker holds stay small; the policy is lent, not cloned (cloning it was most of
    /// the cost of a transition). If `f` applied policy `applied`, the state is under that
    /// one afterwards.
    fn with_policy<R>(
        &self,
        s: &mut ModelState,
        f: impl FnOnce(&mut ClusterState) -> R,
        applied: impl FnOnce(&R) -> Option<PolicyId>,
    ) -> R {
        let lent = self.lent.lock().expect("policy copies")[s.policy as usize].take();
        s.cluster.policy = Some(lent.unwrap_or_else(|| self.policies[s.policy as usize].clone()));
        let result = f(&mut s.cluster);
        if let Some(id) = applied(&result) {
            s.policy = id;
        }
        if let Some(policy) = s.cluster.policy.take() {
            self.lent.lock().expect("policy copies")[s.policy as usize] = Some(policy);
        }
        result
    }

    /// Applies `command` as the next log entry. A refused command changes nothing (and the
    /// model drops the transition). The audit log is written, never read: cleared.
    fn apply(&self, s: &mut ModelState, actor: &str, command: Command) -> Result<Outcome, Refusal> {
        self.apply_as(s, actor, command, None)
    }

    /// [`Self::apply`] of a command that applies the model's policy `policy`, if any.
    fn apply_as(
        &self,
        s: &mut ModelState,
        actor: &str,
        command: Command,
        policy: Option<PolicyId>,
    ) -> Result<Outcome, Refusal> {
        let index = s.index + 1;
        let proposal = Proposal {
            actor: actor.to_string(),
            at_ms: 0,
            request_id: String::new(),
            command,
        };
        let response = self.with_policy(
            s,
            |c| c.apply(index, &proposal),
            |r| r.outcome.is_ok().then_some(policy).flatten(),
        );
        s.cluster.audit.clear();
        if response.outcome.is_ok() {
            s.index = index;
        }
        response.outcome
    }

    /// Mirrors `executor::run` after every transition: the leader has applied every commit
    /// (it notes the revoke and the removal at once), sightings of finished operations and
    /// expired removals are forgotten, and the fence step task runs exactly while the
    /// operation is running at `fence`, its deadline fixed when it starts.
    fn settle(&self, s: &mut ModelState) {
        let (revoked_op, pending_removal) = sightings(s);
        for w in &mut s.witnesses {
            if w.revoke_seen.map(|(id, _)| Some(id)) != Some(revoked_op) {
                w.revoke_seen = None;
            }
            if w.removed_seen.map(|(e, _)| Some(e)) != Some(pending_removal) {
                w.removed_seen = None;
            }
        }
        see(&mut s.witnesses[0], revoked_op, pending_removal);
        s.witnesses[1..].sort();
        if s.operation().is_none() {
            s.ghost.revoke_term = None;
            s.ghost.fence_under_new_leader = false;
        }

        let fencing = s
            .operation()
            .is_some_and(|op| op.state == OperationState::Running && op.step == Step::Fence);
        if !fencing {
            s.fence_task = None;
        } else if s.fence_task.is_none() {
            let since = s.witnesses[0].revoke_seen.map_or(0, |(_, t)| t);
            let bound = if self.switches.fence_wait_from_current_policy {
                // The hole: today's terms, not the longest in force since the activation.
                let policy = &self.policies[s.policy as usize];
                LeaseBound::of(
                    policy
                        .group(GROUP)
                        .expect("an operation's group is in the policy"),
                )
            } else {
                s.group().expect("an operation's group exists").lease_bound
            };
            s.fence_task = Some(bound_ticks(bound).saturating_sub(since));
        }
    }

    fn tick(&self, s: &mut ModelState) {
        for a in &mut s.agents {
            if let Some(h) = a.holding {
                if h.remaining <= a.rate {
                    // The self-fence timer fires; the renewal in flight is dropped.
                    a.holding = None;
                    a.in_flight = None;
                    lose(a);
                } else {
                    a.holding = Some(Held {
                        remaining: h.remaining - a.rate,
                        ..h
                    });
                }
            }
            if let Some(Reply::Granted { epoch, remaining }) = a.in_flight {
                if !self.switches.holder_deadline_from_receipt {
                    a.in_flight = Some(if remaining <= a.rate {
                        Reply::Refused
                    } else {
                        Reply::Granted {
                            epoch,
                            remaining: remaining - a.rate,
                        }
                    });
                }
            }
        }
        let cap = self.seen_cap;
        for w in &mut s.witnesses {
            for seen in [&mut w.revoke_seen, &mut w.removed_seen]
                .into_iter()
                .flatten()
            {
                seen.1 = (seen.1 + 1).min(cap);
            }
        }
        s.fence_task = s.fence_task.map(|t| t.saturating_sub(1));
    }

    fn request(&self, s: &mut ModelState, r: usize) {
        let epoch = s.agents[r].holding.map(|h| h.epoch);
        let decision = self.with_policy(s, |c| c.lease_check(GROUP, REGIONS[r], epoch), |_| None);
        let reply = match decision {
            Ok((epoch, lease_ms)) => {
                // S2: the grant names the last epoch issued, to this region, and a renewal
                // is granted only at the epoch it holds.
                let renewing_other = s.agents[r].holding.is_some_and(|h| h.epoch != epoch);
                if s.ghost.last_issued != (epoch, r) || renewing_other {
                    s.ghost.s2_broken = true;
                }
                if r == 0 && s.ghost.abort_then_grant == 1 {
                    s.ghost.abort_then_grant = 2;
                }
                Reply::Granted {
                    epoch,
                    remaining: holder_units(lease_ms),
                }
            }
            Err(_) => Reply::Refused,
        };
        if self.bounds.answers_travel {
            s.agents[r].in_flight = Some(reply);
        } else {
            self.receive(s, r, reply);
        }
    }

    /// Region `r`'s agent acts on `reply` as `agent::run` does.
    fn receive(&self, s: &mut ModelState, r: usize, reply: Reply) {
        let a = &mut s.agents[r];
        match (a.holding, reply) {
            (None, Reply::Granted { epoch, remaining }) => {
                // Acquired: on-gain opens the database.
                a.holding = Some(Held { epoch, remaining });
                a.fenced = false;
                a.db_open = true;
            }
            (None, Reply::Refused) => {
                // Fail closed once: the first attempt without a lease runs on-lose.
                if !a.fenced {
                    lose(a);
                }
            }
            (Some(h), Reply::Granted { remaining, .. }) => {
                // Renewed: the deadline of this send replaces the old one.
                a.holding = Some(Held { remaining, ..h });
            }
            (Some(_), Reply::Refused) => {
                a.holding = None;
                lose(a);
            }
        }
    }

    fn elect(&self, s: &mut ModelState, w: usize, prompt: bool) -> Option<()> {
        if w == 0 || w >= WITNESSES || s.budget.elections == 0 {
            return None;
        }
        s.budget.elections -= 1;
        s.term += 1;
        // The old leader's step tasks stop; the new one starts its own in `settle`.
        s.fence_task = None;
        let (revoked_op, pending_removal) = sightings(s);
        // The committing leader noted the commit itself: the oldest sighting is the commit.
        let oldest = |seen: fn(&Witness) -> Option<(u64, u8)>, key: u64| {
            s.witnesses
                .iter()
                .filter_map(seen)
                .filter(|(k, _)| *k == key)
                .map(|(_, age)| age)
                .max()
                .unwrap_or(0)
        };
        let revoke_age = revoked_op.map(|id| (id, oldest(|x| x.revoke_seen, id)));
        let removal_age = pending_removal.map(|e| (e, oldest(|x| x.removed_seen, e)));
        s.witnesses.swap(0, w);
        let witness = &mut s.witnesses[0];
        if witness.revoke_seen.is_none() {
            witness.revoke_seen = revoke_age.map(|(id, age)| (id, if prompt { age } else { 0 }));
        }
        if witness.removed_seen.is_none() {
            witness.removed_seen = removal_age.map(|(e, age)| (e, if prompt { age } else { 0 }));
        }
        Some(())
    }

    fn step(&self, s: &mut ModelState, step: Step, ok: bool) -> Option<()> {
        let op = s.operation()?.clone();
        if op.state != OperationState::Running || op.step != step {
            return None;
        }
        if step == Step::Fence && s.fence_task != Some(0) {
            return None;
        }
        if !ok {
            if s.budget.halts == 0 {
                return None;
            }
            s.budget.halts -= 1;
        }
        if step == Step::Promote && self.switches.promote_opens_writes {
            s.agents[region_index(&op.to)].db_open = true;
        }
        let command = if ok {
            Command::CompleteStep {
                operation: op.id,
                step,
                outcome: StepOutcome::Completed,
                detail: String::new(),
            }
        } else {
            Command::HaltOperation {
                operation: op.id,
                step,
                error: "hook failed".into(),
            }
        };
        match self.apply(s, LEADER, command) {
            Ok(_) => {}
            // The operation moved on: nothing to record (as `step_task` ignores these).
            Err(
                Refusal::OperationState { .. }
                | Refusal::WrongStep { .. }
                | Refusal::UnknownOperation { .. },
            ) => return None,
            // The state machine will not record the step: the operation halts for an
            // operator (`step_task`).
            Err(refusal) => {
                let halt = Command::HaltOperation {
                    operation: op.id,
                    step,
                    error: format!("the cluster refused to record {step}: {refusal}"),
                };
                self.apply(s, LEADER, halt).ok()?;
                return Some(());
            }
        }
        if ok && step == Step::Revoke {
            s.ghost.revoke_term = Some(s.term);
        }
        if ok && step == Step::Fence && s.ghost.revoke_term != Some(s.term) {
            s.ghost.fence_under_new_leader = true;
        }
        if ok && step == Step::Activate {
            s.ghost.activate(op.to_epoch, region_index(&op.to));
        }
        Some(())
    }

    /// The epoch of the removed incarnation whose leases the leader has waited out (from
    /// its own sighting of the removal, for `LeaseBound::wait_ms` of the removed record).
    fn removal_due(&self, s: &ModelState) -> Option<u64> {
        let r = s.cluster.removed.get(GROUP).filter(|r| !r.leases_expired)?;
        let since = s.witnesses[0]
            .removed_seen
            .filter(|(e, _)| *e == r.epoch)
            .map(|(_, t)| t)?;
        let wait = if self.switches.removed_expiry_without_wait {
            // The hole: no wait at all.
            0
        } else {
            bound_ticks(r.lease_bound)
        };
        (since >= wait).then_some(r.epoch)
    }

    fn removed_leases_expired(&self, s: &mut ModelState) -> Option<()> {
        let epoch = self.removal_due(s)?;
        let command = Command::RemovedLeasesExpired {
            group: GROUP.into(),
            epoch,
        };
        self.apply(s, LEADER, command).ok().map(|_| ())
    }

    /// Whether the leader's executor has something to do now. It is eager: what it can do
    /// happens before time passes (a slower executor does the same later, which only gives
    /// leases more time to run out; operators and agents still act between its steps).
    fn leader_busy(&self, s: &ModelState) -> bool {
        let step_due = s.operation().is_some_and(|op| match op.state {
            OperationState::Running => op.step != Step::Fence || s.fence_task == Some(0),
            OperationState::Aborting { .. } => true,
            _ => false,
        });
        step_due || self.removal_due(s).is_some()
    }

    fn start(&self, s: &mut ModelState, to: usize, approval: bool) -> Option<()> {
        if s.budget.operations == 0 {
            return None;
        }
        let command = Command::StartOperation {
            group: GROUP.into(),
            to: REGIONS[to].into(),
            kind: OperationKind::Failover,
            reason: "model".into(),
            approval_required: approval,
            requested: false,
        };
        let to_epoch = match self.apply(s, OPERATOR, command) {
            Ok(Outcome::Operation(op)) => op.to_epoch,
            _ => return None,
        };
        s.budget.operations -= 1;
        s.ghost.reserve(to_epoch);
        s.ghost.abort_then_grant = 0;
        Some(())
    }

    fn intervene(&self, s: &mut ModelState, action: Action) -> Option<()> {
        if s.budget.interventions == 0 {
            return None;
        }
        let op = s.operation()?;
        let operation = op.id;
        let revoked = op.has_completed(Step::Revoke);
        let command = match action {
            Action::Approve => Command::ApproveOperation {
                operation,
                break_glass: None,
            },
            Action::Retry => Command::RetryOperation { operation },
            Action::Skip => Command::SkipStep {
                operation,
                step: op.step,
            },
            Action::Abort => Command::AbortOperation {
                operation,
                reason: "operator".into(),
            },
            _ => return None,
        };
        self.apply(s, OPERATOR, command).ok()?;
        s.budget.interventions -= 1;
        if action == Action::Abort && revoked {
            s.ghost.abort_then_grant = 1;
        }
        Some(())
    }

    fn apply_policy(&self, s: &mut ModelState, p: PolicyId) -> Option<()> {
        if s.budget.policy_changes == 0 || s.policy == p {
            return None;
        }
        let existed = s.group().is_some();
        let command = Command::ApplyPolicy {
            policy: self.policies[p as usize].clone(),
            if_version: 0,
        };
        self.apply_as(s, OPERATOR, command, Some(p)).ok()?;
        s.budget.policy_changes -= 1;
        if let (false, Some(g)) = (existed, s.group()) {
            let (epoch, region) = (g.epoch, region_index(&g.active));
            s.ghost.create(epoch, region);
        }
        Some(())
    }
}

/// What a witness can have seen applied: the revoke of the operation in progress (by
/// id) and the removal of a group whose leases may still be held (by its epoch).
fn sightings(s: &ModelState) -> (Option<u64>, Option<u64>) {
    let revoked_op = s
        .operation()
        .filter(|op| op.has_completed(Step::Revoke))
        .map(|op| op.id);
    let pending_removal = s
        .cluster
        .removed
        .get(GROUP)
        .filter(|r| !r.leases_expired)
        .map(|r| r.epoch);
    (revoked_op, pending_removal)
}

/// The witness notes, now, the revoke of `op` and the removal of incarnation `removed`
/// unless it already has.
fn see(w: &mut Witness, op: Option<u64>, removed: Option<u64>) {
    if let (Some(id), None) = (op, w.revoke_seen) {
        w.revoke_seen = Some((id, 0));
    }
    if let (Some(epoch), None) = (removed, w.removed_seen) {
        w.removed_seen = Some((epoch, 0));
    }
}

/// on-lose: the database stops accepting writes.
fn lose(a: &mut Agent) {
    a.fenced = true;
    a.db_open = false;
}

impl Model for LeaseModel {
    type State = ModelState;
    type Action = Action;

    fn init_states(&self) -> Vec<ModelState> {
        // The group is created by the first policy, applied to an empty cluster state.
        let mut cluster = ClusterState::default();
        let first = Proposal {
            actor: OPERATOR.to_string(),
            at_ms: 0,
            request_id: String::new(),
            command: Command::ApplyPolicy {
                policy: self.policies[PolicyId::Initial as usize].clone(),
                if_version: 0,
            },
        };
        let response = cluster.apply(1, &first);
        assert!(
            response.outcome.is_ok(),
            "the initial policy applies: {response}"
        );
        cluster.audit.clear();
        // Kept by name (`ModelState::policy`).
        cluster.policy = None;
        let g = cluster
            .groups
            .get(GROUP)
            .expect("the initial policy creates the group");
        let ghost = Ghost {
            last_issued: (g.epoch, region_index(&g.active)),
            ..Ghost::default()
        };
        let mut states = Vec::new();
        for &ra in &self.bounds.rates[0] {
            for &rb in &self.bounds.rates[1] {
                states.push(ModelState {
                    cluster: cluster.clone(),
                    policy: PolicyId::Initial,
                    index: 1,
                    term: 0,
                    witnesses: [Witness::default(); WITNESSES],
                    fence_task: None,
                    agents: [Agent::new(ra), Agent::new(rb)],
                    budget: self.bounds.budget,
                    ghost,
                });
            }
        }
        states
    }

    fn actions(&self, s: &ModelState, actions: &mut Vec<Action>) {
        if !self.leader_busy(s) {
            actions.push(Action::Tick);
        }
        for r in 0..REGIONS.len() {
            actions.push(Action::Request(r));
            if s.agents[r].in_flight.is_some() {
                actions.push(Action::Deliver(r));
            }
        }
        let (revoked_op, pending_removal) = sightings(s);
        if s.budget.elections > 0 && (revoked_op.is_some() || pending_removal.is_some()) {
            for w in 1..WITNESSES {
                actions.push(Action::Elect { w, prompt: false });
                let unseen = (revoked_op.is_some() && s.witnesses[w].revoke_seen.is_none())
                    || (pending_removal.is_some() && s.witnesses[w].removed_seen.is_none());
                if unseen {
                    actions.push(Action::Elect { w, prompt: true });
                }
            }
        }
        if let Some(op) = s.operation() {
            match op.state {
                OperationState::Running => match op.step {
                    Step::Fence => {
                        if s.fence_task == Some(0) {
                            actions.push(Action::Step(Step::Fence, true));
                        }
                    }
                    step @ (Step::RpoCheck | Step::Promote | Step::Validate) => {
                        actions.push(Action::Step(step, true));
                        if s.budget.halts > 0 {
                            actions.push(Action::Step(step, false));
                        }
                    }
                    Step::Done => {}
                    step => actions.push(Action::Step(step, true)),
                },
                OperationState::Aborting { .. } => actions.push(Action::FinishAbort),
                _ => {}
            }
            // Offered where the state machine may accept them; it decides. Abort is
            // offered at every step, the refused ones included.
            if s.budget.interventions > 0 {
                let halted = matches!(op.state, OperationState::Halted { .. });
                if halted || op.state == OperationState::AwaitingApproval {
                    actions.push(Action::Approve);
                }
                if halted {
                    actions.extend([Action::Retry, Action::Skip]);
                }
                if !op.state.is_finished() {
                    actions.push(Action::Abort);
                }
            }
        }
        if self.removal_due(s).is_some() {
            actions.push(Action::RemovedLeasesExpired);
        }
        if s.budget.operations > 0 {
            for (to, region) in REGIONS.iter().enumerate() {
                if s.group().is_some_and(|g| g.active != *region) {
                    actions.push(Action::Start {
                        to,
                        approval: false,
                    });
                    // Without an intervention left, nobody could approve it.
                    if s.budget.interventions > 0 {
                        actions.push(Action::Start { to, approval: true });
                    }
                }
            }
        }
        if s.budget.policy_changes > 0 {
            for &p in &self.bounds.policies {
                if p != s.policy {
                    actions.push(Action::ApplyPolicy(p));
                }
            }
        }
    }

    fn next_state(&self, last: &ModelState, action: Action) -> Option<ModelState> {
        let mut s = last.clone();
        match action {
            Action::Tick => self.tick(&mut s),
            Action::Request(r) => self.request(&mut s, r),
            Action::Deliver(r) => {
                let reply = s.agents[r].in_flight.take()?;
                self.receive(&mut s, r, reply);
            }
            Action::Elect { w, prompt } => self.elect(&mut s, w, prompt)?,
            Action::Step(step, ok) => self.step(&mut s, step, ok)?,
            Action::FinishAbort => {
                let op = s.operation()?;
                if !matches!(op.state, OperationState::Aborting { .. }) {
                    return None;
                }
                let command = Command::FinishAbort {
                    operation: op.id,
                    detail: "unfenced".into(),
                };
                self.apply(&mut s, LEADER, command).ok()?;
            }
            Action::RemovedLeasesExpired => self.removed_leases_expired(&mut s)?,
            Action::Start { to, approval } => self.start(&mut s, to, approval)?,
            Action::Approve | Action::Retry | Action::Skip | Action::Abort => {
                self.intervene(&mut s, action)?
            }
            Action::ApplyPolicy(p) => self.apply_policy(&mut s, p)?,
        }
        self.settle(&mut s);
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(S1_WRITES, |_, s: &ModelState| {
                !(s.agents[0].db_open && s.agents[1].db_open)
            }),
            Property::always(S1_LEASES, |_, s: &ModelState| {
                !(s.agents[0].holding.is_some() && s.agents[1].holding.is_some())
            }),
            Property::always(S2_EPOCHS, |_, s: &ModelState| !s.ghost.s2_broken),
            Property::sometimes(REACH_FAILOVER, |_, s: &ModelState| {
                // Under these policies region-b is active only by an activation.
                matches!(s.policy, PolicyId::Initial | PolicyId::Lowered)
                    && s.group().is_some_and(|g| g.active == REGIONS[1])
                    && s.agents[1].db_open
            }),
            Property::sometimes(REACH_LOWERED, |_, s: &ModelState| {
                s.policy == PolicyId::Lowered
                    && s.agents[0]
                        .holding
                        .is_some_and(|h| h.remaining > holder_units(1_000))
            }),
            Property::sometimes(REACH_NEW_LEADER_FENCE, |_, s: &ModelState| {
                s.ghost.fence_under_new_leader
            }),
            Property::sometimes(REACH_ABORT, |_, s: &ModelState| {
                s.ghost.abort_then_grant == 2 && s.agents[0].db_open
            }),
            Property::sometimes(REACH_READDED, |_, s: &ModelState| {
                s.policy == PolicyId::Readded
                    && s.cluster.policy_version >= 3
                    && s.agents[1].db_open
            }),
        ]
    }
}

/// S1 over the writes accepted: at no instant do both regions' databases accept writes.
const S1_WRITES: &str = "S1: no two regions' databases accept writes at once";
/// S1 over leases: at no instant do both regions' agents believe they hold the lease.
const S1_LEASES: &str = "S1: no two regions' agents hold the lease at once";
/// S2: every epoch issued (activation, group creation) or reserved (declared operation)
/// is above every earlier one, and every grant names the region its epoch was issued to.
const S2_EPOCHS: &str = "S2: epochs strictly increase and name one region each";
/// Reachability (the model is not vacuous): a failover to region-b took writes there.
const REACH_FAILOVER: &str = "region-b's database writes after a failover";
/// The lease was lowered while region-a held more than the lowered lease.
const REACH_LOWERED: &str = "the lease is lowered while region-a holds a long one";
/// A leader elected after the revoke ended the fence wait.
const REACH_NEW_LEADER_FENCE: &str = "a new leader ends the fence wait";
/// region-a took writes again after an operation aborted after its revoke.
const REACH_ABORT: &str = "region-a writes again after an abort past the revoke";
/// The group removed and added again with region-b first took writes in region-b.
const REACH_READDED: &str = "region-b writes in the group added again";
