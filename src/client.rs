//! [`Client`]: talks to any witness over mutual TLS and follows the leader transparently.
//! Used by the CLI, the agent and the tests. A `not-leader` answer redirects to the leader's
//! address; a witness that failed (unreachable, timed out, or not knowing a leader) is
//! skipped for the next one, within a call and for [`FAILED_MEMORY`] across calls, and the
//! witness that answered last is tried first. Each attempt and the whole call are bounded
//! ([`CallBounds`]; the agent bounds them by a fraction of its lease).
//!
//! Callers use the typed methods, one per RPC of the `Arbiter` service ([`Client::failover`],
//! [`Client::status`], [`Client::policy_apply`], ...), which send the request to the leader
//! through [`Client::call`]; [`Client::call_channel_within`] is the mechanism underneath, also
//! used by the `Fencing` lease client with its own bounds. Two calls need no leader and go
//! to the first witness that answers: a watch and a status from one witness's own applied
//! state ([`Client::connect_any`]).
//!
//! It must never retry a call whose outcome it does not know as if it had failed: a deadline
//! is `indeterminate` (the write may have committed), and a retried write carries its request
//! id so the cluster applies it once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::api::{ErrorKind, META_ERROR, META_LEADER_ADDR};
use crate::proto;
use crate::proto::arbiter_client::ArbiterClient;
use crate::tls::{LiveTls, TlsPaths};

/// Deadline of one RPC. Long enough for a commit across WAN links and a leader election.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect timeout per witness.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Attempts across witnesses and redirects for one call.
const ATTEMPTS_MAX: usize = 60;
/// Total time one call keeps trying: long enough to ride out a leader election with
/// WAN-sized timeouts, short enough for an operator at a terminal.
const CALL_DEADLINE: Duration = Duration::from_secs(20);
/// Pause before trying again when every witness was tried and none led to a leader (an
/// election is likely under way, or the known leader just died).
const RETRY_PAUSE: Duration = Duration::from_millis(300);
/// How long a witness that failed stays at the back of the line across calls: a few
/// renewals of a short lease, and less than an election on WAN timing plus a retry.
pub const FAILED_MEMORY: Duration = Duration::from_secs(5);
/// Newest operations searched for one id ([`Client::operation`]): an operation someone
/// follows is among the newest, and the reply stays small while it is polled.
const OPERATION_LOOKUP_LIMIT: u32 = 100;

/// Time limits of one call: each attempt (one witness), and all attempts together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallBounds {
    pub attempt: Duration,
    pub total: Duration,
}

impl Default for CallBounds {
    fn default() -> Self {
        CallBounds {
            attempt: RPC_TIMEOUT,
            total: CALL_DEADLINE,
        }
    }
}

/// An error from the cluster, with its machine-readable kind (`unknown-group`,
/// `not-candidate`, `frozen`, `unavailable`, ...; see the API error reference).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ClientError {
    pub kind: ErrorKind,
    pub code: Code,
    pub message: String,
}

impl ClientError {
    /// The error a gRPC status from a witness stands for (its kind from the metadata).
    pub fn from_status(s: &Status) -> Self {
        let kind = s
            .metadata()
            .get(META_ERROR)
            .and_then(|v| v.to_str().ok())
            .map(|name| ErrorKind::parse(name).unwrap_or(ErrorKind::Internal))
            .unwrap_or(match s.code() {
                Code::Unavailable => ErrorKind::Unavailable,
                // The request may have been applied: only a look, or a retry with the same
                // request id, can tell.
                Code::DeadlineExceeded | Code::Cancelled => ErrorKind::Indeterminate,
                _ => ErrorKind::Transport,
            });
        ClientError {
            kind,
            code: s.code(),
            message: s.message().to_string(),
        }
    }

    fn local(kind: ErrorKind, message: String) -> Self {
        ClientError {
            kind,
            code: Code::Unavailable,
            message,
        }
    }
}

