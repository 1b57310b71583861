//! Running seeds: one on a fresh current-thread runtime with paused time, many on every core.

use std::hash::{Hash, Hasher};

use super::plan::Plan;
use super::world::Sim;

/// What one seed did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub seed: u64,
    pub trace_hash: u64,
    pub trace: Vec<String>,
    pub violations: Vec<String>,
    pub sim_ms: u64,
    pub failovers: u64,
    pub policy_changes: u64,
    pub leader_changes: u64,
    pub witnesses: u64,
}

/// Runs one seed on a fresh current-thread runtime with paused time.
pub fn run_seed(seed: u64) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let plan = Plan::generate(seed);
        let witnesses = plan.witnesses;
        let mut sim = Sim::new(plan).await;
        sim.bootstrap().await;
        sim.chaos().await;
        sim.liveness().await;
        let (trace, violations, sim_ms, failovers, leader_changes) = {
            let w = sim.world.lock().unwrap();
            (
                w.trace.clone(),
                w.checker.violations.clone(),
                w.ms(),
                w.checker.failovers(),
                w.checker.leader_changes,
            )
        };
        let policy_changes = sim.policy_changes;
        sim.stop().await;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        trace.hash(&mut h);
        Outcome {
            seed,
            trace_hash: h.finish(),
            trace,
            violations,
            sim_ms,
            failovers,
            policy_changes,
            leader_changes,
            witnesses,
        }
    })
}

/// Seeds from `SIM_FIRST_SEED` (default 0), `count` of them, on `threads` threads (each
/// seed on its own runtime); returns the outcomes in seed order.
pub fn run_seeds(count: u64, threads: usize) -> Vec<Outcome> {
    run_until(
        env_u64("SIM_FIRST_SEED").unwrap_or(0),
        count,
        threads,
        |_| false,
    )
}

/// Seeds `first..first + count` on `threads` threads until one outcome satisfies `stop`
/// (seeds already started still finish); the outcomes in seed order.
pub fn run_until(
    first: u64,
    count: u64,
    threads: usize,
    stop: impl Fn(&Outcome) -> bool + Sync,
) -> Vec<Outcome> {
    let stopped = std::sync::atomic::AtomicBool::new(false);
    let next = std::sync::atomic::AtomicU64::new(first);
    let outcomes = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if seed >= first + count || stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let o = run_seed(seed);
                if stop(&o) {
                    stopped.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                if !o.violations.is_empty() {
                    println!("FAILING SEED {seed}: {:?}", o.violations);
                    println!("  replay: SIM_SEED={seed} cargo test --test sim -- --ignored replay_one_seed --nocapture");
                }
                outcomes.lock().unwrap().push(o);
            });
        }
    });
    let mut outcomes = outcomes.into_inner().unwrap();
    outcomes.sort_by_key(|o| o.seed);
    outcomes
}

pub fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Threads for many seeds: the machine's cores.
pub fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
