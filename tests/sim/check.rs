//! The invariants, judged on in-process state after every step and at every action:
//!
//! - **S1** single writer: at no instant do two regions of a group hold an unexpired lease,
//!   a holder's lease counted until the real-time instant its own (slow) clock reaches its
//!   deadline (send time + lease, stretched by its drift).
//! - **S2** monotone epochs: no epoch of a group ever names two regions, no witness's epoch
//!   of a group goes back, every operation reserves an epoch above every epoch an earlier
//!   operation of the group reserved (aborted ones included), and every grant is at an
//!   epoch committed for that region.
//! - **S3** consensus before action: every hook call names an operation, group and epoch
//!   its caller has applied, and no call at a term starts after a call at a newer term
//!   ([`ORDER_MARGIN`] apart).
//! - **S4** nothing acknowledged is lost: the states of all witnesses agree at every applied
//!   index (across crashes), and after healing every witness applied every acknowledged
//!   command.
//! - **S5** DNS follows consensus: the DNS server only takes a decision its publisher has
//!   applied, never one older than the decision it holds, and after healing it names every
//!   group's committed region and epoch.
//! - **S6** resumable operations: no operation records a step twice.
//! - **S7** quorum verdict: an automatic failover starts only when a majority of witnesses
//!   could not see the region it leaves, each for about the verdict window, recently.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use arbiter::dns::Decision;
use arbiter::hooks::HookContext;
use arbiter::raft::memory::MemoryRouter;
use arbiter::raft::Consensus;
use arbiter::state::{ClusterState, OperationKind, OperationState};
use tokio::time::Instant;

use super::plan::REGIONS;

/// Calls closer than this are not taken as ordered (as the jepsen checker of S3).
pub const ORDER_MARGIN: Duration = Duration::from_millis(100);
/// S7: a witness's blindness counts when it lasted this long (the verdict window of the
/// policy, 600 ms, less what probe rounds and reports add) ...
const BLIND_FOR_MIN: Duration = Duration::from_millis(400);
/// ... and ended no longer ago than this before the operation was seen.
const BLIND_RECENT: Duration = Duration::from_secs(3);
const REGION_EP: u64 = 101;

/// A time a witness could not see a region: from, until (`None`: still).
type Blindness = (Instant, Option<Instant>);

pub struct Checker {
    witnesses: u64,
    pub violations: Vec<String>,
    /// (group, region) -> (epoch, the instant its holder stops).
    leases: BTreeMap<(String, String), (u64, Instant)>,
    /// Grants to check against committed activations at the next step.
    pending_grants: Vec<(String, String, u64)>,
    /// group -> epoch -> region of every activation any witness applied.
    activations: BTreeMap<String, BTreeMap<u64, String>>,
    /// (witness, group) -> the last epoch seen there.
    epochs: BTreeMap<(u64, String), u64>,
    /// term -> when the first hook call at that term started.
    term_first_call: BTreeMap<u64, Instant>,
    /// Highest log index an acknowledged command reached.
    acked_max: u64,
    /// applied index -> hash of the state at it.
    hashes: BTreeMap<u64, u64>,
    /// witness -> last applied index checked.
    applied: BTreeMap<u64, u64>,
    /// (witness, region) -> intervals during which the witness could not see the region.
    blind: BTreeMap<(u64, usize), Vec<Blindness>>,
    regions_up: [bool; 3],
    ops_seen: BTreeSet<u64>,
    ops_done: BTreeSet<u64>,
    /// group -> (operation id, epoch) of the latest operation seen reserving the highest epoch.
    reserved: BTreeMap<String, (u64, u64)>,
    last_leader: Option<(u64, u64)>,
    pub leader_changes: u64,
    pub hook_calls: u64,
}

impl Checker {
    pub fn new(witnesses: u64) -> Checker {
        Checker {
            witnesses,
            violations: Vec::new(),
            leases: BTreeMap::new(),
            pending_grants: Vec::new(),
            activations: BTreeMap::new(),
            epochs: BTreeMap::new(),
            term_first_call: BTreeMap::new(),
            acked_max: 0,
            hashes: BTreeMap::new(),
            applied: BTreeMap::new(),
            blind: BTreeMap::new(),
            regions_up: [true; 3],
            ops_seen: BTreeSet::new(),
            ops_done: BTreeSet::new(),
            reserved: BTreeMap::new(),
            last_leader: None,
            leader_changes: 0,
            hook_calls: 0,
        }
    }

    pub fn violation(&mut self, what: String) {
        if self.violations.len() < 20 {
            self.violations.push(what);
        }
    }

    pub fn failovers(&self) -> u64 {
        self.ops_done.len() as u64
    }

    /// S4: a command was acknowledged at `index`.
    pub fn acknowledged(&mut self, index: u64) {
        self.acked_max = self.acked_max.max(index);
    }

