//! The leader's in-memory table of probe reports: the latest report of each witness about
//! each region, turned into verdicts on demand.
//!
//! This module owns the conversion of a witness's "seen for this long" into the leader's own
//! monotonic clock and the bounds on what the table holds. It must never read a clock (the
//! caller passes `received` and `now`), never persist or replicate a report (only decisions
//! are replicated; a new leader rebuilds the table within one probe interval), and never let
//! one witness's report overwrite another's.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::verdict::{verdict, Evidence, Observation, Seen, Verdict};

/// At most this many regions are tracked: the policy's own limit on regions (16), so reports
/// naming regions outside the policy cannot grow the table beyond what a policy could.
pub const TABLE_REGIONS_MAX: usize = 16;
/// At most this many witnesses are tracked: clusters are 3 or 5 voters plus a few learners.
pub const TABLE_WITNESSES_MAX: usize = 16;
/// Probe details are cut to this many bytes: they are a short reason for the audit log, not a
/// response body.
pub const DETAIL_BYTES_MAX: usize = 256;
/// A reported duration longer than this is treated as this long. It is far beyond any
/// sensible down window and keeps the arithmetic on `Instant` representable.
pub const SINCE_AGE_MAX: Duration = Duration::from_secs(24 * 3_600);

/// Why a report was not recorded. The table is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The report names a new region and the table already tracks the maximum.
    #[error(
        "report about region {region:?} refused: already tracking {TABLE_REGIONS_MAX} regions"
    )]
    TooManyRegions { region: String },
    /// The report comes from a new witness and the table already tracks the maximum.
    #[error(
        "report from witness {witness} refused: already tracking {TABLE_WITNESSES_MAX} witnesses"
    )]
    TooManyWitnesses { witness: u64 },
}

/// How the voters currently see one region, for status output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RegionSummary {
    /// Voters in the membership.
    pub voters: usize,
    /// Voters with a fresh passing report.
    pub up: usize,
    /// Voters with a fresh failing report, however long it has been failing.
    pub down: usize,
    /// Voters with no report, or a stale one.
    pub silent: usize,
}

/// Latest report per (region, witness), on the leader's clock.
///
/// Contract: `record` is called with `received` = the leader's `Instant::now()` when the
/// report arrived; `verdicts` and `summary` are called with the current instant. A report
/// replaces the previous one of the same witness about the same region, whatever its content.
#[derive(Debug, Default)]
pub struct ReportTable {
    /// region → witness → latest observation.
    reports: BTreeMap<String, BTreeMap<u64, Observation>>,
}

