//! The fencing decisions (one implementation for gRPC and HTTP) and the gRPC service.
//!
//! A witness that is not the leader forwards acquire, renew and check to the leader it
//! knows, one hop and within the request's deadline, so a holder that can reach a follower
//! but not the leader (a cut between two regions while the third site sees both) keeps its
//! lease. The forwarded answer is the leader's own linearizable decision; the holder's
//! deadline stays its own send time plus the lease. Must never: forward a request that was
//! already forwarded, or answer a lease request from a follower's own state.

use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::access::{Caller, Need};
use crate::api::ApiError;
use crate::leader::{LeaderTables, LeaseHolder};
use crate::proto;
use crate::proto::fencing_client::FencingClient;
use crate::proto::fencing_server::Fencing as FencingRpc;
use crate::raft::{Consensus, ConsensusError, Network};
use crate::state::{LeaseKind, LeaseRefusal};
use crate::telemetry::{FenceResult, Metrics};

/// Bound on holder names and other strings from the network.
const FIELD_BYTES_MAX: usize = 128;
/// Set on a forwarded request: its receiver answers itself and never forwards it again.
pub const META_FORWARDED: &str = "arbiter-forwarded";
/// Longest a follower waits for the leader's answer to a forwarded request: one round trip
/// and a batched read; a leader that takes longer is as good as unreachable.
pub const FORWARD_TIMEOUT_MAX: Duration = Duration::from_secs(5);

/// The fencing decisions of one witness.
#[derive(Clone)]
pub struct Fencing {
    consensus: Arc<Consensus>,
    /// Channels to the leader for forwarding (with this witness's link faults).
    network: Network,
    tables: Arc<LeaderTables>,
    /// Counts and times every decision (gRPC and HTTP share [`Fencing::decide`]).
    metrics: Arc<Metrics>,
}

impl Fencing {
    pub fn new(
        consensus: Arc<Consensus>,
        network: Network,
        tables: Arc<LeaderTables>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            consensus,
            network,
            tables,
            metrics,
        }
    }

    pub(crate) fn consensus(&self) -> &Consensus {
        &self.consensus
    }

    /// Answers one lease request. A refusal (not active, stale epoch, revoked) is an
    /// answer with `allowed: false` and the current active region and epoch; an unknown
    /// group or region, a bad field or no leader is an error.
    pub async fn decide(
        &self,
        kind: LeaseKind,
        req: &proto::LeaseRequest,
    ) -> Result<proto::LeaseReply, ApiError> {
        let started = std::time::Instant::now();
        let decision = self.decide_uncounted(kind, req).await;
        let result = match &decision {
            Ok(reply) if reply.allowed => FenceResult::Allowed,
            Ok(_) => FenceResult::Refused,
            Err(ApiError::Consensus(crate::raft::ConsensusError::NotLeader { .. })) => {
                FenceResult::NotLeader
            }
            Err(_) => FenceResult::Error,
        };
        self.metrics.fence(kind, result, started.elapsed());
        decision
    }

    /// Answers here when this witness is the leader; otherwise asks the leader (one hop,
    /// bounded by `budget`) unless the request was `forwarded` to us already.
    ///
    /// `caller` must hold the lease role for the request's pair ([`Need::Lease`]): an agent
    /// of another group or region is refused here, before anything is decided or forwarded,
    /// and the refusal is counted.
    pub async fn answer(
        &self,
        caller: &Caller,
        kind: LeaseKind,
        req: &proto::LeaseRequest,
        forwarded: bool,
        budget: Duration,
    ) -> Result<proto::LeaseReply, Status> {
        let need = Need::Lease {
            kind,
            group: req.group.clone(),
            region: req.region.clone(),
        };
        caller.require_counted(lease_method(kind), &need, &self.metrics)?;
        match self.decide(kind, req).await {
            Err(ApiError::Consensus(ConsensusError::NotLeader {
                leader_addr: Some(addr),
                ..
            })) if !forwarded => self.forward(&addr, kind, req, budget).await,
            other => other.map_err(Status::from),
        }
    }

    async fn forward(
        &self,
        addr: &str,
        kind: LeaseKind,
        req: &proto::LeaseRequest,
        budget: Duration,
    ) -> Result<proto::LeaseReply, Status> {
        let unreachable = |why: String| {
            Status::from(ApiError::Consensus(ConsensusError::Unavailable(format!(
                "leader {addr} unreachable from this witness: {why}"
            ))))
        };
        if self.network.faults().is_cut(addr) {
            return Err(unreachable("link cut".into()));
        }
        let channel = self
            .network
            .channel(addr)
            .map_err(|e| unreachable(e.to_string()))?;
        let mut client = FencingClient::new(channel);
        let mut request = Request::new(req.clone());
        request
            .metadata_mut()
            .insert(META_FORWARDED, MetadataValue::from_static("1"));
        request.set_timeout(budget);
        let call = async {
            match kind {
                LeaseKind::Acquire => client.acquire(request).await,
                LeaseKind::Renew => client.renew(request).await,
                LeaseKind::Check => client.check(request).await,
            }
        };
        match tokio::time::timeout(budget, call).await {
            // The leader's answer, or its error with its kind (not-leader included).
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) if status.metadata().get(crate::api::META_ERROR).is_some() => {
                Err(status)
            }
            Ok(Err(status)) => Err(unreachable(status.message().to_string())),
            Err(_) => Err(unreachable(format!(
                "no answer within {} ms",
                budget.as_millis()
            ))),
        }
    }

    async fn decide_uncounted(
        &self,
        kind: LeaseKind,
        req: &proto::LeaseRequest,
    ) -> Result<proto::LeaseReply, ApiError> {
        check_field("group", &req.group)?;
        check_field("region", &req.region)?;
        if req.holder.len() > FIELD_BYTES_MAX {
            return Err(ApiError::invalid(
                "holder",
                format!("longer than {FIELD_BYTES_MAX} bytes"),
            ));
        }
        if kind != LeaseKind::Acquire && req.epoch == 0 {
            return Err(ApiError::invalid(
                "epoch",
                "must be the epoch the lease was granted at (epochs start at 1)",
            ));
        }
        self.consensus.batched_read().await?;
        let epoch = (kind != LeaseKind::Acquire).then_some(req.epoch);
        let decision = self.consensus.with_state(|s| {
            let known_region = s
                .policy
                .as_ref()
                .is_some_and(|p| p.regions.iter().any(|r| r.name == req.region));
            if !known_region && s.groups.contains_key(&req.group) {
                return Err(ApiError::from(crate::state::Refusal::UnknownRegion {
                    region: req.region.clone(),
                }));
            }
            Ok(s.lease_check(&req.group, &req.region, epoch))
        })?;
        match decision {
            Ok((epoch, lease_ms)) => {
                if kind != LeaseKind::Check {
                    let holder = if req.holder.is_empty() {
                        req.region.clone()
                    } else {
                        req.holder.clone()
                    };
                    self.tables.record_lease(
                        &req.group,
                        &req.region,
                        LeaseHolder {
                            holder,
                            epoch,
                            lease_ms,
                            granted: tokio::time::Instant::now(),
                        },
                    );
                }
                Ok(proto::LeaseReply {
                    allowed: true,
                    epoch,
                    lease_ms,
                    active: req.region.clone(),
                    refusal: String::new(),
                    message: String::new(),
                })
            }
            Err(LeaseRefusal::UnknownGroup { group }) => {
                Err(ApiError::from(crate::state::Refusal::UnknownGroup {
                    group,
                }))
            }
            Err(refusal) => {
                let (active, epoch) = refusal.current();
                Ok(proto::LeaseReply {
                    allowed: false,
                    epoch,
                    lease_ms: 0,
                    active: active.to_string(),
                    refusal: refusal.kind().to_string(),
                    message: refusal.to_string(),
                })
            }
        }
    }
}

