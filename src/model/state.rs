//! One state of the model: the applied [`ClusterState`] (the real one), the witnesses'
//! local sightings, the agents and their databases, the operator's remaining budget, and
//! ghost records for the properties. Every time in it is relative (ticks since, units
//! until), never absolute, so states reached at different instants merge and the state
//! graph is finite without a time horizon.

use std::hash::{Hash, Hasher};

use crate::state::{ClusterState, LeaseBound, Operation, OperationState};

use super::policies::{PolicyId, GROUP, REGIONS};

/// Witnesses in the model (one or two per region and the tiebreaker in a real cluster:
/// three are enough for a leader to change twice to a witness that saw things differently).
pub(super) const WITNESSES: usize = 3;

/// What one witness's executor has seen applied, on its own monotonic clock
/// (`executor::run`'s `revoke_seen` and `removed_seen` maps).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Witness {
    /// The operation whose revoke this witness saw applied, and the ticks since
    /// (saturating at the longest wait: beyond it, only "long enough" matters).
    pub revoke_seen: Option<(u64, u8)>,
    /// The removed incarnation (by its epoch) whose removal this witness saw applied, and
    /// the ticks since.
    pub removed_seen: Option<(u64, u8)>,
}

/// A held lease as the holder knows it (`LeaseState::Held`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Held {
    pub epoch: u64,
    /// Holder clock units until the deadline (`t_sent + lease` on the holder's clock); the
    /// lease is held while this is above zero.
    pub remaining: u32,
}

/// The leader's answer to a request, on its way to the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Reply {
    /// Granted at `epoch`; the deadline it gives is `remaining` holder units away (counted
    /// from the send, so it runs down while the answer travels).
    Granted { epoch: u64, remaining: u32 },
    /// Refused, or granted with a deadline already past on arrival (the agent treats both
    /// alike: no lease, on-lose if not yet fenced).
    Refused,
}

/// One region's `arbiter agent` and its database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Agent {
    /// Holder clock units per tick of real time: fixed per holder, within the drift bound.
    pub rate: u32,
    /// The lease as the agent believes it holds it.
    pub holding: Option<Held>,
    /// `agent::run`'s `fenced`: on-lose has run since the lease was last held.
    pub fenced: bool,
    /// At most one request in flight (the agent awaits each call).
    pub in_flight: Option<Reply>,
    /// The database accepts writes: opened by on-gain, closed by on-lose.
    pub db_open: bool,
}

impl Agent {
    pub(super) fn new(rate: u32) -> Agent {
        Agent {
            rate,
            holding: None,
            // An agent starts "not fenced": its first attempt without a lease runs on-lose.
            fenced: false,
            in_flight: None,
            // The model starts after that first attempt closed any database started early.
            db_open: false,
        }
    }
}

/// What the operator and the faults may still do: the bounds of the check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Budget {
    pub operations: u8,
    pub policy_changes: u8,
    pub elections: u8,
    /// Approvals, retries, skips and aborts.
    pub interventions: u8,
    /// Steps that halt (rpo-check, promote, validate).
    pub halts: u8,
}

/// What the properties need to know of the past, kept to a few values so that it splits
/// as few states as possible. Nothing here changes what happens next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct Ghost {
    /// The last epoch issued (by an activation or a group's creation) and its region.
    pub last_issued: (u64, usize),
    /// The last epoch reserved by a declared operation (its hooks carry it, even when the
    /// operation is aborted and the epoch never activated).
    pub last_reserved: u64,
    /// S2 was broken: an epoch issued or reserved not above every earlier one (an
    /// activation takes its own operation's reservation), or a grant naming another
    /// epoch or region than the last issued.
    pub s2_broken: bool,
    /// The term in which the operation in progress committed its revoke.
    pub revoke_term: Option<u8>,
    /// The operation in progress completed its fence step in another term than its revoke.
    pub fence_under_new_leader: bool,
    /// Since the last operation started: 1 it was aborted after its revoke, 2 and then
    /// region-a was granted the lease again.
    pub abort_then_grant: u8,
}

impl Ghost {
    /// A group's creation issues `epoch` to `region`: above every epoch issued or
    /// reserved before, its removed incarnations' included.
    pub(super) fn create(&mut self, epoch: u64, region: usize) {
        if epoch <= self.last_issued.0.max(self.last_reserved) {
            self.s2_broken = true;
        }
        self.last_issued = (epoch, region);
    }

    /// A declared operation reserves `epoch`: above every epoch issued or reserved before.
    pub(super) fn reserve(&mut self, epoch: u64) {
        if epoch <= self.last_issued.0.max(self.last_reserved) {
            self.s2_broken = true;
        }
        self.last_reserved = epoch;
    }

