//! The public `Arbiter` gRPC service: status, watch, failover, mode, policy, init, members.
//! Writes go through consensus; reads are linearizable unless the caller asks for the local
//! view. A non-leader answers `not-leader` with the leader's address (see [`super::error`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::error::ApiError;
use crate::access::Caller;
use crate::config::{Mode, Peer, Policy};
use crate::leader::LeaderTables;
use crate::proto;
use crate::proto::arbiter_server::Arbiter;
use crate::raft::{ClusterView, Consensus, ConsensusError, MemberView};
use crate::state::{
    AuditEntry, ClusterState, Command, GroupState, Operation, OperationKind, OperationState,
    Outcome, Proposal, Step, StepOutcome, NAME_BYTES_MAX, REASON_BYTES_MAX, REQUEST_ID_BYTES_MAX,
};
use crate::tls::LiveTls;

/// Why a witness's id and site could not be confirmed from its certificate.
enum Unverified {
    /// It could not be asked (not running, unreachable, no handshake in time).
    Unreachable(String),
    /// Its certificate names another id or site.
    Mismatch(String),
}

/// Audit entries returned by `Status` when the caller does not say.
const AUDIT_LIMIT_DEFAULT: u32 = 20;
/// Upper bound on audit entries in one reply.
const AUDIT_LIMIT_MAX: u32 = 1_000;
/// Queued watch events per subscriber; a subscriber that falls further behind is dropped
/// (it reconnects and gets the current state).
const WATCH_QUEUE: usize = 64;
/// How long `Init` waits for the new cluster to elect a leader and record its id.
const INIT_WAIT: Duration = Duration::from_secs(30);
/// How long `MembersAdd` and `Init` wait for a witness's TLS handshake when they ask it
/// who it is.
const MEMBER_HANDSHAKE_WAIT: Duration = Duration::from_secs(5);

/// The public API of one witness.
pub struct ApiService {
    consensus: Arc<Consensus>,
    /// Initial voters from the node file, used by `Init`.
    peers: Vec<Peer>,
    /// Lease holders and region verdicts known to this witness as leader.
    tables: Arc<LeaderTables>,
    /// This witness's TLS material, to ask a witness being added who it is.
    tls: Arc<LiveTls>,
    /// Where the refusals made here (a break-glass approval without the role) are counted,
    /// as the access check's are.
    metrics: Arc<crate::telemetry::Metrics>,
}

impl ApiService {
    pub fn new(
        consensus: Arc<Consensus>,
        peers: Vec<Peer>,
        tables: Arc<LeaderTables>,
        tls: Arc<LiveTls>,
        metrics: Arc<crate::telemetry::Metrics>,
    ) -> Self {
        Self {
            consensus,
            peers,
            tables,
            tls,
            metrics,
        }
    }

    async fn operation_command<T>(
        &self,
        req: &Request<T>,
        request_id: String,
        command: Command,
    ) -> Result<Response<proto::OperationReply>, Status> {
        check_request_id(&request_id)?;
        let resp = self
            .consensus
            .propose(self.proposal(req, request_id, command))
            .await
            .map_err(ApiError::from)?;
        match resp.outcome.map_err(ApiError::from)? {
            Outcome::Operation(op) => Ok(Response::new(proto::OperationReply {
                operation: Some(operation_pb(&op)),
            })),
            Outcome::OperationId(id) => Err(ApiError::Internal(format!(
                "this request was answered before; operation {id} is no longer kept"
            ))
            .into()),
            other => Err(ApiError::Internal(format!("unexpected outcome {other:?}")).into()),
        }
    }

    fn proposal<T>(&self, req: &Request<T>, request_id: String, command: Command) -> Proposal {
        Proposal {
            actor: Caller::of(req).identity,
            at_ms: self.consensus.now_ms(),
            request_id: if request_id.is_empty() {
                new_request_id()
            } else {
                request_id
            },
            command,
        }
    }

