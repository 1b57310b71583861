//! The publication marker: a TXT record beside each group's name on every external server,
//! naming the committed decision whose records that server last took from arbiter, so that
//! an UPDATE can be made conditional on it (RFC 2136 prerequisite) and an older decision can
//! never overwrite a newer one.
//!
//! Owner name: `_arbiter.<group's name>` (for `checkout.shop.example.`:
//! `_arbiter.checkout.shop.example.`). A name of its own, not a TXT at the group's name: a
//! CNAME owns its name alone (RFC 1034 section 3.6.2), and a TXT there would also be answered
//! to every client that asks for the group's name. Value: one character-string,
//!
//! ```text
//! arbiter/1 group=checkout epoch=7 policy=3 region=region-b
//! ```
//!
//! Decisions are ordered by `(epoch, policy)`: the epoch grows at every change of active
//! region and the policy version at every policy change, both only ever up, so a later
//! committed state never orders below an earlier one. An equal pair is the same decision (one
//! epoch names one region, one policy version one record set for it): rewriting it is
//! idempotent and is how records changed by hand are repaired.
//!
//! This module is pure (text and comparisons). It must never decide what to publish (the
//! caller passes a committed decision) and never talk to a server (`update` does).

use std::fmt;

pub use crate::config::MARKER_LABEL;
/// First token of a marker's text: the format version, so a later format can be told apart.
const FORMAT: &str = "arbiter/1";
/// Marker text quoted in an error, at most: enough to recognise what someone put there.
const QUOTED_TEXT_MAX: usize = 120;

/// The owner name of the marker of the group published at `name` (fully qualified).
pub fn marker_name(name: &str) -> String {
    format!("{MARKER_LABEL}.{name}")
}

/// A committed decision as a marker records it: the group, its active region, the epoch of
/// that region's activation and the policy version whose record set was published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub group: String,
    pub region: String,
    pub epoch: u64,
    pub policy_version: u64,
}

impl Decision {
    /// The order of decisions of one group: later committed states never order lower.
    pub fn key(&self) -> (u64, u64) {
        (self.epoch, self.policy_version)
    }

    /// The marker's TXT text for this decision.
    pub fn text(&self) -> String {
        format!(
            "{FORMAT} group={} epoch={} policy={} region={}",
            self.group, self.epoch, self.policy_version, self.region
        )
    }

    /// Reads a marker's text; `Err` says why it is not one of ours.
    pub fn parse(text: &str) -> Result<Decision, String> {
        let mut tokens = text.split_ascii_whitespace();
        if tokens.next() != Some(FORMAT) {
            return Err(format!("it does not start with {FORMAT:?}"));
        }
        let (mut group, mut region, mut epoch, mut policy) = (None, None, None, None);
        for token in tokens {
            let Some((key, value)) = token.split_once('=') else {
                return Err(format!("{token:?} is not key=value"));
            };
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("{key}={value:?} is not a number"))
            };
            match key {
                "group" => group = Some(value.to_string()),
                "region" => region = Some(value.to_string()),
                "epoch" => epoch = Some(number()?),
                "policy" => policy = Some(number()?),
                // A later version may add fields; the ones read here keep their meaning.
                _ => {}
            }
        }
        let missing = |what: &str| format!("it has no {what}=");
        Ok(Decision {
            group: group.ok_or_else(|| missing("group"))?,
            region: region.ok_or_else(|| missing("region"))?,
            epoch: epoch.ok_or_else(|| missing("epoch"))?,
            policy_version: policy.ok_or_else(|| missing("policy"))?,
        })
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at epoch {} (policy version {})",
            self.region, self.epoch, self.policy_version
        )
    }
}

/// What the publisher's committed state says was ever issued for the group: no witness
/// wrote a marker beyond these, so one beyond them was edited by hand (or comes from another
/// cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Issued {
    /// The highest epoch issued or reserved for the group (aborted operations burn theirs).
    pub epoch: u64,
    /// The current policy version.
    pub policy_version: u64,
}

