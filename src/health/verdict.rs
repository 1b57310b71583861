//! The quorum verdict on one region (S7): from what each voter reported, is the region `up`,
//! `down` or `unknown`, and the evidence for the audit log.
//!
//! This module owns the rule "a region is down only when a majority of voters independently
//! see it failing for the whole window". It is pure: it must never read a clock (`now` is a
//! parameter), sleep, log or do I/O, so the rule is tested exhaustively and runs unchanged in
//! simulation. A witness that cannot see a region is never evidence that the region is down.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// A region's health as seen by a quorum of witnesses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// A majority of voters see the region passing its probes.
    Up,
    /// A majority of voters have seen the region failing for at least the down window.
    Down,
    /// Neither: not enough fresh reports, a split view, or failures shorter than the window.
    Unknown,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Up => "up",
            Verdict::Down => "down",
            Verdict::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The latest report of one witness about one region, as the leader holds it. Both instants
/// are on the leader's monotonic clock, so witness clocks never matter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// Whether all of the region's probes passed on that witness.
    pub ok: bool,
    /// When this witness's result last changed (to `ok`). A failure is "long enough" when it
    /// began at least `down_after` before `now`.
    pub since: Instant,
    /// When the leader received the report. Older than `stale_after` means the witness may be
    /// cut off or dead, and its report counts for nothing.
    pub received: Instant,
    /// Short reason from the probe (status code, error), for the audit log.
    pub detail: String,
}

/// How one voter's report counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Seen {
    /// A fresh, passing report: counts toward `up`.
    Up,
    /// A fresh report failing for at least `down_after`: counts toward `down`.
    Down,
    /// A fresh report failing for less than `down_after`: counts for neither.
    Failing,
    /// A report older than `stale_after`: counts for neither.
    Stale,
    /// No report: counts for neither.
    Missing,
}

/// What one voter saw, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessEvidence {
    pub witness: u64,
    pub seen: Seen,
    /// How long the witness has seen this result (0 when missing).
    pub for_ms: u64,
    /// How old the report was when judged (0 when missing).
    pub report_age_ms: u64,
    /// The probe's short reason, empty when missing.
    pub detail: String,
}

/// Why a verdict was reached: every voter and how its report counted. Non-voters are not
/// listed because they never count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// Number of voters when judged.
    pub voters: usize,
    /// Reports needed for `up` or `down` (voters / 2 + 1).
    pub majority: usize,
    /// One entry per voter, in witness id order.
    pub witnesses: Vec<WitnessEvidence>,
}

impl Evidence {
    /// How many voters' reports counted as `seen`.
    pub fn count(&self, seen: Seen) -> usize {
        self.witnesses.iter().filter(|w| w.seen == seen).count()
    }
}

/// Votes needed for a decision among `voters` voters.
pub fn majority(voters: usize) -> usize {
    voters / 2 + 1
}