    /// Whether the witness at `addr` is witness `id` at `site` by its certificate: a TLS
    /// handshake as its peers make one, then the names the cluster CA signed into it.
    async fn served_witness(&self, id: u64, addr: &str, site: &str) -> Result<(), Unverified> {
        let served = self
            .tls
            .current()
            .served_identity(addr, MEMBER_HANDSHAKE_WAIT)
            .await
            .map_err(|e| {
                Unverified::Unreachable(format!("cannot ask the witness at {addr} who it is: {e}"))
            })?;
        if served.witness == Some(id) && served.site.as_deref() == Some(site) {
            return Ok(());
        }
        let named = match (served.witness, served.site.as_deref()) {
            (None, _) => format!("names no witness id ({})", served.identity),
            (Some(id), Some(site)) => format!("names witness {id} at site {site}"),
            (Some(id), None) => format!("names witness {id} and no site"),
        };
        Err(Unverified::Mismatch(format!(
            "the certificate of the witness at {addr} {named}, not witness {id} at site {site}"
        )))
    }

    /// Checks that the membership change from the current voters to `after` keeps the
    /// failure domains ([`crate::sites`]) or that `accepted` says why not: returns the reason
    /// to record, if any.
    fn check_sites(
        &self,
        change: &str,
        after: impl Fn(&[MemberView]) -> Vec<String>,
        accepted: &str,
    ) -> Result<Option<String>, ApiError> {
        if accepted.len() > REASON_BYTES_MAX {
            return Err(ApiError::invalid(
                "accept_site_risk",
                format!("longer than {REASON_BYTES_MAX} bytes"),
            ));
        }
        let view = self.consensus.view();
        let before: Vec<&str> = view
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.site.as_str())
            .collect();
        let after = after(&view.members);
        match crate::sites::check_change(before, after.iter().map(String::as_str)) {
            Ok(_) => Ok((!accepted.is_empty()).then(|| accepted.to_string())),
            Err(why) if !accepted.is_empty() => {
                tracing::warn!(change, risk = %why, reason = accepted, "site risk accepted");
                Ok(Some(accepted.to_string()))
            }
            Err(why) => Err(ConsensusError::Membership(format!(
                "{change} would weaken the cluster's failure domains: {why}. Change the \
                 witnesses so that no site's loss stops the cluster (see `arbiter members \
                 list`), or make this change anyway with --accept-site-risk REASON, which the \
                 audit log keeps"
            ))
            .into()),
        }
    }

    /// Records a membership change that was made in the audit log.
    async fn record_membership<T>(
        &self,
        req: &Request<T>,
        change: String,
        accepted_risk: Option<String>,
    ) -> Result<(), ApiError> {
        let p = self.proposal(
            req,
            String::new(),
            Command::RecordMembership {
                change: change.clone(),
                accepted_risk,
            },
        );
        let resp = self.consensus.propose(p).await.map_err(|e| {
            ApiError::Internal(format!(
                "{change}, but recording it in the audit log failed: {e}"
            ))
        })?;
        resp.outcome.map(|_| ()).map_err(ApiError::from)
    }

    async fn decide(&self, proposal: Proposal) -> Result<(GroupState, u64), ApiError> {
        let resp = self.consensus.propose(proposal).await?;
        match resp.outcome? {
            Outcome::Group(g) => Ok((g, resp.index)),
            other => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
        }
    }
}

/// A random request id for callers that did not choose one.
pub fn new_request_id() -> String {
    format!("{:032x}", crate::raft::random_u128())
}

fn check_name(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if value.len() > NAME_BYTES_MAX {
        return Err(ApiError::invalid(
            field,
            format!("longer than {NAME_BYTES_MAX} bytes"),
        ));
    }
    Ok(())
}

fn check_request_id(id: &str) -> Result<(), ApiError> {
    if id.len() > REQUEST_ID_BYTES_MAX {
        return Err(ApiError::invalid(
            "request_id",
            format!("longer than {REQUEST_ID_BYTES_MAX} bytes"),
        ));
    }
    Ok(())
}

