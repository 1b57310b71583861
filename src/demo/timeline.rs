//! The live timeline of the scenario "region-a goes dark". Every time printed comes from
//! the system itself: the audit entries of the `Watch` stream (verdict, decision), the
//! operation's step records, the agents' state files, and real DNS queries to the
//! witnesses; nothing is inferred from a sleep.
//!
//! It only observes: it never proposes, never changes a region, and gives up with the name
//! of the phase it was waiting for when nothing happens for [`PHASE_DEADLINE`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;
use tonic::codec::Streaming;

use super::files::{GROUP, NAME, ZONE};
use super::DemoError;
use crate::client::Client;
use crate::config::RecordKind;
use crate::proto;
use crate::wallclock::now_ms;

/// How long the timeline waits for the next phase before calling the scenario stuck; the
/// slowest phase (the lease wait) takes a few seconds, so this is generous on a loaded host.
pub const PHASE_DEADLINE: Duration = Duration::from_secs(60);
/// How often agent state files are read and DNS is asked.
const TICK: Duration = Duration::from_millis(50);
/// Deadline of one DNS query to one witness.
const DNS_QUERY_TIMEOUT_MS: u64 = 300;
/// The sources are observed with different delays (a watch event, a poll of a file, a DNS
/// query): a line waits this long before it is printed, so lines come out in time order.
const REORDER_MS: u64 = 300;

/// What happens in the scenario, in the order it normally happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Detected,
    Declared,
    Revoked,
    Released,
    Fenced,
    RpoChecked,
    Promoted,
    Activated,
    DnsAnswers,
    Validated,
    Gained,
}

impl Phase {
    const ALL: [Phase; 11] = [
        Phase::Detected,
        Phase::Declared,
        Phase::Revoked,
        Phase::Released,
        Phase::Fenced,
        Phase::RpoChecked,
        Phase::Promoted,
        Phase::Activated,
        Phase::DnsAnswers,
        Phase::Validated,
        Phase::Gained,
    ];

    /// What the timeline is waiting for while this phase has not happened.
    pub fn waiting_for(self, from: &str, to: &str) -> String {
        match self {
            Phase::Detected => format!("a quorum of witnesses to see {from} down"),
            Phase::Declared => "the failover decision to be committed".into(),
            Phase::Revoked => "the revoke step".into(),
            Phase::Released => format!("agent {from} to release its lease"),
            Phase::Fenced => {
                format!("the fence step (a verified fence, or {from}'s lease expiring)")
            }
            Phase::RpoChecked => "the rpo-check step".into(),
            Phase::Promoted => "the promote step".into(),
            Phase::Activated => format!("the activation of {to}"),
            Phase::DnsAnswers => format!("every witness's DNS server to answer {to}"),
            Phase::Validated => "the validate step".into(),
            Phase::Gained => format!("agent {to} to gain the lease"),
        }
    }
}

/// Where to look, and what the scenario moves from and to.
pub struct Scenario {
    pub client: Client,
    /// The region that goes dark and the one that takes over.
    pub from: String,
    pub to: String,
    /// What the group's record publishes while `to` is active.
    pub to_address: String,
    /// The witnesses' DNS servers.
    pub dns: Vec<SocketAddr>,
    /// The agents' state files of `from` and `to`.
    pub agent_from: PathBuf,
    pub agent_to: PathBuf,
}

/// When each phase happened (wall-clock ms, the clock every source stamps with on this one
/// host), for the summary and the tests of the output.
#[derive(Debug, Default)]
pub struct Timings {
    /// When the first region went dark: the +0.00s of the timeline.
    pub t0_ms: u64,
    /// When each phase happened, as its source stamped it.
    pub at_ms: BTreeMap<Phase, u64>,
    /// Lines observed but not printed yet, with the time they stand for.
    pending: Vec<(u64, String)>,
}

impl Timings {
    /// Queues a line of the timeline (see [`Timings::flush`]).
    fn note(&mut self, at_ms: u64, text: &str) {
        self.pending.push((at_ms, text.to_string()));
    }

    /// Prints, in time order, the pending lines at least [`REORDER_MS`] old (all of them
    /// with `all`).
    fn flush(&mut self, all: bool) {
        self.pending.sort_by_key(|(at, _)| *at);
        let now = now_ms();
        let ready = self
            .pending
            .iter()
            .take_while(|(at, _)| all || at.saturating_add(REORDER_MS) <= now)
            .count();
        for (at, text) in self.pending.drain(..ready) {
            println!(
                "  {:>+7.2}s  {text}",
                (at as f64 - self.t0_ms as f64) / 1000.0
            );
        }
    }

