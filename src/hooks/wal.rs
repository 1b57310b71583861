//! The last known WAL position of each group's primary (S8). Every witness, not only the
//! leader, polls the server of each group's **active** region through the connection of the
//! group's built-in `postgres` rpo-check hook, and keeps a bounded history of where its WAL
//! was and when this witness saw it. The rpo-check of a failover then measures the standby
//! against that history ([`super::rpo::judge`]) instead of against what the standby itself
//! received. Every witness keeps it because the leader that runs the failover may be a new
//! one: when a region dies with its primary and its witness, the history must already be
//! elsewhere.
//!
//! This module owns the polling sessions and the histories. It must never change the
//! replicated state (it only reads the applied state), never put the password into a log
//! line or an error (the connection is `super::postgres::connect`'s), never hold more than
//! [`HISTORY_SAMPLES_MAX`] sightings per group, and never let one group's dark server delay
//! another's polls (one task per group).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_postgres::Client;

use super::postgres::{connect, primary_lsn};
use super::rpo::WalSample;
use crate::config::{Hook, PostgresRegion};
use crate::state::ClusterState;

/// How often each group's primary is asked for its position: the resolution of the
/// rpo-check's time lag, and what it cannot see (WAL written within one interval before the
/// primary went dark). Once a second is one cheap query per group, the default probe rate.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Sightings kept per group: an hour of a primary that writes all the time at one per
/// [`POLL_INTERVAL`] (an idle one keeps one, collapsed), enough to prove any RPO up to an
/// hour, in under 100 KiB per group.
pub const HISTORY_SAMPLES_MAX: usize = 3_600;
/// A polling session gives up connecting after this long: a server that does not answer a
/// handshake in 2 s is dark for this purpose, and the next attempt comes soon.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One position query gives up after this long (the session is then dropped and reopened).
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnection attempts back off, doubling from [`POLL_INTERVAL`], up to this: a dark
/// region costs one attempt per group every few seconds, and a server that comes back is
/// sighted again within this long.
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The histories of this witness, by `(group, region)`: only the pair each group's primary
/// lives in now (its active region) is kept. Shared by the pollers (writers) and the
/// executor's rpo-check (reader).
#[derive(Debug, Default)]
pub struct WalHistories {
    histories: Mutex<BTreeMap<(String, String), VecDeque<WalSample>>>,
}

impl WalHistories {
    /// The sightings of `group`'s primary in `region`, oldest first; empty if none.
    pub fn samples(&self, group: &str, region: &str) -> Vec<WalSample> {
        let histories = self.histories.lock().expect("WAL history lock");
        histories
            .get(&(group.to_string(), region.to_string()))
            .map(|h| h.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Records a sighting of `group`'s primary in `region`.
    pub fn record(&self, group: &str, region: &str, sample: WalSample) {
        let mut histories = self.histories.lock().expect("WAL history lock");
        let history = histories
            .entry((group.to_string(), region.to_string()))
            .or_default();
        push(history, sample);
    }

    /// Forgets every history but those of `keep`.
    fn retain(&self, keep: &BTreeMap<String, Target>) {
        let mut histories = self.histories.lock().expect("WAL history lock");
        histories.retain(|(group, region), _| keep.get(group).is_some_and(|t| t.region == *region));
    }

    fn forget(&self, group: &str, region: &str) {
        let mut histories = self.histories.lock().expect("WAL history lock");
        histories.remove(&(group.to_string(), region.to_string()));
    }
}

/// Appends `sample`, collapsing a sighting of the same position into the previous one (its
/// time becomes the newest sighting's: the primary was still there then).
fn push(history: &mut VecDeque<WalSample>, sample: WalSample) {
    match history.back_mut() {
        Some(last) if sample.lsn == last.lsn => {
            last.at = last.at.max(sample.at);
            return;
        }
        // A primary's position never goes back: this is another server or timeline, and
        // the earlier positions say nothing about it.
        Some(last) if sample.lsn < last.lsn => history.clear(),
        _ => {}
    }
    if history.len() >= HISTORY_SAMPLES_MAX {
        history.pop_front();
    }
    history.push_back(sample);
}

/// Where one group's primary is polled: its active region's server, as its rpo-check hook
/// connects to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    region: String,
    server: PostgresRegion,
}

/// The target of every group whose rpo-check hook is a built-in `postgres` hook with a
/// connection for the group's active region.
fn targets(state: &ClusterState) -> BTreeMap<String, Target> {
    let Some(policy) = &state.policy else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for gp in &policy.groups {
        let Some(name) = &gp.hooks.rpo_check else {
            continue;
        };
        let Some(Hook::Postgres(hook)) = policy.hooks.get(name) else {
            continue;
        };
        let Some(group) = state.groups.get(&gp.name) else {
            continue;
        };
        if let Some(server) = hook.regions.get(&group.active) {
            out.insert(
                gp.name.clone(),
                Target {
                    region: group.active.clone(),
                    server: server.clone(),
                },
            );
        }
    }
    out
}

/// One group's polling task; aborted when dropped.
struct Poller {
    target: Target,
    task: JoinHandle<()>,
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs forever on every witness; spawn it once. Follows the applied policy and each
/// group's active region (`read` hands it the applied state), polling each group's primary
/// in a task of its own.
pub(crate) async fn run<R>(read: R, histories: Arc<WalHistories>)
where
    R: Fn(&dyn Fn(&ClusterState) -> BTreeMap<String, Target>) -> BTreeMap<String, Target>,
{
    let mut pollers: BTreeMap<String, Poller> = BTreeMap::new();
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let wanted = read(&targets);
        pollers.retain(|group, poller| match wanted.get(group) {
            Some(target) if *target == poller.target => true,
            Some(target) => {
                if target.region == poller.target.region
                    && target.server.dsn != poller.target.server.dsn
                {
                    // Another server for the same region: its positions start afresh.
                    histories.forget(group, &target.region);
                }
                false
            }
            None => false,
        });
        histories.retain(&wanted);
        for (group, target) in wanted {
            if pollers.contains_key(&group) {
                continue;
            }
            let task = tokio::spawn(poll(group.clone(), target.clone(), histories.clone()));
            pollers.insert(group, Poller { target, task });
        }
    }
}

/// Polls one group's primary every [`POLL_INTERVAL`] over one session, reopened after an
/// error with a bounded backoff.
async fn poll(group: String, target: Target, histories: Arc<WalHistories>) {
    let region = target.region.as_str();
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut session: Option<Client> = None;
    let mut failures: u32 = 0;
    let mut retry_at = Instant::now();
    loop {
        ticker.tick().await;
        let client = match &session {
            Some(client) => client,
            None if Instant::now() < retry_at => continue,
            None => match connect(region, &target.server, Instant::now() + CONNECT_TIMEOUT).await {
                Ok(client) => session.insert(client),
                Err(why) => {
                    failures = failures.saturating_add(1);
                    retry_at = Instant::now() + backoff(failures);
                    tracing::debug!(group = %group, %region, failures, error = %why, "primary WAL position not read");
                    continue;
                }
            },
        };
        let outcome = match timeout(QUERY_TIMEOUT, primary_lsn(client)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!(
                "{region} did not answer within {} ms",
                QUERY_TIMEOUT.as_millis()
            )),
        };
        match outcome {
            Ok(Some(lsn)) => {
                failures = 0;
                let at = Instant::now();
                histories.record(&group, region, WalSample { lsn, at });
            }
            Ok(None) => {
                failures = 0;
                tracing::debug!(group = %group, %region, "the active region's server is in recovery: no primary position to record");
            }
            Err(why) => {
                session = None;
                failures = failures.saturating_add(1);
                retry_at = Instant::now() + backoff(failures);
                tracing::debug!(group = %group, %region, failures, error = %why, "primary WAL position not read");
            }
        }
    }
}