/// What is wrong with a server's marker for `publication`, worded as what happens next or
/// what the operator must do; empty when it names the committed decision.
fn marker_problem(publication: &crate::dns::Publication, read: &crate::dns::MarkerRead) -> String {
    use crate::dns::MarkerVerdict;
    let verdict = read.verdict(publication);
    match &verdict {
        MarkerVerdict::Same => String::new(),
        MarkerVerdict::Absent => format!(
            "no marker at {}: drift; the leader's reconciler publishes it within one reconcile \
             interval",
            read.name
        ),
        MarkerVerdict::Older(d) => format!(
            "the marker names an older decision ({d}): drift; the leader's reconciler replaces \
             it within one reconcile interval"
        ),
        MarkerVerdict::Newer(d) => format!(
            "the marker names {d}, newer than the committed decision: one committed since this \
             check (check again), or an edit by hand"
        ),
        MarkerVerdict::Refused(_) => crate::dns::DnsUpdateError::of_marker(
            &publication.name,
            &publication.decision,
            &verdict,
        )
        .map(|e| e.to_string())
        .unwrap_or_default(),
    }
}

pub(crate) fn operation_pb(op: &Operation) -> proto::OperationStatus {
    let error = match &op.state {
        OperationState::Halted { error } => error.clone(),
        OperationState::Aborting { reason } => format!("{reason} (unfence hooks running)"),
        OperationState::Aborted { reason } => match &op.unfenced {
            Some(unfenced) => format!("{reason}; {unfenced}"),
            None => reason.clone(),
        },
        _ => String::new(),
    };
    proto::OperationStatus {
        id: op.id,
        group: op.group.clone(),
        kind: op.kind.as_str().to_string(),
        from: op.from.clone(),
        to: op.to.clone(),
        from_epoch: op.from_epoch,
        to_epoch: op.to_epoch,
        reason: op.reason.clone(),
        actor: op.actor.clone(),
        state: op.state.name().to_string(),
        error,
        step: op.step.as_str().to_string(),
        steps: op
            .steps
            .iter()
            .map(|r| proto::StepStatus {
                step: r.step.as_str().to_string(),
                outcome: match r.outcome {
                    StepOutcome::Completed => "completed",
                    StepOutcome::NoOp => "no-op",
                    StepOutcome::Skipped => "skipped",
                }
                .to_string(),
                detail: r.detail.clone(),
                finished_at_ms: r.finished_at_ms,
                index: r.index,
            })
            .collect(),
        created_at_ms: op.created_at_ms,
        approvals: op.approvals.clone(),
    }
}

pub(crate) fn group_pb(g: &GroupState) -> proto::GroupStatus {
    proto::GroupStatus {
        name: g.name.clone(),
        active: g.active.clone(),
        epoch: g.epoch,
        mode: g.mode.as_str().to_string(),
        candidates: g.candidates.clone(),
    }
}

fn audit_pb(a: &AuditEntry) -> proto::AuditEntry {
    proto::AuditEntry {
        seq: a.seq,
        index: a.index,
        at_ms: a.at_ms,
        actor: a.actor.clone(),
        group: a.group.clone(),
        kind: a.kind.to_string(),
        detail: a.detail.clone(),
        epoch: a.epoch,
    }
}

fn member_pb(m: &MemberView) -> proto::WitnessStatus {
    proto::WitnessStatus {
        id: m.id,
        addr: m.addr.clone(),
        site: m.site.clone(),
        role: if m.leader {
            "leader"
        } else if m.voter {
            "voter"
        } else {
            "learner"
        }
        .to_string(),
        last_contact_ms: m.last_contact_ms,
        matched_index: m.matched_index,
    }
}

fn members_pb(view: &ClusterView) -> Vec<proto::WitnessStatus> {
    view.members.iter().map(member_pb).collect()
}