    /// Records `phase` at `at_ms` and prints `text`, once.
    fn happened(&mut self, phase: Phase, at_ms: u64, text: &str) {
        if self.at_ms.contains_key(&phase) {
            return;
        }
        self.at_ms.insert(phase, at_ms);
        self.note(at_ms, text);
    }

    fn first_missing(&self) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| !self.at_ms.contains_key(p))
    }
}

/// Opens a watch and returns it with the sequence number of the newest audit entry so far:
/// the timeline reports only what comes after.
pub async fn open_watch(client: &Client) -> Result<(Streaming<proto::WatchEvent>, u64), DemoError> {
    let mut c = client.connect_any().await?;
    let mut stream = c
        .watch(proto::WatchRequest {})
        .await
        .map_err(|s| DemoError::Cluster(crate::client::ClientError::from_status(&s)))?
        .into_inner();
    let first = stream
        .message()
        .await
        .map_err(|s| DemoError::Cluster(crate::client::ClientError::from_status(&s)))?;
    let baseline = first
        .and_then(|e| e.audit.iter().map(|a| a.seq).max())
        .unwrap_or(0);
    Ok((stream, baseline))
}

/// Follows the scenario from `t0_ms` (when `from` went dark) until every phase happened,
/// printing each as it is observed.
pub async fn follow(
    s: &Scenario,
    stream: Streaming<proto::WatchEvent>,
    baseline_seq: u64,
    t0_ms: u64,
) -> Result<Timings, DemoError> {
    let mut t = Timings {
        t0_ms,
        ..Timings::default()
    };
    let result = observe(&mut t, s, stream, baseline_seq).await;
    t.flush(true);
    result.map(|()| t)
}

async fn observe(
    t: &mut Timings,
    s: &Scenario,
    stream: Streaming<proto::WatchEvent>,
    baseline_seq: u64,
) -> Result<(), DemoError> {
    let t0_ms = t.t0_ms;
    t.note(
        t0_ms,
        &format!(
            "{} health endpoint stopped (it answers 503 from now on)",
            s.from
        ),
    );
    let mut stream = Some(stream);
    let mut last_seq = baseline_seq;
    let mut operation: Option<u64> = None;
    let mut steps_seen = 0;
    let mut to_epoch = 0;
    let mut progress = Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let phases = t.at_ms.len();
        tokio::select! {
            event = next_event(&mut stream) => match event {
                Some(event) => {
                    for a in event.audit.iter().filter(|a| a.seq > last_seq) {
                        audit_entry(t, s, a, &mut operation);
                    }
                    if let Some(seq) = event.audit.iter().map(|a| a.seq).max() {
                        last_seq = last_seq.max(seq);
                    }
                    if let Some(id) = operation {
                        if let Some(op) = s.client.operation(GROUP, id).await? {
                            to_epoch = op.to_epoch;
                            steps(t, &op, &mut steps_seen);
                            if op.state == "halted" || op.state == "aborted" {
                                return Err(DemoError::Halted {
                                    operation: op.id,
                                    step: op.step,
                                    error: op.error,
                                });
                            }
                        }
                    }
                }
                None => stream = None,
            },
            _ = ticker.tick() => {
                if stream.is_none() {
                    // Reconnect; entries already reported are skipped by their sequence.
                    stream = open_watch(&s.client).await.ok().map(|(st, _)| st);
                }
                agents(t, s, to_epoch);
                // From the decision on (no witness may answer the new region before the
                // activation is applied: the first answer measures when it is).
                if t.at_ms.contains_key(&Phase::Declared) && !t.at_ms.contains_key(&Phase::DnsAnswers) {
                    dns(t, s).await;
                }
            }
        }
        if t.at_ms.len() > phases {
            progress = Instant::now();
        }
        t.flush(false);
        let Some(missing) = t.first_missing() else {
            return Ok(());
        };
        if progress.elapsed() > PHASE_DEADLINE {
            return Err(DemoError::Stuck {
                waiting_for: missing.waiting_for(&s.from, &s.to),
                after: PHASE_DEADLINE,
            });
        }
    }
}

async fn next_event(
    stream: &mut Option<Streaming<proto::WatchEvent>>,
) -> Option<proto::WatchEvent> {
    match stream {
        Some(s) => s.message().await.ok().flatten(),
        None => std::future::pending().await,
    }
}

