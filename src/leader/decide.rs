//! The leader's automatic decisions, pure: from the committed state, the policy, the
//! quorum verdicts, the leader's memory and `now`, the commands to propose. It reads no
//! clock, opens no socket and proposes nothing; the verdict duty (`engine`) does the I/O.
//!
//! - A verdict change between `up` and `down` is recorded with its evidence.
//! - A group whose active region is `down` by quorum verdict (S7) fails over to its first
//!   candidate that is `up`: by itself in `auto` mode, as an operation waiting for approval
//!   in `manual` mode, never in `frozen` mode or while another operation runs.
//! - Anti-flap: no automatic operation within `cooldown_ms` of the group's last activation
//!   or abort as this witness saw them ([`Activations`]).
//! - Automatic failback to the first candidate only with `failback_after_ms`, once it has
//!   been `up` that long without interruption ([`Memory`]).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use super::observations::Activations;
use crate::config::{Mode, Policy};
use crate::health::{Evidence, Seen, Verdict};
use crate::state::{ClusterState, Command, OperationKind};

/// What the leader remembers between rounds (a new leader starts empty).
#[derive(Debug, Default, Clone)]
pub struct Memory {
    /// Since when each region has been `up` without interruption (for automatic failback).
    pub up_since: HashMap<String, Instant>,
}

impl Memory {
    /// Notes this round's verdicts.
    pub fn update(&mut self, verdicts: &BTreeMap<String, Verdict>, now: Instant) {
        for (region, verdict) in verdicts {
            if *verdict == Verdict::Up {
                self.up_since.entry(region.clone()).or_insert(now);
            } else {
                self.up_since.remove(region);
            }
        }
        self.up_since.retain(|r, _| verdicts.contains_key(r));
    }
}

/// The quorum verdicts of a round, with the evidence behind each.
pub type Verdicts = BTreeMap<String, (Verdict, Evidence)>;

/// Verdict changes between `up` and `down` to record, with their evidence.
pub fn verdict_changes(state: &ClusterState, verdicts: &Verdicts) -> Vec<Command> {
    verdicts
        .iter()
        .filter(|(_, (v, _))| *v != Verdict::Unknown)
        .filter(|(region, (v, _))| state.verdicts.get(*region) != Some(v))
        .map(|(region, (v, evidence))| Command::RecordVerdict {
            region: region.clone(),
            verdict: *v,
            evidence: describe_evidence(evidence),
        })
        .collect()
}

/// The operations to start now: at most one per group.
pub fn decide(
    state: &ClusterState,
    policy: &Policy,
    verdicts: &Verdicts,
    memory: &Memory,
    activations: &Activations,
    now: Instant,
) -> Vec<Command> {
    let verdict_of = |region: &str| {
        verdicts
            .get(region)
            .map(|(v, _)| *v)
            .unwrap_or(Verdict::Unknown)
    };
    let mut out = Vec::new();
    for gp in &policy.groups {
        let Some(g) = state.groups.get(&gp.name) else {
            continue;
        };
        let busy = g.operation.is_some() && state.supersedable_operation(&gp.name).is_none();
        if g.mode == Mode::Frozen || busy {
            continue;
        }
        if !activations.cooled(&gp.name, Duration::from_millis(gp.cooldown_ms), now) {
            continue;
        }
        let target = gp
            .candidates
            .iter()
            .find(|c| **c != g.active && verdict_of(c) == Verdict::Up);
        let (kind, to, reason) = if verdict_of(&g.active) == Verdict::Down {
            let Some(to) = target else { continue };
            let evidence = verdicts
                .get(&g.active)
                .map(|(_, e)| describe_evidence(e))
                .unwrap_or_default();
            (
                OperationKind::Automatic,
                to.clone(),
                format!(
                    "{} is down by quorum verdict; {to} is up\n{evidence}",
                    g.active
                ),
            )
        } else if let Some(after) = gp.failback_after_ms {
            let Some(preferred) = gp.candidates.first() else {
                continue;
            };
            let stable = memory
                .up_since
                .get(preferred)
                .is_some_and(|t| now.duration_since(*t) >= Duration::from_millis(after));
            if *preferred == g.active || !stable {
                continue;
            }
            (
                OperationKind::Failback,
                preferred.clone(),
                format!("{preferred} has been up for {after} ms: automatic failback"),
            )
        } else {
            continue;
        };
        out.push(Command::StartOperation {
            group: gp.name.clone(),
            to,
            kind,
            reason,
            approval_required: g.mode == Mode::Manual,
            requested: false,
        });
    }
    out
}