fn check_field(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if value.len() > FIELD_BYTES_MAX {
        return Err(ApiError::invalid(
            field,
            format!("longer than {FIELD_BYTES_MAX} bytes"),
        ));
    }
    Ok(())
}

/// The gRPC `Fencing` service.
pub struct FencingService {
    pub fencing: Fencing,
}

/// How long a forward may take: most of what is left of the caller's deadline (the
/// `grpc-timeout` header), so the answer still gets back in time; at most
/// [`FORWARD_TIMEOUT_MAX`].
fn forward_budget<T>(req: &Request<T>) -> (bool, Duration) {
    let forwarded = req.metadata().get(META_FORWARDED).is_some();
    let budget = req
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .map(|t| t * 3 / 4)
        .unwrap_or(FORWARD_TIMEOUT_MAX)
        .min(FORWARD_TIMEOUT_MAX);
    (forwarded, budget)
}

/// A `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The RPC a lease kind is asked with, for denials.
fn lease_method(kind: LeaseKind) -> &'static str {
    match kind {
        LeaseKind::Acquire => "Acquire",
        LeaseKind::Renew => "Renew",
        LeaseKind::Check => "Check",
    }
}

#[tonic::async_trait]
impl FencingRpc for FencingService {
    async fn acquire(
        &self,
        req: Request<proto::LeaseRequest>,
    ) -> Result<Response<proto::LeaseReply>, Status> {
        let (forwarded, budget) = forward_budget(&req);
        self.fencing
            .answer(
                &Caller::of(&req),
                LeaseKind::Acquire,
                req.get_ref(),
                forwarded,
                budget,
            )
            .await
            .map(Response::new)
    }

    async fn renew(
        &self,
        req: Request<proto::LeaseRequest>,
    ) -> Result<Response<proto::LeaseReply>, Status> {
        let (forwarded, budget) = forward_budget(&req);
        self.fencing
            .answer(
                &Caller::of(&req),
                LeaseKind::Renew,
                req.get_ref(),
                forwarded,
                budget,
            )
            .await
            .map(Response::new)
    }

    async fn check(
        &self,
        req: Request<proto::LeaseRequest>,
    ) -> Result<Response<proto::LeaseReply>, Status> {
        let (forwarded, budget) = forward_budget(&req);
        self.fencing
            .answer(
                &Caller::of(&req),
                LeaseKind::Check,
                req.get_ref(),
                forwarded,
                budget,
            )
            .await
            .map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_and_junk_does_not() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_grpc_timeout("10000u"),
            Some(Duration::from_millis(10))
        );
        for junk in ["", "m", "12", "123456789m", "5x", "-5m"] {
            assert_eq!(parse_grpc_timeout(junk), None, "{junk:?}");
        }
    }
}