/// A verdict or a decision from the audit log.
fn audit_entry(t: &mut Timings, s: &Scenario, a: &proto::AuditEntry, operation: &mut Option<u64>) {
    match a.kind.as_str() {
        "verdict" if is_down_verdict(&a.detail, &s.from) => {
            let (down, voters) = witnesses_seeing_down(&a.detail);
            t.happened(
                Phase::Detected,
                a.at_ms,
                &format!("detected down by {down} of {voters} witnesses"),
            );
        }
        "operation-declared" if a.group == GROUP && operation.is_none() => {
            *operation = operation_id(&a.detail);
            let first = a.detail.lines().next().unwrap_or_default();
            t.happened(
                Phase::Declared,
                a.at_ms,
                &format!("decision committed: {first}"),
            );
        }
        _ => {}
    }
}

/// Prints the operation's step records not printed yet.
fn steps(t: &mut Timings, op: &proto::OperationStatus, seen: &mut usize) {
    for step in op.steps.iter().skip(*seen) {
        let detail = without_json_outputs(step.detail.lines().next().unwrap_or_default());
        let detail = detail.as_str();
        let at = step.finished_at_ms;
        match step.step.as_str() {
            "revoke" => t.happened(Phase::Revoked, at, &format!("revoked: {detail}")),
            "fence" => t.happened(Phase::Fenced, at, &format!("fenced: {detail}")),
            "rpo-check" => t.happened(Phase::RpoChecked, at, &format!("rpo-check: {detail}")),
            "promote" => t.happened(Phase::Promoted, at, &format!("promoted: {detail}")),
            "activate" => t.happened(
                Phase::Activated,
                at,
                &format!("activated: epoch {}, {} is active", op.to_epoch, op.to),
            ),
            "dns" => t.note(at, &format!("dns step: {detail}")),
            "validate" => t.happened(Phase::Validated, at, &format!("validated: {detail}")),
            _ => {}
        }
    }
    *seen = (*seen).max(op.steps.len());
}

/// What the agents wrote to their state files.
fn agents(t: &mut Timings, s: &Scenario, to_epoch: u64) {
    if let Some(state) = read_agent(&s.agent_from) {
        if !state.holding {
            t.happened(
                Phase::Released,
                state.since_ms,
                &format!(
                    "agent {} released its lease: its on-lose command (self-fence) runs here",
                    s.from
                ),
            );
        }
    }
    if let Some(state) = read_agent(&s.agent_to) {
        if state.holding && to_epoch > 0 && state.epoch == to_epoch {
            t.happened(
                Phase::Gained,
                state.since_ms,
                &format!("agent {} holds the lease at epoch {}", s.to, state.epoch),
            );
        }
    }
}

/// Asks every witness's DNS server; the phase happens when all of them answer `to`.
async fn dns(t: &mut Timings, s: &Scenario) {
    let all = futures::future::join_all(s.dns.iter().map(answers)).await;
    if !all.iter().all(|a| *a == [s.to_address.as_str()]) {
        return;
    }
    t.happened(
        Phase::DnsAnswers,
        now_ms(),
        &format!(
            "DNS answers {}: {NAME} A {} from all {} witnesses (real DNS queries)",
            s.to,
            s.to_address,
            s.dns.len()
        ),
    );
}

/// The A records a witness's DNS server answers for the group's name (empty on error).
pub async fn answers(addr: &SocketAddr) -> Vec<String> {
    crate::dns::query_rrset_at(
        &addr.to_string(),
        ZONE,
        NAME,
        RecordKind::A,
        DNS_QUERY_TIMEOUT_MS,
    )
    .await
    .unwrap_or_default()
}

/// The parts of an agent's state file the timeline reads.
#[derive(Debug, PartialEq, Eq)]
pub struct AgentView {
    pub holding: bool,
    pub epoch: u64,
    /// When `holding` last changed.
    pub since_ms: u64,
}

/// Reads an agent's state file; `None` while it does not exist yet or is unreadable.
pub fn read_agent(path: &std::path::Path) -> Option<AgentView> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(AgentView {
        holding: v["holding"].as_bool()?,
        epoch: v["epoch"].as_u64()?,
        since_ms: v["since_ms"].as_u64()?,
    })
}

