//! The arithmetic of the built-in PostgreSQL `rpo-check` (S8): how much of the primary's WAL
//! a standby lacks, measured against the **last known position of the primary** (and the
//! standby's last WAL receipt), not against what the standby itself has received, and
//! whether that is provably within the group's RPO.
//!
//! [`judge`] is pure: no I/O and no clock (`now` is an argument). Its times are instants of
//! this witness's monotonic clock (the samples, `now`) or durations measured on one host's
//! own clock (the standby's receiver silence, its `now()` minus its `last_msg_receipt_time`);
//! it never compares two hosts' wall clocks.
//!
//! It must never call a lag within the RPO that it cannot prove: no known position of the
//! primary, or a standby behind every position in the history, is not within.

use tokio::time::Instant;

/// One sighting of the primary's WAL position by this witness: the primary had written at
/// least `lsn` (a byte offset) when its answer arrived, at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalSample {
    pub lsn: u64,
    pub at: Instant,
}

/// The group's recovery point objective, as the policy states it (`rpo_lag_ms`,
/// `rpo_lag_bytes`); either may be absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RpoBound {
    pub lag_ms_max: Option<u64>,
    pub lag_bytes_max: Option<u64>,
}

impl RpoBound {
    fn is_set(&self) -> bool {
        self.lag_ms_max.is_some() || self.lag_bytes_max.is_some()
    }
}

/// What the rpo-check step gives the built-in `postgres` hook beyond the step's context: the
/// group's RPO and what this witness has seen of the old primary's WAL position.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RpoContext {
    pub bound: RpoBound,
    /// Sightings of `from`'s primary by this witness, oldest first (see `hooks::wal`).
    pub primary_history: Vec<WalSample>,
}

/// The standby's WAL receiver, as `pg_stat_wal_receiver` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receiver {
    /// No WAL receiver process runs: the standby receives nothing by streaming.
    Absent,
    Running {
        /// `status` (`streaming`, `waiting`, ...).
        status: String,
        /// The standby's `now()` minus `last_msg_receipt_time`, both on the standby's clock;
        /// `None` before the first message.
        silence_ms: Option<u64>,
    },
}

/// The standby's own numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standby {
    /// What it has received and flushed (`pg_last_wal_receive_lsn()`, or the replay position
    /// when it has streamed nothing since it started). Promotion keeps exactly this.
    pub received_lsn: u64,
    /// What it has replayed (`pg_last_wal_replay_lsn()`).
    pub replayed_lsn: u64,
    pub receiver: Receiver,
}

/// What the primary's position was measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// The old primary answered the rpo-check itself.
    OldPrimary,
    /// The old primary did not answer: its last position in this witness's history.
    LastKnown,
    /// Neither: nothing is known of the primary's position.
    Unknown,
}

impl Basis {
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::OldPrimary => "old primary",
            Basis::LastKnown => "last known position",
            Basis::Unknown => "none",
        }
    }
}

/// The measurement and whether it is provably within the RPO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub basis: Basis,
    /// The largest known position of the primary.
    pub primary_lsn: Option<u64>,
    /// Since the newest sighting of the primary, on this witness's clock.
    pub primary_age_ms: Option<u64>,
    /// How long the primary has been dark for this witness: 0 when it answered the check,
    /// otherwise the age of its newest sighting.
    pub primary_dark_ms: Option<u64>,
    /// Sightings in the history (the old primary's own answer not counted).
    pub history_samples: usize,
    /// From the oldest to the newest sighting (the old primary's answer included).
    pub history_span_ms: u64,
    /// WAL the primary is known to have written that the standby never received: what a
    /// promotion now loses (at least).
    pub lag_bytes: Option<u64>,
    /// From the newest sighting of the primary back to the newest sighting whose position
    /// the standby had received; see `lag_ms_at_least`.
    pub lag_ms: Option<u64>,
    /// The standby is behind every sighting: `lag_ms` is only the history's span, a lower
    /// bound.
    pub lag_ms_at_least: bool,
    /// Received but not yet replayed: promotion replays it (time, not data).
    pub replay_pending_bytes: u64,
    /// Why the lag is over the RPO or cannot be proven within it; empty when within.
    pub over: Vec<String>,
    /// What the operator should know that does not decide the verdict.
    pub notes: Vec<String>,
}

impl Verdict {
    pub fn within(&self) -> bool {
        self.over.is_empty()
    }
}