    /// S1 and (at the next step) S2: the holder of (group, region) was granted `epoch` and
    /// stops at `stops`.
    pub fn granted(&mut self, now: Instant, group: &str, region: &str, epoch: u64, stops: Instant) {
        let key = (group.to_string(), region.to_string());
        let entry = self.leases.entry(key).or_insert((epoch, stops));
        if stops > entry.1 {
            *entry = (epoch, stops);
        }
        self.pending_grants
            .push((group.to_string(), region.to_string(), epoch));
        let others: Vec<String> = self
            .leases
            .iter()
            .filter(|((g, r), (_, until))| g == group && r != region && *until > now)
            .map(|((_, r), (e, until))| {
                format!("{r} (epoch {e}) for {} ms more", (*until - now).as_millis())
            })
            .collect();
        if !others.is_empty() {
            self.violation(format!(
                "S1: {group} granted to {region} at epoch {epoch} while {} still holds it",
                others.join(", ")
            ));
        }
    }

    /// S3, at the hook target when a call arrives.
    pub fn hook_call(&mut self, now: Instant, caller: Option<&Consensus>, ctx: &HookContext) {
        self.hook_calls += 1;
        let committed = caller.is_some_and(|c| {
            c.with_state(|s| {
                s.operations.get(&ctx.operation).is_some_and(|op| {
                    op.group == ctx.group && op.to_epoch == ctx.epoch && op.id == ctx.operation
                })
            })
        });
        if !committed {
            self.violation(format!(
                "S3: hook {} for operation {} ({} epoch {}) by witness {}, which has not applied that decision",
                ctx.step, ctx.operation, ctx.group, ctx.epoch, ctx.witness
            ));
        }
        let newer = self
            .term_first_call
            .range(ctx.term + 1..)
            .find(|(_, at)| **at + ORDER_MARGIN <= now)
            .map(|(t, _)| *t);
        if let Some(t) = newer {
            self.violation(format!(
                "S3: a deposed leader acted: hook {} of operation {} by witness {} at term {} after a call at term {t}",
                ctx.step, ctx.operation, ctx.witness, ctx.term
            ));
        }
        self.term_first_call.entry(ctx.term).or_insert(now);
    }

    /// S5, at the DNS server when it takes a publication `d` over `held`, the decision it
    /// held for the group: `d` was applied by a witness, and is not older than `held` (a
    /// name moved back to a region that has since lost its activation sends clients to a
    /// fenced database).
    pub fn dns_published(
        &mut self,
        caller: Option<&Consensus>,
        d: &Decision,
        held: Option<&Decision>,
    ) {
        if let Some(h) = held.filter(|h| h.key() > d.key()) {
            self.violation(format!(
                "S5: the DNS server took {} -> {} at epoch {} (policy {}) over the newer {} at epoch {} (policy {}): rolled back",
                d.group, d.region, d.epoch, d.policy_version, h.region, h.epoch, h.policy_version
            ));
        }
        if let Some(c) = caller {
            let state = c.state();
            self.register(c.id(), &state);
        }
        let committed = self
            .activations
            .get(&d.group)
            .and_then(|a| a.get(&d.epoch))
            .is_some_and(|r| *r == d.region);
        if !committed {
            self.violation(format!(
                "S5: the DNS server took {} -> {} at epoch {}, which no witness applied",
                d.group, d.region, d.epoch
            ));
        }
    }

    /// S7's facts: which witness can see which region.
    pub fn regions_changed(&mut self, now: Instant, up: [bool; 3], router: &MemoryRouter) {
        self.regions_up = up;
        self.net_changed(now, router);
    }

    pub fn net_changed(&mut self, now: Instant, router: &MemoryRouter) {
        for w in 1..=self.witnesses {
            for r in 0..REGIONS.len() {
                let ep = REGION_EP + r as u64;
                let blind = !self.regions_up[r] || router.is_cut(w, ep) || router.is_cut(ep, w);
                let list = self.blind.entry((w, r)).or_default();
                let open = list.last().is_some_and(|(_, end)| end.is_none());
                if blind && !open {
                    list.push((now, None));
                } else if !blind && open {
                    list.last_mut().unwrap().1 = Some(now);
                }
            }
        }
    }

    /// Records the activations and epochs of one witness's applied state (S2).
    fn register(&mut self, witness: u64, state: &ClusterState) {
        for g in state.groups.values() {
            let regions = self.activations.entry(g.name.clone()).or_default();
            match regions.get(&g.epoch) {
                Some(r) if *r != g.active => {
                    let msg = format!(
                        "S2: epoch {} of {} names {} on witness {witness} but {r} elsewhere",
                        g.epoch, g.name, g.active
                    );
                    self.violation(msg);
                }
                Some(_) => {}
                None => {
                    regions.insert(g.epoch, g.active.clone());
                }
            }
            let last = self.epochs.insert((witness, g.name.clone()), g.epoch);
            if let Some(last) = last.filter(|l| g.epoch < *l) {
                self.violation(format!(
                    "S2: the epoch of {} went back from {last} to {} on witness {witness}",
                    g.name, g.epoch
                ));
            }
        }
    }

