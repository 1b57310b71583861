//! The witness's probe loop: runs every region's probes on their schedules and keeps, per
//! region, whether all of them pass and since when, for the report to the leader.
//!
//! This module owns scheduling (interval plus random jitter, one task per region) and the
//! per-region state. It must never decide anything about a region (that is the leader's
//! quorum verdict), never busy-loop (every wait is at least a probe interval), and never
//! outlive its owner: dropping the [`Prober`] stops every task.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{join_all, BoxFuture};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use super::probe::{Probe, ProbeOptions, ProbeResult, DETAIL_BYTES_MAX};
use super::table::TABLE_REGIONS_MAX;
use crate::config::probe::{INTERVAL_MS_MIN, PROBES_PER_REGION_MAX};
use crate::config::ProbeSpec;

/// What this witness currently sees of one region, ready to report to the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionObservation {
    pub region: String,
    /// Whether every probe of the region passed on its latest run.
    pub ok: bool,
    /// How long `ok` has had its current value, by this witness's monotonic clock.
    pub since_age: Duration,
    /// The probes' short reasons (failing ones only, when `ok` is false).
    pub detail: String,
}

/// The state of one region between probe rounds.
#[derive(Debug, Clone)]
struct RegionState {
    ok: bool,
    /// When `ok` last changed (or the first complete round, which is conservative: a failure
    /// is never older than the probing that saw it).
    since: Instant,
    detail: String,
}

/// Written by one region task, read by `snapshot`. Each task has its own slot, so a task
/// that is being replaced can never overwrite its successor's state.
type Slot = Arc<Mutex<Option<RegionState>>>;

struct RegionTask {
    specs: Vec<ProbeSpec>,
    slot: Slot,
    handle: JoinHandle<()>,
}

/// Runs the probes of every region in background tasks.
///
/// Contract: must be created and updated inside a tokio runtime. A region appears in
/// [`Prober::snapshot`] only once each of its probes has run at least once; until then this
/// witness has nothing to say about it. Dropping the `Prober` aborts its tasks.
pub struct Prober {
    tasks: BTreeMap<String, RegionTask>,
    /// Fixed for the prober's life: they come from the node file, which only a restart
    /// changes. Every region task, including those `update` starts later, uses them.
    options: ProbeOptions,
    /// Who runs each probe: `None` probes the network for real.
    runner: Option<Arc<dyn ProbeRunner>>,
}

/// The seam between the probe loop and the network: with one, a [`Prober`] asks it for each
/// probe's result instead of connecting, so a simulation decides what every witness sees of
/// every region. The schedule (intervals, jitter, folding into a region's state) is the
/// prober's either way.
pub trait ProbeRunner: Send + Sync + 'static {
    /// The outcome of one run of `spec`, a probe of `region`.
    fn probe(&self, region: &str, spec: &ProbeSpec) -> BoxFuture<'static, ProbeResult>;
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("regions", &self.tasks.keys().collect::<Vec<_>>())
            .field("options", &self.options)
            .finish()
    }
}

impl Prober {
    /// Starts probing `specs` (region → its probes) with `options`. Regions without probes
    /// are not probed.
    pub fn start(specs: BTreeMap<String, Vec<ProbeSpec>>, options: ProbeOptions) -> Self {
        Self::start_with(specs, options, None)
    }

    /// [`Prober::start`], with every probe run by `runner` when there is one.
    pub fn start_with(
        specs: BTreeMap<String, Vec<ProbeSpec>>,
        options: ProbeOptions,
        runner: Option<Arc<dyn ProbeRunner>>,
    ) -> Self {
        let mut prober = Self {
            tasks: BTreeMap::new(),
            options,
            runner,
        };
        prober.update(specs);
        prober
    }

    /// Replaces the schedule (after a policy change). Regions whose probes are unchanged keep
    /// running with their state and `since`; changed regions restart with no state (the old
    /// result was about other probes); removed regions stop.
    ///
    /// Beyond [`TABLE_REGIONS_MAX`] regions or [`PROBES_PER_REGION_MAX`] probes per region,
    /// the rest are ignored with a warning; a validated policy never has that many.
    pub fn update(&mut self, specs: BTreeMap<String, Vec<ProbeSpec>>) {
        let mut wanted: BTreeMap<String, Vec<ProbeSpec>> = BTreeMap::new();
        for (region, mut probes) in specs {
            if probes.is_empty() {
                continue;
            }
            if wanted.len() >= TABLE_REGIONS_MAX {
                warn!(region = %region, limit = TABLE_REGIONS_MAX, "too many regions to probe; ignoring this one");
                continue;
            }
            if probes.len() > PROBES_PER_REGION_MAX {
                warn!(region = %region, limit = PROBES_PER_REGION_MAX, "too many probes; ignoring the rest");
                probes.truncate(PROBES_PER_REGION_MAX);
            }
            wanted.insert(region, probes);
        }
        self.tasks.retain(|region, task| {
            let keep = wanted.get(region) == Some(&task.specs);
            if !keep {
                task.handle.abort();
            }
            keep
        });
        for (region, probes) in wanted {
            if self.tasks.contains_key(&region) {
                continue;
            }
            let slot: Slot = Arc::default();
            let handle = tokio::spawn(run_region(
                region.clone(),
                probes.clone(),
                self.options,
                self.runner.clone(),
                slot.clone(),
            ));
            self.tasks.insert(
                region,
                RegionTask {
                    specs: probes,
                    slot,
                    handle,
                },
            );
        }
    }