/// One line per voter: what it saw, for how long, how fresh its report is.
pub fn describe_evidence(e: &Evidence) -> String {
    let mut out = format!("{} voters, majority {}:", e.voters, e.majority);
    for w in &e.witnesses {
        let seen = match w.seen {
            Seen::Up => "up",
            Seen::Down => "down",
            Seen::Failing => "failing (not yet long enough)",
            Seen::Stale => "stale report",
            Seen::Missing => "no report",
        };
        out += &format!(
            "\n  witness {}: {seen} for {} ms (report {} ms old){}",
            w.witness,
            w.for_ms,
            w.report_age_ms,
            if w.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", w.detail)
            }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Proposal, Step, StepOutcome};

    fn evidence() -> Evidence {
        Evidence {
            voters: 3,
            majority: 2,
            witnesses: Vec::new(),
        }
    }

    fn state(mode: &str, failback: bool) -> (ClusterState, Policy) {
        let text = format!(
            "[[regions]]\nname = \"a\"\n[[regions]]\nname = \"b\"\n[[regions]]\nname = \"c\"\n\n\
             [[groups]]\nname = \"g\"\ncandidates = [\"a\", \"b\", \"c\"]\nmode = \"{mode}\"\n\
             cooldown_ms = 60000\n{}",
            if failback {
                "failback_after_ms = 10000\n"
            } else {
                ""
            }
        );
        let policy = Policy::parse("p", &text).unwrap();
        let mut s = ClusterState::default();
        let p = Proposal {
            actor: "t".into(),
            at_ms: 1,
            request_id: String::new(),
            command: Command::ApplyPolicy {
                policy: policy.clone(),
                if_version: 0,
            },
        };
        assert!(s.apply(1, &p).outcome.is_ok());
        (s, policy)
    }

    fn verdicts(list: &[(&str, Verdict)]) -> Verdicts {
        list.iter()
            .map(|(r, v)| (r.to_string(), (*v, evidence())))
            .collect()
    }

    /// The group's active region (`a` at first) moved to `to` by a completed operation.
    fn fail_over(s: &mut ClusterState, to: &str) {
        let id = s.last_operation_id + 1;
        let mut index = 10 + id * 10;
        let mut apply = |command| {
            index += 1;
            let p = Proposal {
                actor: "t".into(),
                at_ms: 5,
                request_id: String::new(),
                command,
            };
            assert!(s.apply(index, &p).outcome.is_ok());
        };
        apply(Command::StartOperation {
            group: "g".into(),
            to: to.into(),
            kind: OperationKind::Failover,
            reason: String::new(),
            approval_required: false,
            requested: false,
        });
        for step in &Step::ALL[1..8] {
            apply(Command::CompleteStep {
                operation: id,
                step: *step,
                outcome: StepOutcome::Completed,
                detail: String::new(),
            });
        }
    }

    /// Goal: the automatic decisions, table-driven: which operation (if any) each mode,
    /// verdict, cooldown and failback situation starts.
    #[test]
    fn automatic_decisions_follow_modes_verdicts_cooldown_and_failback() {
        use Verdict::{Down, Unknown, Up};
        let now = Instant::now();
        let later = now + Duration::from_secs(120);
        struct Case {
            name: &'static str,
            mode: &'static str,
            failback: bool,
            /// Failed over to `b` (seen at `now`) before deciding.
            moved: bool,
            verdicts: &'static [(&'static str, Verdict)],
            at: fn(Instant, Instant) -> Instant,
            /// (kind, to, approval required)
            expect: Option<(OperationKind, &'static str, bool)>,
        }
        let at_now = |n, _| n;
        let at_later = |_, l| l;
        let cases = [
            Case {
                name: "auto: active down, first up candidate",
                mode: "auto",
                failback: false,
                moved: false,
                verdicts: &[("a", Down), ("b", Unknown), ("c", Up)],
                at: at_now,
                expect: Some((OperationKind::Automatic, "c", false)),
            },
            Case {
                name: "manual: proposes for approval",
                mode: "manual",
                failback: false,
                moved: false,
                verdicts: &[("a", Down), ("b", Up)],
                at: at_now,
                expect: Some((OperationKind::Automatic, "b", true)),
            },
            Case {
                name: "frozen: nothing",
                mode: "frozen",
                failback: false,
                moved: false,
                verdicts: &[("a", Down), ("b", Up)],
                at: at_now,
                expect: None,
            },
            Case {
                name: "down but no candidate up: nothing (S7)",
                mode: "auto",
                failback: false,
                moved: false,
                verdicts: &[("a", Down), ("b", Unknown), ("c", Down)],
                at: at_now,
                expect: None,
            },
            Case {
                name: "unknown is not down",
                mode: "auto",
                failback: false,
                moved: false,
                verdicts: &[("a", Unknown), ("b", Up)],
                at: at_now,
                expect: None,
            },
            Case {
                name: "cooldown after an activation holds back",
                mode: "auto",
                failback: false,
                moved: true,
                verdicts: &[("b", Down), ("a", Up)],
                at: at_now,
                expect: None,
            },
            Case {
                name: "after the cooldown it fails over again",
                mode: "auto",
                failback: false,
                moved: true,
                verdicts: &[("b", Down), ("a", Up)],
                at: at_later,
                expect: Some((OperationKind::Automatic, "a", false)),
            },
            Case {
                name: "failback once the first candidate was up long enough",
                mode: "auto",
                failback: true,
                moved: true,
                verdicts: &[("a", Up), ("b", Up)],
                at: at_later,
                expect: Some((OperationKind::Failback, "a", false)),
            },
            Case {
                name: "no failback without failback_after_ms",
                mode: "auto",
                failback: false,
                moved: true,
                verdicts: &[("a", Up), ("b", Up)],
                at: at_later,
                expect: None,
            },
        ];
        for case in cases {
            let (mut s, policy) = state(case.mode, case.failback);
            if case.moved {
                fail_over(&mut s, "b");
            }
            let mut activations = Activations::default();
            activations.observe(&s, now);
            let v = verdicts(case.verdicts);
            let mut memory = Memory::default();
            let plain: BTreeMap<String, Verdict> =
                v.iter().map(|(r, (x, _))| (r.clone(), *x)).collect();
            memory.update(&plain, now);
            let commands = decide(
                &s,
                &policy,
                &v,
                &memory,
                &activations,
                (case.at)(now, later),
            );
            let got = commands.first().map(|c| match c {
                Command::StartOperation {
                    kind,
                    to,
                    approval_required,
                    ..
                } => (*kind, to.clone(), *approval_required),
                other => panic!("{other:?}"),
            });
            assert_eq!(
                got,
                case.expect.map(|(k, t, a)| (k, t.to_string(), a)),
                "{}",
                case.name
            );
            assert!(commands.len() <= 1, "{}: one per group", case.name);
        }
    }

    #[test]
    fn only_changes_between_up_and_down_are_recorded() {
        let (s, _) = state("auto", false);
        let v = verdicts(&[("a", Verdict::Up), ("b", Verdict::Unknown)]);
        let changes = verdict_changes(&s, &v);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert!(
            matches!(&changes[0], Command::RecordVerdict { region, verdict, .. } if region == "a" && *verdict == Verdict::Up)
        );
    }
}
