//! What a seed means: the generator turns a seed into a plan, the cluster's size, the first
//! policy, every holder's clock drift, and a timed list of faults and operator actions for
//! the chaos phase. Every plan holds, whatever the seed, at least one outage of the active
//! region long enough for a failover, one fault aimed at the leader of the moment, and two
//! policy changes; the rest is drawn at random. The plan is all the randomness of a run
//! beside the network's losses, which the router draws from the same seed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Regions of the simulated world, in the order of their endpoint ids.
pub const REGIONS: [&str; 3] = ["region-a", "region-b", "region-c"];
/// Groups of the policy: `checkout` is always present, `catalog` may be removed and re-added.
pub const GROUPS: [&str; 2] = ["checkout", "catalog"];
/// Length of the chaos phase: every seed runs at least this long in simulated time.
pub const CHAOS_MS: u64 = 30_000;

/// Policy terms the plan moves around.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    pub lease_ms: u64,
    pub margin_ms: u64,
    pub drift_percent: u64,
    /// Whether `catalog` is in the policy.
    pub catalog: bool,
    /// Whether `region-c` is a candidate of `catalog`.
    pub catalog_c: bool,
    /// Whether `catalog`'s first candidate is `region-a` (else `region-b`).
    pub catalog_a_first: bool,
}

/// One change of policy, applied to the terms in force when it fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyChange {
    LeaseMs(u64),
    MarginMs(u64),
    DriftPercent(u64),
    RemoveCatalog,
    /// Adds `catalog` back (if removed) with `region-a` first when set.
    ReaddCatalog(bool),
    CatalogC(bool),
}

/// What an operator does to the current operation of a group (if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorAction {
    Abort,
    Retry,
    Skip,
    Approve,
    /// Starts a manual failover to the group's next candidate.
    Failover,
}

/// Modes an operator sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetMode {
    Auto,
    Manual,
    Frozen,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Cuts every link from each of `side` to each other witness (and back unless
    /// `one_way`).
    Partition {
        side: Vec<u64>,
        one_way: bool,
    },
    /// Restores every link, latency and loss.
    HealNetwork,
    /// Latency on both directions between two endpoints.
    Delay {
        a: u64,
        b: u64,
        ms: u64,
    },
    /// Loss on the link from `from` to `to`, in parts per thousand.
    Loss {
        from: u64,
        to: u64,
        permille: u32,
    },
    Crash(u64),
    /// Starts witness `n` again on its disk; `0`: every crashed witness.
    Restart(u64),
    /// Crashes whichever witness leads when it fires (restarted by a later `Restart`).
    CrashLeader,
    /// Cuts the leader of the moment off from every other witness, until `Rejoin` (other
    /// faults' heals leave it cut off).
    IsolateLeader,
    Rejoin,
    Pause(u64),
    Resume(u64),
    RegionDown(usize),
    RegionUp(usize),
    /// Witness `witness` cannot reach region `region` (its probes fail) until healed.
    BlindWitness {
        witness: u64,
        region: usize,
    },
    /// The wall clock of a witness jumps.
    ClockJump {
        witness: u64,
        ms: i64,
    },
    Policy(PolicyChange),
    Mode {
        group: usize,
        mode: SetMode,
    },
    Operator {
        group: usize,
        action: OperatorAction,
    },
    /// Hooks fail (exit non-zero) with this chance in parts per thousand while set.
    HookFailures(u32),
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    pub witnesses: u64,
    pub initial: Terms,
    /// Per region: the holder's clock runs slow by this fraction of the smallest drift bound
    /// the plan ever sets (parts per thousand of it, below 1000: always within the bound).
    pub holder_drift_permille: [u32; 3],
    /// (at_ms, event), sorted by time.
    pub events: Vec<(u64, Event)>,
    /// Jitter of every link between a witness and the DNS server in the chaos phase (zero:
    /// none): each message takes a latency drawn from zero to this many ms.
    pub dns_jitter_ms: u64,
}

impl Plan {
    pub fn generate(seed: u64) -> Plan {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x005e_ed0f_a2b1_7e12);
        let witnesses = if rng.random_bool(0.5) { 3 } else { 5 };
        let initial = Terms {
            lease_ms: [1_000, 1_500, 2_000, 3_000][rng.random_range(0..4)],
            margin_ms: [100, 200, 400][rng.random_range(0..3)],
            drift_percent: [5, 10, 20][rng.random_range(0..3)],
            catalog: true,
            catalog_c: rng.random_bool(0.5),
            catalog_a_first: false,
        };
        let mut events: Vec<(u64, Event)> = Vec::new();
        let at = |lo: u64, hi: u64, rng: &mut StdRng| rng.random_range(lo..hi);
        let w = |rng: &mut StdRng| rng.random_range(1..=witnesses);

        // The outage every seed has: checkout's first active region goes down long enough
        // for a quorum verdict and a whole failover, and comes back.
        let down = at(2_000, 4_000, &mut rng);
        events.push((down, Event::RegionDown(0)));
        events.push((down + at(9_000, 12_000, &mut rng), Event::RegionUp(0)));

        // A fault aimed at the leader of the moment: a leader change.
        let hit = at(14_000, 18_000, &mut rng);
        if rng.random_bool(0.5) {
            events.push((hit, Event::CrashLeader));
            // The restart brings back every crashed witness's successor process.
            events.push((hit + at(2_000, 5_000, &mut rng), Event::Restart(0)));
        } else {
            events.push((hit, Event::IsolateLeader));
            events.push((hit + at(3_000, 6_000, &mut rng), Event::Rejoin));
        }

