//! The fencing decisions (one implementation for gRPC and HTTP) and the gRPC service.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::api::ApiError;
use crate::leader::{LeaderTables, LeaseHolder};
use crate::proto;
use crate::proto::fencing_server::Fencing as FencingRpc;
use crate::raft::Consensus;
use crate::state::LeaseRefusal;
use crate::telemetry::{FenceResult, Metrics};

/// Bound on holder names and other strings from the network.
const FIELD_BYTES_MAX: usize = 128;

/// Which question is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseKind {
    Acquire,
    Renew,
    Check,
}

/// The fencing decisions of one witness.
#[derive(Clone)]
pub struct Fencing {
    consensus: Arc<Consensus>,
    tables: Arc<LeaderTables>,
    /// Counts and times every decision (gRPC and HTTP share [`Fencing::decide`]).
    metrics: Arc<Metrics>,
}

impl Fencing {
    pub fn new(
        consensus: Arc<Consensus>,
        tables: Arc<LeaderTables>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            consensus,
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

#[tonic::async_trait]
impl FencingRpc for FencingService {
    async fn acquire(
        &self,
        req: Request<proto::LeaseRequest>,
    ) -> Result<Response<proto::LeaseReply>, Status> {
        Ok(Response::new(
            self.fencing
                .decide(LeaseKind::Acquire, req.get_ref())
                .await?,
        ))
    }

    async fn renew(
        &self,
        req: Request<proto::LeaseRequest>,
    ) -> Result<Response<proto::LeaseReply>, Status> {
        Ok(Response::new(
            self.fencing.decide(LeaseKind::Renew, req.get_ref()).await?,
        ))
    }

    async fn check(
        &self,
        req: Request<proto::LeaseRequest>,
    ) -> Result<Response<proto::LeaseReply>, Status> {
        Ok(Response::new(
            self.fencing.decide(LeaseKind::Check, req.get_ref()).await?,
        ))
    }
}