/// Measures the standby against the primary's last known position: `history` (oldest
/// first) and `live`, the old primary's answer to this check if it gave one, both taken on
/// this witness's clock, whose present is `now`.
pub fn judge(
    history: &[WalSample],
    live: Option<WalSample>,
    standby: &Standby,
    bound: RpoBound,
    now: Instant,
) -> Verdict {
    let received = standby.received_lsn;
    let mut samples = history.to_vec();
    let mut notes = Vec::new();
    let mut over = Vec::new();
    let newest_known = history.iter().map(|s| s.lsn).max();
    let basis = match (live, newest_known) {
        (Some(l), Some(known)) if l.lsn < known => {
            notes.push(format!(
                "the old primary answers at {}, below its last known position {}: measured against the latter",
                lsn_text(l.lsn),
                lsn_text(known)
            ));
            Basis::LastKnown
        }
        (Some(l), _) => {
            samples.push(l);
            Basis::OldPrimary
        }
        (None, Some(_)) => Basis::LastKnown,
        (None, None) => Basis::Unknown,
    };
    let replay_pending_bytes = received.saturating_sub(standby.replayed_lsn);
    let mut verdict = Verdict {
        basis,
        primary_lsn: None,
        primary_age_ms: None,
        primary_dark_ms: None,
        history_samples: history.len(),
        history_span_ms: 0,
        lag_bytes: None,
        lag_ms: None,
        lag_ms_at_least: false,
        replay_pending_bytes,
        over: Vec::new(),
        notes: Vec::new(),
    };
    let (Some(newest), Some(oldest)) = (samples.last().copied(), samples.first().copied()) else {
        if bound.is_set() {
            over.push(
                "no known position of the primary: it did not answer and this witness has no \
                 history of it, so the lag cannot be proven within the RPO"
                    .to_string(),
            );
        }
        notes.extend(receiver_note(&standby.receiver, false));
        verdict.over = over;
        verdict.notes = notes;
        return verdict;
    };
    let primary_lsn = samples.iter().map(|s| s.lsn).max().unwrap_or(newest.lsn);
    let age_ms = millis(now.saturating_duration_since(newest.at));
    let dark_ms = if live.is_some() { 0 } else { age_ms };
    let span_ms = millis(newest.at.saturating_duration_since(oldest.at));
    let lag_bytes = primary_lsn.saturating_sub(received);
    let lacking = received < primary_lsn;
    // The newest sighting the standby holds: it has everything the primary had then.
    let (lag_ms, at_least) = match samples.iter().rev().find(|s| s.lsn <= received) {
        Some(held) => (millis(newest.at.saturating_duration_since(held.at)), false),
        None => (span_ms, true),
    };

    if let Some(max) = bound.lag_bytes_max {
        if lag_bytes > max {
            over.push(format!(
                "it lacks {lag_bytes} bytes of the primary's WAL, more than the RPO of {max} bytes"
            ));
        }
    }
    if let Some(max) = bound.lag_ms_max {
        if !at_least && lag_ms > max {
            over.push(format!(
                "it lacks the primary's last {lag_ms} ms of WAL, more than the RPO of {max} ms"
            ));
        } else if at_least && lag_ms > max {
            over.push(format!(
                "it is behind every known position of the primary: it lacks at least {lag_ms} ms \
                 of WAL, more than the RPO of {max} ms"
            ));
        } else if at_least {
            over.push(format!(
                "it is behind every known position of the primary, and the history ({} \
                 sightings over {lag_ms} ms) is too short to prove the lag within the RPO of \
                 {max} ms",
                samples.len()
            ));
        }
        // An idle primary sends nothing for long stretches, so silence alone is no loss; it
        // counts when the standby lacks WAL the primary is known to have written.
        if let Receiver::Running {
            silence_ms: Some(silence),
            ..
        } = &standby.receiver
        {
            if lacking && *silence > dark_ms.saturating_add(max) {
                over.push(format!(
                    "its WAL receiver has been silent for {silence} ms, {} ms longer than the \
                     primary has been dark ({dark_ms} ms), more than the RPO of {max} ms",
                    silence - dark_ms
                ));
            }
        }
    }
    notes.extend(receiver_note(&standby.receiver, lacking));

    verdict.primary_lsn = Some(primary_lsn);
    verdict.primary_age_ms = Some(age_ms);
    verdict.primary_dark_ms = Some(dark_ms);
    verdict.history_span_ms = span_ms;
    verdict.lag_bytes = Some(lag_bytes);
    verdict.lag_ms = Some(lag_ms);
    verdict.lag_ms_at_least = at_least;
    verdict.over = over;
    verdict.notes = notes;
    verdict
}