impl ReportTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `witness` reported, at `received`, that `region` has been `ok` (or not)
    /// for `since_age` by its own clock.
    ///
    /// `since` is placed at `received - since_age` on the leader's clock: the network delay of
    /// the report makes the failure look shorter than it was, never longer. If that instant
    /// cannot be represented, the result is taken to have just changed, which again can only
    /// delay a `down` verdict.
    pub fn record(
        &mut self,
        witness: u64,
        region: &str,
        ok: bool,
        since_age: Duration,
        detail: &str,
        received: Instant,
    ) -> Result<(), RecordError> {
        if !self.reports.contains_key(region) && self.reports.len() >= TABLE_REGIONS_MAX {
            return Err(RecordError::TooManyRegions {
                region: region.to_owned(),
            });
        }
        if !self.witnesses().contains(&witness) && self.witnesses().len() >= TABLE_WITNESSES_MAX {
            return Err(RecordError::TooManyWitnesses { witness });
        }
        let since = received
            .checked_sub(since_age.min(SINCE_AGE_MAX))
            .unwrap_or(received);
        let observation = Observation {
            ok,
            since,
            received,
            detail: truncate(detail, DETAIL_BYTES_MAX).to_owned(),
        };
        self.reports
            .entry(region.to_owned())
            .or_default()
            .insert(witness, observation);
        Ok(())
    }

    /// Drops every report from witnesses not in `members` (after a membership change).
    pub fn retain_witnesses(&mut self, members: &BTreeSet<u64>) {
        for by_witness in self.reports.values_mut() {
            by_witness.retain(|w, _| members.contains(w));
        }
        self.reports.retain(|_, by_witness| !by_witness.is_empty());
    }

    /// Drops every report about regions not in `regions` (after a policy change).
    pub fn retain_regions(&mut self, regions: &BTreeSet<String>) {
        self.reports.retain(|r, _| regions.contains(r));
    }

    /// The latest report of `witness` about `region`.
    pub fn get(&self, region: &str, witness: u64) -> Option<&Observation> {
        self.reports.get(region)?.get(&witness)
    }

    /// Regions with at least one report.
    pub fn regions(&self) -> impl Iterator<Item = &str> {
        self.reports.keys().map(String::as_str)
    }

    /// The verdict on every region with at least one report. `down_after` gives each
    /// region's window. Regions nobody reported about are absent, which callers treat as
    /// `unknown`.
    pub fn verdicts<F>(
        &self,
        voters: &BTreeSet<u64>,
        down_after: F,
        stale_after: Duration,
        now: Instant,
    ) -> BTreeMap<String, (Verdict, Evidence)>
    where
        F: Fn(&str) -> Duration,
    {
        self.reports
            .iter()
            .map(|(region, observations)| {
                let judged = verdict(voters, observations, down_after(region), stale_after, now);
                (region.clone(), judged)
            })
            .collect()
    }

    /// Per region, how many voters see it up, failing, or nothing fresh.
    pub fn summary(
        &self,
        voters: &BTreeSet<u64>,
        stale_after: Duration,
        now: Instant,
    ) -> BTreeMap<String, RegionSummary> {
        self.reports
            .iter()
            .map(|(region, observations)| {
                // A zero window makes every fresh failure count as `down`.
                let (_, evidence) = verdict(voters, observations, Duration::ZERO, stale_after, now);
                let summary = RegionSummary {
                    voters: evidence.voters,
                    up: evidence.count(Seen::Up),
                    down: evidence.count(Seen::Down),
                    silent: evidence.count(Seen::Stale) + evidence.count(Seen::Missing),
                };
                (region.clone(), summary)
            })
            .collect()
    }

    fn witnesses(&self) -> BTreeSet<u64> {
        self.reports
            .values()
            .flat_map(|by_witness| by_witness.keys().copied())
            .collect()
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALE_AFTER: Duration = Duration::from_secs(3);

    fn voters(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    /// Goal: `since_age` is placed on the leader's clock relative to `received`, per
    /// region windows apply, and a later report replaces an earlier one.
    #[test]
    fn reports_become_verdicts_on_the_leaders_clock() {
        let t0 = Instant::now();
        let mut table = ReportTable::new();
        for w in [1, 2] {
            table
                .record(w, "region-a", false, Duration::from_secs(20), "503", t0)
                .unwrap();
        }
        table
            .record(3, "region-a", true, Duration::from_secs(20), "200", t0)
            .unwrap();
        for w in [1, 2, 3] {
            table
                .record(w, "region-b", true, Duration::from_secs(1), "200", t0)
                .unwrap();
        }
        assert_eq!(
            table.get("region-a", 1).unwrap().since,
            t0 - Duration::from_secs(20)
        );

        let windows = |r: &str| {
            if r == "region-a" {
                Duration::from_secs(30)
            } else {
                Duration::from_secs(5)
            }
        };
        let v = table.verdicts(&voters(&[1, 2, 3]), windows, STALE_AFTER, t0);
        assert_eq!(
            v["region-a"].0,
            Verdict::Unknown,
            "failing 20 s < 30 s window"
        );
        assert_eq!(v["region-b"].0, Verdict::Up);

        // Ten seconds later two witnesses report the failure still going on.
        let t1 = t0 + Duration::from_secs(10);
        for w in [1, 2] {
            table
                .record(w, "region-a", false, Duration::from_secs(30), "503", t1)
                .unwrap();
        }
        table
            .record(3, "region-a", true, Duration::from_secs(30), "200", t1)
            .unwrap();
        let v = table.verdicts(&voters(&[1, 2, 3]), windows, STALE_AFTER, t1);
        assert_eq!(v["region-a"].0, Verdict::Down);
        // region-b's reports are now stale: nobody vouches for it any more.
        assert_eq!(v["region-b"].0, Verdict::Unknown);

        let s = table.summary(&voters(&[1, 2, 3]), STALE_AFTER, t1);
        assert_eq!(
            s["region-a"],
            RegionSummary {
                voters: 3,
                up: 1,
                down: 2,
                silent: 0
            }
        );
        assert_eq!(s["region-b"].silent, 3);

        // A witness recovers: its new report replaces the failing one.
        table
            .record(2, "region-a", true, Duration::ZERO, "200", t1)
            .unwrap();
        let v = table.verdicts(&voters(&[1, 2, 3]), windows, STALE_AFTER, t1);
        assert_eq!(v["region-a"].0, Verdict::Up);
    }

    /// Goal: the table is bounded; a refused report changes nothing; dropping members frees
    /// room.
    #[test]
    fn bounded_regions_and_witnesses() {
        let t0 = Instant::now();
        let mut table = ReportTable::new();
        for r in 0..TABLE_REGIONS_MAX {
            table
                .record(1, &format!("r{r}"), true, Duration::ZERO, "", t0)
                .unwrap();
        }
        assert_eq!(
            table.record(1, "one-too-many", true, Duration::ZERO, "", t0),
            Err(RecordError::TooManyRegions {
                region: "one-too-many".into()
            })
        );
        assert!(table.regions().all(|r| r != "one-too-many"));
        for w in 2..=TABLE_WITNESSES_MAX as u64 {
            table.record(w, "r0", true, Duration::ZERO, "", t0).unwrap();
        }
        let extra = TABLE_WITNESSES_MAX as u64 + 1;
        assert_eq!(
            table.record(extra, "r0", true, Duration::ZERO, "", t0),
            Err(RecordError::TooManyWitnesses { witness: extra })
        );
        assert!(table.get("r0", extra).is_none());

        table.retain_witnesses(&voters(&[1, 2, 3]));
        table
            .record(extra, "r0", true, Duration::ZERO, "", t0)
            .unwrap();
        table.retain_regions(&["r0".to_string()].into_iter().collect());
        assert_eq!(table.regions().collect::<Vec<_>>(), vec!["r0"]);
    }

    /// Goal: a huge `since_age` or detail cannot break the arithmetic or bloat the table.
    #[test]
    fn absurd_inputs_are_clamped() {
        let t0 = Instant::now();
        let mut table = ReportTable::new();
        let long = "é".repeat(DETAIL_BYTES_MAX);
        table
            .record(1, "region-a", false, Duration::MAX, &long, t0)
            .unwrap();
        let obs = table.get("region-a", 1).unwrap();
        assert!(obs.detail.len() <= DETAIL_BYTES_MAX);
        assert!(t0.saturating_duration_since(obs.since) <= SINCE_AGE_MAX);
    }
}

/// A region's verdict with how many voters see it each way (the leader's live view).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionView {
    pub verdict: super::Verdict,
    pub summary: RegionSummary,
}