        // Policy changes: at least two changes of lease terms (never refused), then more
        // of any kind.
        let mut terms = initial.clone();
        for i in 0..rng.random_range(3..=6) {
            let t = at(1_000, 28_000, &mut rng);
            let kinds = if i < 2 { 3 } else { 6 };
            let change = match rng.random_range(0..kinds) {
                0 => PolicyChange::LeaseMs([1_000, 1_500, 2_000, 3_000][rng.random_range(0..4)]),
                1 => PolicyChange::MarginMs([50, 100, 300][rng.random_range(0..3)]),
                2 => PolicyChange::DriftPercent([5, 10, 20][rng.random_range(0..3)]),
                3 => PolicyChange::RemoveCatalog,
                4 => PolicyChange::ReaddCatalog(rng.random_bool(0.5)),
                _ => PolicyChange::CatalogC(!terms.catalog_c),
            };
            if let PolicyChange::CatalogC(c) = change {
                terms.catalog_c = c;
            }
            events.push((t, Event::Policy(change)));
        }

        // Random faults.
        for _ in 0..rng.random_range(3..=10) {
            let t = at(500, 28_000, &mut rng);
            let length = at(300, 5_000, &mut rng);
            match rng.random_range(0..9) {
                0 => {
                    let mut side: Vec<u64> =
                        (1..=witnesses).filter(|_| rng.random_bool(0.4)).collect();
                    if side.is_empty() {
                        side.push(w(&mut rng));
                    }
                    let one_way = rng.random_bool(0.5);
                    events.push((t, Event::Partition { side, one_way }));
                    events.push((t + length, Event::HealNetwork));
                }
                1 => {
                    let v = w(&mut rng);
                    events.push((t, Event::Crash(v)));
                    events.push((t + length, Event::Restart(v)));
                }
                2 => {
                    let v = w(&mut rng);
                    events.push((t, Event::Pause(v)));
                    events.push((t + length.min(3_000), Event::Resume(v)));
                }
                3 => {
                    let (a, b) = (w(&mut rng), w(&mut rng));
                    let ms = at(20, 300, &mut rng);
                    events.push((t, Event::Delay { a, b, ms }));
                    events.push((t + length, Event::HealNetwork));
                }
                4 => {
                    let (from, to) = (w(&mut rng), w(&mut rng));
                    let permille = rng.random_range(50..400);
                    events.push((t, Event::Loss { from, to, permille }));
                    events.push((t + length, Event::HealNetwork));
                }
                5 => {
                    let witness = w(&mut rng);
                    let region = rng.random_range(0..3);
                    events.push((t, Event::BlindWitness { witness, region }));
                    events.push((t + length, Event::HealNetwork));
                }
                6 => {
                    let region = rng.random_range(0..3);
                    events.push((t, Event::RegionDown(region)));
                    events.push((t + length, Event::RegionUp(region)));
                }
                7 => {
                    let witness = w(&mut rng);
                    let ms = rng.random_range(-5_000..5_000);
                    events.push((t, Event::ClockJump { witness, ms }));
                }
                _ => {
                    let permille = rng.random_range(100..700);
                    events.push((t, Event::HookFailures(permille)));
                    events.push((t + length, Event::HookFailures(0)));
                }
            }
        }

        // Mode changes: manual for a while, rarely frozen, auto again.
        for _ in 0..rng.random_range(0..=2) {
            let group = rng.random_range(0..2);
            let t = at(1_000, 25_000, &mut rng);
            let mode = if rng.random_bool(0.2) {
                SetMode::Frozen
            } else {
                SetMode::Manual
            };
            events.push((t, Event::Mode { group, mode }));
            events.push((
                t + at(1_000, 5_000, &mut rng),
                Event::Mode {
                    group,
                    mode: SetMode::Auto,
                },
            ));
        }

        // Operator actions.
        for _ in 0..rng.random_range(1..=5) {
            let group = rng.random_range(0..2);
            let action = [
                OperatorAction::Abort,
                OperatorAction::Retry,
                OperatorAction::Skip,
                OperatorAction::Approve,
                OperatorAction::Failover,
            ][rng.random_range(0..5)];
            events.push((
                at(1_000, 29_000, &mut rng),
                Event::Operator { group, action },
            ));
        }

        events.sort_by_key(|(t, _)| *t);
        let holder_drift_permille = [0; 3].map(|_: u32| rng.random_range(0..950));
        // The path to the DNS server, from a stream of its own so that the draws above are
        // what they were before it was added: in half the seeds a jittery path whose
        // latencies reach past the DNS client's timeout (3 s), so that some UPDATEs are
        // answered late, and some are still in flight when their sender gives up on them
        // and reach the server after UPDATEs sent since.
        let mut dns_rng = StdRng::seed_from_u64(seed ^ 0x0d25_11e7_0c5a_b1e5);
        let dns_jitter_ms = if dns_rng.random_bool(0.5) {
            dns_rng.random_range(500..6_000)
        } else {
            0
        };
        Plan {
            seed,
            witnesses,
            initial,
            holder_drift_permille,
            events,
            dns_jitter_ms,
        }
    }

    /// The smallest drift bound any policy of this plan states, in percent.
    pub fn min_drift_percent(&self) -> u64 {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Policy(PolicyChange::DriftPercent(d)) => Some(*d),
                _ => None,
            })
            .fold(self.initial.drift_percent, u64::min)
    }
}