/// A server's marker compared with the decision about to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkerVerdict {
    /// No marker: the first publication on this server, or a server wiped by hand. Ours is
    /// published, on condition that there is still none.
    Absent,
    /// An older decision of the group: ours replaces it, on condition that it is still there.
    Older(Decision),
    /// Exactly our decision: rewriting it changes nothing but records changed by hand.
    Same,
    /// A newer decision of the group, within what was issued: this publisher's view is
    /// stale (a later leader published first). Ours must not be published.
    Newer(Decision),
    /// Not arbiter's doing; an operator must fix it. Never overwritten.
    Refused(MarkerProblem),
}

impl MarkerVerdict {
    /// Whether publishing the decision may replace what the server holds.
    pub fn may_publish(&self) -> bool {
        matches!(
            self,
            MarkerVerdict::Absent | MarkerVerdict::Older(_) | MarkerVerdict::Same
        )
    }

    /// Whether the marker itself is drift the leader repairs (missing or older).
    pub fn is_drift(&self) -> bool {
        matches!(self, MarkerVerdict::Absent | MarkerVerdict::Older(_))
    }
}

/// A marker that arbiter will not overwrite. The operator's fix is in
/// [`crate::dns::DnsUpdateError`]'s message for each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkerProblem {
    /// Some TXT at the marker's name is not a marker (text quoted, shortened).
    Unreadable { text: String, reason: String },
    /// The marker names another group: two groups (or two clusters) publish this name.
    OtherGroup { group: String },
    /// The marker's epoch or policy version is beyond anything issued.
    Ahead { found: Decision, issued: Issued },
}

/// Compares the marker texts a server holds (one per TXT record at the marker's name) with
/// `ours`. Several markers (someone added one) are judged by the newest; every one must be
/// readable and name the same group.
pub fn verdict(texts: &[String], ours: &Decision, issued: &Issued) -> MarkerVerdict {
    let mut newest: Option<Decision> = None;
    for text in texts {
        let found = match Decision::parse(text) {
            Ok(d) => d,
            Err(reason) => {
                return MarkerVerdict::Refused(MarkerProblem::Unreadable {
                    text: quoted(text),
                    reason,
                })
            }
        };
        if found.group != ours.group {
            return MarkerVerdict::Refused(MarkerProblem::OtherGroup { group: found.group });
        }
        if found.epoch > issued.epoch || found.policy_version > issued.policy_version {
            return MarkerVerdict::Refused(MarkerProblem::Ahead {
                found,
                issued: *issued,
            });
        }
        if newest.as_ref().is_none_or(|n| found.key() > n.key()) {
            newest = Some(found);
        }
    }
    let Some(found) = newest else {
        return MarkerVerdict::Absent;
    };
    #[cfg(feature = "unsafe-holes")]
    if crate::holes::open(&crate::holes::DNS_ROLLBACK) && found.key() > ours.key() {
        return MarkerVerdict::Older(found);
    }
    match found.key().cmp(&ours.key()) {
        std::cmp::Ordering::Less => MarkerVerdict::Older(found),
        std::cmp::Ordering::Equal => MarkerVerdict::Same,
        std::cmp::Ordering::Greater => MarkerVerdict::Newer(found),
    }
}