    /// After every step: registers what every running witness applied and checks it.
    pub fn step(
        &mut self,
        now: Instant,
        ms: u64,
        running: &[Arc<Consensus>],
        _router: &MemoryRouter,
        trace: &mut Vec<String>,
    ) {
        // Leader changes (the leader of the highest term).
        let leader = running
            .iter()
            .filter(|c| c.is_leader())
            .map(|c| (c.view().term, c.id()))
            .max();
        if let Some(l) = leader {
            if self.last_leader.is_some_and(|p| p != l) {
                self.leader_changes += 1;
            }
            if self.last_leader != Some(l) {
                trace.push(format!("{ms:>6} leader {} term {}", l.1, l.0));
            }
            self.last_leader = Some(l);
        }
        for c in running {
            let id = c.id();
            if self.applied.get(&id) == Some(&c.with_state_at(|_, index| index)) {
                continue;
            }
            let (index, state) = c.with_state_at(|s, index| (index, s.clone()));
            self.applied.insert(id, index);
            // S4: every witness's state at one index is the same state.
            let hash = hash_state(&state);
            trace.push(format!(
                "{ms:>6} witness {id} applied {index} state {hash:016x}"
            ));
            match self.hashes.get(&index) {
                Some(h) if *h != hash => {
                    self.violation(format!(
                        "S4: witness {id}'s state at index {index} differs from another witness's"
                    ));
                }
                Some(_) => {}
                None => {
                    self.hashes.insert(index, hash);
                }
            }
            self.register(id, &state);
            for op in state.operations.values() {
                // S6: each step recorded once.
                let mut steps = BTreeSet::new();
                for s in &op.steps {
                    if !steps.insert(s.step) {
                        self.violation(format!(
                            "S6: operation {} recorded step {} twice",
                            op.id, s.step
                        ));
                    }
                }
                if op.state == OperationState::Done {
                    self.ops_done.insert(op.id);
                }
                if !self.ops_seen.insert(op.id) {
                    continue;
                }
                // S2: an operation's epoch is above every earlier operation's of its group.
                match self.reserved.get(&op.group).copied() {
                    Some((earlier, epoch)) if earlier < op.id && op.to_epoch <= epoch => {
                        self.violation(format!(
                            "S2: operation {} of {} reserved epoch {}, already reserved by operation {earlier} (epoch {epoch})",
                            op.id, op.group, op.to_epoch
                        ));
                    }
                    Some((_, epoch)) if epoch >= op.to_epoch => {}
                    _ => {
                        self.reserved.insert(op.group.clone(), (op.id, op.to_epoch));
                    }
                }
                if op.kind == OperationKind::Automatic {
                    self.judge_verdict(now, op.id, &op.group, &op.from);
                }
            }
        }
        // S2: every grant at an epoch committed for its region.
        for (group, region, epoch) in std::mem::take(&mut self.pending_grants) {
            let committed = self
                .activations
                .get(&group)
                .and_then(|a| a.get(&epoch))
                .is_some_and(|r| *r == region);
            if !committed {
                self.violation(format!(
                    "S2: {group}'s lease granted to {region} at epoch {epoch}, not an epoch activated for it"
                ));
            }
        }
    }

    /// S7 for automatic operation `id` of `group` away from `from`.
    fn judge_verdict(&mut self, now: Instant, id: u64, group: &str, from: &str) {
        let Some(r) = REGIONS.iter().position(|x| *x == from) else {
            return;
        };
        let blind = (1..=self.witnesses)
            .filter(|w| {
                self.blind.get(&(*w, r)).is_some_and(|list| {
                    list.iter().any(|(start, end)| {
                        let end = end.unwrap_or(now);
                        end - *start >= BLIND_FOR_MIN && end + BLIND_RECENT >= now
                    })
                })
            })
            .count() as u64;
        if blind * 2 <= self.witnesses {
            self.violation(format!(
                "S7: automatic operation {id} moved {group} away from {from}, which only {blind} of {} witnesses could not see",
                self.witnesses
            ));
        }
    }

    /// After healing: every witness applied every acknowledged command (S4).
    pub fn finish(&mut self, running: &[Arc<Consensus>]) {
        for c in running {
            let applied = c.view().applied_index;
            if applied < self.acked_max {
                self.violation(format!(
                    "S4: witness {} applied up to {applied}, below acknowledged index {}",
                    c.id(),
                    self.acked_max
                ));
            }
        }
    }
}

/// The hash of a state, its cluster id left out: a random label drawn once per cluster
/// (`api::new_request_id`), the one thing of a state that no seed decides.
fn hash_state(state: &ClusterState) -> u64 {
    let mut state = state.clone();
    state.cluster_id = state.cluster_id.map(|_| String::new());
    let text = serde_json::to_string(&state).expect("state serializes");
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}
