//! [`LeaseClient`]: the holder's side of a lease, in one place for the agent, the CLI and
//! the tests. The deadline of a granted lease is `t_sent + lease` on the holder's monotonic
//! clock, where `t_sent` is when the granting request was *sent*: the grant was decided
//! after that instant, so the holder's deadline is never later than the leader assumes.

use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::api::ErrorKind;
use crate::client::{CallBounds, Client, ClientError};
use crate::proto;
use crate::proto::fencing_client::FencingClient;

/// What the holder knows after a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// The lease is held at `epoch` until `deadline` (monotonic), unless renewed.
    Held {
        epoch: u64,
        lease: Duration,
        deadline: Instant,
    },
    /// Refused: `active` is the group's active region at `epoch`; `refusal` says why
    /// (`not-active`, `stale-epoch`, `revoked`, `removed-leases-pending`, `unknown-group`:
    /// then `active` is empty and `epoch` 0).
    Refused {
        active: String,
        epoch: u64,
        refusal: String,
        message: String,
    },
}

impl LeaseState {
    /// What the holder knows from `reply` to a request it sent at `sent`: the one place of
    /// the holder's rule (deadline = send time + lease), for every [`LeaseService`].
    pub fn from_reply(sent: Instant, reply: proto::LeaseReply) -> LeaseState {
        state_from(sent, reply)
    }

    /// Whether the lease is held at `now`: granted and its deadline not passed.
    pub fn holds_at(&self, now: Instant) -> bool {
        matches!(self, LeaseState::Held { deadline, .. } if now < *deadline)
    }
}

/// Each attempt of a holder that knows its lease gets at most this fraction of it: a
/// witness that does not answer (a cut link, a dead leader) then costs a fifth of the lease,
/// not the default RPC timeout, and the next witness is tried while the lease still runs.
const LEASE_ATTEMPT_FRACTION: u32 = 5;
/// The shortest attempt: a TLS handshake and a forwarded read across a WAN fit in it.
const ATTEMPT_MIN: Duration = Duration::from_millis(200);

/// What a holder asks of the cluster about its lease: the seam between the agent and the
/// witnesses. [`LeaseClient`] asks them over gRPC; a simulation answers as it pleases (a
/// grant, a refusal, no answer within the bounds).
pub trait LeaseService: Send + Sync + 'static {
    /// Asks for the lease. `Held` only when the region is active and not revoked.
    fn acquire(&self) -> BoxFuture<'_, Result<LeaseState, ClientError>>;
    /// Renews the lease held at `epoch`.
    fn renew(&self, epoch: u64) -> BoxFuture<'_, Result<LeaseState, ClientError>>;
    /// Bounds every later call by `lease` (see [`LeaseClient::bound_by_lease`]).
    fn bound_by_lease(&mut self, lease: Duration);
}

impl LeaseService for LeaseClient {
    fn acquire(&self) -> BoxFuture<'_, Result<LeaseState, ClientError>> {
        Box::pin(LeaseClient::acquire(self))
    }

    fn renew(&self, epoch: u64) -> BoxFuture<'_, Result<LeaseState, ClientError>> {
        Box::pin(LeaseClient::renew(self, epoch))
    }

    fn bound_by_lease(&mut self, lease: Duration) {
        LeaseClient::bound_by_lease(self, lease)
    }
}

/// A holder of the lease of one (group, region).
#[derive(Clone)]
pub struct LeaseClient {
    client: Client,
    group: String,
    region: String,
    holder: String,
    /// Time limits of each call: the client's defaults until a lease is known.
    bounds: CallBounds,
}

impl LeaseClient {
    pub fn new(client: Client, group: &str, region: &str, holder: &str) -> Self {
        Self {
            client,
            group: group.to_string(),
            region: region.to_string(),
            holder: holder.to_string(),
            bounds: CallBounds::default(),
        }
    }

    /// Bounds every later call by `lease`: an attempt gets a fifth of it (at least
    /// [`ATTEMPT_MIN`], at most the default), the whole call at most the lease: past that
    /// the lease is gone anyway.
    pub fn bound_by_lease(&mut self, lease: Duration) {
        let default = CallBounds::default();
        self.bounds = CallBounds {
            attempt: (lease / LEASE_ATTEMPT_FRACTION)
                .max(ATTEMPT_MIN)
                .min(default.attempt),
            total: lease.max(ATTEMPT_MIN).min(default.total),
        };
    }

    /// `req` with the attempt's deadline, so a follower forwarding it knows its budget.
    fn with_deadline(&self, req: &proto::LeaseRequest) -> tonic::Request<proto::LeaseRequest> {
        let mut r = tonic::Request::new(req.clone());
        r.set_timeout(self.bounds.attempt);
        r
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    fn request(&self, epoch: u64) -> proto::LeaseRequest {
        proto::LeaseRequest {
            group: self.group.clone(),
            region: self.region.clone(),
            epoch,
            holder: self.holder.clone(),
        }
    }

    /// Asks for the lease. `Held` only when the region is active and not revoked.
    pub async fn acquire(&self) -> Result<LeaseState, ClientError> {
        let req = self.request(0);
        let sent = Instant::now();
        let reply = self
            .client
            .call_channel_within(self.bounds, |ch| {
                let req = self.with_deadline(&req);
                async move { FencingClient::new(ch).acquire(req).await }
            })
            .await;
        answer(sent, reply)
    }

    /// Renews the lease held at `epoch`.
    pub async fn renew(&self, epoch: u64) -> Result<LeaseState, ClientError> {
        let req = self.request(epoch);
        let sent = Instant::now();
        let reply = self
            .client
            .call_channel_within(self.bounds, |ch| {
                let req = self.with_deadline(&req);
                async move { FencingClient::new(ch).renew(req).await }
            })
            .await;
        answer(sent, reply)
    }

    /// Is `epoch` still current for this region? (No lease is granted or extended.)
    pub async fn check(&self, epoch: u64) -> Result<proto::LeaseReply, ClientError> {
        let req = self.request(epoch);
        self.client
            .call_channel_within(self.bounds, |ch| {
                let req = self.with_deadline(&req);
                async move { FencingClient::new(ch).check(req).await }
            })
            .await
    }
}

/// The holder's state after a reply. A group the cluster does not know (removed from the
/// policy) is a definite refusal, not an error to retry until the deadline: whoever holds
/// its lease must stop at once.
fn answer(
    sent: Instant,
    reply: Result<proto::LeaseReply, ClientError>,
) -> Result<LeaseState, ClientError> {
    match reply {
        Ok(reply) => Ok(state_from(sent, reply)),
        Err(e) if e.kind == ErrorKind::UnknownGroup => Ok(LeaseState::Refused {
            active: String::new(),
            epoch: 0,
            refusal: e.kind.as_str().to_string(),
            message: e.message,
        }),
        Err(e) => Err(e),
    }
}

fn state_from(sent: Instant, reply: proto::LeaseReply) -> LeaseState {
    if reply.allowed {
        let lease = Duration::from_millis(reply.lease_ms);
        LeaseState::Held {
            epoch: reply.epoch,
            lease,
            deadline: sent + lease,
        }
    } else {
        LeaseState::Refused {
            active: reply.active,
            epoch: reply.epoch,
            refusal: reply.refusal,
            message: reply.message,
        }
    }
}