/// A typed method of [`Client`] for one unary RPC of the `Arbiter` service whose request
/// the caller builds (it chooses the request id, which a retry must reuse): sent to the
/// leader through [`Client::call`], the request cloned for each attempt.
macro_rules! leader_rpc {
    ($(#[$doc:meta])* $rpc:ident($request:ident) -> $reply:ident) => {
        $(#[$doc])*
        pub async fn $rpc(&self, req: proto::$request) -> Result<proto::$reply, ClientError> {
            self.call(|mut c| {
                let req = req.clone();
                async move { c.$rpc(req).await }
            })
            .await
        }
    };
}

/// A client of the witness cluster.
#[derive(Clone)]
pub struct Client {
    servers: Vec<String>,
    /// Our certificate, key and CA; an agent reloads them while it runs ([`Self::tls`]).
    tls: Arc<LiveTls>,
    /// One channel per witness address, reused by every call (HTTP/2 multiplexes), and the
    /// TLS generation they were built with: a reload empties it.
    channels: Arc<Mutex<(u64, HashMap<String, Channel>)>>,
    /// The witness that answered last: the first one tried by the next call.
    preferred: Arc<Mutex<Option<String>>>,
    /// Witnesses that failed recently, and when: tried last until [`FAILED_MEMORY`] passed.
    failed: Arc<Mutex<HashMap<String, tokio::time::Instant>>>,
    /// Witness addresses this client cannot reach on purpose (partition tests): a call to
    /// one hangs until its deadline and fails, as across a black-holed link. Empty in
    /// normal operation.
    faults: crate::raft::LinkFaults,
}

impl Client {
    /// `servers` are `host:port` of any witnesses; `tls` the client certificate files.
    pub fn new(servers: Vec<String>, tls: &TlsPaths) -> Result<Client, ClientError> {
        crate::tls::install_crypto_provider();
        if servers.is_empty() {
            return Err(ClientError::local(
                ErrorKind::InvalidArgument,
                "no witness address given (--server)".into(),
            ));
        }
        let tls =
            LiveTls::load(tls).map_err(|e| ClientError::local(ErrorKind::Tls, e.to_string()))?;
        Ok(Client {
            servers,
            tls,
            channels: Arc::new(Mutex::new((0, HashMap::new()))),
            preferred: Arc::new(Mutex::new(None)),
            failed: Arc::new(Mutex::new(HashMap::new())),
            faults: crate::raft::LinkFaults::default(),
        })
    }

    /// The links of this client that tests cut ([`crate::raft::LinkFaults::cut`]).
    pub fn faults(&self) -> crate::raft::LinkFaults {
        self.faults.clone()
    }

    /// The certificate, key and CA this client presents and trusts: [`LiveTls::watch`] it
    /// to pick up rotated files (calls after a reload connect anew with them).
    pub fn tls(&self) -> Arc<LiveTls> {
        self.tls.clone()
    }

    fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        let mut cache = self.channels.lock().expect("channel cache lock");
        let generation = self.tls.generation();
        if cache.0 != generation {
            *cache = (generation, HashMap::new());
        }
        let channels = &mut cache.1;
        if let Some(ch) = channels.get(addr) {
            return Ok(ch.clone());
        }
        let ch = self.new_channel(addr)?;
        channels.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    fn new_channel(&self, addr: &str) -> Result<Channel, ClientError> {
        let endpoint = Endpoint::from_shared(format!("https://{addr}"))
            .and_then(|e| e.tls_config(self.tls.current().client_config(None)))
            .map_err(|e| {
                ClientError::local(
                    ErrorKind::InvalidArgument,
                    format!("witness address {addr:?}: {e}"),
                )
            })?;
        Ok(endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(RPC_TIMEOUT)
            .connect_lazy())
    }

    /// Runs `call` against the leader: starts with the given witnesses in order, follows
    /// `not-leader` redirects, skips unreachable witnesses, and gives up after a bounded
    /// number of attempts with the last error.
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(ArbiterClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_channel(|channel| call(ArbiterClient::new(channel)))
            .await
    }

    /// Like [`Client::call`] for any service on the witnesses (the `Fencing` service).
    pub async fn call_channel<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_channel_within(CallBounds::default(), call).await
    }

    fn recently_failed(&self, addr: &str) -> bool {
        let mut failed = self.failed.lock().expect("failed witnesses lock");
        failed.retain(|_, at| at.elapsed() < FAILED_MEMORY);
        failed.contains_key(addr)
    }

    /// The order to try witnesses in: the one that answered last, then the given ones;
    /// those that failed recently at the end.
    fn order(&self) -> Vec<String> {
        let mut order: Vec<String> = Vec::with_capacity(self.servers.len() + 1);
        if let Some(p) = self.preferred.lock().expect("preferred lock").clone() {
            order.push(p);
        }
        for s in &self.servers {
            if !order.contains(s) {
                order.push(s.clone());
            }
        }
        let (fresh, stale): (Vec<String>, Vec<String>) =
            order.into_iter().partition(|a| !self.recently_failed(a));
        fresh.into_iter().chain(stale).collect()
    }

    /// Like [`Client::call_channel`] within `bounds`: each attempt gets at most
    /// `bounds.attempt` (the closure should also send it as the request's deadline), the
    /// call at most `bounds.total`.
    pub async fn call_channel_within<T, F, Fut>(
        &self,
        bounds: CallBounds,
        mut call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let order = self.order();
        let mut next = 0;
        let mut target = order[0].clone();
        next += 1;
        let mut last = ClientError::local(ErrorKind::Unavailable, "no witness answered".into());
        let started = tokio::time::Instant::now();
        // Addresses tried in this round without reaching a leader: a redirect to one of
        // them is not followed until the round is over.
        let mut tried: Vec<String> = Vec::new();
        for _ in 0..ATTEMPTS_MAX {
            let left = bounds.total.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            let attempt = bounds.attempt.min(left);
            let channel = self.channel(&target)?;
            let reply = if self.faults.is_cut(&target) {
                // A black-holed link: nothing comes back before the deadline.
                tokio::time::sleep(attempt).await;
                Err(Status::unavailable("link cut (fault injected)"))
            } else {
                match tokio::time::timeout(attempt, call(channel)).await {
                    Ok(reply) => reply,
                    Err(_) => Err(Status::deadline_exceeded(format!(
                        "no answer within {} ms",
                        attempt.as_millis()
                    ))),
                }
            };
            match reply {
                Ok(resp) => {
                    self.failed
                        .lock()
                        .expect("failed witnesses lock")
                        .remove(&target);
                    *self.preferred.lock().expect("preferred lock") = Some(target);
                    return Ok(resp.into_inner());
                }
                Err(status) => {
                    let err = ClientError::from_status(&status);
                    let redirect = status
                        .metadata()
                        .get(META_LEADER_ADDR)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let retry = err.kind.retryable();
                    last = ClientError {
                        message: format!("{target}: {}", err.message),
                        ..err
                    };
                    if !retry {
                        return Err(last);
                    }
                    if last.kind != ErrorKind::NotLeader {
                        self.failed
                            .lock()
                            .expect("failed witnesses lock")
                            .insert(target.clone(), tokio::time::Instant::now());
                    }
                    if !tried.contains(&target) {
                        tried.push(target.clone());
                    }
                    match redirect {
                        Some(leader)
                            if leader != target
                                && !tried.contains(&leader)
                                && !self.recently_failed(&leader) =>
                        {
                            tracing::debug!(from = %target, to = %leader, "following the leader");
                            target = leader;
                        }
                        _ => {
                            // Move on to a witness not tried in this round; pause only
                            // when every one was tried.
                            match order[next.min(order.len())..]
                                .iter()
                                .position(|a| !tried.contains(a))
                            {
                                Some(i) => {
                                    next += i;
                                    target = order[next].clone();
                                    next += 1;
                                }
                                None => {
                                    tried.clear();
                                    next = 1;
                                    target = order[0].clone();
                                    tokio::time::sleep(RETRY_PAUSE.min(left)).await;
                                }
                            }
                        }
                    }
                }
            }
        }
        Err(last)
    }

    /// A streaming call (watch) to the first witness that answers; no leader needed.
    pub async fn connect_any(&self) -> Result<ArbiterClient<Channel>, ClientError> {
        let mut last = ClientError::local(ErrorKind::Unavailable, "no witness answered".into());
        for addr in &self.servers {
            match Endpoint::from_shared(format!("https://{addr}"))
                .and_then(|e| e.tls_config(self.tls.current().client_config(None)))
            {
                Ok(e) => match e.connect_timeout(CONNECT_TIMEOUT).connect().await {
                    Ok(ch) => return Ok(ArbiterClient::new(ch)),
                    Err(err) => {
                        last = ClientError::local(ErrorKind::Unavailable, format!("{addr}: {err}"))
                    }
                },
                Err(err) => {
                    last = ClientError::local(ErrorKind::InvalidArgument, format!("{addr}: {err}"))
                }
            }
        }
        Err(last)
    }
}

/// The typed calls of the `Arbiter` service, one per RPC that callers use.
impl Client {
    leader_rpc! {
        /// Starts a failover operation of `req.group` to `req.to`; returns once the
        /// operation is declared (committed).
        failover(FailoverRequest) -> OperationReply
    }

    leader_rpc! {
        /// Starts a failback of `req.group` to a higher-priority candidate (`req.to`, or the
        /// group's first candidate when empty).
        failback(FailoverRequest) -> OperationReply
    }

    leader_rpc! {
        /// Lets an operation waiting for approval run, or accepts a halted rpo-check.
        approve(OperationAction) -> OperationReply
    }

    leader_rpc! {
        /// Runs a halted operation's step again.
        retry(OperationAction) -> OperationReply
    }

    leader_rpc! {
        /// Skips a halted operation's step (`req.step`).
        skip(OperationAction) -> OperationReply
    }

    leader_rpc! {
        /// Aborts an operation before its activation (`req.reason` says why).
        abort(OperationAction) -> OperationReply
    }

    leader_rpc! {
        /// Operations, newest first, as `req` selects them.
        operations(OperationsRequest) -> OperationsReply
    }

    leader_rpc! {
        /// Sets a group's mode.
        set_mode(SetModeRequest) -> DecisionReply
    }

    leader_rpc! {
        /// Validates a policy, shows its diff against the committed one and, unless
        /// `req.dry_run`, commits it.
        policy_apply(PolicyApplyRequest) -> PolicyApplyReply
    }

    leader_rpc! {
        /// Adds a witness: as a learner until it has caught up, then as a voter.
        members_add(MembersAddRequest) -> MembersListReply
    }

    leader_rpc! {
        /// Removes a witness from the cluster.
        members_remove(MembersRemoveRequest) -> MembersListReply
    }

    /// Initialises a new cluster from the initial peers of the witness that answers.
    pub async fn init(&self) -> Result<proto::InitReply, ClientError> {
        self.call(|mut c| async move { c.init(proto::InitRequest {}).await })
            .await
    }

    /// The cluster's state as the leader confirms it, with the newest `audit_limit` audit
    /// entries (0: the server's default). A witness's own, possibly stale, view is asked of
    /// that witness directly ([`Client::connect_any`]).
    pub async fn status(&self, audit_limit: u32) -> Result<proto::StatusReply, ClientError> {
        let req = proto::StatusRequest {
            local: false,
            audit_limit,
        };
        self.call(|mut c| async move { c.status(req).await }).await
    }

    /// Operation `id` of `group` (empty: any group), if it is among the newest
    /// [`OPERATION_LOOKUP_LIMIT`] the cluster still holds.
    pub async fn operation(
        &self,
        group: &str,
        id: u64,
    ) -> Result<Option<proto::OperationStatus>, ClientError> {
        let reply = self
            .operations(proto::OperationsRequest {
                group: group.to_string(),
                limit: OPERATION_LOOKUP_LIMIT,
                active_only: false,
            })
            .await?;
        Ok(reply.operations.into_iter().find(|o| o.id == id))
    }

    /// What every DNS source publishes, compared with the committed state.
    pub async fn dns_check(&self) -> Result<proto::DnsCheckReply, ClientError> {
        self.call(|mut c| async move { c.dns_check(proto::DnsCheckRequest {}).await })
            .await
    }

    /// The committed policy and its version.
    pub async fn policy_show(&self) -> Result<proto::PolicyShowReply, ClientError> {
        self.call(|mut c| async move { c.policy_show(proto::PolicyShowRequest {}).await })
            .await
    }

    /// The witnesses of the cluster.
    pub async fn members_list(&self) -> Result<proto::MembersListReply, ClientError> {
        self.call(|mut c| async move { c.members_list(proto::MembersListRequest {}).await })
            .await
    }
}

#[cfg(test)]
mod kind_tests {
    use super::*;

    /// Goal: the client keeps the cluster's kind, and a deadline is indeterminate (the
    /// request may have been applied), never a definite "unavailable".
    #[test]
    fn statuses_keep_their_kind_and_a_deadline_is_indeterminate() {
        let e = ClientError::from_status(&Status::deadline_exceeded("no answer"));
        assert_eq!(e.kind, ErrorKind::Indeterminate);
        assert!(!e.kind.definite());
        let e = ClientError::from_status(&Status::unavailable("refused"));
        assert_eq!(e.kind, ErrorKind::Unavailable);
        let refused: Status =
            crate::api::ApiError::from(crate::state::Refusal::OperationInProgress {
                group: "g".into(),
                operation: 3,
            })
            .into();
        assert_eq!(refused.code(), Code::FailedPrecondition);
        let e = ClientError::from_status(&refused);
        assert_eq!(e.kind, ErrorKind::OperationInProgress);
        assert!(e.kind.definite() && !e.kind.retryable());
    }
}