fn status_reply(
    state: &ClusterState,
    view: &ClusterView,
    tables: &LeaderTables,
    audit_limit: u32,
    local: bool,
) -> proto::StatusReply {
    let regions = tables
        .regions()
        .into_iter()
        .map(|(name, r)| proto::RegionStatus {
            name,
            verdict: r.verdict.as_str().to_string(),
            voters_seeing_down: r.summary.down as u32,
            voters_seeing_up: r.summary.up as u32,
            voters: r.summary.voters as u32,
        })
        .collect();
    let now = tokio::time::Instant::now();
    let leases = tables
        .leases()
        .into_iter()
        .map(|((group, region), h)| {
            let deadline = h.granted + std::time::Duration::from_millis(h.lease_ms);
            let remaining_ms = if deadline >= now {
                deadline.duration_since(now).as_millis() as i64
            } else {
                -(now.duration_since(deadline).as_millis() as i64)
            };
            proto::LeaseStatus {
                group,
                region,
                holder: h.holder,
                epoch: h.epoch,
                remaining_ms,
            }
        })
        .collect();
    proto::StatusReply {
        regions,
        leases,
        operations: state
            .operations
            .values()
            .filter(|o| !o.state.is_finished())
            .map(operation_pb)
            .collect(),
        cluster_id: state.cluster_id.clone().unwrap_or_default(),
        served_by: view.id,
        leader_id: view.leader,
        term: view.term,
        applied_index: view.applied_index,
        policy_version: state.policy_version,
        groups: state.groups.values().map(group_pb).collect(),
        witnesses: members_pb(view),
        audit: state
            .audit
            .iter()
            .rev()
            .take(audit_limit as usize)
            .map(audit_pb)
            .collect(),
        local,
    }
}