    /// What this witness currently sees of each probed region, in region order.
    pub fn snapshot(&self) -> Vec<RegionObservation> {
        let now = Instant::now();
        self.tasks
            .iter()
            .filter_map(|(region, task)| {
                let state = task
                    .slot
                    .lock()
                    .expect("probe state lock poisoned")
                    .clone()?;
                Some(RegionObservation {
                    region: region.clone(),
                    ok: state.ok,
                    since_age: now.saturating_duration_since(state.since),
                    detail: state.detail,
                })
            })
            .collect()
    }

    /// Stops every task and waits until they have ended.
    pub async fn stop(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for task in tasks.values() {
            task.handle.abort();
        }
        for (_, task) in tasks {
            // An aborted task ends with a cancellation error; that is the expected outcome.
            let _ = task.handle.await;
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.handle.abort();
        }
    }
}

/// One probe of a region: prepared, or the reason it could not be (which fails every run).
enum Prepared {
    Ready(Probe),
    Broken {
        spec: ProbeSpec,
        reason: String,
    },
    Injected {
        region: String,
        spec: ProbeSpec,
        runner: Arc<dyn ProbeRunner>,
    },
}

impl Prepared {
    fn spec(&self) -> &ProbeSpec {
        match self {
            Prepared::Ready(probe) => probe.spec(),
            Prepared::Broken { spec, .. } | Prepared::Injected { spec, .. } => spec,
        }
    }

    async fn run(&self) -> ProbeResult {
        match self {
            Prepared::Ready(probe) => probe.run().await,
            Prepared::Broken { reason, .. } => ProbeResult {
                ok: false,
                detail: reason.clone(),
                latency: Duration::ZERO,
            },
            Prepared::Injected {
                region,
                spec,
                runner,
            } => runner.probe(region, spec).await,
        }
    }
}

/// The loop of one region: sleep until the earliest due probe, run every due probe
/// concurrently, fold the latest results into the region's state, reschedule.
///
/// Each probe is rescheduled `interval + jitter` after the round started. A round lasts at
/// most the longest timeout, which validation keeps below the interval, so the next wait is
/// never zero.
async fn run_region(
    region: String,
    specs: Vec<ProbeSpec>,
    options: ProbeOptions,
    runner: Option<Arc<dyn ProbeRunner>>,
    slot: Slot,
) {
    let probes: Vec<Prepared> = specs
        .into_iter()
        .map(|spec| match &runner {
            Some(runner) => Prepared::Injected {
                region: region.clone(),
                spec,
                runner: runner.clone(),
            },
            None => match Probe::new(&spec, options) {
                Ok(probe) => Prepared::Ready(probe),
                Err(reason) => {
                    warn!(region = %region, probe = %spec.target, reason = %reason, "probe cannot be prepared; it fails until the policy changes");
                    Prepared::Broken { spec, reason }
                }
            },
        })
        .collect();
    let start = Instant::now();
    let mut next_due: Vec<Instant> = vec![start; probes.len()];
    let mut latest: Vec<Option<ProbeResult>> = vec![None; probes.len()];
    loop {
        let due = *next_due
            .iter()
            .min()
            .expect("a region task has at least one probe");
        tokio::time::sleep_until(due).await;
        let round = Instant::now();
        let ready: Vec<usize> = (0..probes.len())
            .filter(|&i| next_due[i] <= round)
            .collect();
        let results = join_all(ready.iter().map(|&i| probes[i].run())).await;
        for (&i, result) in ready.iter().zip(results) {
            latest[i] = Some(result);
            let spec = probes[i].spec();
            // Clamped so an unvalidated spec (interval 0) cannot turn this into a busy loop.
            let interval = spec.interval().max(Duration::from_millis(INTERVAL_MS_MIN));
            next_due[i] = round + interval + jitter(spec.jitter_ms);
        }
        if latest.iter().all(Option::is_some) {
            let results: Vec<(&ProbeSpec, &ProbeResult)> = probes
                .iter()
                .map(Prepared::spec)
                .zip(latest.iter().flatten())
                .collect();
            fold(&region, &slot, &results, Instant::now());
        }
    }
}

/// Updates the region's state from the latest result of each of its probes.
fn fold(region: &str, slot: &Slot, results: &[(&ProbeSpec, &ProbeResult)], now: Instant) {
    let ok = results.iter().all(|(_, r)| r.ok);
    let mut detail = String::new();
    for (spec, result) in results.iter().filter(|(_, r)| ok || !r.ok) {
        if !detail.is_empty() {
            detail.push_str("; ");
        }
        detail.push_str(&format!("{}: {}", spec.target, result.detail));
    }
    if detail.len() > DETAIL_BYTES_MAX {
        let mut end = DETAIL_BYTES_MAX;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
    }
    let mut guard = slot.lock().expect("probe state lock poisoned");
    let changed = guard.as_ref().is_none_or(|s| s.ok != ok);
    if changed {
        info!(region = %region, ok, detail = %detail, "region probe result changed");
    }
    let since = match guard.as_ref() {
        Some(s) if !changed => s.since,
        _ => now,
    };
    *guard = Some(RegionState { ok, since, detail });
}

fn jitter(jitter_ms: u64) -> Duration {
    if jitter_ms == 0 {
        Duration::ZERO
    } else {
        Duration::from_millis(rand::random_range(0..=jitter_ms))
    }
}