/// A step detail without the JSON reports hooks print (`; output: {...}`): the timeline
/// keeps the hooks' one-line summaries; `arbiter operations` shows everything.
fn without_json_outputs(detail: &str) -> String {
    const MARK: &str = "; output: {";
    let mut out = String::new();
    let mut rest = detail;
    while let Some(start) = rest.find(MARK) {
        out.push_str(&rest[..start]);
        let after = &rest[start + MARK.len()..];
        // The report is one JSON object; it ends where the next part of the detail starts.
        rest = match after.find("}; ") {
            Some(end) => &after[end + 1..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}

/// Whether a verdict entry says `region` became `down`.
fn is_down_verdict(detail: &str, region: &str) -> bool {
    let first = detail.lines().next().unwrap_or_default();
    first.starts_with(&format!("region {region}: ")) && first.ends_with("-> down")
}

/// From a verdict's evidence: how many voters saw the region down, of how many voters.
fn witnesses_seeing_down(detail: &str) -> (usize, usize) {
    let down = detail
        .lines()
        .filter(|l| l.trim_start().starts_with("witness ") && l.contains(": down for "))
        .count();
    let voters = detail
        .lines()
        .find_map(|l| l.strip_suffix(':')?.split(" voters").next()?.parse().ok())
        .unwrap_or(0);
    (down, voters)
}

/// The operation id at the start of an `operation-declared` entry ("operation 7 (...) ...").
fn operation_id(detail: &str) -> Option<u64> {
    detail
        .strip_prefix("operation ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_counts_the_voters_that_saw_the_region_down() {
        let detail = "region region-a: up -> down\n3 voters, majority 2:\n  \
                      witness 1: down for 1600 ms (report 120 ms old): HTTP 503\n  \
                      witness 2: failing (not yet long enough) for 1200 ms (report 80 ms old)\n  \
                      witness 3: down for 1550 ms (report 10 ms old): HTTP 503";
        assert_eq!(witnesses_seeing_down(detail), (2, 3));
        assert_eq!(witnesses_seeing_down("region region-a: up -> down"), (0, 0));
        assert!(is_down_verdict(detail, "region-a"));
        assert!(!is_down_verdict(detail, "region-b"));
        assert!(!is_down_verdict(
            "region region-a: down -> up\n3 voters",
            "region-a"
        ));
    }

    #[test]
    fn hook_json_reports_are_left_out_of_step_details() {
        assert_eq!(
            without_json_outputs(
                "hook v: validate: ok (82 ms); output: {\"epoch\":2,\"x\":{\"y\":1}}; a majority of witnesses see region-b up"
            ),
            "hook v: validate: ok (82 ms); a majority of witnesses see region-b up"
        );
        assert_eq!(
            without_json_outputs("fence confirmed by hooks: hook f: ok; output: {\"a\":1}"),
            "fence confirmed by hooks: hook f: ok"
        );
        let plain = "hook promote: HTTP 200 OK after 16 ms; output: region-b is primary";
        assert_eq!(without_json_outputs(plain), plain);
    }

    #[test]
    fn operation_id_is_read_from_the_declaration() {
        assert_eq!(
            operation_id("operation 12 (automatic) region-a -> region-b, epoch 2 reserved: x"),
            Some(12)
        );
        assert_eq!(operation_id("mode auto -> frozen"), None);
    }

    #[test]
    fn agent_state_file_is_read_and_partial_files_are_ignored() {
        let dir = super::super::files::WorkDir::create().unwrap();
        let path = dir.path().join("agent.json");
        assert_eq!(read_agent(&path), None);
        std::fs::write(
            &path,
            r#"{"group":"checkout","region":"region-a","holder":"h","holding":false,"epoch":1,
               "deadline_in_ms":null,"active":"region-a","event":"renewal refused: revoked",
               "since_ms":1700000000123,"updated_at_ms":1700000000456}"#,
        )
        .unwrap();
        assert_eq!(
            read_agent(&path),
            Some(AgentView {
                holding: false,
                epoch: 1,
                since_ms: 1_700_000_000_123,
            })
        );
        std::fs::write(&path, r#"{"holding": tr"#).unwrap();
        assert_eq!(read_agent(&path), None);
    }

    #[test]
    fn the_first_missing_phase_names_what_is_stuck() {
        let mut t = Timings::default();
        t.at_ms.insert(Phase::Detected, 1);
        t.at_ms.insert(Phase::Declared, 2);
        let missing = t.first_missing().unwrap();
        assert_eq!(missing, Phase::Revoked);
        assert_eq!(
            missing.waiting_for("region-a", "region-b"),
            "the revoke step"
        );
        for p in Phase::ALL {
            t.at_ms.insert(p, 3);
        }
        assert_eq!(t.first_missing(), None);
    }
}