/// Judges one region.
///
/// - `down` only when a majority of `voters` have a fresh report (`now - received <=
///   stale_after`) that has been failing continuously for at least `down_after`
///   (`now - since >= down_after`);
/// - `up` when a majority of voters have fresh passing reports;
/// - `unknown` otherwise.
///
/// Reports from witnesses not in `voters` are ignored. A voter with no report or a stale one
/// counts for neither side. Instants later than `now` are treated as `now` (age zero), which
/// can only make a failure look shorter, never longer.
pub fn verdict(
    voters: &BTreeSet<u64>,
    observations: &BTreeMap<u64, Observation>,
    down_after: Duration,
    stale_after: Duration,
    now: Instant,
) -> (Verdict, Evidence) {
    let majority = majority(voters.len());
    let witnesses: Vec<WitnessEvidence> = voters
        .iter()
        .map(|&witness| match observations.get(&witness) {
            None => WitnessEvidence {
                witness,
                seen: Seen::Missing,
                for_ms: 0,
                report_age_ms: 0,
                detail: String::new(),
            },
            Some(obs) => {
                let report_age = now.saturating_duration_since(obs.received);
                let for_age = now.saturating_duration_since(obs.since);
                let seen = if report_age > stale_after {
                    Seen::Stale
                } else if obs.ok {
                    Seen::Up
                } else if for_age >= down_after {
                    Seen::Down
                } else {
                    Seen::Failing
                };
                WitnessEvidence {
                    witness,
                    seen,
                    for_ms: millis(for_age),
                    report_age_ms: millis(report_age),
                    detail: obs.detail.clone(),
                }
            }
        })
        .collect();
    let evidence = Evidence {
        voters: voters.len(),
        majority,
        witnesses,
    };
    let down = evidence.count(Seen::Down);
    let up = evidence.count(Seen::Up);
    // The two counts come from disjoint voters, so at most one can reach a majority.
    debug_assert!(!(down >= majority && up >= majority));
    #[cfg(feature = "unsafe-holes")]
    let down = if crate::holes::open(&crate::holes::ONE_WITNESS_VERDICT) && down >= 1 {
        majority
    } else {
        down
    };
    let verdict = if voters.is_empty() {
        Verdict::Unknown
    } else if down >= majority {
        Verdict::Down
    } else if up >= majority {
        Verdict::Up
    } else {
        Verdict::Unknown
    };
    (verdict, evidence)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOWN_AFTER: Duration = Duration::from_secs(10);
    const STALE_AFTER: Duration = Duration::from_secs(3);

    /// One witness's report in a table row: `ok`, how long it has seen that (s), how old the
    /// report is (s).
    type Row = (u64, bool, u64, u64);

    fn judge(voters: &[u64], rows: &[Row]) -> (Verdict, Evidence) {
        // An origin far enough in the past that every `since` below is representable.
        let origin = Instant::now();
        let now = origin + Duration::from_secs(3_600);
        let observations = rows
            .iter()
            .map(|&(w, ok, for_s, age_s)| {
                let received = now - Duration::from_secs(age_s);
                (
                    w,
                    Observation {
                        ok,
                        since: now - Duration::from_secs(for_s),
                        received,
                        detail: if ok { "200".into() } else { "503".into() },
                    },
                )
            })
            .collect();
        let voters = voters.iter().copied().collect();
        verdict(&voters, &observations, DOWN_AFTER, STALE_AFTER, now)
    }

    /// Goal: the S7 rule, case by case. Method: each row lists voters and reports
    /// (witness, ok, seen-for seconds, report age seconds) and the verdict required.
    #[test]
    fn quorum_rule_table() {
        let cases: &[(&str, &[u64], &[Row], Verdict)] = &[
            (
                "link cut between one witness and the region: the others see it up",
                &[1, 2, 3],
                &[(1, false, 600, 0), (2, true, 600, 0), (3, true, 600, 0)],
                Verdict::Up,
            ),
            (
                "one witness failing, one up, one silent: not down",
                &[1, 2, 3],
                &[(1, false, 600, 0), (2, true, 600, 0)],
                Verdict::Unknown,
            ),
            (
                "two of three failing, but for less than down_after",
                &[1, 2, 3],
                &[(1, false, 9, 0), (2, false, 600, 0), (3, true, 600, 0)],
                Verdict::Unknown,
            ),
            (
                "two of three failing exactly down_after",
                &[1, 2, 3],
                &[(1, false, 10, 0), (2, false, 600, 0), (3, true, 600, 0)],
                Verdict::Down,
            ),
            (
                "all three failing long enough",
                &[1, 2, 3],
                &[(1, false, 60, 1), (2, false, 60, 2), (3, false, 60, 3)],
                Verdict::Down,
            ),
            (
                "a stale failing report does not count",
                &[1, 2, 3],
                &[(1, false, 600, 0), (2, false, 600, 4), (3, true, 600, 0)],
                Verdict::Unknown,
            ),
            (
                "stale passing reports do not count either",
                &[1, 2, 3],
                &[(1, true, 600, 4), (2, true, 600, 4), (3, true, 600, 0)],
                Verdict::Unknown,
            ),
            (
                "a report exactly stale_after old is still fresh",
                &[1, 2, 3],
                &[(1, true, 600, 3), (2, true, 600, 3)],
                Verdict::Up,
            ),
            (
                "five voters: two failing is not down",
                &[1, 2, 3, 4, 5],
                &[
                    (1, false, 600, 0),
                    (2, false, 600, 0),
                    (3, true, 600, 0),
                    (4, true, 600, 0),
                ],
                Verdict::Unknown,
            ),
            (
                "five voters: three failing is down",
                &[1, 2, 3, 4, 5],
                &[(1, false, 600, 0), (2, false, 600, 0), (3, false, 600, 0)],
                Verdict::Down,
            ),
            (
                "five voters: three passing is up",
                &[1, 2, 3, 4, 5],
                &[
                    (3, true, 1, 0),
                    (4, true, 1, 0),
                    (5, true, 1, 0),
                    (1, false, 600, 0),
                ],
                Verdict::Up,
            ),
            (
                "learners are ignored: two failing learners and one failing voter",
                &[1, 2, 3],
                &[(1, false, 600, 0), (7, false, 600, 0), (8, false, 600, 0)],
                Verdict::Unknown,
            ),
            (
                "learners cannot make up an up majority either",
                &[1, 2, 3],
                &[(1, true, 600, 0), (7, true, 600, 0), (8, true, 600, 0)],
                Verdict::Unknown,
            ),
            ("no reports at all", &[1, 2, 3], &[], Verdict::Unknown),
            ("no voters", &[], &[(1, false, 600, 0)], Verdict::Unknown),
            (
                "a single voter decides alone",
                &[1],
                &[(1, false, 600, 0)],
                Verdict::Down,
            ),
            (
                "two voters need both",
                &[1, 2],
                &[(1, false, 600, 0), (2, true, 600, 0)],
                Verdict::Unknown,
            ),
        ];
        for (name, voters, rows, expect) in cases {
            let (got, evidence) = judge(voters, rows);
            assert_eq!(got, *expect, "{name}: {evidence:?}");
            assert_eq!(evidence.witnesses.len(), voters.len(), "{name}");
            assert_eq!(evidence.majority, voters.len() / 2 + 1, "{name}");
        }
    }

    /// Goal: the evidence says, per voter, how its report counted and for how long, so the
    /// audit log can explain the decision.
    #[test]
    fn evidence_lists_each_voter() {
        let (v, e) = judge(
            &[1, 2, 3, 4],
            &[
                (1, false, 20, 1),
                (2, false, 5, 0),
                (3, true, 30, 9),
                (9, false, 99, 0),
            ],
        );
        assert_eq!(v, Verdict::Unknown);
        let seen: Vec<(u64, Seen, u64, u64)> = e
            .witnesses
            .iter()
            .map(|w| (w.witness, w.seen, w.for_ms, w.report_age_ms))
            .collect();
        assert_eq!(
            seen,
            vec![
                (1, Seen::Down, 20_000, 1_000),
                (2, Seen::Failing, 5_000, 0),
                (3, Seen::Stale, 30_000, 9_000),
                (4, Seen::Missing, 0, 0),
            ]
        );
        assert_eq!(e.witnesses[0].detail, "503");
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains("\"seen\":\"down\""), "{json}");
        assert_eq!(serde_json::to_string(&Verdict::Down).unwrap(), "\"down\"");
        assert_eq!(Verdict::Unknown.to_string(), "unknown");
    }

    /// Goal: a report whose instants lie after `now` (received while judging) never counts as
    /// a long failure.
    #[test]
    fn future_instants_never_lengthen_a_failure() {
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let observations = [1, 2, 3]
            .into_iter()
            .map(|w| {
                (
                    w,
                    Observation {
                        ok: false,
                        since: later,
                        received: later,
                        detail: String::new(),
                    },
                )
            })
            .collect();
        let voters = [1, 2, 3].into_iter().collect();
        let (v, _) = verdict(&voters, &observations, DOWN_AFTER, STALE_AFTER, now);
        assert_eq!(v, Verdict::Unknown);
    }
}