#[tonic::async_trait]
impl Arbiter for ApiService {
    async fn status(
        &self,
        req: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusReply>, Status> {
        let r = req.into_inner();
        if !r.local {
            self.consensus
                .linearizable_read()
                .await
                .map_err(ApiError::from)?;
        }
        let limit = if r.audit_limit == 0 {
            AUDIT_LIMIT_DEFAULT
        } else {
            r.audit_limit.min(AUDIT_LIMIT_MAX)
        };
        let view = self.consensus.view();
        let reply = self
            .consensus
            .with_state(|s| status_reply(s, &view, &self.tables, limit, r.local));
        Ok(Response::new(reply))
    }

    type WatchStream = ReceiverStream<Result<proto::WatchEvent, Status>>;

    async fn watch(
        &self,
        _req: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let consensus = self.consensus.clone();
        let mut applied = consensus.subscribe_applied();
        tokio::spawn(async move {
            // The first event is the current state; then one event per applied change.
            let mut last_seq = 0u64;
            loop {
                let index = *applied.borrow_and_update();
                let event = consensus.with_state(|s| {
                    let audit: Vec<_> = s
                        .audit
                        .iter()
                        .filter(|a| a.seq > last_seq)
                        .map(audit_pb)
                        .collect();
                    proto::WatchEvent {
                        applied_index: index,
                        groups: s.groups.values().map(group_pb).collect(),
                        audit,
                    }
                });
                if let Some(last) = event.audit.last() {
                    last_seq = last.seq;
                }
                if tx.try_send(Ok(event)).is_err() {
                    return; // subscriber gone or too slow
                }
                tokio::select! {
                    changed = applied.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn failover(
        &self,
        req: Request<proto::FailoverRequest>,
    ) -> Result<Response<proto::OperationReply>, Status> {
        let r = req.get_ref().clone();
        check_name("group", &r.group)?;
        check_name("to", &r.to)?;
        let command = Command::StartOperation {
            group: r.group,
            to: r.to,
            kind: OperationKind::Failover,
            reason: r.reason,
            approval_required: false,
            requested: true,
        };
        let reply = self.operation_command(&req, r.request_id, command).await?;
        if let Some(op) = &reply.get_ref().operation {
            tracing::info!(group = %op.group, operation = op.id, from = %op.from, to = %op.to, "failover declared");
        }
        Ok(reply)
    }

    async fn failback(
        &self,
        req: Request<proto::FailoverRequest>,
    ) -> Result<Response<proto::OperationReply>, Status> {
        let r = req.get_ref().clone();
        check_name("group", &r.group)?;
        self.consensus
            .linearizable_read()
            .await
            .map_err(ApiError::from)?;
        let to = if r.to.is_empty() {
            self.consensus
                .with_state(|s| s.groups.get(&r.group).map(|g| g.candidates[0].clone()))
                .ok_or_else(|| {
                    ApiError::from(crate::state::Refusal::UnknownGroup {
                        group: r.group.clone(),
                    })
                })?
        } else {
            r.to
        };
        let command = Command::StartOperation {
            group: r.group,
            to,
            kind: OperationKind::Failback,
            reason: r.reason,
            approval_required: false,
            requested: true,
        };
        self.operation_command(&req, r.request_id, command).await
    }

    async fn approve(
        &self,
        req: Request<proto::OperationAction>,
    ) -> Result<Response<proto::OperationReply>, Status> {
        let r = req.get_ref().clone();
        // The table cannot see the flag: the break-glass role is checked here. The state
        // machine refuses a break-glass approval without a reason.
        if r.break_glass {
            Caller::of(&req).require_counted(
                "Approve --break-glass",
                &crate::access::Need::BreakGlass,
                &self.metrics,
            )?;
        }
        let break_glass = r.break_glass.then(|| r.reason.clone());
        let reply = self
            .operation_command(
                &req,
                r.request_id,
                Command::ApproveOperation {
                    operation: r.operation,
                    break_glass,
                },
            )
            .await?;
        if r.break_glass {
            tracing::warn!(operation = r.operation, actor = %Caller::of(&req).identity, reason = %r.reason, "break-glass approval");
        }
        Ok(reply)
    }

    async fn retry(
        &self,
        req: Request<proto::OperationAction>,
    ) -> Result<Response<proto::OperationReply>, Status> {
        let r = req.get_ref().clone();
        self.operation_command(
            &req,
            r.request_id,
            Command::RetryOperation {
                operation: r.operation,
            },
        )
        .await
    }

    async fn skip(
        &self,
        req: Request<proto::OperationAction>,
    ) -> Result<Response<proto::OperationReply>, Status> {
        let r = req.get_ref().clone();
        let step: Step = r
            .step
            .parse()
            .map_err(|e: String| ApiError::invalid("step", e))?;
        self.operation_command(
            &req,
            r.request_id,
            Command::SkipStep {
                operation: r.operation,
                step,
            },
        )
        .await
    }

    async fn abort(
        &self,
        req: Request<proto::OperationAction>,
    ) -> Result<Response<proto::OperationReply>, Status> {
        let r = req.get_ref().clone();
        if r.reason.is_empty() {
            return Err(ApiError::invalid("reason", "say why the operation is aborted").into());
        }
        self.operation_command(
            &req,
            r.request_id,
            Command::AbortOperation {
                operation: r.operation,
                reason: r.reason,
            },
        )
        .await
    }

    async fn dns_check(
        &self,
        _req: Request<proto::DnsCheckRequest>,
    ) -> Result<Response<proto::DnsCheckReply>, Status> {
        /// Deadline of one query to a DNS source.
        const DNS_QUERY_TIMEOUT_MS: u64 = 2_000;
        self.consensus
            .linearizable_read()
            .await
            .map_err(ApiError::from)?;
        // Read after the linearizable read: what every source is compared with is current.
        let (has_policy, publications) = self.consensus.with_state(|s| {
            let publications: Vec<_> = s
                .policy
                .iter()
                .flat_map(|p| p.groups.iter())
                .filter_map(|gp| {
                    crate::dns::Publication::from_state(s, &gp.name)
                        .map(|(publication, servers)| (gp.name.clone(), publication, servers))
                })
                .collect();
            (s.policy.is_some(), publications)
        });
        if !has_policy {
            return Ok(Response::new(proto::DnsCheckReply::default()));
        }
        let view = self
            .consensus
            .with_state_at(crate::dns::ZoneView::from_state);
        let embedded_addrs = self.tables.dns_addrs();
        let mut sources = Vec::new();
        for (group, publication, servers) in &publications {
            let (name, set) = (&publication.name, &publication.set);
            let kind = format!("{:?}", set.kind);
            let mut expected: Vec<String> = crate::dns::normalise(set.kind, &set.values)
                .into_iter()
                .map(|v| format!("{kind} {v}"))
                .collect();
            expected.sort();
            let source =
                |source: String, found: Vec<String>, error: String| proto::DnsSourceStatus {
                    group: group.clone(),
                    name: name.clone(),
                    source,
                    matches: error.is_empty() && found == expected,
                    expected: expected.clone(),
                    found,
                    error,
                    ..Default::default()
                };
            if embedded_addrs.is_empty() {
                // No witness has reported a DNS address (none runs one, or reports are not
                // in yet): this witness's applied view.
                let found = crate::dns::published(&view, name);
                sources.push(source(
                    format!("embedded (witness {}, applied state)", self.consensus.id()),
                    found,
                    String::new(),
                ));
            }
            // Every witness's embedded server and every external server, asked over DNS;
            // the external ones also for their marker (the embedded ones have none: they
            // answer from the applied state).
            let targets = embedded_addrs
                .iter()
                .map(|(id, addr)| {
                    (
                        format!("embedded witness {id} ({addr})"),
                        addr.clone(),
                        None,
                    )
                })
                .chain(
                    servers
                        .iter()
                        .map(|s| (format!("server {}", s.address), s.address.clone(), Some(s))),
                );
            for (label, addr, external) in targets {
                let mut found = Vec::new();
                let mut error = String::new();
                for k in &publication.old_kinds {
                    match crate::dns::query_rrset_at(
                        &addr,
                        &publication.zone,
                        name,
                        *k,
                        DNS_QUERY_TIMEOUT_MS,
                    )
                    .await
                    {
                        Ok(values) => {
                            found.extend(values.into_iter().map(|v| format!("{k:?} {v}")))
                        }
                        Err(e) => error = e.to_string(),
                    }
                }
                found.sort();
                let mut status = source(label, found, error);
                if let Some(server) = external {
                    let server = crate::config::DnsServer {
                        timeout_ms: server.timeout_ms.min(DNS_QUERY_TIMEOUT_MS),
                        ..server.clone()
                    };
                    status.marker_expected = publication.decision.text();
                    match crate::dns::read_marker(&server, name).await {
                        Ok(read) => {
                            status.marker_problem = marker_problem(publication, &read);
                            status.marker_found = read.texts;
                        }
                        Err(e) => status.marker_problem = format!("cannot read the marker: {e}"),
                    }
                    status.matches &= status.marker_problem.is_empty();
                }
                sources.push(status);
            }
        }
        Ok(Response::new(proto::DnsCheckReply { sources }))
    }

    async fn operations(
        &self,
        req: Request<proto::OperationsRequest>,
    ) -> Result<Response<proto::OperationsReply>, Status> {
        /// Operations listed when the caller does not say.
        const OPERATIONS_LIMIT_DEFAULT: u32 = 20;
        let r = req.into_inner();
        self.consensus
            .linearizable_read()
            .await
            .map_err(ApiError::from)?;
        let limit = if r.limit == 0 {
            OPERATIONS_LIMIT_DEFAULT
        } else {
            r.limit.min(crate::state::FINISHED_OPERATIONS_MAX as u32)
        };
        let operations = self.consensus.with_state(|s| {
            s.operations
                .values()
                .rev()
                .filter(|o| r.group.is_empty() || o.group == r.group)
                .filter(|o| !r.active_only || !o.state.is_finished())
                .take(limit as usize)
                .map(operation_pb)
                .collect()
        });
        Ok(Response::new(proto::OperationsReply { operations }))
    }

    async fn set_mode(
        &self,
        req: Request<proto::SetModeRequest>,
    ) -> Result<Response<proto::DecisionReply>, Status> {
        let r = req.get_ref().clone();
        check_name("group", &r.group)?;
        check_request_id(&r.request_id)?;
        let mode: Mode = r
            .mode
            .parse()
            .map_err(|e: String| ApiError::invalid("mode", e))?;
        let p = self.proposal(
            &req,
            r.request_id,
            Command::SetMode {
                group: r.group,
                mode,
                reason: r.reason,
            },
        );
        let (g, index) = self.decide(p).await?;
        tracing::info!(group = %g.name, mode = %g.mode, "mode committed");
        Ok(Response::new(proto::DecisionReply {
            group: Some(group_pb(&g)),
            log_index: index,
        }))
    }

    async fn policy_apply(
        &self,
        req: Request<proto::PolicyApplyRequest>,
    ) -> Result<Response<proto::PolicyApplyReply>, Status> {
        let r = req.get_ref().clone();
        check_request_id(&r.request_id)?;
        let policy = Policy::parse("policy", &r.toml).map_err(ApiError::from)?;
        // Diff against the committed policy: read it linearizably (this also makes sure we
        // are the leader before proposing).
        self.consensus
            .linearizable_read()
            .await
            .map_err(ApiError::from)?;
        let (diff, version, allowed) = self.consensus.with_state(|s| {
            (
                policy.diff(s.policy.as_ref()),
                s.policy_version,
                s.check_policy(&policy),
            )
        });
        if r.if_version != 0 && r.if_version != version {
            return Err(ApiError::from(crate::state::Refusal::StalePolicy {
                current: version,
                expected: r.if_version,
            })
            .into());
        }
        // What the state machine would refuse is refused now, dry run included.
        allowed.map_err(ApiError::from)?;
        if r.dry_run {
            return Ok(Response::new(proto::PolicyApplyReply {
                diff,
                version,
                applied: false,
            }));
        }
        let p = self.proposal(
            &req,
            r.request_id,
            Command::ApplyPolicy {
                policy,
                if_version: r.if_version,
            },
        );
        let resp = self.consensus.propose(p).await.map_err(ApiError::from)?;
        match resp.outcome.map_err(ApiError::from)? {
            Outcome::PolicyApplied { version } => {
                tracing::info!(version, "policy committed");
                Ok(Response::new(proto::PolicyApplyReply {
                    diff,
                    version,
                    applied: true,
                }))
            }
            other => Err(ApiError::Internal(format!("unexpected outcome {other:?}")).into()),
        }
    }

    async fn policy_show(
        &self,
        _req: Request<proto::PolicyShowRequest>,
    ) -> Result<Response<proto::PolicyShowReply>, Status> {
        self.consensus
            .linearizable_read()
            .await
            .map_err(ApiError::from)?;
        let reply = self.consensus.with_state(|s| proto::PolicyShowReply {
            version: s.policy_version,
            toml: s.policy.as_ref().map(Policy::to_toml).unwrap_or_default(),
        });
        Ok(Response::new(reply))
    }

    async fn init(
        &self,
        _req: Request<proto::InitRequest>,
    ) -> Result<Response<proto::InitReply>, Status> {
        if self.peers.is_empty() {
            return Err(ApiError::invalid(
                "peers",
                "this witness's node file lists no initial peers",
            )
            .into());
        }
        // Each initial peer's id and site are the ones its certificate names, as for
        // `members add`. A peer not running yet cannot be asked; it is let in (a majority is
        // enough to start), and its certificate still has to name its id to speak Raft.
        let checks = self
            .peers
            .iter()
            .map(|p| self.served_witness(p.id, &p.addr, &p.site));
        for (peer, check) in self
            .peers
            .iter()
            .zip(futures::future::join_all(checks).await)
        {
            match check {
                Ok(()) => {}
                Err(Unverified::Unreachable(e)) => {
                    tracing::warn!(peer = peer.id, "initial peer not verified: {e}");
                }
                Err(Unverified::Mismatch(e)) => {
                    return Err(ApiError::invalid(
                        "peers",
                        format!(
                            "{e}: correct the peer's id or site in the node files (or its \
                             certificate), then init again; nothing was initialised"
                        ),
                    )
                    .into());
                }
            }
        }
        self.consensus
            .initialize(&self.peers)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(
            peers = self.peers.len(),
            "cluster initialised; waiting for the cluster id"
        );
        // The first leader records a cluster id (see node.rs); wait until it is applied here.
        let mut applied = self.consensus.subscribe_applied();
        let wait = async {
            loop {
                if let Some(id) = self.consensus.with_state(|s| s.cluster_id.clone()) {
                    return id;
                }
                if applied.changed().await.is_err() {
                    futures::future::pending::<()>().await;
                }
            }
        };
        let cluster_id = tokio::time::timeout(INIT_WAIT, wait).await.map_err(|_| {
            ApiError::from(crate::raft::ConsensusError::Unavailable(
                "initialised, but no leader recorded the cluster id in time: check that a majority of peers are running".into(),
            ))
        })?;
        Ok(Response::new(proto::InitReply {
            cluster_id,
            witnesses: members_pb(&self.consensus.view()),
        }))
    }

    async fn members_list(
        &self,
        _req: Request<proto::MembersListRequest>,
    ) -> Result<Response<proto::MembersListReply>, Status> {
        self.consensus
            .linearizable_read()
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(proto::MembersListReply {
            witnesses: members_pb(&self.consensus.view()),
        }))
    }

    async fn members_add(
        &self,
        req: Request<proto::MembersAddRequest>,
    ) -> Result<Response<proto::MembersListReply>, Status> {
        let r = req.get_ref().clone();
        if r.id == 0 {
            return Err(ApiError::invalid("id", "node ids start at 1").into());
        }
        crate::config::check_addr("addr", &r.addr)
            .map_err(|e| ApiError::invalid("addr", e.reason))?;
        crate::config::check_name("site", &r.site)
            .map_err(|e| ApiError::invalid("site", e.reason))?;
        let change = format!("adding witness {} at site {} ({})", r.id, r.site, r.addr);
        let accepted = self.check_sites(
            &change,
            |members| {
                let mut sites: Vec<String> = members
                    .iter()
                    .filter(|m| m.voter && m.id != r.id)
                    .map(|m| m.site.clone())
                    .collect();
                sites.push(r.site.clone());
                sites
            },
            &r.accept_site_risk,
        )?;
        // The site is the one the CA signed into the witness's certificate, not only what
        // the operator typed: ask the witness.
        match self.served_witness(r.id, &r.addr, &r.site).await {
            Ok(()) => {}
            Err(Unverified::Unreachable(e)) => {
                return Err(ApiError::from(ConsensusError::Membership(format!(
                    "{e}; start it first"
                )))
                .into())
            }
            Err(Unverified::Mismatch(e)) => {
                return Err(ApiError::from(ConsensusError::Membership(format!(
                    "{e}: give the id and site its node file and certificate name"
                )))
                .into())
            }
        }
        self.consensus
            .add_member(r.id, r.addr.clone(), r.site.clone())
            .await
            .map_err(ApiError::from)?;
        tracing::info!(id = r.id, addr = %r.addr, site = %r.site, "witness added as voter");
        let done = format!(
            "witness {} at site {} ({}) added as voter",
            r.id, r.site, r.addr
        );
        self.record_membership(&req, done, accepted).await?;
        Ok(Response::new(proto::MembersListReply {
            witnesses: members_pb(&self.consensus.view()),
        }))
    }

    async fn members_remove(
        &self,
        req: Request<proto::MembersRemoveRequest>,
    ) -> Result<Response<proto::MembersListReply>, Status> {
        let r = req.get_ref().clone();
        let change = format!("removing witness {}", r.id);
        let accepted = self.check_sites(
            &change,
            |members| {
                members
                    .iter()
                    .filter(|m| m.voter && m.id != r.id)
                    .map(|m| m.site.clone())
                    .collect()
            },
            &r.accept_site_risk,
        )?;
        let site = self
            .consensus
            .view()
            .members
            .into_iter()
            .find(|m| m.id == r.id)
            .map(|m| m.site);
        self.consensus
            .remove_member(r.id)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(id = r.id, "witness removed");
        let done = match site {
            Some(site) => format!("witness {} at site {site} removed", r.id),
            None => format!("witness {} removed (it was not a member)", r.id),
        };
        self.record_membership(&req, done, accepted).await?;
        Ok(Response::new(proto::MembersListReply {
            witnesses: members_pb(&self.consensus.view()),
        }))
    }
}