/// A note about a receiver that does not stream, if it does not.
fn receiver_note(receiver: &Receiver, lacking: bool) -> Option<String> {
    match receiver {
        Receiver::Absent if lacking => {
            Some("no WAL receiver is running on the standby: it will not catch up by itself".into())
        }
        Receiver::Absent => Some("no WAL receiver is running on the standby".into()),
        Receiver::Running {
            status,
            silence_ms: None,
        } => Some(format!(
            "the standby's WAL receiver is {status} and has received no message yet"
        )),
        Receiver::Running { .. } => None,
    }
}

/// A WAL position as PostgreSQL writes it (`X/Y`, upper-case hex).
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const RPO: RpoBound = RpoBound {
        lag_ms_max: Some(2_000),
        lag_bytes_max: Some(1_000_000),
    };

    /// Sightings `(lsn, ms after t0)`.
    fn history(t0: Instant, points: &[(u64, u64)]) -> Vec<WalSample> {
        points
            .iter()
            .map(|&(lsn, ms)| WalSample {
                lsn,
                at: t0 + Duration::from_millis(ms),
            })
            .collect()
    }

    fn standby(received: u64, replayed: u64, receiver: Receiver) -> Standby {
        Standby {
            received_lsn: received,
            replayed_lsn: replayed,
            receiver,
        }
    }

    fn streaming(silence_ms: u64) -> Receiver {
        Receiver::Running {
            status: "streaming".into(),
            silence_ms: Some(silence_ms),
        }
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn lag_runs_from_the_newest_sighting_the_standby_holds() {
        let t0 = Instant::now();
        let h = history(t0, &[(100, 0), (200, 1_000), (300, 2_000), (400, 3_000)]);
        let v = judge(
            &h,
            None,
            &standby(250, 250, streaming(10)),
            RPO,
            at(t0, 3_500),
        );
        assert_eq!(v.basis, Basis::LastKnown);
        assert_eq!(v.lag_ms, Some(2_000), "from 200 at 1 s to 400 at 3 s");
        assert!(!v.lag_ms_at_least);
        assert_eq!(v.lag_bytes, Some(150));
        assert_eq!(v.primary_lsn, Some(400));
        assert_eq!(v.primary_dark_ms, Some(500));
        assert_eq!(v.history_span_ms, 3_000);
        assert!(v.within(), "2000 ms is not more than 2000 ms: {v:?}");

        let v = judge(
            &h,
            None,
            &standby(150, 150, streaming(10)),
            RPO,
            at(t0, 3_500),
        );
        assert_eq!(v.lag_ms, Some(3_000), "from 100 at 0 s");
        assert!(!v.within());
        assert!(v.over[0].contains("last 3000 ms"), "{v:?}");
    }

    #[test]
    fn a_standby_holding_the_newest_sighting_lags_nothing_right_after_the_primary_goes_dark() {
        let t0 = Instant::now();
        let h = history(t0, &[(100, 0), (200, 1_000), (300, 2_000)]);
        // The primary died after its last sighting; the receiver noticed and exited.
        let v = judge(
            &h,
            None,
            &standby(300, 280, Receiver::Absent),
            RPO,
            at(t0, 6_000),
        );
        assert_eq!((v.lag_ms, v.lag_bytes), (Some(0), Some(0)));
        assert_eq!(
            v.replay_pending_bytes, 20,
            "replayed at promotion, not lost"
        );
        assert!(v.within(), "{v:?}");
        assert_eq!(v.notes, ["no WAL receiver is running on the standby"]);
        // It may even have received more than this witness saw.
        let v = judge(
            &h,
            None,
            &standby(350, 350, streaming(4_000)),
            RPO,
            at(t0, 6_000),
        );
        assert_eq!((v.lag_ms, v.lag_bytes), (Some(0), Some(0)));
        assert!(v.within(), "{v:?}");
    }

    #[test]
    fn a_standby_behind_every_sighting_lags_at_least_the_span() {
        let t0 = Instant::now();
        let h = history(t0, &[(100, 0), (200, 1_000), (300, 3_000)]);
        let v = judge(
            &h,
            None,
            &standby(50, 50, Receiver::Absent),
            RPO,
            at(t0, 3_100),
        );
        assert_eq!(v.lag_ms, Some(3_000));
        assert!(v.lag_ms_at_least);
        assert!(!v.within());
        assert!(v.over[0].contains("at least 3000 ms"), "{v:?}");
        assert!(
            v.notes[0].contains("will not catch up"),
            "a standby lacking WAL without a receiver: {v:?}"
        );

        // A span within the RPO proves nothing: the standby may lag far more.
        let relaxed = RpoBound {
            lag_ms_max: Some(10_000),
            lag_bytes_max: None,
        };
        let v = judge(
            &h,
            None,
            &standby(50, 50, streaming(5)),
            relaxed,
            at(t0, 3_100),
        );
        assert_eq!((v.lag_ms, v.lag_ms_at_least), (Some(3_000), true));
        assert!(!v.within());
        assert!(v.over[0].contains("too short to prove"), "{v:?}");
    }

    #[test]
    fn no_known_position_cannot_be_proven_within() {
        let t0 = Instant::now();
        let v = judge(&[], None, &standby(300, 300, Receiver::Absent), RPO, t0);
        assert_eq!(v.basis, Basis::Unknown);
        assert_eq!((v.lag_ms, v.lag_bytes), (None, None));
        assert!(!v.within());
        assert!(v.over[0].contains("no known position"), "{v:?}");
        // Without an RPO there is nothing to prove.
        let v = judge(
            &[],
            None,
            &standby(300, 300, Receiver::Absent),
            RpoBound::default(),
            t0,
        );
        assert!(v.within(), "{v:?}");
    }

    #[test]
    fn the_old_primary_answering_is_the_newest_position() {
        let t0 = Instant::now();
        let h = history(t0, &[(100, 0), (200, 1_000)]);
        let live = WalSample {
            lsn: 900_000,
            at: at(t0, 1_500),
        };
        let v = judge(
            &h,
            Some(live),
            &standby(200, 200, streaming(0)),
            RPO,
            at(t0, 1_600),
        );
        assert_eq!(v.basis, Basis::OldPrimary);
        assert_eq!(v.lag_bytes, Some(899_800));
        assert_eq!(v.lag_ms, Some(500));
        assert_eq!(v.primary_dark_ms, Some(0));
        assert!(v.within(), "{v:?}");
        // Whichever is larger: an answer below the history does not lower the bound.
        let low = WalSample {
            lsn: 150,
            at: at(t0, 1_500),
        };
        let v = judge(
            &h,
            Some(low),
            &standby(150, 150, streaming(0)),
            RPO,
            at(t0, 1_600),
        );
        assert_eq!(v.basis, Basis::LastKnown);
        assert_eq!(v.lag_bytes, Some(50));
        assert_eq!(v.primary_lsn, Some(200));
        // No history: the answer alone, which the standby holds.
        let v = judge(&[], Some(live), &standby(900_000, 1, streaming(0)), RPO, t0);
        assert_eq!((v.lag_ms, v.lag_bytes), (Some(0), Some(0)));
        assert!(v.within(), "{v:?}");
    }

    #[test]
    fn bytes_over_the_rpo_are_over() {
        let t0 = Instant::now();
        let h = history(t0, &[(100, 0), (5_000_000, 500)]);
        let v = judge(
            &h,
            None,
            &standby(100, 100, streaming(100)),
            RPO,
            at(t0, 600),
        );
        assert_eq!(v.lag_ms, Some(500));
        assert!(!v.within());
        assert!(v.over[0].contains("4999900 bytes"), "{v:?}");
    }

    #[test]
    fn a_receiver_silent_longer_than_the_primary_has_been_dark_is_over() {
        let t0 = Instant::now();
        let h = history(t0, &[(100, 0), (200, 1_000), (300, 1_500)]);
        let now = at(t0, 2_500); // dark for 1000 ms
                                 // Lag from the history alone is within (500 ms); the receiver says it stopped long
                                 // before the primary went dark.
        let v = judge(&h, None, &standby(200, 200, streaming(10_000)), RPO, now);
        assert_eq!(v.lag_ms, Some(500));
        assert!(!v.within());
        assert!(
            v.over[0].contains("silent for 10000 ms, 9000 ms longer"),
            "{v:?}"
        );
        // Silent no longer than dark + RPO: fine.
        let v = judge(&h, None, &standby(200, 200, streaming(3_000)), RPO, now);
        assert!(v.within(), "{v:?}");
        // An idle primary sends nothing: silence without missing WAL is no loss.
        let v = judge(&h, None, &standby(300, 300, streaming(600_000)), RPO, now);
        assert!(v.within(), "{v:?}");
        // A receiver that never heard anything is reported.
        let v = judge(
            &h,
            None,
            &standby(
                300,
                300,
                Receiver::Running {
                    status: "waiting".into(),
                    silence_ms: None,
                },
            ),
            RPO,
            now,
        );
        assert!(v.within());
        assert!(v.notes[0].contains("waiting"), "{v:?}");
    }

    #[test]
    fn lsn_text_is_postgres_notation() {
        assert_eq!(lsn_text(0), "0/0");
        assert_eq!(lsn_text(0x0300_35E8), "0/30035E8");
        assert_eq!(lsn_text((0xA << 32) | 0xFF), "A/FF");
    }
}