/// The pause before reconnecting after `failures` consecutive failures.
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(8);
    (POLL_INTERVAL * 2u32.pow(doublings)).min(RECONNECT_BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(lsn: u64, t0: Instant, ms: u64) -> WalSample {
        WalSample {
            lsn,
            at: t0 + Duration::from_millis(ms),
        }
    }

    #[test]
    fn same_position_collapses_into_its_newest_sighting() {
        let t0 = Instant::now();
        let mut h = VecDeque::new();
        push(&mut h, sample(100, t0, 0));
        push(&mut h, sample(100, t0, 1_000));
        push(&mut h, sample(200, t0, 2_000));
        push(&mut h, sample(200, t0, 3_000));
        assert_eq!(
            Vec::from(h),
            [sample(100, t0, 1_000), sample(200, t0, 3_000)]
        );
    }

    #[test]
    fn a_position_going_back_starts_a_new_history() {
        let t0 = Instant::now();
        let mut h = VecDeque::new();
        push(&mut h, sample(500, t0, 0));
        push(&mut h, sample(600, t0, 1_000));
        push(&mut h, sample(10, t0, 2_000));
        assert_eq!(Vec::from(h), [sample(10, t0, 2_000)]);
    }

    #[test]
    fn history_is_bounded_and_keeps_the_newest() {
        let t0 = Instant::now();
        let mut h = VecDeque::new();
        for i in 0..(HISTORY_SAMPLES_MAX as u64 + 10) {
            push(&mut h, sample(i, t0, i));
        }
        assert_eq!(h.len(), HISTORY_SAMPLES_MAX);
        assert_eq!(h.front().unwrap().lsn, 10);
        assert_eq!(h.back().unwrap().lsn, HISTORY_SAMPLES_MAX as u64 + 9);
    }

    #[test]
    fn only_each_groups_active_region_is_kept() {
        let t0 = Instant::now();
        let histories = WalHistories::default();
        histories.record("checkout", "region-a", sample(1, t0, 0));
        histories.record("checkout", "region-b", sample(2, t0, 0));
        histories.record("catalog", "region-a", sample(3, t0, 0));
        let server = PostgresRegion {
            dsn: "host=127.0.0.1".into(),
            password: None,
            stop: None,
        };
        let keep: BTreeMap<String, Target> = [(
            "checkout".to_string(),
            Target {
                region: "region-b".into(),
                server,
            },
        )]
        .into_iter()
        .collect();
        histories.retain(&keep);
        assert_eq!(
            histories.samples("checkout", "region-b"),
            [sample(2, t0, 0)]
        );
        assert!(histories.samples("checkout", "region-a").is_empty());
        assert!(histories.samples("catalog", "region-a").is_empty());
    }

    #[test]
    fn reconnection_backs_off_to_a_bound() {
        assert_eq!(backoff(1), POLL_INTERVAL);
        assert_eq!(backoff(2), POLL_INTERVAL * 2);
        assert_eq!(backoff(3), POLL_INTERVAL * 4);
        assert_eq!(backoff(4), RECONNECT_BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), RECONNECT_BACKOFF_MAX);
    }
}