/// At most [`QUOTED_TEXT_MAX`] bytes of `text`, cut on a character boundary.
fn quoted(text: &str) -> String {
    let mut end = text.len().min(QUOTED_TEXT_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end < text.len() {
        format!("{}...", &text[..end])
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(epoch: u64, policy_version: u64) -> Decision {
        Decision {
            group: "checkout".into(),
            region: "region-b".into(),
            epoch,
            policy_version,
        }
    }

    const ISSUED: Issued = Issued {
        epoch: 9,
        policy_version: 4,
    };

    #[test]
    fn text_round_trips_and_names_the_decision() {
        let d = decision(7, 3);
        assert_eq!(
            d.text(),
            "arbiter/1 group=checkout epoch=7 policy=3 region=region-b"
        );
        assert_eq!(Decision::parse(&d.text()), Ok(d));
        assert_eq!(
            marker_name("checkout.shop.example."),
            "_arbiter.checkout.shop.example."
        );
    }

    #[test]
    fn parse_refuses_what_is_not_a_marker() {
        assert!(Decision::parse("v=spf1 -all").is_err());
        assert!(
            Decision::parse("arbiter/1 group=checkout epoch=seven policy=1 region=a")
                .unwrap_err()
                .contains("epoch")
        );
        assert!(
            Decision::parse("arbiter/1 group=checkout policy=1 region=a")
                .unwrap_err()
                .contains("no epoch")
        );
        // Fields a later format adds are ignored.
        assert_eq!(
            Decision::parse("arbiter/1 group=checkout epoch=2 policy=1 region=region-b op=12"),
            Ok(decision(2, 1))
        );
    }

    /// Goal: the order of decisions is (epoch, policy version), and only an older or equal
    /// marker may be replaced. Table-driven over every relation.
    #[test]
    fn only_an_absent_older_or_equal_marker_may_be_replaced() {
        let ours = decision(5, 3);
        let cases: [(&[(u64, u64)], MarkerVerdict); 7] = [
            (&[], MarkerVerdict::Absent),
            (&[(3, 3)], MarkerVerdict::Older(decision(3, 3))),
            (&[(5, 2)], MarkerVerdict::Older(decision(5, 2))),
            // A higher policy version at an older epoch is still an older decision.
            (&[(4, 4)], MarkerVerdict::Older(decision(4, 4))),
            (&[(5, 3)], MarkerVerdict::Same),
            (&[(5, 4)], MarkerVerdict::Newer(decision(5, 4))),
            // Several markers: the newest decides.
            (&[(3, 1), (6, 3)], MarkerVerdict::Newer(decision(6, 3))),
        ];
        for (found, expected) in cases {
            let texts: Vec<String> = found.iter().map(|(e, p)| decision(*e, *p).text()).collect();
            let v = verdict(&texts, &ours, &ISSUED);
            assert_eq!(v, expected, "marker {found:?} against {ours:?}");
            assert_eq!(
                v.may_publish(),
                !matches!(expected, MarkerVerdict::Newer(_)),
                "{found:?}"
            );
        }
    }

    /// Goal: a marker beyond anything issued, of another group, or not a marker at all is
    /// refused (never overwritten, never a reason to retry).
    #[test]
    fn a_marker_not_written_by_this_cluster_is_refused() {
        let ours = decision(5, 3);
        let ahead = verdict(&[decision(10, 3).text()], &ours, &ISSUED);
        assert!(
            matches!(&ahead, MarkerVerdict::Refused(MarkerProblem::Ahead { found, .. }) if found.epoch == 10),
            "{ahead:?}"
        );
        let policy_ahead = verdict(&[decision(5, 5).text()], &ours, &ISSUED);
        assert!(
            matches!(
                policy_ahead,
                MarkerVerdict::Refused(MarkerProblem::Ahead { .. })
            ),
            "{policy_ahead:?}"
        );
        let mut other = decision(3, 1);
        other.group = "catalog".into();
        assert_eq!(
            verdict(&[other.text()], &ours, &ISSUED),
            MarkerVerdict::Refused(MarkerProblem::OtherGroup {
                group: "catalog".into()
            })
        );
        let garbage = verdict(&["x".repeat(500)], &ours, &ISSUED);
        match garbage {
            MarkerVerdict::Refused(MarkerProblem::Unreadable { text, .. }) => {
                assert!(text.len() <= QUOTED_TEXT_MAX + 3, "{}", text.len())
            }
            other => panic!("{other:?}"),
        }
        for v in [ahead, policy_ahead] {
            assert!(!v.may_publish() && !v.is_drift());
        }
    }
}