    /// An activation issues `epoch` to `region`: its operation's reservation, above the
    /// last epoch issued.
    pub(super) fn activate(&mut self, epoch: u64, region: usize) {
        if epoch <= self.last_issued.0 || epoch != self.last_reserved {
            self.s2_broken = true;
        }
        self.last_issued = (epoch, region);
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct ModelState {
    /// The replicated state as applied: the real state machine, driven through `apply`.
    /// Its audit log is cleared after each apply (written, never read).
    pub cluster: ClusterState,
    /// Which model policy `cluster.policy` is.
    pub policy: PolicyId,
    /// Last log index.
    pub index: u64,
    /// Elections so far. The leader is always `witnesses[0]`; the followers are kept
    /// sorted, because witnesses differ only in what they have seen.
    pub term: u8,
    pub witnesses: [Witness; WITNESSES],
    /// The leader's running fence step: ticks until its lease wait ends (counted from the
    /// leader's own `revoke_seen`, with the bound read when the step started).
    pub fence_task: Option<u8>,
    pub agents: [Agent; 2],
    pub budget: Budget,
    /// What the properties need of the past.
    pub ghost: Ghost,
}

impl ModelState {
    pub(super) fn group(&self) -> Option<&crate::state::GroupState> {
        self.cluster.groups.get(GROUP)
    }

    /// The group's operation in progress.
    pub(super) fn operation(&self) -> Option<&Operation> {
        let id = self.group()?.operation?;
        self.cluster.operations.get(&id)
    }

    /// One line: the group, the operation, the leader's tasks and each region.
    pub(super) fn summary(&self) -> String {
        let group = match self.group() {
            None => "group removed".to_string(),
            Some(g) => format!(
                "{} active at epoch {}{}",
                g.active,
                g.epoch,
                if g.revoked { " (revoked)" } else { "" }
            ),
        };
        let op = match self.operation() {
            None => String::new(),
            Some(op) => format!(
                ", op {} {} at {} ({})",
                op.id,
                op.to,
                op.step,
                match &op.state {
                    OperationState::Halted { .. } => "halted",
                    s => s.name(),
                }
            ),
        };
        let fence = self
            .fence_task
            .map_or(String::new(), |t| format!(", fence wait ends in {t} ticks"));
        let removed = self
            .cluster
            .removed
            .get(GROUP)
            .filter(|r| !r.leases_expired)
            .map_or(String::new(), |r| {
                format!(
                    ", removed incarnation (epoch {}) leases pending, wait {} ms",
                    r.epoch,
                    r.lease_bound.wait_ms()
                )
            });
        let regions: Vec<String> = self
            .agents
            .iter()
            .zip(REGIONS)
            .map(|(a, name)| {
                let lease = match a.holding {
                    Some(h) => format!(
                        "holds e{} for {:.2} ticks",
                        h.epoch,
                        f64::from(h.remaining) / f64::from(a.rate)
                    ),
                    None => "no lease".to_string(),
                };
                let flight = match a.in_flight {
                    Some(Reply::Granted { epoch, remaining }) => {
                        format!(", grant e{epoch} in flight ({remaining} units)")
                    }
                    Some(Reply::Refused) => ", refusal in flight".to_string(),
                    None => String::new(),
                };
                format!(
                    "{name}: {lease}{flight}, db {}",
                    if a.db_open { "WRITES" } else { "closed" }
                )
            })
            .collect();
        format!(
            "term {}; {group}{op}{fence}{removed}; {}",
            self.term,
            regions.join("; ")
        )
    }
}

fn hash_bound<H: Hasher>(b: &LeaseBound, h: &mut H) {
    (b.lease_ms, b.clock_drift_percent, b.lease_margin_ms).hash(h);
}

/// The fingerprint of a state, which is all the checker keeps of it: two states with the
/// same fingerprint are explored once. So every field that can change what happens next
/// (or what a property says) is hashed, and what cannot is left out, so that states which
/// differ only in their history merge:
///
/// - the audit log (cleared), `audit_next_seq`, `requests` (the model sends no request
///   ids), `verdicts` (never recorded), `cluster_id` (never set), the policy (`policy`
///   names it);
/// - finished operations: the model only ever acts on the group's operation in progress;
/// - log indices (`ModelState::index`, `changed_at_index`, a step's `index`, a removed
///   group's `index`): the state machine records them and decides nothing on them (a
///   removed group's index orders trimming beyond `REMOVED_GROUPS_MAX`, far out of reach);
/// - texts (reasons, details, actors, error messages) and wall-clock stamps (all 0).
impl Hash for ModelState {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let c = &self.cluster;
        c.policy_version.hash(h);
        for (name, g) in &c.groups {
            name.hash(h);
            g.candidates.hash(h);
            g.active.hash(h);
            g.epoch.hash(h);
            g.mode.as_str().hash(h);
            g.revoked.hash(h);
            g.operation.hash(h);
            g.activated_at_ms.hash(h);
            g.reserved_epoch.hash(h);
            hash_bound(&g.lease_bound, h);
        }
        for (name, r) in &c.removed {
            name.hash(h);
            r.epoch.hash(h);
            r.active.hash(h);
            hash_bound(&r.lease_bound, h);
            r.leases_expired.hash(h);
        }
        c.epoch_floor.hash(h);
        c.last_operation_id.hash(h);
        for (id, op) in c
            .operations
            .iter()
            .filter(|(_, op)| !op.state.is_finished())
        {
            id.hash(h);
            op.group.hash(h);
            op.kind.as_str().hash(h);
            op.from.hash(h);
            op.to.hash(h);
            op.from_epoch.hash(h);
            op.to_epoch.hash(h);
            op.state.name().hash(h);
            op.step.hash(h);
            for record in &op.steps {
                record.step.hash(h);
            }
            op.unfenced.is_some().hash(h);
        }
        self.policy.hash(h);
        self.term.hash(h);
        self.witnesses.hash(h);
        self.fence_task.hash(h);
        self.agents.hash(h);
        self.budget.hash(h);
        self.ghost.hash(h);
    }
}
